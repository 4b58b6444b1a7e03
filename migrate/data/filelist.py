"""Local file lists with rsync's own filter rules, and balanced shards for parallel streams."""

from __future__ import annotations

import os
from dataclasses import dataclass

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


def list_source(source_dir: str, excludes: list[str], exclude_from: list[str]) -> SourceSummary:
    """Everything rsync would send from SOURCE_DIR, with the same filters (one local rsync call)."""
    argv = ["rsync", "-a", "--list-only", f"--exclude={PARTIAL_DIR}/", f"--filter=:- {IGNORE_FILE}"]
    argv += [f"--exclude={p}" for p in excludes] + [f"--exclude-from={p}" for p in exclude_from]
    argv += ["--", source_dir.rstrip("/") + "/"]
    proc = local.run(argv, what="list source files", env={**os.environ, "LC_ALL": "C"})
    entries = parse_list_only(proc.stdout)
    files = [e for e in entries if e.kind == "f"]
    return SourceSummary(files=len(files), bytes=sum(e.size for e in files), entries=entries)


def quick_size(path: str) -> tuple[int, int]:
    """(files, bytes) of a path without filters: a fast upper bound for space checks."""
    if os.path.isfile(path):
        return 1, os.path.getsize(path)
    files = total = 0
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for entry in it:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        files += 1
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
    return files, total


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
