"""The job ids shell completion offers: what `status` and `run` last saw per target, on this machine.

One small JSON file in migrate's state directory (0600, in a 0700 directory): target -> [[id, name],
...], newest jobs first, at most MAX_JOBS per target and MAX_TARGETS targets. Only ids and names are
kept (no commands, no environment, no notify URLs). A read or write problem never fails a verb: the
cache is a convenience.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from migrate.paths import state_root, write_private_json

MAX_JOBS = 100
MAX_TARGETS = 50


def cache_path() -> Path:
    return state_root() / "job-ids.json"


def _load() -> dict[str, Any]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(target: str, jobs: list[dict[str, Any]]) -> None:
    """Keep the ids and names of `jobs` (as `status --json` lists them) for completing `target`'s JOB."""
    try:
        pairs = sorted({(str(j["id"]), str(j.get("name") or "")) for j in jobs if j.get("id") is not None},
                       key=lambda p: (-int(p[0]) if p[0].isdigit() else 0, p[0]))[:MAX_JOBS]
        data = _load()
        data[target] = {"at": time.time(), "jobs": [list(p) for p in pairs]}
        if len(data) > MAX_TARGETS:
            for old in sorted(data, key=lambda t: (data[t] or {}).get("at", 0))[: len(data) - MAX_TARGETS]:
                del data[old]
        write_private_json(cache_path(), data)
    except (OSError, ValueError, TypeError, KeyError):
        pass


def known(target: str) -> list[tuple[str, str]]:
    """(id, name) of the jobs seen on `target`, newest first ([] when none)."""
    entry = _load().get(target) or {}
    out = []
    for pair in entry.get("jobs") or [] if isinstance(entry, dict) else []:
        if isinstance(pair, list) and len(pair) == 2:
            out.append((str(pair[0]), str(pair[1])))
    return out
