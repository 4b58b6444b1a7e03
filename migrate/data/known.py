"""The destinations this machine has pushed to, so a re-sync can skip the separate probe.

A push-data whose every source is a directory, to a DEST that a push from here completed before,
plans as a re-sync (one rsync) and checks DEST on rsync's own exec (data/remote.py: DEST_GUARD)
instead of a probe first: one exec, two round trips fewer on a far link. Where DEST is no longer so,
the guard changes nothing and push-data plans from what it saw, as always.

One JSON file in migrate's state dir (0600): {"USER@HOST:PORT DEST": unix time of the last push}.
It holds host names and paths only. A lost or corrupt file only costs the next push its probe.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from migrate import paths

KEEP = 500  # destinations kept (the oldest go first)
_lock = threading.Lock()  # hosts push in parallel threads: one writer at a time


def record_path() -> Path:
    return paths.state_root() / "pushed-destinations.json"


def key(user: str, hostname: str, port: int | str, dest: str) -> str:
    return f"{user}@{hostname}:{port} {dest}"


def _load() -> dict[str, float]:
    try:
        data = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, (int, float))}


def pushed_before(dest_key: str) -> bool:
    """Whether a push from here to this destination completed."""
    return dest_key in _load()


def _save(data: dict[str, float]) -> None:
    """Best effort: a state dir we cannot write only costs later pushes their shortcut."""
    try:
        paths.write_private_json(record_path(), data)
    except OSError:
        pass


def remember(dest_key: str) -> None:
    """Record a completed push to this destination."""
    with _lock:
        data = _load()
        data[dest_key] = time.time()
        _save(dict(sorted(data.items(), key=lambda kv: kv[1])[-KEEP:]))


def forget(dest_key: str) -> None:
    """Drop a destination the guard found changed (the next push probes it first)."""
    with _lock:
        data = _load()
        if data.pop(dest_key, None) is not None:
            _save(data)
