"""/etc/docker/daemon.json: merge, never overwrite.

Every existing key is kept in its order (registry-mirrors, data-root, features, other runtimes,
keys migrate has never heard of). migrate only adds `runtimes.nvidia`, appends registry mirrors,
sets `data-root` and, when asked, `default-runtime`. An existing `nvidia` runtime entry is left
as it is (nvidia-ctk would replace it and drop its args). A file that is not a JSON object is
never touched. Everything here is pure.
"""

from __future__ import annotations

import difflib
import json
import re
import shlex
from dataclasses import dataclass, field

from migrate.errors import MigrateError

PATH = "/etc/docker/daemon.json"
NVIDIA_RUNTIME = {"path": "nvidia-container-runtime", "args": []}

# daemon.json keys migrate may set -> the dockerd flags that must then not be on its command line
# (dockerd refuses to start when a directive is both a flag and in the file).
FLAGS_FOR_KEY = {
    "runtimes": ("--add-runtime",),
    "default-runtime": ("--default-runtime",),
    "registry-mirrors": ("--registry-mirror",),
    "data-root": ("--data-root", "-g", "--graph"),
}


class DaemonJsonError(MigrateError):
    """daemon.json cannot be merged (not JSON, not an object, wrong types)."""


@dataclass
class Merge:
    """The merged content and what changed (empty `changes` = nothing to write)."""

    config: dict
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)  # top-level keys migrate set or changed


def parse(text: str | None, path: str = PATH) -> dict:
    """The current file as a dict; None or blank -> {}. Raises DaemonJsonError naming file and error."""
    if text is None or not text.strip():
        return {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DaemonJsonError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                              "left untouched",
                              hint="fix or remove the file, then rerun (dockerd cannot start with it either)") from exc
    if not isinstance(obj, dict):
        raise DaemonJsonError(f"{path} is JSON but not an object ({type(obj).__name__}); left untouched",
                              hint="daemon.json must be a JSON object: {...}")
    return obj


def merge(current: dict, *, nvidia_runtime: bool = False, default_runtime: str | None = None,
          registry_mirrors: list[str] | None = None, data_root: str | None = None) -> Merge:
    """Add what was asked to a copy of `current`, keeping every existing key and value."""
    config = json.loads(json.dumps(current))  # deep copy, same key order
    m = Merge(config=config)
    if nvidia_runtime or default_runtime == "nvidia":
        runtimes = config.get("runtimes")
        if runtimes is None:
            runtimes = config["runtimes"] = {}
        if not isinstance(runtimes, dict):
            raise DaemonJsonError(f"{PATH}: \"runtimes\" is not an object; left untouched",
                                  hint="fix the file by hand, then rerun")
        existing = runtimes.get("nvidia")
        if existing is None:
            runtimes["nvidia"] = dict(NVIDIA_RUNTIME)
            m.changes.append("add runtimes.nvidia")
            m.keys.add("runtimes")
        elif not (isinstance(existing, dict) and "nvidia-container-runtime" in str(existing.get("path", ""))):
            m.warnings.append(f"runtimes.nvidia is {json.dumps(existing)} (not nvidia-container-runtime); kept")
    if default_runtime and config.get("default-runtime") != default_runtime:
        old = config.get("default-runtime")
        config["default-runtime"] = default_runtime
        m.changes.append(f"set default-runtime {default_runtime}" + (f" (was {old})" if old else ""))
        m.keys.add("default-runtime")
    if registry_mirrors:
        mirrors = config.get("registry-mirrors")
        if mirrors is None:
            mirrors = []
        if not isinstance(mirrors, list):
            raise DaemonJsonError(f"{PATH}: \"registry-mirrors\" is not a list; left untouched",
                                  hint="fix the file by hand, then rerun")
        norm = {str(u).rstrip("/") for u in mirrors}
        added = [u for u in registry_mirrors if u.rstrip("/") not in norm]
        if added:
            config["registry-mirrors"] = [*mirrors, *added]
            m.changes.append("add registry-mirrors " + " ".join(added))
            m.keys.add("registry-mirrors")
    if data_root:
        old = config.get("data-root") or config.get("graph")
        if (old or "").rstrip("/") != data_root.rstrip("/"):
            config["data-root"] = data_root
            if "graph" in config:  # the deprecated spelling would conflict with data-root
                del config["graph"]
            m.changes.append(f"set data-root {data_root}" + (f" (was {old})" if old else ""))
            m.keys.add("data-root")
            m.warnings.append(f"data-root moves to {data_root}: images and containers under "
                              f"{old or '/var/lib/docker'} stay there but docker will not see them")
    return m


def detect_indent(text: str | None) -> int:
    """The indent width the existing file uses (4 when unknown)."""
    for line in (text or "").splitlines()[1:]:
        stripped = line.lstrip(" ")
        if stripped and len(line) != len(stripped):
            return len(line) - len(stripped)
    return 4


def render(config: dict, like: str | None = None) -> str:
    """The file content: JSON with the existing file's indent, key order kept, trailing newline."""
    return json.dumps(config, indent=detect_indent(like), ensure_ascii=False) + "\n"


def unified_diff(old: str | None, new: str, path: str) -> str:
    """A unified diff for --dry-run and logs ('(absent)' for a missing file)."""
    lines = difflib.unified_diff((old or "").splitlines(keepends=True), new.splitlines(keepends=True),
                                 fromfile=path if old is not None else f"{path} (absent)", tofile=path)
    return "".join(ln if ln.endswith("\n") else ln + "\n" for ln in lines)


def exec_start_args(exec_start: str) -> list[str]:
    """dockerd's arguments from `systemctl show docker -p ExecStart --value` (or a plain command line)."""
    m = re.search(r"argv\[\]=(.*?)(?: ;|$)", exec_start)
    text = m.group(1) if m else exec_start
    try:
        return shlex.split(text)
    except ValueError:
        return text.split()


def flag_conflicts(exec_start: str, keys: set[str]) -> list[str]:
    """Flags on dockerd's command line that would clash with the keys we are about to set."""
    args = exec_start_args(exec_start)
    out = []
    for key in sorted(keys):
        for flag in FLAGS_FOR_KEY.get(key, ()):
            if any(a == flag or a.startswith(flag + "=") for a in args):
                out.append(f"{key} (dockerd runs with {flag})")
    return out


def journal_explanation(lines: list[str]) -> list[str]:
    """The journal lines that say why dockerd did not start (most telling first, at most 2)."""
    strong = ("failed to start daemon", "unable to configure the docker daemon", "level=fatal", "directives",
              "level=error")
    weak = ("invalid", "error", "failed")
    noise = ("level=info", "level=warning", "level=debug", "start request repeated too quickly",
             "control process exited", "failed with result", "main process exited", "failed to start docker.service")
    clean = [ln.strip() for ln in lines if ln.strip()]
    picked = [ln for ln in clean if any(k in ln.lower() for k in strong)]
    if not picked:
        picked = [ln for ln in clean if any(k in ln.lower() for k in weak) and not any(n in ln.lower() for n in noise)]
    if not picked:
        picked = clean[-2:]
    seen: list[str] = []
    for ln in picked:
        if ln not in seen:
            seen.append(ln)
    return seen[:2]
