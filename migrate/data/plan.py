"""push-data / pull-data as data: options, results, the pure decisions (method, compression,
destination directories, the space refusal) and the plan one host will run, which `--dry-run` prints.

Nothing here touches a host or a file; `migrate.data.push` and `migrate.data.pull` build a plan from
probe answers and execute it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field

from migrate import ui
from migrate.data.mapping import Mapping
from migrate.data.rsync import RsyncOptions
from migrate.errors import MigrateError, UsageError
from migrate.remote import shell
from migrate.units import parse_rate, rate_kib

METHODS = ("auto", "rsync", "parallel", "tar", "stream")
# auto picks a tar stream for a first copy of many small files (measured: benchmarks/push_data.py)
TAR_MIN_FILES = 1000
TAR_MAX_AVG_BYTES = 1 << 20
# first copies at least this big, of 2+ files, go as parallel rsync streams (measured on the 2-core VM,
# docs/performance.md: one AES-GCM rsync is ahead at 256 and 512 MiB, the two tie at 1 GiB)
PARALLEL_MIN_BYTES = 1 << 30
# On a far link a first copy of one file, or of files this big on average, goes as one file stream
# (smaller ones are many: a file stream spends a few processes on the host per file)
STREAM_MIN_AVG_BYTES = 1 << 20
# A round trip this long or longer makes a link "far": there the link, not this machine's CPU, bounds a
# first copy, so bytes count (measured on `sandbox up --link 100mbit/40ms`: docs/performance.md)
FAR_ROUND_TRIP_S = 0.03
SPACE_MARGIN_BYTES = 1 << 20
# rsync sends a tree of at most this many files with its whole list first (--no-inc-recursive): one
# round trip fewer; a bigger tree keeps incremental recursion (files flow while the list is built)
WHOLE_LIST_MAX_FILES = 1000
# A first copy of files this small on average goes by rsync --inplace: no temporary name and rename per
# file (100k x 4 KiB on loopback: 12.39 -> 10.72 s). Bigger files keep --partial-dir, so an unfinished
# one never sits under its own name (there a rename per file costs nothing measurable)
INPLACE_MAX_AVG_BYTES = 1 << 20


@dataclass
class PushDataOptions:
    """Every push-data option (the CLI's defaults)."""

    into: bool = False
    exclude: list[str] = field(default_factory=list)
    exclude_from: list[str] = field(default_factory=list)
    delete: bool = False
    yes: bool = False
    dry_run: bool = False
    relay: bool = True            # several hosts: the first feeds the others over the hosts' network
    bwlimit: str | None = None
    checksum: bool = False
    compress: str = "auto"        # auto | none | zstd
    method: str = "auto"          # auto | rsync | parallel | tar | stream
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
    relayed_bytes: int = 0        # push to several hosts: bytes another host fed it (data/fanout.py)
    fed_via: str = ""             # "this machine" or the host that fed it ("" for pull-data)
    fed_why: str = ""


# -- pure decisions ------------------------------------------------------------------------------
def is_far(round_trip: float | None) -> bool:
    """Whether a measured round trip (seconds; None: not measured) makes the link far."""
    return round_trip is not None and round_trip >= FAR_ROUND_TRIP_S


def refuse_delete_with(method: str, delete: bool) -> None:
    """tar, parallel and file streams only add files: --delete needs rsync."""
    if method in ("tar", "parallel", "stream") and delete:
        raise UsageError(f"--method {method} cannot --delete", hint="use --method rsync")


def choose_method(requested: str, *, remote_rsync: bool, dest_empty: bool, files: int, avg_size: float,
                  delete: bool, checksum: bool, is_dir: bool, bwlimit: bool = False,
                  tar_streams: int = 1, round_trip: float | None = None, tar_zstd: bool = False,
                  file_stream: bool = False, small_files_stream: bool = False) -> tuple[str, str]:
    """(method, reason). auto: tar for a first copy of many small files, parallel rsync streams for a
    first copy of several big files (measured: 1.2-1.3x one rsync on 1 GiB in 4 files), else rsync.
    `tar_streams`: how many tar streams would run (the reason says so). `round_trip`: the link's, when
    measured; on a far link bytes and round trips count more than CPU: small files go as tar streams
    through zstd (`tar_zstd`: zstd on both sides) or else by rsync (tar's 512-byte headers are 12 % more
    bytes at 4 KiB) or, where python3 there writes them (`small_files_stream`), as one file stream (a
    few bytes of header per file, no rsync handshake and goodbyes), and one file, or files of
    STREAM_MIN_AVG_BYTES on average, as one file stream where the host can take one (`file_stream`: GNU
    head or python3 there), else big files by one rsync. `dest_empty`: a first copy (for a single
    file: nothing at its landing path)."""
    how = "one tar stream" if tar_streams <= 1 else f"{tar_streams} tar streams in parallel"
    far = is_far(round_trip)
    link = f"a far link ({(round_trip or 0) * 1000:.0f} ms round trip)"
    if far and tar_zstd:
        how += " through zstd"
    refuse_delete_with(requested, delete)
    if requested == "stream":
        if not file_stream:
            raise MigrateError("--method stream needs python3 or GNU coreutils on the host (its `head -c` reads "
                               "no further than a file's size)", hint="use --method rsync or tar")
        return "stream", "--method stream"
    if not remote_rsync:
        if delete:
            raise MigrateError("--delete needs rsync on the remote side",
                               hint="rerun with --install-rsync, or without --delete")
        return "tar", f"the remote has no rsync: {how} over ssh (rerun with --install-rsync for resume)"
    if requested != "auto":
        return requested, f"--method {requested}"
    first = dest_empty and not delete and not checksum
    if is_dir and first and files >= TAR_MIN_FILES and avg_size <= TAR_MAX_AVG_BYTES:
        if far and not tar_zstd and small_files_stream:
            return "stream", (f"first copy of {files} small files over {link} without zstd on both sides: one "
                              "file stream, python3 there writing the files (a few bytes of header per file, "
                              "where tar spends 512; no rsync handshake and goodbyes)")
        if far and not tar_zstd:
            return "rsync", (f"first copy of {files} small files over {link} without zstd on both sides: rsync "
                             "(fewer bytes than tar's 512-byte headers)")
        if far:
            return "tar", f"first copy of {files} small files over {link}: {how}"
        return "tar", f"first copy of {files} small files: {how} (no per-file round trips)"
    if far and first and file_stream and (not is_dir or avg_size >= STREAM_MIN_AVG_BYTES):
        what = f"{files} files, {ui.human_bytes(int(files * avg_size))}" if is_dir else \
            f"a {ui.human_bytes(int(avg_size))} file"
        return "stream", (f"first copy of {what} over {link}: one file stream (the link is the limit; one exec "
                          "instead of rsync's handshake round trips)")
    if is_dir and first and not bwlimit and files >= 2 and files * avg_size >= PARALLEL_MIN_BYTES:
        total = ui.human_bytes(int(files * avg_size))
        if far:
            return "rsync", f"first copy of {files} files, {total} over {link}: one rsync (the link is the limit)"
        return "parallel", f"first copy of {files} files, {total}: parallel rsync streams"
    return "rsync", "rsync (resumable, only differences)"


def single_rsync_options(opts: RsyncOptions, *, is_dir: bool, files: int, size: int,
                         first_copy: bool) -> RsyncOptions:
    """One rsync's options for one source: a small tree's whole list first (WHOLE_LIST_MAX_FILES), and
    on a first copy of small files (INPLACE_MAX_AVG_BYTES) --inplace. An interrupted --inplace copy
    leaves its unfinished file (0600) under its own name; DEST is then no longer empty, so the rerun's
    rsync goes by --partial-dir and takes that file as the basis: only the rest is sent."""
    return dataclasses.replace(opts, whole_list=is_dir and files <= WHOLE_LIST_MAX_FILES,
                               inplace=first_copy and files > 0 and size / files < INPLACE_MAX_AVG_BYTES)


def destination_dirs(plans: list[tuple[Mapping, str]], *, mkpath: bool) -> list[str]:
    """Remote directories to create (`mkdir -p`, once) before anything is sent: every missing parent
    when rsync has no --mkpath, and always the destination of parallel rsync streams: several rsyncs
    creating it at once race (`mkdir "DEST/" failed: File exists`). Tar streams make their own
    (`mkdir -p DEST && tar ...`: the directories go first, in one stream, before the parallel ones), and
    so do file streams (each file's `.migrate-partial/` is made with its parents)."""
    dirs = set()
    for m, method in plans:
        if (method == "tar" and m.source_is_dir) or method == "stream":
            continue
        if m.source_is_dir and (not mkpath or method == "parallel"):
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


def rsync_supports_zstd(version: tuple[int, int, int]) -> bool:
    return version >= (3, 2, 0)


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


def bwlimit_kib(value: str | None) -> int | None:
    """--bwlimit in KiB/s, as rsync takes it (the one rate grammar: 500, 500k, 10M, 100mbit), None when not given."""
    if not value:
        return None
    return rate_kib(parse_rate(value))


def normalize_bwlimit(options: PushDataOptions) -> None:
    """Validate --bwlimit and hand rsync a plain KiB/s number (rsync reads no bit rates)."""
    kib = bwlimit_kib(options.bwlimit)
    options.bwlimit = str(kib) if kib else None


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


@dataclass
class RemoteChange:
    """One command that changes the host, as it will run."""

    command: str
    root: bool = False
    why: str = ""


@dataclass
class PlannedTransfer:
    """One source to one host: the mapping, the method and why, and the exact command line."""

    mapping: Mapping
    method: str                   # rsync | parallel | tar
    reason: str
    argv: list[str]               # rsync's argv, or the ssh argv of a tar/cat stream
    remote_command: str = ""      # what a tar/cat stream runs on the host
    files: int = 0
    bytes: int = 0
    label: str = ""               # how the mapping reads (default: `SRC -> host:LANDING`)


@dataclass
class HostPlan:
    """What push-data (or pull-data) will do on one host, decided before anything changes."""

    host: str
    where: str                    # "alias:" for messages
    transfers: list[PlannedTransfer] = field(default_factory=list)
    changes: list[RemoteChange] = field(default_factory=list)   # mkdir, rm of partials, rsync install

    def lines(self) -> list[str]:
        """The plan as `--dry-run` prints it: one line per remote change, two per transfer (what goes
        where, by which method and why; then the exact command line)."""
        out = []
        for c in self.changes:
            out.append(f"would run{' as root' if c.root else ''}: {c.command}" + (f"  ({c.why})" if c.why else ""))
        for t in self.transfers:
            label = t.label or f"{t.mapping.source} -> {self.where}{t.mapping.landing}"
            out.append(f"{label} via {t.method}: {t.reason}")
            cmd = shell.join(t.argv) + (f" {shell.quote(t.remote_command)}" if t.remote_command else "")
            out.append(f"  $ {cmd}")
        return out
