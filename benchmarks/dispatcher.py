#!/usr/bin/env python3
"""Dispatcher benchmark: job start latency, idle CPU, `status` with 10k jobs, in one run.

    .venv/bin/python benchmarks/dispatcher.py [--quick] [--host sandbox1]

Runs the shipped agent zipapp on THIS machine (real daemon, real job processes, real SQLite) with
the real NVML backend and pynvml over the sandbox's mock NVML library (compiled here with gcc): a
real `sleep` process is listed on the mock GPU, and the benchmark frees the GPU by ending it (the
library, like the driver, stops listing a process that exited).
With --host it also times `status` over SSH on that host (in a throw-away directory under /tmp).

1. Start latency after a GPU frees, two ways:
   (a) another user's process leaves the GPU (its pidfd wakes the dispatcher; the 1 s NVML poll
       is the fallback);
   (b) our previous job on that GPU exits (SIGCHLD wakes the dispatcher).
   Baseline, computed on the same run's timeline: the seed script polled every 2 s and slept 30 s
   after each launch, so (a) waits for the next poll (1 s median, best case: no launch in the last
   30 s) and (b) waits out the sleep (30 s minus the previous job's run time).
2. Dispatcher CPU (user+sys from /proc) while idle, and while a GPU job waits for a busy GPU.
3. `status` with 10,000 jobs in the queue: the default view and `--all` (JSON for all 10k),
   compared with the floor of starting python3 at all.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migrate.agent.db import Queue  # noqa: E402
from migrate.jobs.bundle import build_agent  # noqa: E402
from migrate.sandbox.mocknvml import state as mstate  # noqa: E402
from tests.mocknvml_helpers import MockNvml  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
SEED_POLL_S = 2.0
SEED_SLEEP_S = 30.0


class Agent:
    """The zipapp with a private MIGRATE_AGENT_HOME (and HOME, so job shells read no profile)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.home = work / "home"
        self.home.mkdir(parents=True)
        self.pyz = work / build_agent().filename
        self.pyz.write_bytes(build_agent().data)
        self.mock = MockNvml(work / "mock-nvml", gpus=1)
        self.env = self.mock.env(dict(os.environ, MIGRATE_AGENT_HOME=str(self.home), HOME=str(work)))
        self.env.pop("MIGRATE_MOCK_NVML_LOG")  # no per-call log: it would slow every NVML call
        self.holder = None  # type: subprocess.Popen | None

    def run(self, *args: str, stdin: str | None = None) -> dict:
        res = subprocess.run([sys.executable, "-I", "-S", str(self.pyz), *args], input=stdin, capture_output=True,
                             text=True, env=self.env, timeout=120)
        data = json.loads(res.stdout.strip().splitlines()[-1])
        if not data.get("ok"):
            raise SystemExit(f"agent {args[0]} failed: {data}")
        return data

    def gpus(self, busy: bool) -> None:
        """Busy: a real process holds 20 GiB on the mock GPU. Free: that process ends."""
        if busy and self.holder is None:
            self.holder = subprocess.Popen(["sleep", "3600"])
            state = mstate.fresh(1)
            mstate.add_process(state, "0", self.holder.pid, 20480)
            self.mock.write(state)
        elif not busy and self.holder is not None:
            self.holder.kill()
            self.holder.wait()
            self.holder = None

    def submit(self, commands: list[str]) -> list[int]:
        payload = json.dumps({"jobs": [{"command": c} for c in commands]})
        data = self.run("submit", "--backend", "nvml", "--mode", "setsid", stdin=payload)
        return [j["id"] for j in data["jobs"]]

    def jobs(self) -> dict[int, dict]:
        return {j["id"]: j for j in self.run("status", "--all")["jobs"]}

    def wait(self, predicate, timeout: float = 60) -> dict[int, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if predicate(jobs):
                return jobs
            time.sleep(0.05)
        raise SystemExit("benchmark timed out waiting for the dispatcher")

    def daemon_pid(self) -> int:
        return int(json.loads((self.home / "dispatcher" / "agent.pid").read_text())["pid"])

    def stop(self) -> None:
        self.gpus(busy=False)
        subprocess.run([sys.executable, "-I", "-S", str(self.pyz), "stop"], env=self.env, capture_output=True,
                       timeout=60)


def wait_file(path: Path, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.01)
    raise SystemExit(f"benchmark: {path} never appeared")


def latency_foreign(agent: Agent, trials: int) -> list[float]:
    """(a) a foreign process leaves; the job's own first instruction stamps the start."""
    out = []
    rnd = random.Random(1)
    for i in range(trials):
        agent.gpus(busy=True)
        stamp = agent.work / f"start-a{i}"
        (job,) = agent.submit([f"date +%s.%N > {stamp}"])
        agent.wait(lambda js, j=job: "in use by" in js[j]["reason"])
        time.sleep(rnd.uniform(0, 1.0))  # free the GPU at a random phase of the dispatcher's poll
        freed = time.time()
        agent.gpus(busy=False)
        out.append(float(wait_file(stamp)) - freed)
        agent.wait(lambda js, j=job: js[j]["state"] == "done")
    return out


def latency_own(agent: Agent, trials: int, run_s: float) -> tuple[list[float], list[float]]:
    """(b) jobs back to back on one GPU: next start minus previous end; also each job's run time."""
    agent.gpus(busy=False)
    trace = agent.work / "trace-b"
    cmd = f'echo "start $(date +%s.%N)" >> {trace}; sleep {run_s}; echo "end $(date +%s.%N)" >> {trace}'
    ids = agent.submit([cmd] * (trials + 1))
    agent.wait(lambda js: all(js[i]["state"] == "done" for i in ids), timeout=60 + trials * (run_s + 5))
    starts, ends = [], []
    for line in trace.read_text().splitlines():
        what, t = line.split()
        (starts if what == "start" else ends).append(float(t))
    gaps = [s - e for s, e in zip(starts[1:], ends[:-1])]
    runs = [e - s for s, e in zip(starts, ends)]
    return gaps, runs


def seed_latency_own(runs: list[float]) -> list[float]:
    """The seed launched, slept 30 s, then polled every 2 s: a job shorter than 30 s leaves the GPU idle."""
    return [SEED_SLEEP_S - r if r < SEED_SLEEP_S else SEED_POLL_S / 2 for r in runs[:-1]]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_percent(pid: int, seconds: float) -> str:
    """CPU of a process over a window, as '% of a core' (with the clock-tick resolution when it is 0)."""
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu_seconds(pid) - c0, time.monotonic() - t0
    if used == 0:
        return f"0 ticks in {wall:.0f} s (< {100.0 / CLK_TCK / wall:.3f} % of a core)"
    return f"{100.0 * used / wall:.3f} % of a core"


def fill_queue(home: Path, total: int, unfinished: int) -> None:
    """`total` jobs, all but `unfinished` of them finished, written straight into a fresh queue."""
    (home / "dispatcher").mkdir(parents=True, exist_ok=True)
    q = Queue(str(home / "dispatcher" / "queue.db"))
    specs = [{"command": f"python train.py --lr 1e-3 --seed {i}", "name": f"sweep[seed={i}]", "gpus": 1,
              "env": {"WANDB_MODE": "offline"}} for i in range(total)]
    q.submit(specs)
    states = ("done", "failed", "cancelled")
    now = time.time()
    with q.transaction():
        q.conn.executemany(
            "UPDATE jobs SET state = ?, exit_code = ?, started_at = ?, ended_at = ?, attempt = 1, "
            "gpu_uuids = '[\"GPU-x\"]', gpu_indices = '[\"0\"]' WHERE id = ?",
            [(states[i % 3], i % 3, now - 3600, now - 60, i + 1) for i in range(total - unfinished)])
    q.set_meta("paused", "benchmark: nothing may start")
    q.close()


def timed(argv: list[str], env: dict, runs: int) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, env=env, capture_output=True, check=True, timeout=120)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def status_local(work: Path, total: int, runs: int) -> dict:
    home = work / "status-home"
    fill_queue(home, total, unfinished=40)
    pyz = work / build_agent().filename
    env = dict(os.environ, MIGRATE_AGENT_HOME=str(home))
    py = [sys.executable, "-I", "-S"]  # exactly how the client runs the agent on a host
    subprocess.run(py + [str(pyz), "version"], env=env, capture_output=True, check=True)  # unpack once
    return {
        "python3 -c pass": timed(py + ["-c", "pass"], env, runs),
        "agent version": timed(py + [str(pyz), "version"], env, runs),
        "status (default view)": timed(py + [str(pyz), "status"], env, runs),
        "status --all (10k as JSON)": timed(py + [str(pyz), "status", "--all"], env, runs),
        "_db": home / "dispatcher" / "queue.db",
    }


def status_remote(host: str, work: Path, db: Path, runs: int) -> dict:
    from migrate.remote import shell
    from migrate.remote.connection import connect

    remote_dir = f"/tmp/migrate-bench-dispatcher-{os.getpid()}"
    pyz = build_agent()
    with connect(host) as remote:
        remote.run(shell.mkdir_private(remote_dir) + " && " + shell.mkdir_private(remote_dir + "/home/dispatcher"))
        sftp = remote.connection.sftp()
        sftp.putfo(io.BytesIO(pyz.data), f"{remote_dir}/agent.pyz")
        sftp.put(str(db), f"{remote_dir}/home/dispatcher/queue.db")
        prefix = (f"MIGRATE_AGENT_HOME={shell.quote(remote_dir + '/home')} "
                  f"python3 -I -S {shell.quote(remote_dir + '/agent.pyz')}")

        def median(cmd: str) -> float:
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                remote.run(cmd)
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        try:
            remote.run(prefix + " version")  # the first call unpacks the zipapp
            return {"ssh round trip (true)": median("true"),
                    "status over ssh (default view)": median(prefix + " status"),
                    "status --all over ssh (10k JSON)": median(prefix + " status --all >/dev/null")}
        finally:
            remote.run(shell.join(["rm", "-rf", remote_dir]), check=False)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer trials, shorter CPU windows (about 1 minute)")
    ap.add_argument("--host", default=None, help="also time status over SSH on this host (e.g. sandbox1)")
    ap.add_argument("--jobs", type=int, default=10_000, help="jobs in the queue for the status timing")
    args = ap.parse_args()
    trials = 5 if args.quick else 12
    window = 10.0 if args.quick else 30.0
    runs = 5 if args.quick else 9
    work = Path(tempfile.mkdtemp(prefix="migrate-bench-disp-"))
    agent = Agent(work)
    try:
        print(f"[bench] start latency, foreign process leaves ({trials} trials)", file=sys.stderr)
        lat_a = latency_foreign(agent, trials)
        print(f"[bench] start latency, previous job ends ({trials} trials)", file=sys.stderr)
        lat_b, runs_b = latency_own(agent, trials, run_s=1.0)
        pid = agent.daemon_pid()
        print(f"[bench] dispatcher CPU idle ({window:.0f} s)", file=sys.stderr)
        cpu_idle = cpu_percent(pid, window)
        agent.gpus(busy=True)
        (waiting,) = agent.submit(["true"])
        agent.wait(lambda js: "in use by" in js[waiting]["reason"])
        print(f"[bench] dispatcher CPU with a GPU job waiting ({window:.0f} s)", file=sys.stderr)
        cpu_wait = cpu_percent(pid, window)
        agent.gpus(busy=False)
        agent.stop()
        print(f"[bench] status with {args.jobs} jobs ({runs} runs each)", file=sys.stderr)
        st = status_local(work, args.jobs, runs)
        remote = status_remote(args.host, work, st.pop("_db"), runs) if args.host else {}
    finally:
        agent.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    seed_a = SEED_POLL_S / 2
    seed_b = med(seed_latency_own(runs_b))
    rows = [
        ("start latency, foreign process leaves (median)", f"{med(lat_a):.2f} s", "<= 0.2 s",
         f"{seed_a:.2f} s (2 s poll, best case)", f"{seed_a / med(lat_a):.1f}x"),
        ("start latency, foreign process leaves (max)", f"{max(lat_a):.2f} s", "", "2.00 s", ""),
        ("start latency, previous job ends (median)", f"{med(lat_b) * 1000:.0f} ms", "<= 2 s",
         f"{seed_b:.1f} s (30 s sleep after launch)", f"{seed_b / med(lat_b):.0f}x"),
        ("dispatcher CPU, idle", cpu_idle, "< 1 %", "", ""),
        ("dispatcher CPU, GPU job waiting (pidfd + 1 Hz poll)", cpu_wait, "", "", ""),
    ]
    floor = st["python3 -c pass"]
    for name in ("agent version", "status (default view)", "status --all (10k as JSON)"):
        rows.append((f"{name}, {args.jobs} jobs in the queue" if "status" in name else name,
                     f"{st[name] * 1000:.0f} ms", "< 200 ms" if name == "status (default view)" else "",
                     f"python3 -c pass: {floor * 1000:.0f} ms", f"{st[name] / floor:.1f}x the floor"))
    if remote:
        rt = remote["ssh round trip (true)"]
        for name in ("status over ssh (default view)", "status --all over ssh (10k JSON)"):
            rows.append((f"{name}, {args.host}", f"{remote[name] * 1000:.0f} ms", "",
                         f"ssh round trip: {rt * 1000:.0f} ms", f"{remote[name] / rt:.1f}x"))
    print("| measurement | migrate | target | baseline | ratio |")
    print("|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\nlatencies (a): {', '.join(f'{x:.2f}' for x in lat_a)} s; (b): "
          f"{', '.join(f'{x * 1000:.0f}' for x in lat_b)} ms; job run times (b): median {med(runs_b):.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
