"""The destinations this machine has pushed to, so a re-sync can skip the separate probe.

A push-data whose every source is a directory, to a DEST that a push from here completed before,
plans as a re-sync (one rsync) and checks DEST on rsync's own exec (data/remote.py: DEST_GUARD)
instead of a probe first: one exec, two round trips fewer on a far link. Where DEST is no longer so,
the guard changes nothing and push-data plans from what it saw, as always.

One JSON file in migrate's state dir (0600): {"USER@HOST:PORT DEST": unix time of the last push}.
It holds host names and paths only. A lost or corrupt file only costs the next push its probe.

And the hosts' tools, so auto can plan a first copy before any probe (`host_tools`): another 0600
file, {"USER@HOST:PORT": {"at": unix time, rsync's version, xxh128, zstd, GNU head, tar, cpus}}, as
the last probe (or refused guard) saw them, trusted for HOST_TOOLS_TTL_S. A tool installed or
removed since only makes the plan less than the best until then: what the plan needs (rsync, its
version and checksum, DEST) is checked on rsync's exec all the same.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from migrate import paths

KEEP = 500  # destinations kept (the oldest go first)
KEEP_HOSTS = 100  # hosts whose tools are kept
HOST_TOOLS_TTL_S = 24 * 3600
HOST_TOOLS = ("rsync_version", "xxh128", "zstd", "tar", "gnu_head", "python3", "cpus")  # DestFacts fields
_lock = threading.Lock()  # hosts push in parallel threads: one writer at a time


def record_path() -> Path:
    return paths.state_root() / "pushed-destinations.json"


def hosts_path() -> Path:
    return paths.state_root() / "host-tools.json"


def key(user: str, hostname: str, port: int | str, dest: str) -> str:
    return f"{host_key(user, hostname, port)} {dest}"


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _load() -> dict[str, float]:
    return {k: v for k, v in _read(record_path()).items() if isinstance(k, str) and isinstance(v, (int, float))}


def pushed_before(dest_key: str) -> bool:
    """Whether a push from here to this destination completed."""
    return dest_key in _load()


def _save(data: dict, path: Path | None = None) -> None:
    """Best effort: a state dir we cannot write only costs later pushes their shortcut."""
    try:
        paths.write_private_json(path or record_path(), data)
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


def host_key(user: str, hostname: str, port: int | str) -> str:
    return f"{user}@{hostname}:{port}"


def host_tools(key_: str, now: float | None = None) -> dict[str, Any] | None:
    """The tools a probe saw on this host within HOST_TOOLS_TTL_S (HOST_TOOLS: DestFacts' values), or
    None (never seen, too old, or a record that does not read as one)."""
    entry = _read(hosts_path()).get(key_)
    if not isinstance(entry, dict) or not isinstance(entry.get("at"), (int, float)):
        return None
    if (now if now is not None else time.time()) - entry["at"] > HOST_TOOLS_TTL_S:
        return None
    tools = {k: entry.get(k) for k in HOST_TOOLS}
    version = tools["rsync_version"]
    if not (isinstance(version, list) and len(version) == 3 and all(isinstance(x, int) for x in version)) \
            or not all(isinstance(tools[k], bool) for k in HOST_TOOLS if k not in ("rsync_version", "cpus")) \
            or not isinstance(tools["cpus"], int):
        return None
    tools["rsync_version"] = tuple(version)
    return tools


def note_host_tools(key_: str, facts: Any) -> None:
    """Record what a probe saw of the host's tools (`facts`: a DestFacts); written only when it changed
    or is getting old."""
    tools = {k: getattr(facts, k) for k in HOST_TOOLS}
    tools["rsync_version"] = list(tools["rsync_version"])
    now = time.time()
    with _lock:
        data = _read(hosts_path())
        old = data.get(key_)
        if isinstance(old, dict) and {k: old.get(k) for k in HOST_TOOLS} == tools \
                and isinstance(old.get("at"), (int, float)) and now - old["at"] < HOST_TOOLS_TTL_S / 2:
            return
        data[key_] = {"at": now, **tools}
        kept = [(k, v) for k, v in data.items() if isinstance(v, dict) and isinstance(v.get("at"), (int, float))]
        fresh = sorted(kept, key=lambda kv: kv[1]["at"])
        _save(dict(fresh[-KEEP_HOSTS:]), hosts_path())
