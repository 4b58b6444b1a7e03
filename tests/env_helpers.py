"""A conda environment directory laid out as conda lays one out, for push-env tests.

No conda package can be reached on these machines, so the environment is written by hand: one
`conda-meta/<name>-<version>-<build>.json` record per package (name, version, build, subdir, files,
link.source pointing at a package cache that was cleaned, as after `conda clean`), `conda-meta/history`,
files that embed the build prefix (a script's shebang, a module constant) for conda-unpack to
rewrite. The one liberty: `bin/python` is a small sh launcher for the host's /usr/bin/python3 with
the env's site-packages on its path, where conda would have its own python binary.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

PY = "3.11"


def _record(prefix: Path, name: str, version: str, build: str, subdir: str, files: list[str]) -> None:
    rec = {"name": name, "version": version, "build": build, "build_number": 0, "subdir": subdir,
           "channel": f"https://conda.anaconda.org/conda-forge/{subdir}", "depends": [], "constrains": [],
           "fn": f"{name}-{version}-{build}.conda", "files": files,
           "link": {"source": f"/nonexistent/pkgs/{name}-{version}-{build}", "type": 1},
           "extracted_package_dir": f"/nonexistent/pkgs/{name}-{version}-{build}",
           "url": f"https://conda.anaconda.org/conda-forge/{subdir}/{name}-{version}-{build}.conda",
           "requested_spec": name, "license": "MIT", "timestamp": 0, "size": 1, "md5": "0" * 32}
    (prefix / "conda-meta" / f"{name}-{version}-{build}.json").write_text(json.dumps(rec, indent=2))


def make_conda_env(prefix: Path, *, tinypkg_version: str = "1.0", big_bytes: int = 0) -> Path:
    """Write the environment at `prefix` (its files embed `prefix`, as a real one's do). `big_bytes`: a
    package `bigpkg` with that many incompressible bytes, written once (the same bytes and mtime when
    only tinypkg changes, as conda leaves an unchanged package's files alone)."""
    (prefix / "conda-meta").mkdir(parents=True, exist_ok=True)
    (prefix / "bin").mkdir(exist_ok=True)
    site = prefix / "lib" / f"python{PY}" / "site-packages"
    (site / "tinypkg").mkdir(parents=True, exist_ok=True)
    (prefix / "conda-meta" / "history").write_text("==> 2026-01-01 00:00:00 <==\n# cmd: conda create\n")
    python = prefix / "bin" / "python"
    python.write_text('#!/bin/sh\nd=$(cd "$(dirname "$0")/.." && pwd)\n'
                      f'PYTHONPATH="$d/lib/python{PY}/site-packages${{PYTHONPATH:+:$PYTHONPATH}}" '
                      'exec /usr/bin/python3 "$@"\n')
    python.chmod(0o755)
    _record(prefix, "python", "3.11.2", "h0_0_cpython", "linux-64", ["bin/python"])
    (site / "tinypkg" / "__init__.py").write_text(f'VERSION = "{tinypkg_version}"\nPREFIX = "{prefix}"\n')
    script = prefix / "bin" / "tinypkg"
    script.write_text(f"#!{prefix}/bin/python\nimport tinypkg\nprint('tinypkg', tinypkg.VERSION, tinypkg.PREFIX)\n")
    script.chmod(0o755)
    if big_bytes:
        blob = prefix / "lib" / "bigpkg" / "data.bin"
        if not blob.exists() or blob.stat().st_size != big_bytes:
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(random.Random(big_bytes).randbytes(big_bytes))
            _record(prefix, "bigpkg", "2.0", "h0", "linux-64", ["lib/bigpkg/data.bin"])
    for old in (prefix / "conda-meta").glob("tinypkg-*.json"):
        old.unlink()
    _record(prefix, "tinypkg", tinypkg_version, "py_0", "noarch",
            ["bin/tinypkg", f"lib/python{PY}/site-packages/tinypkg/__init__.py"])
    return prefix
