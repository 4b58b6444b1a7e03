"""Conda environments for push-env: packed here with conda-pack, unpacked on the host + `conda-unpack`.

A conda environment carries its own Python (and non-Python libraries), so the host's python3 only
runs migrate's probe. The environment is identified by its `conda-meta/*.json` records (one per
installed package build): the same records on the host mean "unchanged", nothing is sent. A change
sends the whole packed environment (conda-pack makes one relocatable archive, no per-package diff).
An `environment.yml` is first created here with conda, mamba or micromamba (once per file content).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import warnings
from pathlib import Path

from migrate import paths, ui
from migrate.errors import MigrateError

SUBDIRS = {"linux-64": "x86_64", "linux-aarch64": "aarch64", "linux-ppc64le": "ppc64le"}
KEEP_PACKS = 3   # packed environment states kept in the cache, the most recently used first
_LOCK = threading.Lock()


def identity(prefix: Path) -> str:
    """The lock text of a conda env: one `record sha256` line per conda-meta record, sorted."""
    meta = prefix / "conda-meta"
    lines = [f"{p.name} {hashlib.sha256(p.read_bytes()).hexdigest()}" for p in sorted(meta.glob("*.json"))]
    if not lines:
        raise MigrateError(f"{prefix} has no conda-meta/*.json records: not a conda environment")
    return "".join(line + "\n" for line in lines)


def machine(prefix: Path) -> str:
    """The machine the env's packages are built for ('' when no record says)."""
    for p in sorted((prefix / "conda-meta").glob("*.json")):
        subdir = json.loads(p.read_text()).get("subdir", "")
        if subdir in SUBDIRS:
            return SUBDIRS[subdir]
    return ""


def pack(prefix: Path, lock_text: str) -> Path:
    """The conda-pack tar of `prefix`, cached by its identity (packed once per environment state)."""
    out = paths.cache_root() / "conda-packs" / f"{hashlib.sha256(lock_text.encode()).hexdigest()[:24]}.tar"
    with _LOCK:
        if out.exists():
            os.utime(out)       # used now: the pruning below keeps it
            return out
        try:
            import conda_pack
        except ImportError:
            raise MigrateError("pushing a conda environment needs conda-pack here",
                               hint="pip install conda-pack (or pip install 'migrate[conda]')") from None
        paths.private_dir(out.parent)
        ui.step(f"packing {prefix} with conda-pack (once per environment state)")
        part = out.with_suffix(".part")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                conda_pack.pack(prefix=str(prefix), output=str(part), format="tar", force=True,
                                ignore_editable_packages=True)
            for w in caught:  # e.g. "packages without entries in the package cache" after `conda clean`
                ui.debug(f"conda-pack: {' '.join(str(w.message).split())}")
        except conda_pack.CondaPackException as exc:
            raise MigrateError(f"conda-pack refused {prefix}: {str(exc).splitlines()[0]}",
                               hint="conda-pack packs what conda installed; see its message") from None
        part.rename(out)
        prune(out.parent, keep=KEEP_PACKS)
    return out


def prune(cache: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` most recently used packs (each is a whole environment, often GBs);
    an unfinished `.part` of a run still packing is left alone. Returns what was deleted."""
    packs = sorted(cache.glob("*.tar"), key=lambda p: p.stat().st_mtime, reverse=True)
    gone = []
    for old in packs[keep:]:
        try:
            old.unlink()
            gone.append(old)
            ui.debug(f"conda-pack cache: deleted {old.name} (keeping the {keep} most recently used)")
        except FileNotFoundError:
            pass
    return gone


def create_from_yml(yml: Path) -> Path:
    """Create the environment of an environment.yml here (once per file content) and return its prefix."""
    tool = next((t for t in ("micromamba", "mamba", "conda") if shutil.which(t)), None)
    if tool is None:
        raise MigrateError(f"{yml.name} needs conda, mamba or micromamba here to build the environment once",
                           hint="or activate the environment and push it with --from-current")
    digest = hashlib.sha256(yml.read_bytes()).hexdigest()[:24]
    prefix = paths.cache_root() / "conda-envs" / digest
    with _LOCK:
        if (prefix / "conda-meta").is_dir():
            return prefix
        ui.step(f"creating the environment of {yml} with {tool} into {prefix} (once)")
        argv = [tool, "env", "create", "-y", "-p", str(prefix), "-f", str(yml)] if tool == "micromamba" else \
            [tool, "env", "create", "-p", str(prefix), "-f", str(yml)]
        res = subprocess.run(argv, capture_output=True, text=True)
        if res.returncode != 0:
            shutil.rmtree(prefix, ignore_errors=True)
            last = (res.stderr.strip() or res.stdout.strip() or "?").splitlines()[-1]
            raise MigrateError(f"{tool} could not create {yml.name}: {last}")
    return prefix
