"""The `migrate` command line: parses arguments, calls one function per verb, maps errors to exit codes.

Exit codes: 0 success, 1 the operation failed (message on one line, no traceback), 2 usage error,
130 interrupted. Each verb's logic lives in `migrate.commands.<verb>`; this module stays thin.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from migrate import __version__, ui
from migrate.errors import EXIT_FAILED, EXIT_USAGE, MigrateError
from migrate.remote.hosts import ConnectOptions

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --port/--identity/--accept-new-host-key/--connect-timeout/--ssh-config to a verb."""

    @click.option("-p", "--port", type=click.IntRange(1, 65535), default=None,
                  help="SSH port (default: from ~/.ssh/config, else 22).")
    @click.option("-i", "--identity", "identity", multiple=True, type=click.Path(dir_okay=False),
                  help="Private key file (repeatable); ssh-agent and ~/.ssh/config keys are tried too.")
    @click.option("--accept-new-host-key", is_flag=True,
                  help="Trust and record a host key seen for the first time (like OpenSSH "
                       "StrictHostKeyChecking=accept-new). A changed key is always refused.")
    @click.option("--connect-timeout", type=click.IntRange(1, 600), default=None, metavar="SECONDS",
                  help="Give up connecting after this long (default 10).")
    @click.option("--ssh-config", type=click.Path(dir_okay=False), default=None,
                  help="ssh_config file to read instead of ~/.ssh/config (also $MIGRATE_SSH_CONFIG).")
    @functools.wraps(func)
    def wrapper(*args: Any, port: int | None, identity: tuple[str, ...], accept_new_host_key: bool,
                connect_timeout: int | None, ssh_config: str | None, **kwargs: Any) -> Any:
        kwargs["conn"] = ConnectOptions(port=port, identity_files=list(identity),
                                        accept_new_host_key=accept_new_host_key,
                                        connect_timeout=connect_timeout, ssh_config_path=ssh_config)
        return func(*args, **kwargs)

    return wrapper


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="migrate")
@click.option("-v", "--verbose", count=True, help="Show what runs where (-vv: every remote command).")
def cli(verbose: int) -> None:
    """Move a deep-learning experiment onto a borrowed GPU server over SSH, fast and politely.

    HOST is [user@]host or an alias from ~/.ssh/config; `migrate sandbox up` adds local
    rehearsal hosts named sandbox1, sandbox2, ... Start with `migrate doctor HOST`.
    """
    ui.set_verbosity(verbose)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the facts and verdicts as JSON.")
@click.option("--sudo", "check_sudo", is_flag=True,
              help="Also prove that sudo works (asks for the password once, or reads $MIGRATE_SUDO_PASSWORD).")
def doctor(host: str, conn: ConnectOptions, as_json: bool, check_sudo: bool) -> None:
    """Check a host: OS, sudo, Docker, NVIDIA driver and GPUs, disk, python3, rsync.

    One SSH round trip, read-only. Each line gets a verdict (ok / warn / missing / info) and a
    hint. Exits 0 when the host could be probed, whatever it lacks.
    """
    from migrate.commands.doctor import run_doctor

    sys.exit(run_doctor(host, conn, as_json=as_json, check_sudo=check_sudo))


@cli.group(context_settings=CONTEXT_SETTINGS)
def sandbox() -> None:
    """Local rehearsal hosts: Debian containers with systemd and sshd, no Docker, no GPU.

    Each host has a user `alice` (passwordless sudo) and `bob` (sudo password "bobpass"), working
    apt, its own IP and a 64 MiB disk at /mnt/small. Hosts are named sandbox1, sandbox2, ... and
    work with every migrate command without flags. Needs a local Docker daemon; the first `up`
    builds the image with debootstrap as root (about 90 s), later ones take seconds.
    """


@sandbox.command("up", context_settings=CONTEXT_SETTINGS)
@click.argument("count", type=click.IntRange(1, 50), default=2, required=False)
@click.option("--gpus", type=click.IntRange(0, 16), default=0,
              help="Install a FAKE nvidia-smi and nvidia runtime reporting N GPUs (a test double; no GPU).")
@click.option("--kill-user-processes", is_flag=True,
              help="Hard mode: logind kills a user's processes at logout, as some hardened servers do.")
@click.option("--rebuild", is_flag=True, help="Rebuild the image from scratch (debootstrap).")
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def sandbox_up(count: int, gpus: int, kill_user_processes: bool, rebuild: bool, as_json: bool) -> None:
    """Start COUNT sandbox hosts (default 2); reuses the ones already running."""
    from migrate.commands.sandbox import up

    up(count, gpus=gpus, kill_user_processes=kill_user_processes, rebuild=rebuild, as_json=as_json)


@sandbox.command("status", context_settings=CONTEXT_SETTINGS)
@click.option("--json", "as_json", is_flag=True, help="Print the hosts as JSON.")
def sandbox_status(as_json: bool) -> None:
    """List the sandbox hosts, their addresses and state."""
    from migrate.commands.sandbox import status

    status(as_json=as_json)


@sandbox.command("down", context_settings=CONTEXT_SETTINGS)
@click.option("--purge", is_flag=True, help="Also remove the sandbox image and the cached rootfs.")
def sandbox_down(purge: bool) -> None:
    """Remove every container, volume, network and file the sandbox created (nothing else)."""
    from migrate.commands.sandbox import down

    down(purge=purge)


@sandbox.command("ssh-config", context_settings=CONTEXT_SETTINGS)
def sandbox_ssh_config() -> None:
    """Print an OpenSSH config block for the sandbox hosts.

    Use it with plain tools: `migrate sandbox ssh-config > sb.conf; ssh -F sb.conf sandbox1`
    or `rsync -e 'ssh -F sb.conf' ...`.
    """
    from migrate.commands.sandbox import ssh_config

    ssh_config()


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning MigrateError into a one-line message and an exit code."""
    try:
        code = cli.main(args=argv, prog_name="migrate", standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        ui.error("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
    except MigrateError as exc:
        ui.error(exc.one_line())
        if ui.verbosity() >= 2:
            traceback.print_exc()
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        ui.error("interrupted")
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(EXIT_FAILED)
    except Exception:  # a bug: say so, show the traceback, keep the exit code consistent
        ui.error("internal error in migrate (this is a bug; please report it with the traceback below)")
        traceback.print_exc()
        sys.exit(EXIT_FAILED)
