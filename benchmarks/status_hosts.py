#!/usr/bin/env python3
"""`status -H` over several hosts vs the same number of single `status` calls, one after the other (issue 22).

    MIGRATE_SANDBOX=... .venv/bin/python benchmarks/status_hosts.py [--counts 3,8] [--rounds 5] [--up]

Uses the sandbox MIGRATE_SANDBOX names (its hosts <name>1..N; `--up` runs `migrate sandbox up N`
first). Each host gets one finished CPU job first, so every `status` reads a real queue through the
agent. Then, per count N, `--rounds` times each (median reported, wall clock of whole CLI processes,
as a person or a script sees them):

- sequential: `migrate status HOST` for each of the N hosts, one after the other;
- parallel:   `migrate status -H HOST1 ... -H HOSTN` (one process, hosts asked in parallel).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import as_installed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIGRATE = [sys.executable, "-m", "migrate"]


def cli(*args: str) -> float:
    """Run `migrate ARGS`; its wall time in seconds (a failure stops the benchmark)."""
    t0 = time.perf_counter()
    res = subprocess.run([*MIGRATE, *args], capture_output=True, text=True, cwd=ROOT)
    took = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"migrate {' '.join(args)} failed ({res.returncode}):\n{res.stderr}")
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="3,8", help="host counts to measure (comma-separated)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--up", action="store_true", help="bring the sandbox hosts up first")
    args = ap.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it
    counts = [int(c) for c in args.counts.split(",")]
    name = os.environ.get("MIGRATE_SANDBOX", "sandbox")
    hosts = [f"{name}{i}" for i in range(1, max(counts) + 1)]
    if args.up:
        cli("sandbox", "up", str(len(hosts)))
    for h in hosts:  # a queue on every host: `status` then reads it through the agent
        cli("run", h, "--gpus-per-job", "0", "--gpu-backend", "fake:/tmp/none", "--key", "bench-status", "--", "true")
    print(f"{'hosts':>5} {'sequential s':>13} {'status -H s':>12} {'speed-up':>9}   (median of {args.rounds} rounds)")
    for n in counts:
        chosen = hosts[:n]
        seq, par = [], []
        for _ in range(args.rounds):
            seq.append(sum(cli("status", h) for h in chosen))
            par.append(cli("status", *[a for h in chosen for a in ("-H", h)]))
        s, p = statistics.median(seq), statistics.median(par)
        print(f"{n:>5} {s:>13.2f} {p:>12.2f} {s / p:>8.1f}x")


if __name__ == "__main__":
    main()
