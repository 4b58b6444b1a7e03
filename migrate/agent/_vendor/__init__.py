"""Third-party code the agent ships: the pure-Python `pynvml` of nvidia-ml-py, pinned.

The module is not kept in this tree. `pyproject.toml` pins nvidia-ml-py to exactly
`PYNVML_VERSION`, and `migrate.jobs.bundle` copies the installed distribution's `pynvml.py`,
byte for byte, into the zipapp as `migrate_agent/_vendor/pynvml.py`: the same pin gives the same
bytes and so the same agent version on every laptop (two laptops with different agents would
replace each other's dispatcher on a shared host). Inside the zipapp `from ._vendor import pynvml`
finds that file; on the laptop (tests, `migrate.agent` run locally) the attribute below falls back
to the installed top-level `pynvml`. Upgrading is a change of the pin here and in pyproject.toml.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

PYNVML_VERSION = "13.615.71"
DISTRIBUTION = "nvidia-ml-py"


def __getattr__(name: str) -> Any:
    """`pynvml`: the copy shipped next to this file (zipapp), else the installed one (laptop)."""
    if name != "pynvml":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(__name__ + ".pynvml")
    except ModuleNotFoundError as exc:
        if exc.name != __name__ + ".pynvml":
            raise
        module = importlib.import_module("pynvml")
        sys.modules[__name__ + ".pynvml"] = module
    globals()["pynvml"] = module
    return module
