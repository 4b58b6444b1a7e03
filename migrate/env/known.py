"""Where each pushed environment came from, kept on this machine: `run CLUSTER --env NAME` pushes the
same SOURCE to every node first, so a node that joined later (or lost the env) gets it too.

One JSON file in migrate's state dir (0600): {NAME: {"kind", "path", "python"}}. It holds paths
only (no package index URL, no credential). Written by every successful `push-env`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from migrate import paths
from migrate.env.source import Source, read_source
from migrate.errors import UsageError


def record_path() -> Path:
    return paths.state_root() / "envs.json"


def _load() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(record_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remember(name: str, src: Source, python: str) -> None:
    """Record NAME's SOURCE (absolute) and --python; the last push of a name wins."""
    data = _load()
    data[name] = {"kind": src.kind, "path": str(src.path.resolve()), "python": python}
    paths.private_dir(record_path().parent)
    tmp = record_path().with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    tmp.replace(record_path())


def recall(name: str, where: str) -> tuple[Source, str]:
    """NAME's SOURCE and --python as last pushed from here; one clear line when unknown or gone."""
    entry = _load().get(name)
    hint = f"push it once with: migrate push-env {where} SOURCE --name {name}"
    if not entry:
        raise UsageError(f"environment {name} was never pushed from this machine, so its SOURCE is unknown",
                         hint=hint)
    path = Path(entry.get("path", ""))
    if entry.get("kind") in ("venv", "conda"):
        if not path.is_dir():
            raise UsageError(f"environment {name} was pushed from {path}, which is gone", hint=hint)
        return Source(entry["kind"], path), entry.get("python") or "python3"
    if not path.is_file():
        raise UsageError(f"environment {name} was pushed from {path}, which is gone", hint=hint)
    return read_source(str(path)), entry.get("python") or "python3"
