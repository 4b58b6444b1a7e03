"""The one grammar for sizes and rates on the command line (docs/cli.md).

Units are binary and case-insensitive: `K`, `KB`, `KiB` are 1024 bytes, `M`/`MB`/`MiB` 1024², `G`, `T`
likewise; `B` is bytes. A number without a unit is in the flag's stated unit: bytes for sizes
(`--checkpoint`), MiB for `--min-free-mem`, KiB/s for rates (`--bwlimit 500`, as rsync reads it).
A rate may end in `/s`; `100mbit`, `1gbit`, `64kbit` (also `…bit/s`) are decimal bits per second,
as link speeds are written, converted to bytes per second.
"""

from __future__ import annotations

import re

from migrate.errors import UsageError

KIB = 1024
MIB = KIB * 1024
GIB = MIB * 1024
TIB = GIB * 1024

_BYTE_UNITS = {"": None, "b": 1, "k": KIB, "m": MIB, "g": GIB, "t": TIB}
_BIT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
_NUMBER = r"(\d+(?:\.\d+)?)"
_SIZE = re.compile(_NUMBER + r"\s*(?:([kmgt])i?b?|(b))?", re.IGNORECASE)
_RATE = re.compile(_NUMBER + r"\s*(?:(?:([kmgt])i?b?|(b))|(?:([kmg]?)bits?))?\s*(?:/\s*s(?:ec)?)?", re.IGNORECASE)

SIZE_HINT = "e.g. 64M, 1.5GiB, 512K (binary units) or a plain number"
RATE_HINT = "e.g. 20M or 20MiB/s (bytes/s, binary units), 100mbit (bits/s), or a plain number of KiB/s"


def _byte_factor(letter: str | None, b: str | None, plain: float) -> float:
    unit = (letter or b or "").lower()
    factor = _BYTE_UNITS[unit]
    return plain if factor is None else factor


def parse_size(text: str | int, *, what: str = "size", plain: int = 1) -> int:
    """Bytes from `64M`, `1.5GiB`, `512k`, `4096` (a plain number counts `plain` bytes each); a UsageError otherwise."""
    if isinstance(text, int) and not isinstance(text, bool):
        value = float(text) * plain
    else:
        m = _SIZE.fullmatch(str(text).strip())
        if not m:
            raise UsageError(f"{what}: cannot read size {text!r}", hint=SIZE_HINT)
        value = float(m.group(1)) * _byte_factor(m.group(2), m.group(3), plain)
    if value < 0:
        raise UsageError(f"{what} cannot be negative")
    return int(value)


def parse_rate(text: str, *, what: str = "--bwlimit", minimum: float = KIB) -> float:
    """Bytes per second from `20M`, `20MiB/s`, `500K`, `500` (KiB/s), `100mbit`; a UsageError otherwise.

    Zero is refused (leave the option out for no limit), and so is anything under `minimum` (1 KiB/s).
    """
    m = _RATE.fullmatch(str(text).strip())
    if not m:
        raise UsageError(f"{what}: bad rate {text!r}", hint=RATE_HINT)
    number = float(m.group(1))
    if m.group(4) is not None:  # bits per second, decimal prefixes
        value = number * _BIT_UNITS[m.group(4).lower()] / 8
    else:
        value = number * _byte_factor(m.group(2), m.group(3), KIB)
    if value < minimum:
        raise UsageError(f"{what} {text!r} is {'zero' if value == 0 else 'too low'}",
                         hint=f"give at least {format_rate(minimum)}, or leave {what} out for no limit")
    return value


def rate_kib(rate: float) -> int:
    """A rate in bytes/s as rsync's `--bwlimit` integer (KiB/s, at least 1)."""
    return max(1, round(rate / KIB))


def format_rate(rate: float) -> str:
    """20971520 -> '20 MiB/s' (binary, at most one decimal, trailing .0 dropped)."""
    for unit, factor in (("GiB/s", GIB), ("MiB/s", MIB), ("KiB/s", KIB)):
        if rate >= factor:
            return f"{rate / factor:.1f}".removesuffix(".0") + f" {unit}"
    return f"{rate:.0f} B/s"


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?\s*[smhd]?\s*)+", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_HINT = "e.g. 90 (seconds), 30s, 10m, 2h, 1h30m, 1d"


def parse_duration(text: str | int | float, *, what: str = "duration") -> float:
    """Seconds from `90`, `30s`, `10m`, `1.5h`, `1h30m`, `1d` (a plain number is seconds); a UsageError otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip()
        if not s or not _DURATION.fullmatch(s):
            raise UsageError(f"{what}: cannot read duration {text!r}", hint=DURATION_HINT)
        value = sum(float(n) * _SECONDS[u.lower()] for n, u in _DURATION_PART.findall(s))
    if value <= 0:
        raise UsageError(f"{what} must be more than zero", hint=DURATION_HINT)
    return value
