"""push-image's option values: the deprecated spellings `--bwlimit`/`--checkpoint` used to accept."""

from __future__ import annotations

import re
from collections.abc import Callable

from migrate import ui
from migrate.errors import UsageError
from migrate.units import format_rate

_OLD_GRAMMAR = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmg]?)(bit|b|bps)?\s*")


def old_value(text: str) -> float | None:
    """What push-image read `text` as before the shared grammar (decimal K/M/G, bytes), None if it refused it."""
    m = _OLD_GRAMMAR.fullmatch(text.lower())
    if not m:
        return None
    value = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)]
    if m.group(3) == "bit":
        value /= 8
    return value if value >= 1024 else None


def read_value(flag: str, text: str, parse: Callable[[str], float], *, rate: bool) -> float:
    """`text` in the shared grammar (migrate.units); one deprecation line where push-image read it otherwise.

    A value the shared grammar refuses but the old one read (`20mbps`) keeps its old meaning for this release.
    """
    old = old_value(text)
    if old is None:
        return parse(text)
    per = "/s" if rate else ""
    instead = (f"{old * 8 / 1e6:g}mbit" if old * 8 >= 1e6 else f"{old * 8 / 1e3:g}kbit") if rate else f"{old:.0f}"
    try:
        new = parse(text)
    except UsageError:
        ui.deprecated(f"{flag} {text} is read as {old:,.0f} B{per} (decimal units) for this release only; "
                      f"write {instead} (see docs/cli.md)")
        return old
    if round(old) != round(new):
        shown = format_rate(new) if rate else format_rate(new).removesuffix("/s")
        ui.deprecated(f"{flag} {text} now means {shown} (binary units, as in every verb); push-image used to "
                      f"read it as {old:,.0f} B{per}: write {instead} for that (see docs/cli.md)")
    return new
