"""How many jobs one command may queue: counted from the grid before any job is built.

A sweep's size is the product of its value lists, so `lr: [..100], seed: [..100], wd: [..100]` is a
million jobs from a few lines of YAML. The size is computed first (no expansion, flat memory):
above `MAX_JOBS` the command is refused outright, above `CONFIRM_JOBS` it asks before queueing (on a
terminal) or needs `--yes` (scripts). Shared by `migrate run` and `migrate apply`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence

from migrate.errors import MigrateError, UsageError

MAX_JOBS = 10_000
CONFIRM_JOBS = 1_000


def sweep_size(sweep: Mapping[str, Sequence[str]] | None, experiments: int = 1) -> int:
    """The number of jobs a grid expands to, without expanding it (pure)."""
    return math.prod(len(v) for v in (sweep or {}).values()) * max(experiments, 1)


def check_job_count(n: int, what: str = "that") -> None:
    """Refuse more than MAX_JOBS jobs (before building them)."""
    if n > MAX_JOBS:
        raise UsageError(f"{what} is {n} jobs; the limit is {MAX_JOBS}",
                         hint="make the sweep smaller, or split it into several runs")


def confirm_many_jobs(n: int, *, where: str, yes: bool) -> None:
    """Ask before queueing more than CONFIRM_JOBS jobs: confirm on a terminal, refuse without one
    unless `yes` (`--yes`). Nothing has been queued when this raises."""
    if n <= CONFIRM_JOBS or yes:
        return
    if not sys.stdin.isatty():
        raise MigrateError(f"refusing to queue {n} jobs on {where} without confirmation "
                           f"(more than {CONFIRM_JOBS})",
                           hint="check the sweep; pass --yes to queue them from a script")
    import click

    if not click.confirm(f"Queue {n} jobs on {where}?", default=False, err=True):
        raise MigrateError(f"{n} jobs not confirmed; nothing was queued")
