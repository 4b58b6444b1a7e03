#!/usr/bin/env python3
"""push-data benchmark: migrate vs the plain pipelines, in one run, as ratios.

    .venv/bin/python benchmarks/push_data.py [--host sandbox1] [--quick] [--repeat 1] [--cases abc]
                                             [--drop-caches]

Needs a sandbox host (`migrate sandbox up 1`) or any host migrate can reach. Cases:
  (a) 1 GiB in a few big files (random data, like images or packed shards)
  (b) 100k x 4 KiB files (a typical small-file dataset)
  (c) a no-op re-sync of (b)
Pipelines: `rsync -r` (the seed's command), `rsync -a`, `tar | ssh | tar`, and `migrate push-data`
(auto, plus --method rsync and --method parallel for the record). The plain pipelines use the same
host, port, key and known_hosts as migrate, with OpenSSH's default cipher (what a user typing them
gets); migrate offers AES-GCM first where the CPU has AES-NI. For transparency case (a) also runs
`rsync -a` with migrate's cipher preference. Prints a Markdown table with times and speed-ups.
"""

from __future__ import annotations

import argparse
import os
import resource
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import as_installed  # noqa: E402
from migrate.data.rsync import rsh_join  # noqa: E402
from migrate.remote.connection import connect  # noqa: E402
from migrate.remote.openssh import AES_GCM_FIRST  # noqa: E402


def make_big(root: Path, total_mib: int, files: int = 4) -> None:
    root.mkdir(parents=True)
    per = total_mib // files
    for i in range(files):
        with open(root / f"shard-{i:02d}.bin", "wb") as fh:
            for _ in range(per):
                fh.write(os.urandom(1 << 20))


def make_small(root: Path, count: int, size: int = 4096) -> None:
    """Every file its own random bytes: slices of one shared blob would let a compressor with a window
    of a few hundred KiB (zstd's) send each file as a reference to the one before, which no real
    dataset of JPEGs or shards allows."""
    root.mkdir(parents=True)
    per_dir = 1000
    for i in range(count):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir()
        (d / f"f{i:06d}.bin").write_bytes(os.urandom(size))


CPU: dict[str, list[float]] = {}  # pipeline -> CPU seconds of this machine's processes, per run


def timed(cmd: str, env: dict | None = None, name: str = "") -> float:
    """Wall seconds of `cmd`; the CPU its processes used here (rsync, ssh, tar, migrate) goes to CPU[name]:
    on a machine other jobs share, CPU varies much less than wall time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {cmd}\n{proc.stderr[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if name:
        CPU.setdefault(name, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("MIGRATE_BENCH_HOST", "sandbox1"))
    ap.add_argument("--quick", action="store_true", help="256 MiB and 20k files instead of 1 GiB and 100k")
    ap.add_argument("--repeat", type=int, default=1, help="rounds for (b) and (c) (median is reported)")
    ap.add_argument("--rounds-big", type=int, default=3,
                    help="rounds for (a): short runs are the noisiest, so they get more (median is reported)")
    ap.add_argument("--cases", default="abc", help="which cases to run, e.g. a (default: abc)")
    ap.add_argument("--big-mib", type=int, default=None,
                    help="total MiB for (a), in 4 files (default: 1024, or 256 with --quick)")
    ap.add_argument("--small-files", type=int, default=None,
                    help="file count for (b) and (c) (default: 100k, or 20k with --quick)")
    ap.add_argument("--pipelines", default=None,
                    help="comma-separated subset of pipeline names to run, e.g. 'rsync -a,migrate --method rsync'")
    ap.add_argument("--workdir", default=None, help="where to create the local test data")
    ap.add_argument("--drop-caches", action="store_true",
                    help="drop the page cache before every run (root; this machine's), then read every pipeline's "
                         "programs back in: each run reads its source from the disk, as a dataset not touched for "
                         "a while is read, with tools used recently; runs of many small files stop swinging with "
                         "what an earlier run left cached")
    args = ap.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it

    big_mib, small_n = (256, 20_000) if args.quick else (1024, 100_000)
    small_n = args.small_files or small_n
    big_mib = args.big_mib or big_mib
    work = Path(args.workdir or tempfile.mkdtemp(prefix="migrate-bench-pd-"))
    remote_base = f"/tmp/migrate-bench-pd-{os.getpid()}"
    migrate = [sys.executable, "-m", "migrate"]
    with connect(args.host) as remote:
        ssh_argv = remote.openssh_argv()
        rsh = rsh_join(ssh_argv[:-1])
        ssh = shlex.join(ssh_argv)
        alias = remote.target.alias

        def clean(path: str) -> None:
            """Remove a destination and flush dirty pages (both sides share this machine's disk in the
            sandbox), so a run does not pay for the writeback of the previous one."""
            remote.run(f"rm -rf {shlex.quote(path)}; sync")
            os.sync()

        def cold_data() -> None:
            """--drop-caches, just before a timed run: the data cold, the tools warm (as after any recent
            use): every pipeline's programs are read back in, migrate's modules for push-data included."""
            if args.drop_caches:
                Path("/proc/sys/vm/drop_caches").write_text("3\n")
                subprocess.run(["bash", "-c", "rsync --version; ssh -V; tar --version; "
                                + shlex.join([*migrate, "push-data", "--help"])], capture_output=True)

        print(f"# preparing data in {work} ({big_mib} MiB big files, {small_n} small files)", file=sys.stderr)
        if "a" in args.cases:
            make_big(work / "big", big_mib)
        if "b" in args.cases or "c" in args.cases:
            make_small(work / "small", small_n)
        results: dict[str, dict[str, float]] = {}

        def measure(case: str, names: list[str], src: Path, rounds: int) -> None:
            """Round-robin: every pipeline once per round, so drift in machine load hits all alike."""
            times: dict[str, list[float]] = {n: [] for n in names}
            for r in range(rounds):
                for name in names:
                    # a new DEST each round: a first copy (migrate remembers the DESTs it pushed to, and a
                    # re-push to one removed since costs its check an exec: not what a first copy is)
                    dest = f"{remote_base}/{case[0]}{r}-{''.join(ch for ch in name if ch.isalnum())}"
                    clean(dest)
                    cold_data()
                    times[name].append(timed(pipelines[name](str(src), dest), name=f"{case}/{name}"))
                    clean(dest)
            for name in names:
                med = statistics.median(times[name])
                results.setdefault(case, {})[name] = med
                runs = " ".join(f"{t:.2f}" for t in times[name])
                cpu = statistics.median(CPU[f"{case}/{name}"])
                print(f"# {case:<24} {name:<28} {med:8.2f}s  (runs: {runs}; local CPU {cpu:.2f}s)", file=sys.stderr)

        q = shlex.quote
        pipelines = {
            "rsync -r (seed)": lambda s, d: f"rsync -r -e {q(rsh)} {q(s)}/ {q(alias + ':' + d)}/",
            "rsync -a": lambda s, d: f"rsync -a -e {q(rsh)} {q(s)}/ {q(alias + ':' + d)}/",
            "rsync -a, AES-GCM": lambda s, d: f"rsync -a -e {q(rsh + ' -o Ciphers=' + AES_GCM_FIRST)} {q(s)}/ "
                                              f"{q(alias + ':' + d)}/",
            "tar | ssh | tar": lambda s, d: (f"tar -C {q(s)} -cf - . | {ssh} "
                                             f"{q(f'mkdir -p {q(d)} && tar -C {q(d)} -xf -')}"),
            "migrate push-data": lambda s, d: shlex.join([*migrate, "push-data", s, f"{alias}:{d}"]),
            "migrate --method rsync": lambda s, d: shlex.join([*migrate, "push-data", s, f"{alias}:{d}",
                                                               "--method", "rsync"]),
            "migrate --method stream": lambda s, d: shlex.join([*migrate, "push-data", s, f"{alias}:{d}",
                                                                "--method", "stream"]),
            "migrate --method parallel": lambda s, d: shlex.join([*migrate, "push-data", s, f"{alias}:{d}",
                                                                  "--method", "parallel", "--streams", "4"]),
        }
        if args.pipelines:
            wanted = [n.strip() for n in args.pipelines.split(",")]
            unknown = [n for n in wanted if n not in pipelines]
            if unknown:
                raise SystemExit(f"unknown pipeline(s) {unknown}; choose from {list(pipelines)}")
            every = dict(pipelines)
            pipelines.clear()
            pipelines.update({n: every[n] for n in wanted})
        remote.run(f"mkdir -p {shlex.quote(remote_base)}")
        try:
            if "a" in args.cases:
                measure("a) big files", list(pipelines), work / "big", args.rounds_big)
            if "b" in args.cases:
                measure("b) many small files", [n for n in pipelines if "AES" not in n], work / "small", args.repeat)
            # (c) no-op re-sync: the destination already holds (b)
            for name in [n for n in ("rsync -r (seed)", "rsync -a", "migrate push-data") if n in pipelines] \
                    if "c" in args.cases else ():
                dest = f"{remote_base}/c-noop"
                clean(dest)
                timed(pipelines["rsync -a"](str(work / "small"), dest))
                if name == "rsync -r (seed)":  # the seed's copy has no times: its re-sync sends everything again
                    clean(dest)
                    timed(pipelines["rsync -r (seed)"](str(work / "small"), dest))
                remote.run("sync")
                times = []
                for _ in range(args.repeat):
                    cold_data()
                    times.append(timed(pipelines[name](str(work / "small"), dest)))
                results.setdefault("c) no-op re-sync of b", {})[name] = statistics.median(times)
                print(f"# c) no-op re-sync            {name:<28} {statistics.median(times):8.2f}s", file=sys.stderr)
        finally:
            clean(remote_base)
            shutil.rmtree(work, ignore_errors=True)

    print("\n| case | pipeline | seconds | vs rsync -r | vs rsync -a | local CPU s |\n|---|---|---|---|---|---|")
    for case, row in results.items():
        base_r = row.get("rsync -r (seed)")
        base_a = row.get("rsync -a")
        for name, sec in row.items():
            vr = f"{base_r / sec:.2f}x" if base_r else "-"
            va = f"{base_a / sec:.2f}x" if base_a else "-"
            cpu = CPU.get(f"{case}/{name}")
            print(f"| {case} | {name} | {sec:.2f} | {vr} | {va} | {statistics.median(cpu):.2f} |" if cpu
                  else f"| {case} | {name} | {sec:.2f} | {vr} | {va} | |")
    a, b, c = (results.get(k) for k in ("a) big files", "b) many small files", "c) no-op re-sync of b"))
    print("\nTargets:")
    for case in (a, b):
        for name in ("migrate push-data", "migrate --method rsync"):
            if case and "rsync -a" in case and name in case:
                label = "(a)" if case is a else "(b)"
                print(f"- {label} {name} >= 1.0x rsync -a: {case['rsync -a'] / case[name]:.2f}x")
    if b and "rsync -r (seed)" in b and "migrate push-data" in b:
        print(f"- (b) migrate >= 1.5x rsync -r: {b['rsync -r (seed)'] / b['migrate push-data']:.2f}x")
    if c and "migrate push-data" in c:
        print(f"- (c) no-op re-sync < 3 s: {c['migrate push-data']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
