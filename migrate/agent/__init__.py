"""The dispatcher agent: the part of migrate that runs ON the borrowed server.

It needs only python3 >= 3.8 and its standard library (plus the pure-Python `pynvml` module,
pinned in `_vendor/` and shipped in the zipapp, for real GPUs), because it is copied to a machine
that belongs to someone else and runs there for days. `migrate run` builds it into a versioned zipapp
(`~/.migrate/agent/migrate-agent-<version>.pyz`, see `migrate.jobs.bundle`); the client talks to
it by running that file with a subcommand over SSH (`submit`, `status`, `logs`, ...).

Keep this package free of Python >= 3.9 syntax and library calls (a unit test compiles it for 3.8
and runs it under python3.8 when available), and import nothing from the rest of `migrate`:
modules here use relative imports only, so the same files work as `migrate.agent` locally and as
`migrate_agent` inside the zipapp.
"""

from __future__ import annotations

try:  # written into the zipapp by migrate.jobs.bundle
    from ._build import BUILD_VERSION as VERSION  # type: ignore[import-not-found]
except ImportError:  # running from a source checkout (tests)
    VERSION = "dev"

MIN_PYTHON = (3, 8)
