"""`migrate tunnel HOST 6006 [8888]`: reach TensorBoard/Jupyter on the host through SSH."""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import Any

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_host
from migrate.errors import MigrateError
from migrate.jobs.tunnel import check_local_ports, parse_forwards, ssh_forward_args
from migrate.remote import shell as quoting
from migrate.remote.connection import target_for
from migrate.remote.hosts import ConnectOptions, openssh_argv


def tunnel_argv(host: str, conn: ConnectOptions, ports: tuple[str, ...], bind: str) -> tuple[list[str], list]:
    forwards = parse_forwards(ports)
    target, configs = target_for(host, conn)
    argv = openssh_argv(target, config_file=configs.openssh_file(), extra=ssh_forward_args(forwards, bind))
    return argv, forwards


@click.command("tunnel", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_host)
@click.argument("ports", nargs=-1, required=True, metavar="PORT|LOCAL:REMOTE...")
@connection_options
@click.option("--bind", default="127.0.0.1", show_default=True, help="Local address to listen on.")
@click.option("-n", "--dry-run", is_flag=True, help="Print the ssh command instead of running it.")
def command(host: str, ports: tuple[str, ...], conn: ConnectOptions, bind: str, dry_run: bool) -> None:
    """Forward local ports to HOST's localhost until Ctrl-C (TensorBoard, Jupyter...).

    \b
    Examples:
      migrate tunnel HOST 6006         # 127.0.0.1:6006 -> HOST's localhost:6006
      migrate tunnel HOST 6006 8888    # two ports
      migrate tunnel HOST 16006:6006   # local 16006 -> remote 6006

    Uses the same SSH settings as every other verb (ssh_config, keys, verified host keys).
    """
    argv, forwards = tunnel_argv(host, conn, ports, bind)
    if dry_run:
        sys.stdout.write(quoting.join(argv) + "\n")  # pasteable: UserKnownHostsFile has a space
        return
    check_local_ports(forwards, bind)
    for f in forwards:
        ui.step(f"http://{bind}:{f.local} -> {host}:localhost:{f.remote}")
    ui.info("Ctrl-C stops the tunnel")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise MigrateError("the OpenSSH client (ssh) is not installed here",
                           hint="apt-get install openssh-client") from exc

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
        ui.info("tunnel closed")
        return
    raise MigrateError(f"the tunnel to {host} ended (ssh exit code {code})",
                       hint="is the port free on the host side and is AllowTcpForwarding on? -vv shows more")
