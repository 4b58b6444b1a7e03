"""`--from-template DIR --experiments a,b`: one copied working directory per experiment.

The copytree workflow: the template (code and configs) is packed once, without the usual clutter
(`.git`, `__pycache__`, virtualenvs... plus `.migrateignore` and `--ignore` patterns), sent once,
and unpacked on the host into `<dest>/<experiment>` for each experiment. Each job runs in its own
copy, so editing the template afterwards never changes a queued or running experiment.
Existing experiment directories are never overwritten.
"""

from __future__ import annotations

import fnmatch
import io
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from migrate.errors import UsageError
from migrate.remote import shell

DEFAULT_IGNORES = (".git", ".hg", ".svn", "__pycache__", "*.pyc", ".venv", "venv", ".mypy_cache", ".pytest_cache",
                   ".ruff_cache", ".ipynb_checkpoints", ".DS_Store", "*.egg-info")
IGNORE_FILE = ".migrateignore"
LARGE_TEMPLATE = 200 * 1024 * 1024
_EXPERIMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass
class TemplatePlan:
    """What will be copied where."""

    source: Path
    dest: str  # remote directory holding one copy per experiment (may start with ~/)
    experiments: list[str]
    files: list[str]  # relative paths
    total_bytes: int
    ignored: list[str]

    def experiment_dir(self, experiment: str) -> str:
        return posixpath.join(self.dest, experiment)


def parse_experiments(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError("--experiments is empty", hint="give names, e.g. --experiments baseline,wide")
    for n in names:
        if not _EXPERIMENT.match(n):
            raise UsageError(f"bad experiment name {n!r}", hint="letters, digits, '.', '_', '-'")
    if len(set(names)) != len(names):
        raise UsageError("an experiment name is repeated in --experiments")
    return names


def read_ignore_file(source: Path) -> list[str]:
    try:
        lines = (source / IGNORE_FILE).read_text().splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def is_ignored(relpath: str, patterns: list[str]) -> bool:
    """gitignore-like: a pattern matches the name of any path component, or the whole relative path."""
    parts = relpath.split("/")
    for pat in patterns:
        pat = pat.rstrip("/")
        if "/" in pat:
            if fnmatch.fnmatch(relpath, pat.lstrip("/")) or relpath.startswith(pat.lstrip("/") + "/"):
                return True
        elif any(fnmatch.fnmatch(part, pat) for part in parts):
            return True
    return False


def plan_template(source: str, experiments: list[str], dest: str | None, extra_ignores: list[str]) -> TemplatePlan:
    """Walk the template and decide what goes (pure apart from reading the directory)."""
    src = Path(source).expanduser()
    if not src.is_dir():
        raise UsageError(f"template {source} is not a directory")
    patterns = list(DEFAULT_IGNORES) + read_ignore_file(src) + list(extra_ignores)
    files: list[str] = []
    ignored: list[str] = []
    total = 0
    for root, dirs, names in os.walk(src):
        rel_root = os.path.relpath(root, src)
        rel_root = "" if rel_root == "." else rel_root.replace(os.sep, "/")
        keep: list[str] = []
        for d in sorted(dirs):
            rel = f"{rel_root}/{d}" if rel_root else d
            (ignored if is_ignored(rel, patterns) else keep).append(rel)
        dirs[:] = [posixpath.basename(r) for r in keep]
        for n in sorted(names):
            rel = f"{rel_root}/{n}" if rel_root else n
            if is_ignored(rel, patterns):
                ignored.append(rel)
                continue
            path = src / rel
            if path.is_symlink() or path.is_file():
                files.append(rel)
                total += path.lstat().st_size
    if not files:
        raise UsageError(f"template {source} has no files to copy (all ignored?)")
    name = src.resolve().name or "template"
    return TemplatePlan(source=src, dest=dest or f"~/.migrate/runs/{name}", experiments=experiments, files=files,
                        total_bytes=total, ignored=ignored)


def pack(plan: TemplatePlan) -> bytes:
    """A gzipped tar of the template's files (symlinks kept as links)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for rel in plan.files:
            tar.add(str(plan.source / rel), arcname=rel, recursive=False)
    return buf.getvalue()


def remote_path(path: str) -> str:
    """A remote path as a shell word, with a leading ~/ expanded by the remote shell."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return shell.home_path(path[2:])
    return shell.quote(path)


def existing_check_command(plan: TemplatePlan) -> str:
    """Prints the experiment directories that already exist on the host."""
    words = " ".join(remote_path(plan.experiment_dir(e)) for e in plan.experiments)
    return f'for d in {words}; do [ -e "$d" ] && printf "%s\\n" "$d"; done; true'


def unpack_command(plan: TemplatePlan, archive: str) -> str:
    """Create each experiment directory and unpack the archive into it, then delete the archive."""
    steps = []
    for e in plan.experiments:
        d = remote_path(plan.experiment_dir(e))
        steps.append(f"mkdir -p {d} && tar -xzf {shell.quote(archive)} -C {d}")
    return " && ".join(steps) + f"; rc=$?; rm -f {shell.quote(archive)}; exit $rc"
