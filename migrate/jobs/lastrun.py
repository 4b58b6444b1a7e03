"""What the last `migrate run` submitted, per target, on this machine: what `migrate wait TARGET` waits for.

One small JSON file in migrate's state directory (0600, in a 0700 directory): target (as typed:
host, alias or cluster name) -> the job ids the last run queued there and when. Only ids are kept:
nothing secret (no commands, no notify URLs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from migrate.paths import state_root, write_private_json

MAX_TARGETS = 200  # the oldest records go first


def record_path() -> Path:
    return state_root() / "last-run.json"


def load_all() -> dict[str, dict]:
    """Every target's record ({} when none or unreadable)."""
    try:
        data = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record(target: str, ids: list, *, now: float | None = None, sync: list[dict] | None = None) -> None:
    """Remember that the last run on `target` queued these jobs (an empty list records nothing), and its
    sync-backs ({spec, every, jobs}; `migrate wait` pulls them: migrate.data.syncback)."""
    if not ids:
        return
    data = load_all()
    entry: dict = {"ids": [str(i) for i in ids], "at": time.time() if now is None else now}
    if sync:
        entry["sync"] = [{"spec": s["spec"], "every": s.get("every"), "jobs": [str(j) for j in s["jobs"]],
                          "last_ok": None, "final": False} for s in sync]
    data[target] = entry
    _write(data)


def _write(data: dict) -> None:
    if len(data) > MAX_TARGETS:
        for old in sorted(data, key=lambda t: data[t].get("at", 0))[: len(data) - MAX_TARGETS]:
            del data[old]
    write_private_json(record_path(), data)


def last_ids(target: str) -> list[str] | None:
    """The ids the last run on `target` queued (None: no run recorded here)."""
    rec = load_all().get(target)
    if not isinstance(rec, dict) or not isinstance(rec.get("ids"), list):
        return None
    return [str(i) for i in rec["ids"]]


def sync_entries(target: str) -> list[dict]:
    """The sync-backs the last run on `target` asked for, with how far they got ([] when none)."""
    rec = load_all().get(target)
    return [dict(e) for e in (rec or {}).get("sync") or [] if isinstance(e, dict) and e.get("spec")]


def save_sync(target: str, spec: str, *, last_ok: float | None, final: bool) -> None:
    """Remember when a sync-back last succeeded and whether its final pull happened."""
    data = load_all()
    for e in (data.get(target) or {}).get("sync") or []:
        if e.get("spec") == spec:
            e["last_ok"], e["final"] = last_ok, final
    _write(data)
