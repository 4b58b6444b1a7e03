"""Counting what a verb asks of a host: one line per SSH connection and per round trip.

With `MIGRATE_COUNT_ROUND_TRIPS=FILE` in the environment, every place that opens a connection or
starts something on a host appends one tab-separated line to FILE: `KIND<TAB>HOST<TAB>WHAT`. KIND is

- `connect`: a new SSH connection (paramiko's, or an OpenSSH ControlMaster / plain `ssh` process);
- `exec`: one remote command, i.e. one exec channel (paramiko `run`, an `ssh HOST CMD` process,
  rsync's remote rsync, a tar or image stream);
- `sftp`: one SFTP request batch (a file written with pipelined requests);
- `ping`: one line and its answer over a session already open (push-data's round-trip check over
  its held destination probe).

Nothing is written without the variable, so the cost is one environment lookup. Lines are appended
with O_APPEND in one write, so threads (several hosts) and child processes do not interleave them.
`tests/integration/test_round_trips.py` asserts each verb's counts; docs/performance.md lists them.
"""

from __future__ import annotations

import os
from collections import Counter

ENV = "MIGRATE_COUNT_ROUND_TRIPS"
KINDS = ("connect", "exec", "sftp", "ping")


def note(kind: str, host: str, what: str = "") -> None:
    """Record one connection or round trip to `host` when counting is on (see the module doc)."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = "\t".join((kind, host, " ".join((what or "").split())[:200])) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode("utf-8", "replace"))
    finally:
        os.close(fd)


def tally(text: str) -> Counter:
    """Count the lines of a counting file by KIND (`{'connect': 1, 'exec': 2}`)."""
    return Counter(line.split("\t", 1)[0] for line in text.splitlines() if line.strip())
