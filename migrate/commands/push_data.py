"""`migrate push-data SRC... HOST:DEST` and `migrate pull-data HOST:SRC DEST`: the click adapters.

They parse arguments into `PushDataOptions`, call `migrate.data.push.push_data` /
`migrate.data.pull.pull_data` (which print the mapping, plan and progress), print the summary table
and map a failed host to exit code 1. The orchestration lives in `migrate/data/`.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options, host_option, hosts_from
from migrate.data.plan import METHODS, DataPushResult, PushDataOptions, split_host_path
from migrate.data.pull import pull_data
from migrate.data.push import push_data
from migrate.errors import UsageError
from migrate.remote.hosts import ConnectOptions


def _transfer_options(f):
    opts = [
        click.option("--into", is_flag=True, help="Put each source inside DEST instead of making it DEST."),
        click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave out matching files (repeatable)."),
        click.option("--exclude-from", multiple=True, type=click.Path(), metavar="FILE",
                     help="Read exclude patterns from FILE (repeatable)."),
        click.option("--delete", is_flag=True,
                     help="Delete files at DEST that are not in SRC (lists them and asks first; --yes to skip)."),
        click.option("-y", "--yes", is_flag=True, help="Do not ask before deleting (for scripts)."),
        click.option("-n", "--dry-run", is_flag=True,
                     help="Print the plan (mapping, method, commands), file count and bytes; change nothing."),
        click.option("--bwlimit", metavar="RATE",
                     help="Bandwidth cap: 20M (MiB/s), 500K, 100mbit (bits/s), a plain number in KiB/s."),
        click.option("--checksum", is_flag=True, help="Compare files by checksum, not size and time (slower, sure)."),
        click.option("--timeout", type=click.IntRange(1), metavar="SECONDS",
                     help="Give up when no data moves for this long."),
        click.option("--json", "as_json", is_flag=True, help="Print the results as JSON."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


@click.command("push-data", context_settings=CONTEXT_SETTINGS)
@click.argument("args", nargs=-1, required=True, metavar="SRC... HOST:DEST")
@host_option("Push to this host too (repeatable, in parallel); DEST may then be a bare path.")
@click.option("--hosts", "old_hosts", multiple=True, hidden=True)  # the old comma list: one more release
@_transfer_options
@click.option("--compress", type=click.Choice(["auto", "none", "zstd"]), default="auto", show_default=True,
              help="auto: rsync's zstd off the local network (it skips already-compressed file types), "
                   "tar streams through zstd on a far link. zstd: always, where both sides have it.")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="auto: for a first copy, tar streams (many small files) or --streams parallel rsync "
                   "streams (several big files); on a far link (round trip >= 30 ms) tar through zstd, or "
                   "without zstd one file stream that python3 there writes (else rsync), and one file "
                   "stream for big files (each file lands once whole; an interrupted one waits in "
                   ".migrate-partial/ for the rerun's rsync); else rsync. "
                   "stream: files and directories only, no --delete.")
@click.option("--streams", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Streams for --method parallel (and tar: at most one per remote core).")
@click.option("--sudo", is_flag=True, help="Write as root (remote rsync via passwordless sudo).")
@click.option("--install-rsync", is_flag=True, help="Install rsync on the host (sudo apt) if it is missing.")
@click.option("--drop-partial", is_flag=True,
              help="Delete the unfinished files an interrupted transfer kept in DEST (.migrate-partial/) and "
                   "send them whole (with an rsync older than 3.2.0 a resume needs room for a second copy).")
@click.option("--no-relay", is_flag=True,
              help="Send every host its own copy from here, even when the first host could feed the others.")
@connection_options
def push_command(args: tuple[str, ...], host: tuple[str, ...], old_hosts: tuple[str, ...], conn: ConnectOptions,
                 **kw) -> None:
    """Copy files and datasets to a host with rsync: resumable, with progress, no trailing-slash trap.

    \b
    Examples:
      migrate push-data ./cifar gpu:/data/cifar   # contents -> /data/cifar
      migrate push-data ./cifar gpu:/data --into  # ./cifar lands at /data/cifar
      migrate push-data a.txt b/ gpu:/srv/        # several sources: inside DEST
      migrate push-data ./ckpt gpu:/data/ckpt -H gpu2 -H gpu3

    The resolved mapping is printed before anything moves. Preflight checks the source, the
    remote rsync (else a tar stream), write permission and free space; a re-sync of a DEST pushed
    from here before (and a first copy by rsync, where the host's tools are known) checks them on
    rsync's own exec, and plans again where DEST is not as expected. An interrupted transfer
    resumes when you rerun the same command. Patterns in a `.migrateignore` file in the source
    are excluded (rsync syntax, like .gitignore for the usual cases). All transfers to a host share
    one SSH connection, with AES-GCM preferred where this CPU has AES-NI and no ssh_config sets
    Ciphers; --method auto picks tar streams or parallel rsyncs for first copies (see --method).

    Several hosts: the first gets each directory from here and feeds the others over the hosts'
    own network (tar over ssh with a key made for that transfer, allowed only to unpack there);
    an rsync from here then checks each host and sends only what differs. --no-relay: each host
    its own copy from here (also with --sudo, --delete, and for single files).
    """
    hosts = hosts_from("push-data", host, old_lists=old_hosts)
    if len(args) < 2 and not hosts:
        raise UsageError("give at least one SRC and HOST:DEST", hint="migrate push-data ./data gpu-box:/data")
    *sources, last = args
    targets = list(hosts)
    if ":" in last and not last.startswith("/"):
        first, dest = split_host_path(last)
        targets.insert(0, first)
    elif hosts:
        dest = last
    else:
        raise UsageError(f"{last!r} is not HOST:DEST", hint="e.g. gpu-box:/data/cifar10 (or name hosts with -H)")
    if not sources:
        raise UsageError("give at least one SRC")
    options = PushDataOptions(
        into=kw["into"], exclude=list(kw["exclude"]), exclude_from=list(kw["exclude_from"]), delete=kw["delete"],
        yes=kw["yes"], dry_run=kw["dry_run"], bwlimit=kw["bwlimit"], checksum=kw["checksum"],
        compress=kw["compress"], method=kw["method"], streams=kw["streams"], sudo=kw["sudo"],
        install_rsync=kw["install_rsync"], timeout=kw["timeout"], drop_partial=kw["drop_partial"],
        relay=not kw["no_relay"])
    results = push_data(sources, list(dict.fromkeys(targets)), dest, conn, options)
    _summary(results, kw["as_json"])
    if any(r.status == "failed" for r in results):
        sys.exit(1)


@click.command("pull-data", context_settings=CONTEXT_SETTINGS)
@click.argument("source", metavar="HOST:SRC")
@click.argument("dest", metavar="DEST")
@_transfer_options
@click.option("--preserve-owner", is_flag=True,
              help="Run as root: keep the remote owner and group (numbers) on the fetched files. By default they "
                   "belong to you (to the sudo user under sudo).")
@connection_options
def pull_command(source: str, dest: str, conn: ConnectOptions, **kw) -> None:
    """Fetch results (checkpoints, logs) from a host; the contents of SRC become DEST.

    Same rules as push-data: `--into` puts SRC inside DEST; an interrupted fetch resumes. Run as
    root (or with sudo), the fetched files belong to root (or to the user who ran sudo), not to
    whatever uid owned them on the host, unless --preserve-owner.

    \b
    Examples:
      migrate pull-data gpu1:runs/exp1 ./exp1   # remote contents -> ./exp1
      migrate pull-data gpu1:runs ./ --into     # ./runs
      migrate pull-data gpu1:ckpt ./ckpt -n     # the plan only
    """
    host, src = split_host_path(source)
    options = PushDataOptions(into=kw["into"], exclude=list(kw["exclude"]), exclude_from=list(kw["exclude_from"]),
                              delete=kw["delete"], yes=kw["yes"], dry_run=kw["dry_run"], bwlimit=kw["bwlimit"],
                              checksum=kw["checksum"], timeout=kw["timeout"], preserve_owner=kw["preserve_owner"])
    _summary([pull_data(host, src, dest, conn, options)], kw["as_json"])


def _summary(results: list[DataPushResult], as_json: bool = False) -> None:
    if as_json:
        ui.print_json([asdict(r) for r in results])
        for r in results:
            if r.error:
                ui.error(f"{r.host}: {r.error}")
        return
    rows = []
    fed = any(r.fed_via for r in results)  # push-data: which way each host was fed (data/fanout.py)
    for r in results:
        detail = r.error or (f"{r.files_transferred} file(s), {ui.human_bytes(r.bytes_sent)}"
                             + (f" in {r.seconds:.1f}s" if r.seconds else "")
                             + (f", {ui.human_bytes(r.relayed_bytes)} host to host" if r.relayed_bytes else ""))
        via = [r.fed_via + (f" ({r.fed_why})" if r.fed_why else "") if r.fed_via else "-"] if fed else []
        rows.append((r.host, r.source, r.dest, r.method or "-", r.status, *via, detail))
    ui.table(None, ["host", "source", "lands at", "method", "result", *(["fed via"] if fed else []), "detail"], rows)
    for r in results:
        if r.error:
            ui.error(f"{r.host}: {r.error}")
