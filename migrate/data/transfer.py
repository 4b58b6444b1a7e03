"""Executing transfers: rsync with parsed progress, parallel rsync shards, and tar streams over ssh.

Everything here runs local processes (rsync, tar, ssh) whose command lines come from the pure
builders in `migrate.data.rsync` / `migrate.data.remote`. Progress is reported through a callback
`on_progress(done_bytes, total_bytes)`.
"""

from __future__ import annotations

import fcntl
import functools
import io
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, cast

from migrate import local, ui
from migrate.data.filelist import ListedEntry, files_from_bytes, shard_entries
from migrate.data.remote import GuardRefused, guard_refusal
from migrate.data.rsync import (
    DISK_FULL_HINT,
    RESUME_HINT,
    RsyncOptions,
    Stats,
    explain_exit,
    failure_hint,
    parse_progress,
    parse_stats,
    rsync_argv,
)
from migrate.errors import LocalCommandError, MigrateError
from migrate.remote import roundtrips

ProgressCallback = Callable[[int, int], None]
PROGRESS_READ_PAUSE = 0.05  # rsync writes ~80 bytes per file: 50 ms of them fit the 64 KiB pipe many times over
PIPE_BYTES = 1 << 20
_ENV = {**os.environ, "LC_ALL": "C"}


class TransferError(MigrateError):
    """A transfer failed; the message is rsync's exit code said in words, the details list files."""

    def __init__(self, message: str, hint: str | None = None, details: list[str] | None = None,
                 exit_code: int = 1) -> None:
        super().__init__(message, hint)
        self.details = details or []
        self.tool_exit_code = exit_code


@dataclass
class RunOutcome:
    """What one transfer did."""

    stats: Stats
    seconds: float


def _pump_rsync(stream, on_progress_line: Callable[[str], None], other: list[str],
                pause: Callable[[], object] = lambda: time.sleep(PROGRESS_READ_PAUSE)) -> None:
    """Read rsync's stdout: `--info=progress2` prints a line per finished file (100k lines for 100k
    files), so of the progress lines in one read only the newest is parsed and reported; every other
    line (--stats, --itemize-changes) goes to `other`. Progress lines are the ones that start with a
    space and hold a '%' (rsync right-aligns the byte count); stats and itemize lines never do."""
    buf = b""
    while True:
        chunk = stream.read1(1 << 16) if hasattr(stream, "read1") else stream.read(1 << 16)
        if not chunk:
            break
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        latest = None
        for p in parts:
            if not p:
                continue
            if p[:1] == b" " and b"%" in p:
                latest = p
            else:
                other.append(p.decode("utf-8", "replace"))
        if latest is not None:
            on_progress_line(latest.decode("utf-8", "replace"))
        if len(chunk) < 1 << 15:
            pause()  # let lines pile up in the pipe: one wake-up per pause, not per file
    if buf:
        line = buf.decode("utf-8", "replace")
        if buf[:1] == b" " and b"%" in buf:
            on_progress_line(line)
        else:
            other.append(line)


def _wait_or_pause(proc: subprocess.Popen) -> None:
    """The read pause, cut short when rsync exits: its last lines (--stats) come just before it does,
    and a fixed sleep there only made every transfer end up to 50 ms later."""
    try:
        proc.wait(PROGRESS_READ_PAUSE)
    except subprocess.TimeoutExpired:
        pass


def _widen_pipe(stream) -> None:
    """Give rsync's stdout a 1 MiB pipe (Linux; 64 KiB otherwise): between our reads it holds ~13k
    progress lines, so a busy machine that delays the reader never blocks rsync's sender on a write."""
    try:
        fcntl.fcntl(stream.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except (OSError, ValueError, AttributeError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default pipe still works


def run_rsync(argv: list[str], *, total_bytes: int, on_progress: ProgressCallback | None = None,
              what: str = "rsync") -> RunOutcome:
    """Run rsync (with --info=progress2 --stats), stream progress, explain failures."""
    local.require("rsync")
    ui.debug("$ " + " ".join(argv))
    roundtrips.note("exec", "", what)  # the remote rsync: one exec channel
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_ENV)
    assert proc.stdout is not None and proc.stderr is not None  # both are PIPE
    _widen_pipe(proc.stdout)
    err_chunks: list[bytes] = []
    rsync_err = proc.stderr  # a local: mypy keeps its narrowing inside the lambda
    t = threading.Thread(target=lambda: err_chunks.append(rsync_err.read()), daemon=True)
    t.start()
    out_lines: list[str] = []

    def on_line(line: str) -> None:
        p = parse_progress(line)
        if p is None:
            out_lines.append(line)
        elif on_progress:
            on_progress(p.bytes, max(total_bytes, p.bytes))

    try:
        _pump_rsync(proc.stdout, on_line, out_lines, pause=lambda: _wait_or_pause(proc))
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait()
        raise
    t.join()
    stderr = b"".join(err_chunks).decode("utf-8", "replace")
    if code != 0:
        refused = guard_refusal(stderr)  # a guarded rsync whose DEST was not as planned: nothing ran
        if refused is not None:
            raise GuardRefused(refused)
        sentence, details = explain_exit(code, stderr)
        hint = failure_hint(code, stderr)
        if code == 24:  # vanished files: everything else arrived; not fatal
            ui.warn(f"{what}: {sentence}: " + "; ".join(details))
        else:
            raise TransferError(f"{what}: {sentence}" + (f": {details[0]}" if details else ""),
                                hint=hint, details=details, exit_code=code)
    return RunOutcome(stats=parse_stats("\n".join(out_lines)), seconds=time.monotonic() - t0)


def rsync_dry_run(argv_builder: Callable[[RsyncOptions], list[str]], opts: RsyncOptions) -> Stats:
    """Ask rsync what it would do (files, bytes, deletions) without changing anything."""
    dry = RsyncOptions(**{**opts.__dict__, "dry_run": True, "itemize": True})
    argv = argv_builder(dry)
    argv = [a for a in argv if a not in ("--info=progress2",)]
    roundtrips.note("exec", "", "rsync --dry-run")
    proc = local.run(argv, check=False, what="rsync --dry-run", env=_ENV)
    if proc.returncode not in (0, 24):
        sentence, details = explain_exit(proc.returncode, proc.stderr)
        raise TransferError(f"rsync --dry-run: {sentence}" + (f": {details[0]}" if details else ""),
                            details=details, exit_code=proc.returncode)
    return parse_stats(proc.stdout)


def _run_streams(shards: list[list[ListedEntry]], total: int, on_progress: ProgressCallback | None,
                 one: Callable[[int, list[ListedEntry], ProgressCallback], RunOutcome]) -> list[RunOutcome]:
    """Run `one(i, shard, progress)` for every shard in its own thread; sum progress; re-raise the first error."""
    done = [0] * len(shards)
    lock = threading.Lock()
    outcomes: list[RunOutcome] = []
    errors: list[BaseException] = []

    def worker(i: int, shard: list[ListedEntry]) -> None:
        def prog(b: int, _t: int) -> None:
            with lock:
                done[i] = b
                if on_progress:
                    on_progress(min(sum(done), total), total)

        try:
            outcomes.append(one(i, shard, prog))
        except BaseException as exc:  # collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, s), daemon=True) for i, s in enumerate(shards)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return outcomes


def _sum_stats(outcomes: list[RunOutcome], files: int, total_size: int) -> Stats:
    return Stats(files=files, total_size=total_size,
                 regular_files_transferred=sum(o.stats.regular_files_transferred for o in outcomes),
                 transferred_size=sum(o.stats.transferred_size for o in outcomes),
                 sent_bytes=sum(o.stats.sent_bytes for o in outcomes),
                 received_bytes=sum(o.stats.received_bytes for o in outcomes))


def shard_options(opts: RsyncOptions, listfile: str) -> RsyncOptions:
    """One parallel stream's options: its shard of the file list, no --delete, and no --mkpath (DEST exists)."""
    return RsyncOptions(**{**opts.__dict__, "files_from": listfile, "delete": False, "mkpath": False})


def run_parallel_rsync(src_dir: str, dest: str, rsh: str, opts: RsyncOptions, entries: list[ListedEntry],
                       streams: int, *, on_progress: ProgressCallback | None = None) -> RunOutcome:
    """Several rsync streams over balanced shards of the file list, then one pass for directories.

    The caller creates DEST first: the streams never create it (with --mkpath each would, and all but
    one lose the race: `mkdir "DEST/" failed: File exists`)."""
    shards = shard_entries(entries, streams)
    total = sum(e.size for e in entries if e.kind == "f")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="migrate-shards-") as tmp:

        def one(i: int, shard: list[ListedEntry], prog: ProgressCallback) -> RunOutcome:
            listfile = os.path.join(tmp, f"shard{i}")
            with open(listfile, "wb") as fh:
                fh.write(files_from_bytes(shard))
            shard_opts = shard_options(opts, listfile)
            argv = rsync_argv([src_dir.rstrip("/") + "/"], dest, rsh, shard_opts, stats=True)
            return run_rsync(argv, total_bytes=total, on_progress=prog, what=f"rsync stream {i + 1}")

        outcomes = _run_streams(shards, total, on_progress, one)
    # one ordinary pass: directory attributes, empty dirs, anything a shard could not express
    final = run_rsync(rsync_argv([src_dir.rstrip("/") + "/"], dest, rsh, opts, stats=True), total_bytes=total,
                      what="rsync final pass")
    stats = _sum_stats([*outcomes, final], final.stats.files, final.stats.total_size)
    if on_progress:
        on_progress(total, total)
    return RunOutcome(stats=stats, seconds=time.monotonic() - t0)


class _ZstdSink:
    """`zstd -1` between the tar stream and ssh (a far link, where bytes cost more than CPU): the archive
    is written in here, and a thread moves the compressed bytes on to ssh, counting them (wire bytes)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.proc = subprocess.Popen(["zstd", "-1", "-q", "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        self.out = out
        self.wire = 0
        self.broken = False
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        src = cast(io.BufferedReader, self.proc.stdout)
        try:
            while chunk := src.read1(1 << 20):
                self.out.write(chunk)
                self.wire += len(chunk)
            self.out.close()
        except (BrokenPipeError, OSError):
            self.broken = True
            src.close()  # zstd fails on its next write, so the writer side sees a broken pipe too

    def write(self, chunk: bytes) -> None:
        cast(IO[bytes], self.proc.stdin).write(chunk)

    def close(self) -> None:
        """Finish the stream: flush zstd, wait for the compressed tail to reach ssh (BrokenPipeError if not)."""
        try:
            cast(IO[bytes], self.proc.stdin).close()
        finally:
            self.thread.join()
            code = self.proc.wait()
        if self.broken or code != 0:
            raise BrokenPipeError("zstd stream")

    def kill(self) -> None:
        self.proc.kill()


def run_tar_stream(src_dir: str, entries: list[ListedEntry], ssh_argv: list[str], remote_command: str, *,
                   on_progress: ProgressCallback | None = None, bwlimit_kib: int | None = None,
                   compress: bool = False) -> RunOutcome:
    """`tar -cf - FILES | ssh host 'mkdir -p DEST && tar -xpf -'`, pumped through Python for progress;
    `compress`: `| zstd -1 |` between them (`remote_command` must then decompress)."""
    local.require("tar")
    names = list(entries)
    total = sum(e.size for e in names if e.kind == "f") + 512 * len(names)
    tar_argv = ["tar", "-C", src_dir, "--null", "--no-recursion", "-T", "-", "-cf", "-"]
    ui.debug("$ " + " ".join(tar_argv) + (" | zstd -1 -q -c" if compress else "") + " | " + " ".join(ssh_argv)
             + " " + remote_command)
    t0 = time.monotonic()
    roundtrips.note("exec", "", "tar stream")
    tar = subprocess.Popen(tar_argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ssh = subprocess.Popen([*ssh_argv, remote_command], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    assert tar.stdin is not None and tar.stdout is not None and tar.stderr is not None  # all PIPE
    assert ssh.stdin is not None and ssh.stderr is not None
    tar_in, tar_stderr, ssh_stderr = tar.stdin, tar.stderr, ssh.stderr  # locals: narrowed in the closures too
    zstd = _ZstdSink(ssh.stdin) if compress else None
    sink: IO[bytes] | _ZstdSink = zstd or ssh.stdin
    tar_err: list[bytes] = []
    ssh_out: list[bytes] = []

    def feed_names() -> None:
        try:
            tar_in.write(b"".join(("./" + e.path).encode("utf-8", "surrogateescape") + b"\0" for e in names))
            tar_in.close()
        except BrokenPipeError:
            pass

    threads = [threading.Thread(target=feed_names, daemon=True),
               threading.Thread(target=lambda: tar_err.append(tar_stderr.read()), daemon=True),
               threading.Thread(target=lambda: ssh_out.append(ssh_stderr.read()), daemon=True)]
    for th in threads:
        th.start()
    sent = 0
    broken = False
    try:
        while True:
            chunk = cast(io.BufferedReader, tar.stdout).read1(1 << 20)  # Popen's default buffering
            if not chunk:
                break
            try:
                sink.write(chunk)
            except (BrokenPipeError, OSError):
                broken = True
                break
            sent += len(chunk)
            if on_progress:
                on_progress(min(sent, total), total)
            if bwlimit_kib:
                expected = sent / (bwlimit_kib * 1024)
                lag = expected - (time.monotonic() - t0)
                if lag > 0:
                    time.sleep(lag)
        try:
            sink.close()
        except (BrokenPipeError, OSError):
            broken = True
    except KeyboardInterrupt:
        tar.kill()
        if zstd:
            zstd.kill()
        ssh.kill()
        raise
    if broken:
        tar.kill()
        if zstd:  # zstd itself may have failed: end its stream so the remote side stops waiting
            zstd.kill()
            zstd.thread.join(timeout=10)
            try:
                ssh.stdin.close()
            except OSError:
                pass
    ssh_code = ssh.wait()
    threads[2].join()
    tar_code = tar.wait()
    threads[1].join()
    if ssh_code != 0 or broken:
        err = (ssh_out[0] if ssh_out else b"").decode("utf-8", "replace").strip().splitlines()
        raise _receiver_failed("tar stream", _tar_complaint(err, ssh_code), err,
                               disk_hint="free space on the receiving side, then rerun the same command: files "
                                         "that arrived are compared and only the rest is sent",
                               hint="rerun the same command: existing files are compared and only the rest is sent")
    if tar_code not in (0,):
        msg = (tar_err[0] if tar_err else b"").decode("utf-8", "replace").strip().splitlines()
        raise TransferError(f"local tar failed: {msg[-1] if msg else tar_code}")
    files = sum(1 for e in names if e.kind == "f")
    stats = Stats(files=len(names), regular_files_transferred=files, total_size=total, transferred_size=total,
                  sent_bytes=zstd.wire if zstd else sent)
    return RunOutcome(stats=stats, seconds=time.monotonic() - t0)


def _receiver_failed(what: str, complaint: str, stderr_lines: list[str], *, disk_hint: str,
                     hint: str | None = None) -> TransferError:
    """The error for a stream whose receiving command failed there: a full disk said as such."""
    if "No space left" in " ".join(stderr_lines):
        return TransferError(f"{what}: the receiving side ran out of disk space: {complaint}", hint=disk_hint)
    return TransferError(f"{what} over ssh failed: {complaint}", hint=hint)


def stream_file(path: str, ssh_argv: list[str], remote_command: str, *,
                on_progress: ProgressCallback | None = None) -> RunOutcome:
    """Send one file's bytes to `remote_command` over ssh (used when the remote has no rsync)."""
    size = os.path.getsize(path)
    t0 = time.monotonic()
    roundtrips.note("exec", "", "file stream")
    proc = subprocess.Popen([*ssh_argv, remote_command], stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None  # both are PIPE
    sent = 0
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(1 << 20)
                if not chunk:
                    break
                proc.stdin.write(chunk)
                sent += len(chunk)
                if on_progress:
                    on_progress(sent, size)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass
    err = proc.stderr.read().decode("utf-8", "replace").strip().splitlines()
    if proc.wait() != 0:
        raise _receiver_failed("file stream", err[-1] if err else f"exit code {proc.returncode}", err,
                               disk_hint="free space on the receiving side, then rerun the same command")
    return RunOutcome(stats=Stats(files=1, regular_files_transferred=1, total_size=size, transferred_size=size,
                                  sent_bytes=sent), seconds=time.monotonic() - t0)


@dataclass
class StreamItem:
    """One record of a file stream: a local file (or directory) and its name under DEST there."""

    path: str
    name: str
    kind: str = "f"   # f: a file; d: a directory's mode and time


def stream_items(src_dir: str, entries: list[ListedEntry]) -> list[StreamItem]:
    """A directory's files, then its directories deepest first and DEST itself last (a directory's time
    is set after its files arrived). Only files and directories: the caller keeps links for rsync."""
    files = [StreamItem(os.path.join(src_dir, e.path), e.path) for e in entries if e.kind == "f"]
    dirs = sorted((e.path for e in entries if e.kind == "d"), key=lambda p: p.count("/"), reverse=True)
    return [*files, *(StreamItem(os.path.join(src_dir, p), p, "d") for p in dirs), StreamItem(src_dir, ".", "d")]


def stream_header(kind: str, size: int, st: os.stat_result, name: str) -> bytes:
    """A FILE_STREAM record's header: kind, size, octal mode, mtime to the nanosecond, then the name."""
    raw = name.encode("utf-8", "surrogateescape")
    sec, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
    return f"{kind} {size} {st.st_mode & 0o7777:o} {sec}.{nsec:09d} {len(raw)}\n".encode() + raw


def run_file_stream(items: list[StreamItem], ssh_argv: list[str], remote_command: str, *,
                    on_progress: ProgressCallback | None = None, bwlimit_kib: int | None = None) -> RunOutcome:
    """Big files in one stream over ssh, read here and written there by `remote_command`
    (`data.remote.file_stream_command`): one exec, where rsync's protocol spends six or more round
    trips on its own handshake and goodbyes (felt on a far link). Each file lands under its name only
    once whole; an interrupted one waits in .migrate-partial/ for the rerun's rsync to resume it."""
    roundtrips.note("exec", "", "file stream")
    ui.debug("$ (file stream) | " + " ".join(ssh_argv) + " " + remote_command)
    proc = subprocess.Popen([*ssh_argv, remote_command], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    return _FileStream(proc).send(items, on_progress=on_progress, bwlimit_kib=bwlimit_kib)


class _FileStream:
    """The sending side of a FILE_RECEIVER on the other end of `proc` (ssh): records in, its complaint out."""

    def __init__(self, proc: subprocess.Popen) -> None:
        assert proc.stdin is not None and proc.stderr is not None  # both are PIPE
        self.proc = proc
        self.err_chunks: list[bytes] = []
        err = proc.stderr
        self.reader = threading.Thread(target=lambda: self.err_chunks.append(err.read()), daemon=True)
        self.reader.start()

    def send(self, items: list[StreamItem], *, first: bytes = b"", on_progress: ProgressCallback | None = None,
             bwlimit_kib: int | None = None) -> RunOutcome:
        """Write `first`, then each item's record, then the end record; wait for the receiver."""
        sizes = {i.path: os.stat(i.path).st_size for i in items if i.kind == "f"}
        total = sum(sizes.values())
        t0 = time.monotonic()
        stdin = cast(IO[bytes], self.proc.stdin)
        sent = wire = 0
        broken = False
        try:
            stdin.write(first)
            for item in items:
                size = sizes.get(item.path, 0)
                head = stream_header(item.kind, size, os.stat(item.path), item.name)
                stdin.write(head)
                wire += len(head)
                if item.kind != "f":
                    continue
                left = size
                with open(item.path, "rb") as fh:
                    while left:
                        chunk = fh.read(min(left, 1 << 20))
                        if not chunk:
                            raise TransferError(f"{item.path} shrank while it was being sent",
                                                hint="rerun the same command when nothing writes to it")
                        stdin.write(chunk)
                        left -= len(chunk)
                        sent += len(chunk)
                        if on_progress:
                            on_progress(sent, total)
                        if bwlimit_kib:
                            lag = sent / (bwlimit_kib * 1024) - (time.monotonic() - t0)
                            if lag > 0:
                                time.sleep(lag)
                wire += size
            end = f"e {len(sizes)}\n".encode()
            stdin.write(end)
            wire += len(end)
            stdin.close()
        except (BrokenPipeError, ConnectionResetError):
            broken = True
        except BaseException:
            self.proc.kill()  # the receiver keeps the unfinished file in .migrate-partial/
            self.proc.wait()
            raise
        code = self.proc.wait()
        self.reader.join()
        if code != 0 or broken:
            err = b"".join(self.err_chunks).decode("utf-8", "replace").strip().splitlines()
            said = [ln.removeprefix("migrate stream: ") for ln in err if ln.strip()]
            raise _receiver_failed("file stream", said[-1] if said else f"exit code {code}", err,
                                   disk_hint=DISK_FULL_HINT, hint=RESUME_HINT)
        stats = Stats(files=len(items), regular_files_transferred=len(sizes), total_size=total,
                      transferred_size=total, sent_bytes=wire)
        return RunOutcome(stats=stats, seconds=time.monotonic() - t0)


class HeldProbe:
    """push-data's destination probe (`data.remote.held_probe_command`) with its exec kept open: `text`
    is what the probe printed; `round_trip` times the link over it; `stream` turns the same exec into
    a file stream (its own exec, two round trips, saved), `close` ends it (EOF; reaped without waiting
    for the host)."""

    def __init__(self, ssh_argv: list[str], command: str) -> None:
        roundtrips.note("exec", "", "inspect destination")
        self.proc = subprocess.Popen([*ssh_argv, command], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.used = False
        self.stream_end = _FileStream(self.proc)
        lines = []
        out = cast(IO[bytes], self.proc.stdout)
        for raw in iter(out.readline, b""):
            line = raw.decode("utf-8", "surrogateescape").rstrip("\n")
            if line == "probed=.":
                break
            lines.append(line)
        else:
            code = self.proc.wait()
            self.stream_end.reader.join()
            err = b"".join(self.stream_end.err_chunks).decode("utf-8", "replace").strip().splitlines()
            raise MigrateError(f"could not inspect the destination: {err[-1] if err else f'exit code {code}'}",
                               hint="check the connection (migrate doctor HOST) and rerun")
        self.text = "\n".join(lines) + "\n"

    def round_trip(self) -> float:
        """One network round trip, in seconds: a line there and its answer back over the open session
        (no exec, no session setup on the host in it); 0.0 when the session has ended."""
        stdin, stdout = cast(IO[bytes], self.proc.stdin), cast(IO[bytes], self.proc.stdout)
        roundtrips.note("ping", "", "round-trip check")
        t0 = time.perf_counter()
        try:
            stdin.write(b"ping\n")
            stdin.flush()
        except (OSError, ValueError):  # ended there (a broken pipe), or closed here
            return 0.0
        answer = stdout.readline()
        return time.perf_counter() - t0 if answer == b"pong\n" else 0.0

    def stream(self, into: str, items: list[StreamItem], *, on_progress: ProgressCallback | None = None,
               bwlimit_kib: int | None = None, python: bool = False) -> RunOutcome:
        """The probe's exec becomes a file stream into the directory `into` (`python`: python3 writes
        the files, data/remote.py's `pystream`)."""
        from migrate.data.remote import python_receiver

        self.used = True
        raw = into.encode("utf-8", "surrogateescape")
        if python:
            code = python_receiver().encode()
            first = f"pystream {len(raw)} {len(code)}\n".encode() + code + raw
        else:
            first = f"stream {len(raw)}\n".encode() + raw
        return self.stream_end.send(items, first=first, on_progress=on_progress, bwlimit_kib=bwlimit_kib)

    def close(self) -> None:
        """End the exec if nothing streamed into it: EOF there, and no wait here for the host's answer."""
        if not self.used:
            self.used = True
            try:
                cast(IO[bytes], self.proc.stdin).close()
            except OSError:
                pass

    def reap(self) -> None:
        """Wait for the ended exec (by now long gone on the host) so no ssh, and no pipe to it, is left
        behind (apply pushes to many hosts in one process)."""
        self.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stream_end.reader.join(timeout=5)  # stderr ends with the process
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def require_local_tools() -> None:
    """rsync must exist locally (it also lists files for every method)."""
    try:
        local.require("rsync")
    except LocalCommandError as exc:
        raise MigrateError("rsync is not installed on this machine", hint="apt-get install rsync") from exc


def run_tar_streams(src_dir: str, entries: list[ListedEntry], ssh_argv: list[str], remote_command: str,
                    streams: int, *, on_progress: ProgressCallback | None = None, bwlimit_kib: int | None = None,
                    files_command: str | None = None, compress: bool = False,
                    files_make_dirs: bool = False) -> RunOutcome:
    """Several tar streams in parallel over balanced shards (unpacking many small files is CPU-bound
    on the receiving side; one stream per core keeps it busy). `files_command`: what the streams of
    files run instead of `remote_command` (it decompresses when `compress`: they go through zstd; it
    makes every directory itself when `files_make_dirs`: no stream of directories goes first)."""
    files_command = files_command or remote_command
    dirs = [e for e in entries if e.kind == "d"]
    shards = shard_entries(entries, streams) if streams > 1 else [[e for e in entries if e.kind != "d"]]
    if not shards:
        shards = [[]]
    if len(shards) == 1:
        return run_tar_stream(src_dir, dirs + shards[0], ssh_argv, files_command, on_progress=on_progress,
                              bwlimit_kib=bwlimit_kib, compress=compress)
    total = sum(e.size for e in entries if e.kind == "f") + 512 * len(entries)
    t0 = time.monotonic()
    # Every directory exists before the parallel streams start: GNU tar that meets a file whose directory
    # another tar is creating at that moment fails ("Cannot open: No such file or directory", 5 in 200
    # runs of two concurrent extractions here). They are made owner-writable first, so a read-only
    # directory still takes its files; their own modes and times come last, in a stream of their own.
    # (Where the command line has room, each stream's `mkdir -p` makes them instead: a round trip less.)
    if dirs and not files_make_dirs:
        send_bytes(_writable_dirs_archive(dirs), ssh_argv, remote_command, what="directories first")
    per_stream_bw = bwlimit_kib // len(shards) if bwlimit_kib else None
    outcomes = _run_streams(shards, total, on_progress, lambda i, shard, prog: run_tar_stream(
        src_dir, shard, ssh_argv, files_command, on_progress=prog, bwlimit_kib=per_stream_bw, compress=compress))
    if dirs:
        outcomes.append(run_tar_stream(src_dir, dirs, ssh_argv, remote_command))
    stats = _sum_stats(outcomes, len(entries), total)
    return RunOutcome(stats=stats, seconds=time.monotonic() - t0)


def _tar_complaint(stderr_lines: list[str], code: int) -> str:
    """What the receiving tar said went wrong: its last line is only a summary ("Exiting with failure
    status due to previous errors"), so the first other line."""
    causes = [ln for ln in stderr_lines if ln.strip() and "Exiting with failure status" not in ln]
    return causes[0] if causes else stderr_lines[-1] if stderr_lines else f"exit code {code}"


def _writable_dirs_archive(dirs: list[ListedEntry]) -> bytes:
    """A tar of just these directories, each 0700 and ours (their real modes and times follow later)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, errors="surrogateescape") as tar:
        for e in dirs:
            info = tarfile.TarInfo("./" + e.path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, int(time.time())
            info.uid, info.gid = os.getuid(), os.getgid()
            tar.addfile(info)
    return buf.getvalue()


def send_bytes(data: bytes, ssh_argv: list[str], remote_command: str, *, what: str) -> None:
    """Feed `data` to `remote_command` over ssh; a TransferError with the receiver's first complaint."""
    roundtrips.note("exec", "", what)
    res = subprocess.run([*ssh_argv, remote_command], input=data, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, check=False)
    if res.returncode != 0:
        err = res.stderr.decode("utf-8", "replace").strip().splitlines()
        raise TransferError(f"tar stream over ssh failed ({what}): {_tar_complaint(err, res.returncode)}",
                            hint="rerun the same command: existing files are compared and only the rest is sent")


@functools.lru_cache(maxsize=1)
def local_has_zstd() -> bool:
    """Whether this machine has `zstd` (tar streams to a far host go through it)."""
    return shutil.which("zstd") is not None


@functools.lru_cache(maxsize=1)
def _local_rsync_about() -> str:
    return local.run(["rsync", "--version"], what="rsync --version").stdout


def local_rsync_version() -> tuple[int, int, int]:
    """This machine's rsync version (asked once)."""
    from migrate.data.rsync import parse_version
    return parse_version(_local_rsync_about())


def local_rsync_xxh128() -> bool:
    """Whether this machine's rsync has the xxh128 checksum (`rsync --version`'s checksum list)."""
    from migrate.data.rsync import lists_xxh128
    return lists_xxh128(_local_rsync_about())


def link_round_trip(ssh_argv: list[str]) -> float:
    """About one network round trip to the host, in seconds: a no-op command over the shared connection
    (a channel open and an exec: two round trips) less what starting `ssh` here costs (`ssh -O check`
    asks only the local master). Call it after the connection's first command: sshd sets up the first
    session of a connection lazily (60 ms and more on an idle loopback host)."""
    check = [*ssh_argv[:-1], "-O", "check", ssh_argv[-1]]
    t0 = time.perf_counter()
    subprocess.run(check, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    local_cost = time.perf_counter() - t0
    roundtrips.note("exec", "", "round-trip check")
    t0 = time.perf_counter()
    res = subprocess.run([*ssh_argv, "exit 0"], stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if res.returncode != 0:
        return 0.0  # no answer to time: the transfer's own error says why
    return max(0.0, (time.perf_counter() - t0 - local_cost) / 2)


class LocalTransfers:
    """The runners push-data and pull-data use, as one object (tests pass `tests/fakehost.py: RecordingTransfers`)."""

    rsync_dry_run = staticmethod(rsync_dry_run)
    run_rsync = staticmethod(run_rsync)
    run_parallel_rsync = staticmethod(run_parallel_rsync)
    run_tar_streams = staticmethod(run_tar_streams)
    stream_file = staticmethod(stream_file)
    run_file_stream = staticmethod(run_file_stream)
    hold_probe = HeldProbe
    link_round_trip = staticmethod(link_round_trip)

    @staticmethod
    def rsync_version() -> tuple[int, int, int]:
        return local_rsync_version()

    @staticmethod
    def rsync_xxh128() -> bool:
        return local_rsync_xxh128()
