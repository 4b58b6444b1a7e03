"""`migrate sandbox up | status | down | ssh-config`."""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS
from migrate.sandbox import recipe
from migrate.sandbox.manager import Sandbox


def _show(hosts: list[dict], as_json: bool, sb: Sandbox) -> None:
    if as_json:
        ui.print_json(hosts)
        return
    if not hosts:
        ui.info(f"sandbox '{sb.s.name}' is not up (start it with `migrate sandbox up`)")
        return
    rows = [(h["alias"], h["state"], f"alice@{h['hostname']}:{h['port']}", f"{h['ip']}:22",
             str(h.get("fake_gpus", 0)), _flavour(h)) for h in hosts]
    ui.table(f"sandbox '{sb.s.name}'", ["host", "state", "ssh", "ip", "fake gpus", "debian / docker"], rows)
    ui.info("users: alice (passwordless sudo), bob (sudo password "
            f"'{sb.s.bob_password}'), carol (no sudo, no docker group); try `migrate doctor {hosts[0]['alias']}`")


def _up(count: int, *, gpus: int, kill_user_processes: bool, rebuild: bool, as_json: bool,
        release: str | None, docker_from: str | None, image_store: str | None) -> None:
    """Bring hosts up and show them."""
    sb = Sandbox()
    hosts = sb.up(count, gpus=gpus, kill_user_processes=kill_user_processes, rebuild=rebuild,
                  release=release, docker_from=docker_from, image_store=image_store)
    _show(hosts, as_json, sb)


def _flavour(h: dict) -> str:
    """`trixie, docker.io from sid, containerd store` for one host."""
    parts = [h.get("release", "bookworm")]
    if h.get("docker_from"):
        parts.append(f"docker.io from {h['docker_from']}")
    if h.get("image_store", "overlay2") != "overlay2":
        parts.append(f"{h['image_store']} image store")
    return ", ".join(parts)


def _status(*, as_json: bool) -> None:
    """Show the hosts."""
    sb = Sandbox()
    _show(sb.describe(), as_json, sb)


def _down(*, purge: bool, as_json: bool = False) -> None:
    """Remove what the sandbox created."""
    sb = Sandbox()
    removed = sb.down(purge=purge)
    if as_json:
        ui.print_json({"sandbox": sb.s.name, "removed": removed})
        return
    ui.info(f"sandbox '{sb.s.name}' down: " + (", ".join(removed) if removed else "nothing to remove"))


def _ssh_config() -> None:
    """Print the OpenSSH config block."""
    sys.stdout.write(Sandbox().openssh_config())


@click.group("sandbox", context_settings=CONTEXT_SETTINGS)
def group() -> None:
    """Local rehearsal hosts: Debian containers with systemd and sshd, no Docker, no GPU.

    Each host has a user `alice` (passwordless sudo), `bob` (sudo password "bobpass") and `carol`
    (a plain user: no sudo, not in the docker group, e.g. `migrate doctor carol@sandbox1`), working
    apt, its own IP and a 64 MiB disk at /mnt/small. Hosts are named sandbox1, sandbox2, ... and
    work with every migrate command without flags. Needs a local Docker daemon; the first `up`
    builds the image with debootstrap as root (about 90 s), later ones take seconds.
    """


@group.command("up", context_settings=CONTEXT_SETTINGS)
@click.argument("count", type=click.IntRange(1, 50), default=2, required=False)
@click.option("--gpus", type=click.IntRange(0, 16), default=0,
              help="Install a FAKE nvidia-smi and nvidia runtime reporting N GPUs (a test double; no GPU).")
@click.option("--kill-user-processes", is_flag=True,
              help="Hard mode: logind kills a user's processes at logout, as some hardened servers do.")
@click.option("--rebuild", is_flag=True, help="Rebuild the image from scratch (debootstrap).")
@click.option("--release", type=click.Choice(recipe.RELEASES), default=None,
              help="Debian release of the hosts (default: what is up, else $MIGRATE_SANDBOX_RELEASE, else bookworm). "
                   "One cached image per release.")
@click.option("--docker-from", type=click.Choice(recipe.DOCKER_FROM), default=None,
              help="Let apt on a trixie host install Docker, containerd and apptainer from Debian sid "
                   "(docker.io 28.5, containerd 2.1); nothing else comes from sid.")
@click.option("--image-store", type=click.Choice(recipe.IMAGE_STORES), default=None,
              help="containerd: write {\"features\": {\"containerd-snapshotter\": true}} into daemon.json before any "
                   "Docker is installed, as fresh Docker 29 installs do.")
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def up(count: int, gpus: int, kill_user_processes: bool, rebuild: bool, release: str | None,
       docker_from: str | None, image_store: str | None, as_json: bool) -> None:
    """Start COUNT sandbox hosts (default 2); reuses the ones already running.

    The hosts of one sandbox share one release, engine source and image store; for another
    combination, give the sandbox another name (MIGRATE_SANDBOX=name) or bring it down first.
    """
    _up(count, gpus=gpus, kill_user_processes=kill_user_processes, rebuild=rebuild, as_json=as_json,
        release=release, docker_from=docker_from, image_store=image_store)


@group.command("status", context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def status(as_json: bool) -> None:
    """List the sandbox hosts, their addresses and state."""
    _status(as_json=as_json)


@group.command("down", context_settings=CONTEXT_SETTINGS)
@click.option("--purge", is_flag=True, help="Also remove the sandbox image and the cached rootfs.")
@click.option("--json", "as_json", is_flag=True, help="Print {sandbox, removed: [...]} as JSON.")
def down(purge: bool, as_json: bool) -> None:
    """Remove every container, volume, network and file the sandbox created (nothing else)."""
    _down(purge=purge, as_json=as_json)


@group.command("ssh-config", context_settings=CONTEXT_SETTINGS)
def ssh_config() -> None:
    """Print an OpenSSH config block for the sandbox hosts.

    Use it with plain tools: `migrate sandbox ssh-config > sb.conf; ssh -F sb.conf sandbox1`
    or `rsync -e 'ssh -F sb.conf' ...`.
    """
    _ssh_config()
