"""Local file lists with rsync's own filter rules, and balanced shards for parallel streams."""

from __future__ import annotations

import os
import subprocess
import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import IO, cast

from migrate import local
from migrate.data.rsync import IGNORE_FILE, PARTIAL_DIR, ListedEntry, parse_list_only


@dataclass
class SourceSummary:
    """Size and count of what a source holds (after excludes)."""

    files: int
    bytes: int
    entries: list[ListedEntry]

    @property
    def average_file_size(self) -> float:
        return self.bytes / self.files if self.files else 0.0


def _list_argv(source_dir: str, excludes: list[str], exclude_from: list[str]) -> list[str]:
    argv = ["rsync", "-a", "--list-only", f"--exclude={PARTIAL_DIR}/", f"--filter=:- {IGNORE_FILE}"]
    argv += [f"--exclude={p}" for p in excludes] + [f"--exclude-from={p}" for p in exclude_from]
    return [*argv, "--", source_dir.rstrip("/") + "/"]


def _summary(listing: str) -> SourceSummary:
    entries = parse_list_only(listing)
    files = [e for e in entries if e.kind == "f"]
    return SourceSummary(files=len(files), bytes=sum(e.size for e in files), entries=entries)


def list_source(source_dir: str, excludes: list[str], exclude_from: list[str]) -> SourceSummary:
    """Everything rsync would send from SOURCE_DIR, with the same filters (one local rsync call)."""
    proc = local.run(_list_argv(source_dir, excludes, exclude_from), what="list source files", env=_C_LOCALE)
    return _summary(proc.stdout)


class EarlyListing:
    """`list_source` started before it is known to be needed, so that it runs while the connections are
    set up (100k files: about a second here). `result()` waits for it; when every host has said it does
    not need it (`not_needed()`, once per host), it is stopped."""

    def __init__(self, source_dir: str, excludes: list[str], exclude_from: list[str], *, users: int = 1) -> None:
        self.args = (source_dir, excludes, exclude_from)
        self.users = users
        self.wanted = False
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(_list_argv(*self.args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, env=_C_LOCALE)
        self.summary: SourceSummary | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        out = cast(IO[str], self.proc.stdout).read()
        if self.proc.wait() == 0:
            self.summary = _summary(out)

    def result(self) -> SourceSummary:
        """The listing; when the early run failed (or was stopped), a fresh `list_source` (whose error
        is the one to show)."""
        with self.lock:
            self.wanted = True
        self.thread.join()
        return self.summary or list_source(*self.args)

    def not_needed(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users <= 0 and not self.wanted:
                self.close()

    def close(self) -> None:
        """Stop it if it still runs (the push is over)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.thread.join()


_C_LOCALE = {**os.environ, "LC_ALL": "C"}


# Directories a size scan reads at once. Several reads in flight overlap on a slow cold disk (100k x 4 KiB
# in 100 directories once measured 0.95 s with one, 0.65 s with four), but the per-entry work is Python's
# and holds the GIL: on the 2-core CI class today, caches dropped, one took 0.43 s and 0.42 s of CPU, four
# 1.0 s and 1.6 s of CPU (warm: 0.20 s against 0.5-0.8 s), CPU the rsync it runs beside needs
SCAN_WORKERS = 1


def _scan_dir(path: str) -> tuple[int, int, list[str]]:
    """(files, bytes, subdirectories) of one directory; unreadable entries are skipped."""
    files = total = 0
    subdirs: list[str] = []
    try:
        it = os.scandir(path)
    except OSError:
        return 0, 0, []
    with it:
        for entry in it:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(entry.path)
                else:
                    files += 1
                    total += entry.stat(follow_symlinks=False).st_size
            except OSError:
                continue
    return files, total, subdirs


def quick_size(path: str, workers: int = SCAN_WORKERS) -> tuple[int, int]:
    """(files, bytes) of a path without filters: a fast upper bound for space checks."""
    if os.path.isfile(path):
        return 1, os.path.getsize(path)
    files = total = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = {pool.submit(_scan_dir, path)}
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                n, size, subdirs = future.result()
                files, total = files + n, total + size
                pending |= {pool.submit(_scan_dir, d) for d in subdirs}
    return files, total


def early_sizes(paths: list[str]) -> Future[dict[str, tuple[int, int]]]:
    """`quick_size` of every path, started now in a thread of its own: it runs while the connections are
    set up, and every host's preflight shares it."""
    future: Future[dict[str, tuple[int, int]]] = Future()

    def scan() -> None:
        try:
            future.set_result({p: quick_size(p) for p in paths})
        except BaseException as exc:  # handed to whoever waits for the result
            future.set_exception(exc)

    # a daemon: an early error exits without waiting for the count of a big tree
    threading.Thread(target=scan, name="size-scan", daemon=True).start()
    return future


def shard_entries(entries: list[ListedEntry], n: int) -> list[list[ListedEntry]]:
    """Split files (and symlinks) into `n` shards of about equal bytes (largest first, greedy).

    Directories are not sharded: the final single-stream pass creates them with their attributes.
    """
    items = sorted((e for e in entries if e.kind != "d"), key=lambda e: e.size, reverse=True)
    shards: list[list[ListedEntry]] = [[] for _ in range(max(1, n))]
    loads = [0] * len(shards)
    for e in items:
        i = loads.index(min(loads))
        shards[i].append(e)
        loads[i] += e.size + 512  # per-file overhead counts too
    return [s for s in shards if s]


def files_from_bytes(entries: list[ListedEntry]) -> bytes:
    """NUL-separated relative paths for `rsync --files-from=FILE --from0`."""
    return b"".join(e.path.encode("utf-8", "surrogateescape") + b"\0" for e in entries)
