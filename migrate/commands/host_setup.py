"""`migrate host-setup HOST...`: make borrowed servers GPU-container ready, idempotently.

The click adapter: the steps and the several-host orchestration live in `migrate.setup`
(`migrate.setup.orchestrator.setup_hosts` / `undo_hosts`, the API `migrate apply` calls).
"""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import (
    CONTEXT_SETTINGS,
    connection_options,
    given_options,
    host_option,
    hosts_from,
    old_spelling,
)
from migrate.completion import complete_host
from migrate.errors import UsageError
from migrate.remote.hosts import ConnectOptions
from migrate.setup.offline import download_offline_report
from migrate.setup.options import (
    DEFAULT_APT_LOCK_TIMEOUT,
    DEFAULT_DOCKER_URL,
    DEFAULT_NVIDIA_URL,
    DOCKER_MIRRORS,
    NVIDIA_MIRRORS,
    HostSetupOptions,
)
from migrate.setup.orchestrator import setup_hosts, undo_hosts

SETUP_ONLY = ("docker_source", "no_nvidia", "nvidia_mirror", "default_runtime", "registry_mirrors", "data_root",
              "force", "force_source", "force_restart", "codename", "docker_url", "nvidia_url", "offline_flag",
              "offline_dir",
              "verify_image", "apt_lock_timeout")
DOWNLOAD_ONLY = ("for_target", "arch", "archive_url", "archive_keyring")
# setup options --download-offline refuses
NOT_DOWNLOADED = ("offline_flag", "offline_dir", "default_runtime", "registry_mirrors", "data_root", "force",
                  "force_source", "force_restart", "verify_image", "apt_lock_timeout")


def offline_directory(flag: str | None, directory: str | None) -> str | None:
    """The .deb directory of `--offline-dir DIR` (`--offline` is the flag every verb has; the old
    `--offline DIR` still works for this release, with one deprecation line)."""
    if flag:  # the old spelling: --offline DIR
        if directory and directory != flag:
            raise UsageError(f"--offline {flag} and --offline-dir {directory} name two directories")
        old_spelling(f"host-setup --offline {flag}", f"host-setup --offline-dir {flag}",
                     "--offline is a flag in every verb")
        return flag
    if flag is not None and not directory:
        raise UsageError("host-setup --offline installs from .deb files brought from here: say where they are",
                         hint="--offline-dir DIR (fill it with `migrate host-setup --download-offline DIR "
                              "--for OS:VERSION`)")
    return directory


@click.command("host-setup", context_settings=CONTEXT_SETTINGS)
@click.argument("hosts", nargs=-1, metavar="HOST...", shell_complete=complete_host)
@host_option()
@connection_options
@click.option("--docker-source", default="official", show_default=True, metavar="official|distro|mirror:NAME|URL",
              help="Where Docker comes from: Docker's apt repository, the distribution's docker.io, or a mirror of "
                   f"Docker's repository (names: {', '.join(DOCKER_MIRRORS)}; or a URL).")
@click.option("--no-nvidia", is_flag=True, help="Skip the NVIDIA container toolkit and the nvidia runtime.")
@click.option("--nvidia-mirror", metavar="NAME|URL",
              help=f"Mirror of NVIDIA's libnvidia-container repository (names: {', '.join(NVIDIA_MIRRORS)}; or a URL).")
@click.option("--default-runtime", type=click.Choice(["nvidia", "runc"]),
              help="Also set default-runtime in daemon.json (every container then uses it).")
@click.option("--registry-mirror", "registry_mirrors", multiple=True, metavar="URL",
              help="Add a Docker Hub mirror to daemon.json registry-mirrors (repeatable; existing ones are kept).")
@click.option("--data-root", metavar="PATH", help="Set daemon.json data-root (where images and containers live).")
@click.option("--force", is_flag=True, help="Install the NVIDIA toolkit even when no NVIDIA driver is found.")
@click.option("--force-source", is_flag=True,
              help="Replace an existing Docker engine from another source (default: keep a working engine).")
@click.option("--force-restart", is_flag=True,
              help="Restart docker even when containers are running (they stop unless live-restore is on).")
@click.option("--codename", metavar="SUITE", help="Docker repository suite to use instead of the detected release.")
@click.option("--docker-url", default=DEFAULT_DOCKER_URL, show_default=True, metavar="URL",
              help="Base URL of Docker's repository for --docker-source official.")
@click.option("--nvidia-url", default=DEFAULT_NVIDIA_URL, show_default=True, metavar="URL",
              help="Base URL of NVIDIA's libnvidia-container repository.")
@click.option("--apt-lock-timeout", type=click.IntRange(0, 86400), default=DEFAULT_APT_LOCK_TIMEOUT,
              show_default=True, metavar="SECONDS", help="How long apt waits for another apt/dpkg to finish.")
@click.option("--offline", "offline_flag", is_flag=False, flag_value="", default=None, metavar="",
              help="The host gets no internet: bring what it needs from here (with --offline-dir DIR).")
@click.option("--offline-dir", "offline_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Install from the .deb files in DIR (made with --download-offline); implies --offline.")
@click.option("--verify-image", metavar="IMAGE",
              help="Image for the GPU container test (pulled if missing). Default: an image already on the host.")
@click.option("-n", "--dry-run", is_flag=True,
              help="Show the plan with the exact commands and file diffs; change nothing.")
@click.option("--undo", is_flag=True, help="Reverse every change host-setup recorded on the host, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print the per-host reports as JSON (stdout).")
@click.option("--download-offline", "download_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="On THIS machine (Debian/Ubuntu with internet): download the .deb files for --for into DIR.")
@click.option("--for", "for_target", metavar="OS:VERSION", help="Target of --download-offline, e.g. ubuntu:22.04.")
@click.option("--arch", default="amd64", show_default=True, help="Architecture for --download-offline.")
@click.option("--archive-url", metavar="URL", help="Distribution mirror for --download-offline.")
@click.option("--archive-keyring", type=click.Path(dir_okay=False), metavar="FILE",
              help="Distribution keyring for --download-offline (default: this machine's).")
@click.pass_context
def command(ctx: click.Context, hosts: tuple[str, ...], host: tuple[str, ...], conn: ConnectOptions,
            docker_source: str, no_nvidia: bool, nvidia_mirror: str | None, default_runtime: str | None,
            registry_mirrors: tuple[str, ...], data_root: str | None, force: bool, force_source: bool,
            force_restart: bool, codename: str | None, docker_url: str, nvidia_url: str, apt_lock_timeout: int,
            offline_flag: str | None, offline_dir: str | None, verify_image: str | None, dry_run: bool, undo: bool,
            as_json: bool,
            download_dir: str | None, for_target: str | None, arch: str, archive_url: str | None,
            archive_keyring: str | None) -> None:
    """Make servers GPU-container ready: Docker, the NVIDIA container toolkit, daemon.json, the docker group.

    \b
    Steps, each checked before it changes anything (ok/changed/skipped/failed):
      host            OS and codename, arch, sudo, GPU driver, a busy dpkg
      docker-repo     Docker's apt repository (key file + signed-by; no apt-key)
      docker-engine   docker-ce, or the distribution's docker.io (a working
                      engine is kept)
      nvidia-repo     NVIDIA's libnvidia-container repository (needs a driver,
                      or --force)
      nvidia-toolkit  nvidia-container-toolkit (host-setup never installs drivers)
      daemon-json     merge runtimes.nvidia etc. into /etc/docker/daemon.json,
                      keep every key, back up, validate, restart docker once,
                      roll back if it does not start
      docker-service  start docker, or restart it once when the toolkit came
                      after it
      docker-group    add you to the docker group, reconnect, prove
                      `docker info` without sudo
      verify          docker info lists the nvidia runtime; a GPU container
                      runs nvidia-smi -L

    Every change is journalled on the host in ~/.migrate/host-setup/journal.jsonl; --undo reverses
    them. Several hosts run in parallel; one failing does not stop the others. Exit code 1 if any
    host failed.

    \b
    Examples:
      migrate host-setup alice@gpu-box --dry-run
      migrate host-setup gpu1 gpu2 --docker-source mirror:tuna \\
          --nvidia-mirror ustc
      migrate host-setup -H gpu1 -H gpu2 --dry-run   # -H, as every verb
      migrate host-setup --download-offline ./debs --for ubuntu:22.04
      migrate host-setup gpu-box --offline-dir ./debs
      migrate host-setup gpu-box --undo
    """
    hosts = tuple(hosts_from("host-setup", hosts, host))
    offline = offline_directory(offline_flag, offline_dir)
    if download_dir is not None:
        if hosts:
            raise UsageError("--download-offline runs on this machine: give no HOST",
                             hint="then use `migrate host-setup HOST --offline-dir DIR`")
        if not for_target:
            raise UsageError("--download-offline needs --for OS:VERSION", hint="e.g. --for ubuntu:22.04")
        bad = given_options(ctx, NOT_DOWNLOADED)
        bad += (["--undo"] if undo else []) + (["--dry-run"] if dry_run else [])
        if bad:
            raise UsageError(f"{', '.join(bad)} cannot be combined with --download-offline")
        options = HostSetupOptions(docker_source=docker_source, nvidia=not no_nvidia, nvidia_mirror=nvidia_mirror,
                                   docker_url=docker_url, nvidia_url=nvidia_url, codename=codename)
        download_offline_report(download_dir, for_target, options, arch=arch, archive_url=archive_url,
                                archive_keyring=archive_keyring, as_json=as_json)
        return
    given_download = given_options(ctx, DOWNLOAD_ONLY)
    if given_download:
        raise UsageError(f"{', '.join(given_download)} only go with --download-offline DIR")
    if not hosts:
        raise UsageError("missing HOST", hint="migrate host-setup [user@]host [HOST...]; see --help")
    if undo:
        given = given_options(ctx, SETUP_ONLY)
        if given:
            raise UsageError(f"--undo takes no setup options (got {', '.join(given)})",
                             hint="--undo reverses what the journal on the host recorded")
        reports = undo_hosts(list(hosts), conn, dry_run=dry_run, quiet=as_json)
    else:
        options = HostSetupOptions(
            docker_source=docker_source, nvidia=not no_nvidia, default_runtime=default_runtime,
            registry_mirrors=list(registry_mirrors), data_root=data_root, force=force, force_source=force_source,
            force_restart=force_restart, nvidia_mirror=nvidia_mirror, docker_url=docker_url, nvidia_url=nvidia_url,
            codename=codename, offline=offline, verify_image=verify_image, apt_lock_timeout=apt_lock_timeout)
        reports = setup_hosts(list(hosts), conn, options, dry_run=dry_run, quiet=as_json)
    if as_json:
        ui.print_json([r.to_dict() for r in reports])
    sys.exit(0 if all(r.ok for r in reports) else 1)
