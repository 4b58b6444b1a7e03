#!/usr/bin/env python3
"""push-data benchmark: migrate vs the plain pipelines, in one run, as ratios.

    .venv/bin/python benchmarks/push_data.py [--host sandbox1] [--quick] [--repeat 1]

Needs a sandbox host (`migrate sandbox up 1`) or any host migrate can reach. Cases:
  (a) 1 GiB in a few big files (random data, like images or packed shards)
  (b) 100k x 4 KiB files (a typical small-file dataset)
  (c) a no-op re-sync of (b)
Pipelines: `rsync -r` (the seed's command), `rsync -a`, `tar | ssh | tar`, and `migrate push-data`
(auto, plus --method rsync and --method parallel for the record). Every pipeline uses the same ssh
options (migrate's, so the same cipher). Prints a Markdown table with times and speed-ups.
"""

from __future__ import annotations

import argparse
import os
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

from migrate.data.rsync import rsh_join  # noqa: E402
from migrate.remote.connection import connect  # noqa: E402


def make_big(root: Path, total_mib: int, files: int = 4) -> None:
    root.mkdir(parents=True)
    per = total_mib // files
    for i in range(files):
        with open(root / f"shard-{i:02d}.bin", "wb") as fh:
            for _ in range(per):
                fh.write(os.urandom(1 << 20))


def make_small(root: Path, count: int, size: int = 4096) -> None:
    root.mkdir(parents=True)
    per_dir = 1000
    blob = os.urandom(size * 64)
    for i in range(count):
        d = root / f"d{i // per_dir:04d}"
        if i % per_dir == 0:
            d.mkdir()
        off = (i * 97) % (len(blob) - size)
        (d / f"f{i:06d}.bin").write_bytes(blob[off:off + size])


def timed(cmd: str, env: dict | None = None) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {cmd}\n{proc.stderr[-2000:]}")
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("MIGRATE_BENCH_HOST", "sandbox1"))
    ap.add_argument("--quick", action="store_true", help="256 MiB and 20k files instead of 1 GiB and 100k")
    ap.add_argument("--repeat", type=int, default=1, help="runs per pipeline (median is reported)")
    ap.add_argument("--workdir", default=None, help="where to create the local test data")
    args = ap.parse_args()

    big_mib, small_n = (256, 20_000) if args.quick else (1024, 100_000)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="migrate-bench-pd-"))
    remote_base = f"/tmp/migrate-bench-pd-{os.getpid()}"
    migrate = [sys.executable, "-m", "migrate"]
    with connect(args.host) as remote:
        ssh_argv = remote.openssh_argv()
        rsh = rsh_join(ssh_argv[:-1])
        ssh = shlex.join(ssh_argv)
        alias = remote.target.alias

        def clean(path: str) -> None:
            remote.run(f"rm -rf {shlex.quote(path)}")

        print(f"# preparing data in {work} ({big_mib} MiB big files, {small_n} small files)", file=sys.stderr)
        make_big(work / "big", big_mib)
        make_small(work / "small", small_n)
        results: dict[str, dict[str, float]] = {}

        def run(case: str, name: str, src: Path, build, fresh: bool = True) -> None:
            times = []
            for _ in range(args.repeat):
                dest = f"{remote_base}/{case[0]}-{''.join(ch for ch in name if ch.isalnum())}"
                if fresh:
                    clean(dest)
                cmd = build(str(src), dest)
                times.append(timed(cmd))
            results.setdefault(case, {})[name] = statistics.median(times)
            print(f"# {case:<24} {name:<28} {statistics.median(times):8.2f}s", file=sys.stderr)

        q = shlex.quote
        pipelines = {
            "rsync -r (seed)": lambda s, d: f"rsync -r -e {q(rsh)} {q(s)}/ {q(alias + ':' + d)}/",
            "rsync -a": lambda s, d: f"rsync -a -e {q(rsh)} {q(s)}/ {q(alias + ':' + d)}/",
            "tar | ssh | tar": lambda s, d: (f"tar -C {q(s)} -cf - . | {ssh} "
                                             f"{q(f'mkdir -p {q(d)} && tar -C {q(d)} -xf -')}"),
            "migrate push-data": lambda s, d: shlex.join([*migrate, "push-data", s, f"{alias}:{d}"]),
            "migrate --method rsync": lambda s, d: shlex.join([*migrate, "push-data", s, f"{alias}:{d}",
                                                               "--method", "rsync"]),
            "migrate --method parallel": lambda s, d: shlex.join([*migrate, "push-data", s, f"{alias}:{d}",
                                                                  "--method", "parallel", "--streams", "4"]),
        }
        remote.run(f"mkdir -p {shlex.quote(remote_base)}")
        try:
            for name, build in pipelines.items():
                run("a) big files", name, work / "big", build)
            for name, build in pipelines.items():
                run("b) many small files", name, work / "small", build)
            # (c) no-op re-sync: the destination already holds (b)
            for name in ("rsync -r (seed)", "rsync -a", "migrate push-data"):
                dest = f"{remote_base}/c-noop"
                clean(dest)
                timed(pipelines["rsync -a"](str(work / "small"), dest))
                if name == "rsync -r (seed)":  # the seed's copy has no times: its re-sync sends everything again
                    clean(dest)
                    timed(pipelines["rsync -r (seed)"](str(work / "small"), dest))
                times = [timed(pipelines[name](str(work / "small"), dest)) for _ in range(args.repeat)]
                results.setdefault("c) no-op re-sync of b", {})[name] = statistics.median(times)
                print(f"# c) no-op re-sync            {name:<28} {statistics.median(times):8.2f}s", file=sys.stderr)
        finally:
            clean(remote_base)
            shutil.rmtree(work, ignore_errors=True)

    print("\n| case | pipeline | seconds | vs rsync -r | vs rsync -a |\n|---|---|---|---|---|")
    for case, row in results.items():
        base_r = row.get("rsync -r (seed)")
        base_a = row.get("rsync -a")
        for name, sec in row.items():
            vr = f"{base_r / sec:.2f}x" if base_r else "-"
            va = f"{base_a / sec:.2f}x" if base_a else "-"
            print(f"| {case} | {name} | {sec:.2f} | {vr} | {va} |")
    a, b, c = results["a) big files"], results["b) many small files"], results["c) no-op re-sync of b"]
    print("\nTargets:")
    print(f"- (a) migrate >= 1.0x rsync -a: {a['rsync -a'] / a['migrate push-data']:.2f}x")
    print(f"- (b) migrate >= 1.5x rsync -r: {b['rsync -r (seed)'] / b['migrate push-data']:.2f}x")
    print(f"- (c) no-op re-sync < 3 s: {c['migrate push-data']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
