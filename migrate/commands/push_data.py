"""`migrate push-data SRC... HOST:DEST` and `migrate pull-data HOST:SRC DEST`.

Order of work per host: resolve and print the mapping -> preflight (source exists, remote rsync,
writable, free space; nothing moves before all of it passes) -> dry run or deletion check ->
transfer (rsync, parallel rsync shards, or a tar stream) with one progress bar -> summary.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.data import filelist
from migrate.data.mapping import Mapping, normalize_local_path, normalize_remote_path, resolve_mapping
from migrate.data.remote import (
    DestFacts,
    dest_probe_command,
    parse_dest_probe,
    parse_partial_probe,
    parse_source_probe,
    partial_probe_command,
    source_probe_command,
    tar_extract_command,
)
from migrate.data.rsync import RsyncOptions, rsh_join, rsync_argv
from migrate.data.transfer import (
    RunOutcome,
    require_local_tools,
    rsync_dry_run,
    run_parallel_rsync,
    run_rsync,
    run_tar_streams,
    stream_file,
)
from migrate.errors import MigrateError, UsageError
from migrate.remote import shell
from migrate.remote.hosts import ConnectOptions, HostSpec
from migrate.remote.openssh import OpenSshSession
from migrate.remote.parallel import for_each_host

METHODS = ("auto", "rsync", "parallel", "tar")
# auto picks a tar stream for a first copy of many small files (measured: benchmarks/push_data.py)
TAR_MIN_FILES = 1000
TAR_MAX_AVG_BYTES = 1 << 20
PARALLEL_MIN_BYTES = 256 << 20  # first copies at least this big, of 2+ files, go as parallel rsync streams
SPACE_MARGIN_BYTES = 1 << 20


@dataclass
class PushDataOptions:
    """Every push-data option (the CLI's defaults)."""

    into: bool = False
    exclude: list[str] = field(default_factory=list)
    exclude_from: list[str] = field(default_factory=list)
    delete: bool = False
    yes: bool = False
    dry_run: bool = False
    bwlimit: str | None = None
    checksum: bool = False
    compress: str = "auto"        # auto | none | zstd
    method: str = "auto"          # auto | rsync | parallel | tar
    streams: int = 4
    sudo: bool = False
    install_rsync: bool = False
    timeout: int | None = None
    drop_partial: bool = False    # delete kept partial files (.migrate-partial/) at DEST before sending
    preserve_owner: bool = False  # pull as root: keep the remote uid/gid


@dataclass
class DataPushResult:
    """What happened to one source on one host."""

    host: str
    source: str
    dest: str
    status: str                   # "up to date" | "changed" | "failed" | "dry run"
    files_transferred: int = 0
    bytes_sent: int = 0           # size of the files that were (re)sent (pull: fetched)
    seconds: float = 0.0
    error: str | None = None
    method: str = ""
    wire_bytes: int = 0           # bytes that crossed the network towards the receiver (push: sent, pull: received)


# -- pure decisions ------------------------------------------------------------------------------
def choose_method(requested: str, *, remote_rsync: bool, dest_empty: bool, files: int, avg_size: float,
                  delete: bool, checksum: bool, is_dir: bool, bwlimit: bool = False,
                  tar_streams: int = 1) -> tuple[str, str]:
    """(method, reason). auto: tar for a first copy of many small files, parallel rsync streams for a
    first copy of several big files (measured: 1.2-1.3x one rsync on 1 GiB in 4 files), else rsync.
    `tar_streams`: how many tar streams would run (the reason says so)."""
    how = "one tar stream" if tar_streams <= 1 else f"{tar_streams} tar streams in parallel"
    if not remote_rsync:
        if delete:
            raise MigrateError("--delete needs rsync on the remote side",
                               hint="rerun with --install-rsync, or without --delete")
        return "tar", f"the remote has no rsync: {how} over ssh (rerun with --install-rsync for resume)"
    if requested != "auto":
        if requested in ("tar", "parallel") and delete:
            raise UsageError(f"--method {requested} cannot --delete", hint="use --method rsync")
        return requested, f"--method {requested}"
    if is_dir and dest_empty and not delete and not checksum and files >= TAR_MIN_FILES \
            and avg_size <= TAR_MAX_AVG_BYTES:
        return "tar", f"first copy of {files} small files: {how} (no per-file round trips)"
    if is_dir and dest_empty and not delete and not checksum and not bwlimit and files >= 2 \
            and files * avg_size >= PARALLEL_MIN_BYTES:
        total = ui.human_bytes(int(files * avg_size))
        return "parallel", f"first copy of {files} files, {total}: parallel rsync streams"
    return "rsync", "rsync (resumable, only differences)"


def destination_dirs(plans: list[tuple[Mapping, str]], *, mkpath: bool) -> list[str]:
    """Remote directories to create (`mkdir -p`, once) before anything is sent: every missing parent
    when rsync has no --mkpath, and always the destination of parallel and tar streams: several
    streams creating it at once race (`mkdir "DEST/" failed: File exists`)."""
    dirs = set()
    for m, method in plans:
        if m.source_is_dir and (not mkpath or method in ("parallel", "tar")):
            dirs.add(m.dest_arg)
        elif not mkpath:
            dirs.add(os.path.dirname(m.landing.rstrip("/")) or ".")
    return sorted(dirs)


def should_compress(mode: str, hostname: str, both_zstd: bool) -> bool:
    """auto: zstd only off-LAN (rsync already skips compressed file types); never on loopback."""
    if mode == "none":
        return False
    if mode == "zstd":
        return True
    if not both_zstd:
        return False
    try:
        ip = ipaddress.ip_address(hostname)
    except ValueError:
        return hostname not in ("localhost",) and not hostname.endswith((".local", ".lan"))
    return not (ip.is_loopback or ip.is_private or ip.is_link_local)


def _rsync_supports_zstd(version: tuple[int, int, int]) -> bool:
    return version >= (3, 2, 0)


@functools.lru_cache(maxsize=1)
def _local_rsync_version() -> tuple[int, int, int]:
    from migrate import local
    from migrate.data.rsync import parse_version
    return parse_version(local.run(["rsync", "--version"], what="rsync --version").stdout)


# rsync >= 3.2.0 on both sides resumes a file kept in --partial-dir by updating that partial in place
# (rsync NEWS 3.2.0); older ones build a new copy next to it and delete the partial only at the end.
IN_PLACE_PARTIAL_RSYNC = (3, 2, 0)


def resume_in_place(local_version: tuple[int, int, int], remote_version: tuple[int, int, int]) -> bool:
    """Whether a resumed partial grows in place (so its bytes are already on the disk) or is copied."""
    return min(local_version, remote_version) >= IN_PLACE_PARTIAL_RSYNC


def space_refusal(where: str, need: int, margin: int, free: int, partials: list[tuple[str, int]], *, alias: str,
                  dropping: bool = False, in_place: bool = True) -> tuple[str, str]:
    """(message, hint) when DEST lacks space. Kept partial files of an interrupted transfer are named
    with the way out: resumed in place (`in_place`) their bytes already count as there; otherwise a
    resume builds a new copy next to each one, and deleting them (--drop-partial) frees their space."""
    h = ui.human_bytes
    message = f"not enough space on {where}: need {h(need)} (+{h(margin)} margin), {h(free)} free"
    hint = "free space there, choose another DEST, or --exclude what is not needed"
    if partials:
        held = sum(size for _, size in partials)
        paths = partials[0][0] + (f" and {len(partials) - 1} more" if len(partials) > 1 else "")
        rm = f"ssh {alias} {shell.join(['rm', '-rf', '--', *(p for p, _ in partials)])}"
        if dropping:
            message += f" even after deleting the {h(held)} of unfinished files in {paths}"
        elif in_place:
            message += (f" besides the {h(held)} of unfinished files of an interrupted transfer in {paths} "
                        "(resumed in place, so counted as already there)")
            hint = (f"free space there, choose another DEST, or --exclude what is not needed (to start those "
                    f"files over instead: --drop-partial, or {rm})")
        else:
            message += (f", and {h(held)} more is held by the unfinished files of an interrupted transfer in "
                        f"{paths} (an rsync older than 3.2.0 on one side resumes each file as a new copy next "
                        "to its partial)")
            if need + margin <= free + held:
                hint = (f"rerun with --drop-partial to delete them and send those files whole (or delete them "
                        f"yourself: {rm}), or free {h(need + margin - free)} more there to resume")
            else:
                hint = "free space there (--drop-partial also deletes the unfinished files), or choose another DEST"
    return message + "; nothing was sent", hint


# -- per host ------------------------------------------------------------------------------------
@dataclass
class _Source:
    typed: str
    path: str
    is_dir: bool
    real_name: str


def _local_sources(sources: list[str]) -> list[_Source]:
    out = []
    for s in sources:
        if not os.path.lexists(s):
            raise MigrateError(f"source {s!r} not found", hint="check the path; nothing was sent")
        if not os.access(s, os.R_OK):
            raise MigrateError(f"source {s!r} is not readable")
        real = os.path.basename(os.path.abspath(s.rstrip("/") or "/"))
        out.append(_Source(typed=s, path=normalize_local_path(s), is_dir=os.path.isdir(s), real_name=real))
    return out


def _where(remote: OpenSshSession) -> str:
    return f"{remote.target.alias}:"


def _remote_spec(remote: OpenSshSession, path: str) -> str:
    host = remote.target.alias
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


class _HostPush:
    """One host's push: preflight, then transfer, reporting through `on_progress`."""

    def __init__(self, host: str, sources: list[_Source], dest: str, conn: ConnectOptions,
                 options: PushDataOptions, progress: ProgressBoard) -> None:
        self.host, self.sources, self.dest, self.conn, self.o = host, sources, dest, conn, options
        self.progress = progress

    def run(self) -> list[DataPushResult]:
        # size the sources while the connection is being set up
        sizer = ThreadPoolExecutor(max_workers=1)
        future = sizer.submit(lambda: {s.path: filelist.quick_size(s.path) for s in self.sources})
        try:
            with OpenSshSession(self.host, self.conn) as remote:
                self.sizes = future.result()
                return self._run(remote)
        finally:
            sizer.shutdown(wait=True)

    def _probe(self, remote: OpenSshSession) -> DestFacts:
        return parse_dest_probe(remote.run(dest_probe_command(self.dest), what="inspect destination").stdout)

    def _run(self, remote: OpenSshSession) -> list[DataPushResult]:
        o = self.o
        facts = self._probe(remote)
        mappings = resolve_mapping([(s.typed, s.is_dir, s.real_name) for s in self.sources], self.dest,
                                   into=o.into, dest_is_dir=facts.kind == "dir")
        for m in mappings:
            ui.info(f"{remote.target.alias}: {m.describe(_where(remote))}")
        if facts.kind == "file" and any(m.source_is_dir for m in mappings) and not o.into:
            raise MigrateError(f"{remote.target.alias}:{self.dest} is a file; a directory cannot become it",
                               hint="choose another DEST, or --into a directory")
        rsync_path = None
        if o.sudo:
            if facts.sudo == "password":
                raise MigrateError(f"--sudo needs passwordless sudo on {remote.target.alias} (rsync cannot answer "
                                   "a password prompt)", hint="write somewhere you own, or ask for NOPASSWD sudo")
            if facts.sudo == "none":
                raise MigrateError(f"{remote.target.user} has no sudo on {remote.target.alias}")
            if facts.sudo == "nopasswd":
                rsync_path = "sudo -n rsync"
        elif not facts.writable:
            raise MigrateError(f"{remote.target.alias}:{facts.existing} is not writable by {remote.target.user}, "
                               f"so {self.dest} cannot be created there",
                               hint="choose a directory you own (e.g. under ~), or pass --sudo")
        if not facts.has_rsync and o.install_rsync:
            ui.step(f"{remote.target.alias}: installing rsync (apt-get install rsync)")
            install = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=120 rsync"
            self._as_root(remote, facts, f"{install} || (apt-get update -q && {install})", "install rsync",
                          timeout=900)
            facts = self._probe(remote)
        local_version = _local_rsync_version()
        both_zstd = _rsync_supports_zstd(local_version) and _rsync_supports_zstd(facts.rsync_version)
        compress = should_compress(o.compress, remote.target.hostname, both_zstd)
        if o.compress == "zstd" and not both_zstd:
            raise MigrateError("--compress zstd needs rsync >= 3.2 on both sides", hint="use --compress auto")
        rsh = rsh_join(remote.openssh_argv()[:-1])
        mkpath = local_version >= (3, 2, 3) and facts.rsync_version >= (3, 2, 3)
        base_opts = RsyncOptions(excludes=list(o.exclude), exclude_from=list(o.exclude_from), delete=o.delete,
                                 bwlimit=o.bwlimit, checksum=o.checksum, compress=compress, mkpath=mkpath,
                                 rsync_path=rsync_path, protect_args=local_version < (3, 2, 4), timeout=o.timeout)
        # preflight: methods and space, for every mapping, before anything moves
        plans = []
        need = 0
        self.tar_streams = max(1, min(o.streams, facts.cpus or 1))
        for src, m in zip(self.sources, mappings):
            summary = None
            files, size = self.sizes[src.path]  # upper bound: before excludes
            method, reason = choose_method(o.method, remote_rsync=facts.has_rsync,
                                           dest_empty=facts.kind == "none" or facts.empty, files=files,
                                           avg_size=size / files if files else 0, delete=o.delete,
                                           checksum=o.checksum, is_dir=src.is_dir, bwlimit=bool(o.bwlimit),
                                           tar_streams=self.tar_streams if src.is_dir else 1)
            if method in ("tar", "parallel") and not src.is_dir and facts.has_rsync:
                method, reason = "rsync", "a single file: rsync"
            if method in ("tar", "parallel") and src.is_dir:
                summary = filelist.list_source(src.path, o.exclude, o.exclude_from)  # same filters as rsync
                files, size = summary.files, summary.bytes
            plans.append((src, m, summary, files, size, method, reason))
            need += size
        self._check_space(remote, facts, need, rsh, base_opts, plans)
        parents = destination_dirs([(m, method) for _, m, _, _, _, method, _ in plans], mkpath=mkpath)
        if parents and not o.dry_run:
            mkdirs = " && ".join(f"mkdir -p {shell.quote(p)}" for p in parents)
            if o.sudo:
                self._as_root(remote, facts, mkdirs, "create destination directories")
            else:
                remote.run(mkdirs, what="create destination directories")
        results = []
        for src, m, summary, files, size, method, reason in plans:
            results.append(self._one(remote, facts, rsh, base_opts, src, m, summary, files, size, method, reason))
        return results

    def _as_root(self, remote: OpenSshSession, facts: DestFacts, command: str, what: str,
                 timeout: float | None = None) -> None:
        """Root commands go over the OpenSSH session; a sudo password needs the paramiko layer's prompt."""
        if facts.sudo == "password":
            from migrate.remote.connection import connect

            with connect(self.host, self.conn) as r:
                r.run(command, sudo=True, what=what, timeout=timeout)
        else:
            remote.run(command, sudo=True, sudo_mode=facts.sudo, what=what, timeout=timeout)

    def _check_space(self, remote: OpenSshSession, facts: DestFacts, need: int, rsh: str, opts: RsyncOptions,
                     plans: list) -> None:
        if self.o.dry_run:
            return
        partials = self._partials(remote, plans) if self.o.drop_partial and facts.kind != "none" else []
        if facts.free_bytes is None:
            if partials:
                self._drop_partials(remote, facts, partials)
            return
        free = facts.free_bytes
        if partials:
            free += sum(size for _, size in partials)  # what deleting them gives back
        margin = need // 100 + SPACE_MARGIN_BYTES
        if need + margin > free and facts.has_rsync and not (facts.kind == "none" or facts.empty):
            # much may already be there: ask rsync for the exact bytes it would send
            need = 0
            for src, m, *_ in plans:
                need += rsync_dry_run(lambda x, src=src, m=m: rsync_argv(
                    [src.path.rstrip("/") + "/" if src.is_dir else src.path], _remote_spec(remote, m.dest_arg),
                    rsh, x, stats=True), opts).transferred_size
            margin = need // 100 + SPACE_MARGIN_BYTES
        if need + margin <= free:
            if partials:
                self._drop_partials(remote, facts, partials)
            return
        in_place = resume_in_place(_local_rsync_version(), facts.rsync_version)
        if not self.o.drop_partial and facts.kind != "none" and facts.has_rsync:
            # an interrupted transfer (a full disk, say) keeps its unfinished files in .migrate-partial/
            partials = self._partials(remote, plans)
            held = sum(size for _, size in partials)
            if partials and in_place and need + margin <= free + held:
                ui.info(f"{remote.target.alias}: resuming {ui.human_bytes(held)} of unfinished files in "
                        f"{partials[0][0]}" + (f" and {len(partials) - 1} more" if len(partials) > 1 else "")
                        + " in place: only the rest needs space")
                return
        message, hint = space_refusal(f"{remote.target.alias}:{facts.existing}", need, margin, facts.free_bytes,
                                      partials, alias=remote.target.alias, dropping=self.o.drop_partial,
                                      in_place=in_place)
        raise MigrateError(message, hint=hint)

    def _partials(self, remote: OpenSshSession, plans: list) -> list[tuple[str, int]]:
        """Kept partial dirs (unfinished files of an interrupted rsync) where these mappings land."""
        trees = [m.landing for _, m, *_ in plans if m.source_is_dir]
        dirs = [os.path.dirname(m.landing.rstrip("/")) or "." for _, m, *_ in plans if not m.source_is_dir]
        out = remote.run(partial_probe_command(trees, dirs), what="look for partial files").stdout
        return parse_partial_probe(out)

    def _drop_partials(self, remote: OpenSshSession, facts: DestFacts, partials: list[tuple[str, int]]) -> None:
        for path, size in partials:
            ui.info(f"{remote.target.alias}: --drop-partial: deleting {path} ({ui.human_bytes(size)} of unfinished "
                    "files); they are sent whole")
        command = shell.join(["rm", "-rf", "--", *(p for p, _ in partials)])
        if self.o.sudo:
            self._as_root(remote, facts, command, "delete partial files")
        else:
            remote.run(command, what="delete partial files")

    def _one(self, remote: OpenSshSession, facts: DestFacts, rsh: str, opts: RsyncOptions, src: _Source, m: Mapping,
             summary: filelist.SourceSummary | None, files: int, size: int, method: str,
             reason: str) -> DataPushResult:
        o = self.o
        alias = remote.target.alias
        src_arg = (src.path.rstrip("/") or "/") + ("/" if src.is_dir and src.path.rstrip("/") else "")
        dest_spec = _remote_spec(remote, m.dest_arg)

        def build(x: RsyncOptions) -> list[str]:
            return rsync_argv([src_arg], dest_spec, rsh, x, stats=True)

        result = DataPushResult(host=self.host, source=src.typed, dest=m.landing, status="changed", method=method)
        if o.dry_run or o.delete:
            if not facts.has_rsync:
                ui.info(f"{alias}: would stream {files} file(s), {ui.human_bytes(size)} with tar ({reason})")
                result.status, result.files_transferred, result.bytes_sent = "dry run", files, size
                return result
            stats = rsync_dry_run(build, opts)
            if o.dry_run:
                ui.info(f"{alias}: would transfer {stats.regular_files_transferred} of {stats.files} file(s), "
                        f"{ui.human_bytes(stats.transferred_size)} via {method} ({reason})"
                        + (f"; would delete {len(stats.deleted)}" if stats.deleted else ""))
                for name in stats.deleted[:50]:
                    ui.info(f"  would delete {m.landing.rstrip('/')}/{name}")
                result.status = "dry run"
                result.files_transferred, result.bytes_sent = stats.regular_files_transferred, stats.transferred_size
                return result
            if stats.deleted:
                self._confirm_delete(alias, m, stats.deleted)
        if method == "rsync":
            ui.debug(f"{alias}: {reason}")
        else:
            ui.info(f"{alias}: {reason}")
        task = self.progress.add(f"{alias} {os.path.basename(src.typed.rstrip('/')) or src.typed}", size)
        cb = self.progress.callback(task)
        if method == "tar":
            outcome = self._tar(remote, facts, src, m, summary, cb)
        elif method == "parallel":
            assert summary is not None
            outcome = run_parallel_rsync(src.path, dest_spec, rsh, opts, summary.entries, max(1, o.streams),
                                         on_progress=cb)
        else:
            outcome = run_rsync(build(opts), total_bytes=size, on_progress=cb, what=f"rsync to {alias}")
        self.progress.finish(task)
        result.files_transferred = outcome.stats.regular_files_transferred
        result.bytes_sent = outcome.stats.transferred_size
        result.wire_bytes = outcome.stats.sent_bytes
        result.seconds = outcome.seconds
        result.status = "changed" if outcome.stats.regular_files_transferred or outcome.stats.deleted \
            or method == "tar" else "up to date"
        return result

    def _tar(self, remote: OpenSshSession, facts: DestFacts, src: _Source, m: Mapping,
             summary: filelist.SourceSummary | None, cb) -> RunOutcome:
        sudo_prefix = "sudo -n " if self.o.sudo and facts.sudo == "nopasswd" else ""
        ssh = remote.openssh_argv()
        if not src.is_dir:
            parent = os.path.dirname(m.landing.rstrip("/")) or "."
            tmp = f"{parent}/.migrate-partial-{os.path.basename(m.landing)}"
            mode = oct(os.stat(src.path).st_mode & 0o7777)[2:]
            mtime = int(os.stat(src.path).st_mtime)
            q = shell.quote
            cmd = (f"{sudo_prefix}mkdir -p {q(parent)} && {sudo_prefix}sh -c 'cat > \"$1\"' sh {q(tmp)} && "
                   f"{sudo_prefix}chmod {mode} {q(tmp)} && {sudo_prefix}touch -d @{mtime} {q(tmp)} && "
                   f"{sudo_prefix}mv -f {q(tmp)} {q(m.landing)}")
            return stream_file(src.path, ssh, cmd, on_progress=cb)
        if summary is None:
            summary = filelist.list_source(src.path, self.o.exclude, self.o.exclude_from)
        bw = _bwlimit_kib(self.o.bwlimit)
        return run_tar_streams(src.path, summary.entries, ssh,
                               tar_extract_command(m.landing, decompress=None, sudo_prefix=sudo_prefix),
                               self.tar_streams, on_progress=cb, bwlimit_kib=bw)

    def _confirm_delete(self, alias: str, m: Mapping, deleted: list[str]) -> None:
        listing = [f"{m.landing.rstrip('/')}/{d}" for d in deleted]
        ui.warn(f"{alias}: --delete would remove {len(listing)} file(s) that are not in {m.source}:")
        for line in listing[:50]:
            ui.info(f"  {line}")
        if len(listing) > 50:
            ui.info(f"  ... and {len(listing) - 50} more")
        if self.o.yes:
            return
        if not sys.stdin.isatty():
            raise MigrateError(f"refusing to delete {len(listing)} file(s) on {alias} without confirmation",
                               hint="review the list above, then rerun with --yes")
        if not click.confirm(f"Delete these {len(listing)} file(s) on {alias}?", default=False, err=True):
            raise MigrateError("deletion not confirmed; nothing was changed")


def _bwlimit_kib(value: str | None) -> int | None:
    if not value:
        return None
    units = {"k": 1, "m": 1024, "g": 1024 * 1024}
    v = value.strip().lower().rstrip("b")
    mult = units.get(v[-1])
    try:
        return int(float(v[:-1]) * mult) if mult else int(float(v))
    except ValueError as exc:
        raise UsageError(f"bad --bwlimit {value!r}", hint="KiB/s as a number, or with a suffix: 500k, 10m") from exc


class ProgressBoard:
    """One progress bar per transfer, shared by all hosts (thread-safe through rich)."""

    def __init__(self, progress) -> None:
        self.p = progress

    def add(self, label: str, total: int) -> int:
        return self.p.add_task(label, total=max(total, 1)) if self.p else 0

    def callback(self, task: int):
        def cb(done: int, total: int) -> None:
            if self.p:
                self.p.update(task, completed=done, total=max(total, 1))
        return cb

    def finish(self, task: int) -> None:
        if self.p:
            t = self.p.tasks[[x.id for x in self.p.tasks].index(task)]
            self.p.update(task, completed=t.total)


def push_data(sources: list[str], hosts: list[str], dest: str, conn: ConnectOptions,
              options: PushDataOptions) -> list[DataPushResult]:
    """Push SOURCES to DEST on every host (in parallel); one failing host never stops the others."""
    if options.method not in METHODS:
        raise UsageError(f"unknown --method {options.method!r}", hint=f"one of {', '.join(METHODS)}")
    if options.compress not in ("auto", "none", "zstd"):
        raise UsageError(f"unknown --compress {options.compress!r}", hint="auto, none or zstd")
    _bwlimit_kib(options.bwlimit)
    for path in options.exclude_from:
        if not os.path.isfile(path):
            raise MigrateError(f"--exclude-from file {path!r} not found")
    require_local_tools()
    srcs = _local_sources(sources)
    dest = normalize_remote_path(dest)
    for h in hosts:
        HostSpec.parse(h)
    with ui.transfer_progress() as progress:
        board = ProgressBoard(progress if not options.dry_run else None)
        outcomes = for_each_host(hosts, lambda h: _HostPush(h, srcs, dest, conn, options, board).run())
    results: list[DataPushResult] = []
    for out in outcomes:
        if out.ok:
            results.extend(out.value or [])
        else:
            results.append(DataPushResult(host=out.host, source=", ".join(sources), dest=dest, status="failed",
                                          error=out.error))
    return results


# -- pull ----------------------------------------------------------------------------------------
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


def pull_data(host: str, remote_src: str, local_dest: str, conn: ConnectOptions,
              options: PushDataOptions) -> DataPushResult:
    """Fetch HOST:SRC so that its contents become LOCAL_DEST (same rules as push, reversed)."""
    require_local_tools()
    src = normalize_remote_path(remote_src)
    t0 = time.monotonic()
    with OpenSshSession(host, conn) as remote:
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
        existing = m.landing
        while existing and not os.path.exists(existing):
            existing = os.path.dirname(existing.rstrip("/")) or "."
        free = shutil.disk_usage(existing or ".").free
        if facts.size_bytes > free and not options.dry_run:
            raise MigrateError(f"not enough local space at {existing}: need {ui.human_bytes(facts.size_bytes)}, "
                               f"{ui.human_bytes(free)} free; nothing was copied")
        rsh = rsh_join(remote.openssh_argv()[:-1])
        local_version = _local_rsync_version()
        owner = local_owner(os.geteuid(), dict(os.environ), preserve=options.preserve_owner)
        opts = RsyncOptions(excludes=list(options.exclude), exclude_from=list(options.exclude_from),
                            delete=options.delete, bwlimit=options.bwlimit, checksum=options.checksum,
                            mkpath=local_version >= (3, 2, 3) and facts.rsync_version >= (3, 2, 3),
                            protect_args=local_version < (3, 2, 4), timeout=options.timeout,
                            chown=f"{owner[0]}:{owner[1]}" if owner else None)
        if (not opts.mkpath or owner) and not options.dry_run:
            _makedirs(m.dest_arg if m.source_is_dir else (os.path.dirname(m.landing) or "."), owner)
        src_arg = m.source_arg if facts.kind == "dir" else src
        argv_src = _remote_spec(remote, src_arg)

        def build(x: RsyncOptions) -> list[str]:
            return rsync_argv([argv_src], m.dest_arg, rsh, x, stats=True)

        result = DataPushResult(host=remote.target.alias, source=remote_src, dest=m.landing, status="changed",
                                method="rsync")
        if options.dry_run or options.delete:
            stats = rsync_dry_run(build, opts)
            if options.dry_run:
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
            outcome = run_rsync(build(opts), total_bytes=facts.size_bytes, on_progress=board.callback(task),
                                what=f"rsync from {remote.target.alias}")
            board.finish(task)
    result.files_transferred = outcome.stats.regular_files_transferred
    result.bytes_sent = outcome.stats.transferred_size
    result.wire_bytes = outcome.stats.received_bytes  # a pull: what came over the network to this side
    result.seconds = time.monotonic() - t0
    result.status = "changed" if result.files_transferred else "up to date"
    return result


# -- CLI -----------------------------------------------------------------------------------------
def split_host_path(text: str) -> tuple[str, str]:
    """`HOST:PATH` -> (HOST, PATH); `[v6]:PATH` works; a missing ':' is a usage error."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if sep and rest.startswith(":"):
            return host, rest[1:]
    host, sep, path = text.partition(":")
    if not sep or not host or "/" in host:
        raise UsageError(f"{text!r} is not HOST:PATH", hint="e.g. alice@gpu-box:/data/cifar10")
    return host, path


def _transfer_options(f):
    opts = [
        click.option("--into", is_flag=True, help="Put each source inside DEST instead of making it DEST."),
        click.option("--exclude", multiple=True, metavar="PATTERN", help="Leave out matching files (repeatable)."),
        click.option("--exclude-from", multiple=True, type=click.Path(), metavar="FILE",
                     help="Read exclude patterns from FILE (repeatable)."),
        click.option("--delete", is_flag=True,
                     help="Delete files at DEST that are not in SRC (lists them and asks first; --yes to skip)."),
        click.option("-y", "--yes", is_flag=True, help="Do not ask before deleting (for scripts)."),
        click.option("-n", "--dry-run", is_flag=True, help="Show the mapping, file count and bytes; change nothing."),
        click.option("--bwlimit", metavar="RATE", help="Bandwidth cap in KiB/s (or 500k, 10m)."),
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
@click.option("--hosts", metavar="H1,H2", help="Push to these hosts too (in parallel); DEST may then be a bare path.")
@_transfer_options
@click.option("--compress", type=click.Choice(["auto", "none", "zstd"]), default="auto", show_default=True,
              help="auto: zstd only off the local network (rsync skips already-compressed file types).")
@click.option("--method", type=click.Choice(METHODS), default="auto", show_default=True,
              help="auto: tar streams for a first copy of many small files, --streams parallel rsync streams "
                   "for a first copy of several big files, else rsync.")
@click.option("--streams", type=click.IntRange(1, 32), default=4, show_default=True,
              help="Streams for --method parallel (and tar: at most one per remote core).")
@click.option("--sudo", is_flag=True, help="Write as root (remote rsync via passwordless sudo).")
@click.option("--install-rsync", is_flag=True, help="Install rsync on the host (sudo apt) if it is missing.")
@click.option("--drop-partial", is_flag=True,
              help="Delete the unfinished files an interrupted transfer kept in DEST (.migrate-partial/) and "
                   "send them whole (with an rsync older than 3.2.0 a resume needs room for a second copy).")
@connection_options
def push_command(args: tuple[str, ...], hosts: str | None, conn: ConnectOptions, **kw) -> None:
    """Copy files and datasets to a host with rsync: resumable, with progress, no trailing-slash trap.

    \b
    migrate push-data ./cifar gpu:/data/cifar       contents of ./cifar become /data/cifar
    migrate push-data ./cifar gpu:/data --into      ./cifar lands at /data/cifar
    migrate push-data a.txt b/ gpu:/srv/            several sources always go inside DEST
    migrate push-data ./ckpt gpu:/data/ckpt --hosts gpu2,gpu3

    The resolved mapping is printed before anything moves. Preflight checks the source, the
    remote rsync (else a tar stream), write permission and free space. An interrupted transfer
    resumes when you rerun the same command. Patterns in a `.migrateignore` file in the source
    are excluded (rsync syntax, like .gitignore for the usual cases). All transfers to a host share
    one SSH connection, with AES-GCM preferred where this CPU has AES-NI and no ssh_config sets
    Ciphers; --method auto picks tar streams or parallel rsyncs for first copies (see --method).
    """
    if len(args) < 2 and not hosts:
        raise UsageError("give at least one SRC and HOST:DEST", hint="migrate push-data ./data gpu-box:/data")
    *sources, last = args
    targets: list[str] = []
    if hosts:
        targets = [h.strip() for h in hosts.split(",") if h.strip()]
    if ":" in last and not last.startswith("/"):
        host, dest = split_host_path(last)
        targets.insert(0, host)
    elif hosts:
        dest = last
    else:
        raise UsageError(f"{last!r} is not HOST:DEST", hint="e.g. gpu-box:/data/cifar10 (or use --hosts)")
    if not sources:
        raise UsageError("give at least one SRC")
    options = PushDataOptions(
        into=kw["into"], exclude=list(kw["exclude"]), exclude_from=list(kw["exclude_from"]), delete=kw["delete"],
        yes=kw["yes"], dry_run=kw["dry_run"], bwlimit=kw["bwlimit"], checksum=kw["checksum"],
        compress=kw["compress"], method=kw["method"], streams=kw["streams"], sudo=kw["sudo"],
        install_rsync=kw["install_rsync"], timeout=kw["timeout"], drop_partial=kw["drop_partial"])
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
    for r in results:
        detail = r.error or (f"{r.files_transferred} file(s), {ui.human_bytes(r.bytes_sent)}"
                             + (f" in {r.seconds:.1f}s" if r.seconds else ""))
        rows.append((r.host, r.source, r.dest, r.method or "-", r.status, detail))
    ui.table(None, ["host", "source", "lands at", "method", "result", "detail"], rows)
    for r in results:
        if r.error:
            ui.error(f"{r.host}: {r.error}")
