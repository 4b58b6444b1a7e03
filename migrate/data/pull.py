"""pull-data orchestration: probe HOST:SRC -> mapping -> local space check -> a `HostPlan` (printed by
--dry-run, which stops there and creates nothing locally) -> deletion check -> one rsync from the host.
"""

from __future__ import annotations

import os
import shutil
import time

from migrate import ui
from migrate.data.mapping import normalize_local_path, normalize_remote_path, resolve_mapping
from migrate.data.plan import DataPushResult, HostPlan, PlannedTransfer, PushDataOptions, normalize_bwlimit
from migrate.data.push import ProgressBoard, Reach, remote_spec
from migrate.data.remote import parse_source_probe, source_probe_command
from migrate.data.rsync import RsyncOptions, rsh_join, rsync_argv
from migrate.data.transfer import require_local_tools
from migrate.errors import MigrateError
from migrate.remote.hosts import ConnectOptions


def local_owner(euid: int, environ: dict[str, str], *, preserve: bool) -> tuple[int, int] | None:
    """Who should own pulled files: None = rsync's default. As root rsync would keep the remote uid/gid
    (some unrelated local user); instead they go to the user who ran sudo, else to root."""
    if preserve or euid != 0:
        return None
    uid, gid = environ.get("SUDO_UID", ""), environ.get("SUDO_GID", "")
    if uid.isdigit() and gid.isdigit():
        return int(uid), int(gid)
    return 0, 0


def _makedirs(path: str, owner: tuple[int, int] | None) -> None:
    """mkdir -p, giving the directories it creates to `owner`."""
    created = []
    p = os.path.abspath(path)
    while not os.path.exists(p):
        created.append(p)
        p = os.path.dirname(p)
    os.makedirs(path, exist_ok=True)
    if owner:
        for d in created:
            os.chown(d, *owner)


def file_in_the_way(directory: str) -> str | None:
    """The existing file (not a directory) at `directory` or above it, which would stop `mkdir -p`; None if
    there is none."""
    p = os.path.abspath(directory)
    while not os.path.lexists(p):
        p = os.path.dirname(p)
    return None if os.path.isdir(p) else p


def pull_data(host: str, remote_src: str, local_dest: str, conn: ConnectOptions,
              options: PushDataOptions, *, reach: Reach | None = None) -> DataPushResult:
    """Fetch HOST:SRC so that its contents become LOCAL_DEST (same rules as push, reversed); errors raise."""
    reach = reach or Reach.ssh(conn)
    transfers = reach.transfers
    normalize_bwlimit(options)
    require_local_tools()
    src = normalize_remote_path(remote_src)
    t0 = time.monotonic()
    with reach.session(host) as remote:
        facts = parse_source_probe(remote.run(source_probe_command(src), what="inspect source").stdout)
        if facts.kind == "none":
            raise MigrateError(f"{remote.target.alias}:{remote_src} not found",
                               hint="check the path; nothing was copied")
        if facts.rsync_version == (0, 0, 0):
            raise MigrateError(f"{remote.target.alias} has no rsync",
                               hint="install it there (push-data --install-rsync)")
        dest = normalize_local_path(local_dest)
        [m] = resolve_mapping([(remote_src, facts.kind == "dir", facts.real_name or os.path.basename(src))], dest,
                              into=options.into, dest_is_dir=os.path.isdir(dest))
        where = f"{remote.target.alias}:"
        ui.info(f"{where}{m.source_arg} -> {m.landing}" + (" (contents)" if m.mode == "contents" else ""))
        blocker = file_in_the_way(m.dest_arg if m.source_is_dir else (os.path.dirname(m.landing) or "."))
        if blocker:
            raise MigrateError(f"{blocker} is a file; a directory cannot become it"
                               if blocker == os.path.abspath(m.landing)
                               else f"{blocker} is a file, so {m.landing} cannot be created",
                               hint="choose another local DEST; nothing was copied")
        existing = m.landing
        while existing and not os.path.exists(existing):
            existing = os.path.dirname(existing.rstrip("/")) or "."
        free = shutil.disk_usage(existing or ".").free
        if facts.size_bytes > free and not options.dry_run:
            raise MigrateError(f"not enough local space at {existing}: need {ui.human_bytes(facts.size_bytes)}, "
                               f"{ui.human_bytes(free)} free; nothing was copied")
        rsh = rsh_join(remote.openssh_argv()[:-1])
        local_version = transfers.rsync_version()
        owner = local_owner(os.geteuid(), dict(os.environ), preserve=options.preserve_owner)
        opts = RsyncOptions(excludes=list(options.exclude), exclude_from=list(options.exclude_from),
                            delete=options.delete, bwlimit=options.bwlimit, checksum=options.checksum,
                            mkpath=local_version >= (3, 2, 3) and facts.rsync_version >= (3, 2, 3),
                            protect_args=local_version < (3, 2, 4), timeout=options.timeout,
                            chown=f"{owner[0]}:{owner[1]}" if owner else None,
                            checksum_choice="xxh128" if facts.xxh128 and transfers.rsync_xxh128() else None)
        if (not opts.mkpath or owner) and not options.dry_run:
            _makedirs(m.dest_arg if m.source_is_dir else (os.path.dirname(m.landing) or "."), owner)
        src_arg = m.source_arg if facts.kind == "dir" else src
        argv_src = remote_spec(remote, src_arg)

        def build(x: RsyncOptions) -> list[str]:
            return rsync_argv([argv_src], m.dest_arg, rsh, x, stats=True)

        result = DataPushResult(host=remote.target.alias, source=remote_src, dest=m.landing, status="changed",
                                method="rsync")
        if options.dry_run or options.delete:
            stats = transfers.rsync_dry_run(build, opts)
            if options.dry_run:
                plan = HostPlan(host=remote.target.alias, where=where)
                plan.transfers.append(PlannedTransfer(m, "rsync", "rsync (resumable, only differences)", build(opts),
                                                      files=stats.regular_files_transferred,
                                                      bytes=stats.transferred_size,
                                                      label=f"{where}{m.source_arg} -> {m.landing}"))
                for line in plan.lines():
                    ui.info(line)
                ui.info(f"would fetch {stats.regular_files_transferred} file(s), "
                        f"{ui.human_bytes(stats.transferred_size)}")
                result.status, result.files_transferred = "dry run", stats.regular_files_transferred
                result.bytes_sent = stats.transferred_size
                return result
            if stats.deleted and not options.yes:
                for d in stats.deleted[:50]:
                    ui.info(f"  would delete {m.landing.rstrip('/')}/{d}")
                raise MigrateError(f"refusing to delete {len(stats.deleted)} local file(s) without --yes")
        with ui.transfer_progress() as progress:
            board = ProgressBoard(progress)
            task = board.add(f"{remote.target.alias} -> {m.landing}", facts.size_bytes)
            outcome = transfers.run_rsync(build(opts), total_bytes=facts.size_bytes, on_progress=board.callback(task),
                                what=f"rsync from {remote.target.alias}")
            board.finish(task)
    result.files_transferred = outcome.stats.regular_files_transferred
    result.bytes_sent = outcome.stats.transferred_size
    result.wire_bytes = outcome.stats.received_bytes  # a pull: what came over the network to this side
    result.seconds = time.monotonic() - t0
    result.status = "changed" if result.files_transferred else "up to date"
    return result
