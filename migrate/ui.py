"""The one place that talks to the terminal: messages, tables, progress bars and --json output.

Data (tables, JSON) goes to stdout; status lines, warnings and errors go to stderr, so that
`migrate doctor h --json | jq` and scripts that parse stdout keep working while people still see
what is happening.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from migrate.units import format_rate

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)
if not out.is_terminal and "COLUMNS" not in os.environ:
    out.width = 140  # logs and pipes: do not squeeze tables into 80 columns

_verbosity = 0

VERDICT_STYLES = {
    "ok": "green",
    "changed": "yellow",
    "skipped": "cyan",
    "warn": "yellow",
    "missing": "red",
    "failed": "bold red",
    "info": "blue",
    "sent": "yellow",
    "up to date": "green",
    "would send": "cyan",
}


@contextmanager
def data_to_stderr() -> Iterator[None]:
    """Send tables meant for stdout to stderr for a while (a verb run inside another, e.g. by apply),
    so that the outer command's stdout stays one clean table or JSON document."""
    global out
    saved = out
    out = err
    try:
        yield
    finally:
        out = saved


def set_verbosity(level: int) -> None:
    """Set how chatty `debug` is (0 = quiet, 1 = commands, 2 = everything)."""
    global _verbosity
    _verbosity = level


def verbosity() -> int:
    """The current verbosity level."""
    return _verbosity


def info(message: str) -> None:
    """A status line for people (stderr)."""
    err.print(Text(message))


def step(message: str) -> None:
    """A status line that starts a unit of work."""
    err.print(Text("• ", style="bold") + Text(message))


def warn(message: str) -> None:
    """A warning (stderr)."""
    err.print(Text("warning: ", style="bold yellow") + Text(message))


def deprecated(message: str) -> None:
    """One line on stderr about an old spelling that still works for now (never wrapped)."""
    err.print(Text("deprecated: ", style="bold yellow") + Text(message), soft_wrap=True)


def error(message: str) -> None:
    """An error line (stderr); exactly one line for user mistakes."""
    err.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)


def debug(message: str, level: int = 1) -> None:
    """Shown only with -v (level 1) or -vv (level 2)."""
    if _verbosity >= level:
        err.print(Text(message, style="dim"))


def verdict_text(verdict: str) -> Text:
    """A coloured ok / changed / warn / missing / failed word."""
    return Text(verdict, style=VERDICT_STYLES.get(verdict, ""))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Print a table to stdout. Cells named 'verdict'/'result'/'state' are coloured."""
    t = Table(title=title, title_justify="left", show_lines=False)
    for c in columns:
        t.add_column(c, overflow="fold")
    coloured = {i for i, c in enumerate(columns) if c.lower() in ("verdict", "result", "state")}
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            if i in coloured and isinstance(cell, str):
                cells.append(verdict_text(cell))
            else:
                cells.append(cell if isinstance(cell, Text) else Text("" if cell is None else str(cell)))
        t.add_row(*cells)
    out.print(t)


def print_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


class BinaryBytesColumn(ProgressColumn):
    """`1.5/4.0 GiB`: bytes done and total in binary units, as the tables count (rich's own column is decimal)."""

    def render(self, task: Task) -> Text:
        done = human_bytes(task.completed)
        if task.total is None:
            return Text(done, style="progress.download")
        return Text(f"{done}/{human_bytes(task.total)}", style="progress.download")


class BinaryRateColumn(ProgressColumn):
    """`20 MiB/s` (binary units; `?` before the first measurement)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("?" if speed is None else format_rate(speed), style="progress.data.speed")


def transfer_progress(transient: bool = False) -> Progress:
    """A progress bar for byte transfers: bytes, rate, ETA (stderr)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        BinaryBytesColumn(),
        BinaryRateColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=transient,
    )


def host_progress(transient: bool = False) -> Progress:
    """One live line per host: spinner, host, what it is doing now, elapsed time (stderr).

    Add a host with `add_task(description, host=NAME, total=1)`; update its description as the
    work moves on; `update(task, completed=1)` stops its spinner.
    """
    return Progress(
        SpinnerColumn(finished_text="-"),
        TextColumn("[bold]{task.fields[host]}"),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=err,
        transient=transient,
    )


def line(text: str, style: str | None = None) -> None:
    """One line of data output (stdout), e.g. a --dry-run plan."""
    out.print(Text(text, style=style or ""))


def human_bytes(n: float | int | None) -> str:
    """1536 -> '1.5 KiB'."""
    if n is None:
        return "?"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
