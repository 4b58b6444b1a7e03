"""`ui.debug` for the modules that reach hosts, without importing rich (migrate/ui.py) here:
migrate/early.py logs in from a thread while the CLI is still importing, and until the CLI has
loaded ui and set a verbosity there is nothing to say."""

from __future__ import annotations

import sys


def debug(message: str, level: int = 1) -> None:
    """Shown only with -v (level 1) or -vv (level 2), once the CLI has loaded ui."""
    ui = sys.modules.get("migrate.ui")
    say = getattr(ui, "debug", None)
    if say is not None:
        say(message, level=level)
