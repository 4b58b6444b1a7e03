"""Where migrate keeps its own files on this machine (never inside the project checkout)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def state_root() -> Path:
    """$MIGRATE_STATE_DIR, else $XDG_STATE_HOME/migrate, else ~/.local/state/migrate."""
    if os.environ.get("MIGRATE_STATE_DIR"):
        return Path(os.environ["MIGRATE_STATE_DIR"]).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(base).expanduser() / "migrate"


def cache_root() -> Path:
    """$MIGRATE_CACHE_DIR, else $XDG_CACHE_HOME/migrate, else ~/.cache/migrate."""
    if os.environ.get("MIGRATE_CACHE_DIR"):
        return Path(os.environ["MIGRATE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "migrate"


def sandbox_root() -> Path:
    """Directory holding one state directory per sandbox (keys, known_hosts, ssh_config)."""
    return state_root() / "sandbox"


def sandbox_ssh_configs() -> list[Path]:
    """ssh_config files written by `migrate sandbox up`, so `sandbox1` resolves with no flags."""
    root = sandbox_root()
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/ssh_config") if p.is_file())


def private_dir(path: Path) -> Path:
    """Create `path` (and parents) readable only by the user; return it."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def write_private_json(path: Path, data: Any) -> None:
    """Replace `path` with `data` as JSON, atomically, 0600 in a 0700 directory (state files of this machine)."""
    private_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: 0600
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
