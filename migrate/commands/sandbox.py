"""`migrate sandbox up | status | down | ssh-config`."""

from __future__ import annotations

import sys

from migrate import ui
from migrate.sandbox.manager import Sandbox


def _show(hosts: list[dict], as_json: bool, sb: Sandbox) -> None:
    if as_json:
        ui.print_json(hosts)
        return
    if not hosts:
        ui.info(f"sandbox '{sb.s.name}' is not up (start it with `migrate sandbox up`)")
        return
    rows = [(h["alias"], h["state"], f"alice@{h['hostname']}:{h['port']}", f"{h['ip']}:22",
             str(h.get("fake_gpus", 0))) for h in hosts]
    ui.table(f"sandbox '{sb.s.name}'", ["host", "state", "ssh", "ip", "fake gpus"], rows)
    ui.info("users: alice (passwordless sudo), bob (sudo password "
            f"'{sb.s.bob_password}'); try `migrate doctor {hosts[0]['alias']}`")


def up(count: int, *, gpus: int, kill_user_processes: bool, rebuild: bool, as_json: bool) -> None:
    """Bring hosts up and show them."""
    sb = Sandbox()
    hosts = sb.up(count, gpus=gpus, kill_user_processes=kill_user_processes, rebuild=rebuild)
    _show(hosts, as_json, sb)


def status(*, as_json: bool) -> None:
    """Show the hosts."""
    sb = Sandbox()
    _show(sb.describe(), as_json, sb)


def down(*, purge: bool) -> None:
    """Remove what the sandbox created."""
    sb = Sandbox()
    removed = sb.down(purge=purge)
    ui.info(f"sandbox '{sb.s.name}' down: " + (", ".join(removed) if removed else "nothing to remove"))


def ssh_config() -> None:
    """Print the OpenSSH config block."""
    sys.stdout.write(Sandbox().openssh_config())
