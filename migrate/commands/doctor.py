"""`migrate doctor HOST`: what the host has, what is missing, and what to do about it.

The click adapter: `migrate.remote.doctor.diagnose` probes and assesses the host; this module prints.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_host
from migrate.remote.doctor import diagnose
from migrate.remote.hosts import ConnectOptions


def run_doctor(host: str, options: ConnectOptions, *, as_json: bool, check_sudo: bool) -> int:
    """Probe `host` and print the report; exit 0 when the probe ran (problems are in the report)."""
    d = diagnose(host, options, check_sudo=check_sudo)
    if as_json:
        ui.print_json({"host": d.target.display, "hostname": d.target.hostname,
                       "port": d.target.port, "facts": d.facts.to_dict(),
                       "checks": [asdict(c) for c in d.checks]})
        return 0
    t = d.target
    rows = [("ssh", "ok", f"{t.user}@{t.hostname}:{t.port}", "")]
    rows += [(c.name, c.verdict, c.detail, c.hint) for c in d.checks]
    ui.table(f"migrate doctor {t.display}", ["check", "verdict", "detail", "hint"], rows)
    return 0


@click.command("doctor", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_host)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the facts and verdicts as JSON.")
@click.option("--sudo", "check_sudo", is_flag=True,
              help="Also prove that sudo works (asks for the password once, or reads $MIGRATE_SUDO_PASSWORD).")
def command(host: str, conn: ConnectOptions, as_json: bool, check_sudo: bool) -> None:
    """Check a host: OS, sudo, systemd and cgroups, Docker (engine, image store, a missing CLI), NVIDIA
    driver and GPUs, disk, python3, rsync.

    One SSH round trip, read-only. Each line gets a verdict (ok / warn / missing / info) and a
    hint. Exits 0 when the host could be probed, whatever it lacks.

    \b
    Examples:
      migrate doctor gpu1
      migrate doctor alice@10.0.0.7 -p 2222 --sudo
      migrate doctor gpu1 --json > gpu1.json
    """
    sys.exit(run_doctor(host, conn, as_json=as_json, check_sudo=check_sudo))
