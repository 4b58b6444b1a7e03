"""Conda environments for push-env: packed here with conda-pack, unpacked on the host + `conda-unpack`.

A conda environment carries its own Python (and non-Python libraries), so the host's python3 only
runs migrate's probe. The environment is identified by its `conda-meta/*.json` records (one per
installed package build): the same records on the host mean "unchanged", nothing is sent. A change
makes a new pack (conda-pack makes one relocatable archive, no per-package diff); push-env sends it
with rsync against the pack kept on the host from the last push, so about the changed packages' bytes
cross the link (conda-pack's tar keeps each unchanged file's header and bytes: same order, the files'
own mtimes, uid 0; only its generated conda-unpack helpers differ).
An `environment.yml` is first created here with conda, mamba or micromamba (once per file content).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
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


def pack_file(lock_text: str) -> Path:
    """Where the pack of this environment state is cached here (it may not exist yet)."""
    return paths.cache_root() / "conda-packs" / f"{hashlib.sha256(lock_text.encode()).hexdigest()[:24]}.tar"


def sizes(prefix: Path) -> tuple[int, int]:
    """(about the pack's bytes, about the unpacked environment's bytes on disk) of `prefix`: tar's
    512-byte headers and padding, and 4 KiB file system blocks (the host's space check before a push)."""
    tar_bytes = disk_bytes = 0
    for d, dirs, files in os.walk(prefix):
        for n in files + [x for x in dirs if os.path.islink(os.path.join(d, x))]:
            try:
                st = os.lstat(os.path.join(d, n))
            except OSError:
                continue
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            tar_bytes += 512 + -(-size // 512) * 512
            disk_bytes += -(-size // 4096) * 4096
        tar_bytes += 512 * len(dirs)
        disk_bytes += 4096 * len(dirs)
    return tar_bytes + 10240, disk_bytes


_SHA256: dict[tuple[str, int, int], str] = {}


def sha256(packed: Path) -> str:
    """The pack's sha256 (once per file: `pack` touches its mtime, a new pack is a new inode): the
    host checks the copy it keeps against it."""
    st = packed.stat()
    key = (str(packed), st.st_size, st.st_ino)
    with _LOCK:
        if key not in _SHA256:
            h = hashlib.sha256()
            with open(packed, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            _SHA256[key] = h.hexdigest()
        return _SHA256[key]


def pack(prefix: Path, lock_text: str) -> Path:
    """The conda-pack tar of `prefix`, cached by its identity (packed once per environment state)."""
    out = pack_file(lock_text)
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
