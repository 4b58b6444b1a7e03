"""The sandbox's mock NVML library (`libnvidia-ml.so.1` with no GPU behind it) and its build.

`mocknvml.c` is compiled with gcc into one library per driver generation (`state.VARIANTS`):
v3 has every process-list call, v2 lacks the `_v3` ones and the v2 memory struct (R470-like),
v1 also lacks the `_v2` process calls. The builds are cached by a hash of the source and flags.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("mocknvml.c")
FLAGS = {"v1": ["-DMOCK_NO_V3", "-DMOCK_NO_V2"], "v2": ["-DMOCK_NO_V3"], "v3": []}
CFLAGS = ["-std=c99", "-D_POSIX_C_SOURCE=200809L", "-U_FORTIFY_SOURCE", "-O2", "-Wall", "-fPIC", "-shared",
          "-Wl,-soname,libnvidia-ml.so.1"]


class BuildError(Exception):
    """gcc is missing or the build failed."""


def build_id() -> str:
    """12 hex digits that change with the source or the flags."""
    h = hashlib.sha256(SOURCE.read_bytes())
    h.update(repr((CFLAGS, FLAGS)).encode())
    return h.hexdigest()[:12]


def compile_command(variant: str, out: Path) -> list:
    return ["gcc", *CFLAGS, *FLAGS[variant], "-o", str(out), str(SOURCE)]


def build(cache: Path) -> dict:
    """{variant: path of libnvidia-ml-VARIANT.so}, compiled into `cache/BUILD_ID/` unless already there."""
    out_dir = Path(cache) / build_id()
    libs = {v: out_dir / f"libnvidia-ml-{v}.so" for v in FLAGS}
    if all(p.is_file() for p in libs.values()):
        return libs
    if shutil.which("gcc") is None:
        raise BuildError("gcc is not installed (it compiles the sandbox's mock NVML library); "
                         "apt-get install gcc libc6-dev (scripts/bootstrap does)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for variant, path in libs.items():
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        proc = subprocess.run(compile_command(variant, tmp), capture_output=True, text=True)
        if proc.returncode != 0:
            raise BuildError(f"gcc failed on {SOURCE.name} ({variant}): {proc.stderr.strip()[-500:]}")
        tmp.replace(path)
    for old in Path(cache).iterdir():  # builds of older sources
        if old.is_dir() and old != out_dir:
            shutil.rmtree(old, ignore_errors=True)
    return libs
