"""Benchmarks: one command each (see docs/performance.md)."""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def as_installed() -> None:
    """Write migrate's bytecode, as `pip install` does: from a source checkout with
    PYTHONDONTWRITEBYTECODE set (as on the CI machines), every `migrate` a benchmark times would
    otherwise compile its modules first (about 50 ms a run) where an installed migrate does not."""
    compileall.compile_dir(str(ROOT / "migrate"), quiet=1)
