#!/usr/bin/env python3
"""Cluster benchmark (issue 14): one sweep over three hosts, placed by Ray vs dealt round-robin vs one host.

    MIGRATE_SANDBOX=... .venv/bin/python benchmarks/cluster.py [--hosts H1 H2 H3] [--jobs 48] [--scale 3]
        [--keep-venv]

Three hosts offering 1, 2 and 4 GPU slots (FAKE GPUs: a JSON file per host, read by both the
dispatcher and migrate's polite job wrapper; each job sleeps, so a "GPU" is a slot). The same 48 jobs
of uneven length (seeded: 1-10 s times --scale, default 3: 3-30 s) run three ways, each measured for
real, one after the other:

1. `migrate cluster`: `cluster up` (timed; from cached wheels pushed to hosts whose venv was removed
   first, unless --keep-venv), all jobs submitted at once, Ray places them; makespan = first submit ->
   last job end (Ray's end_time). Then submit-to-running latency with free capacity: 10 single jobs,
   one at a time, from just before the POST to the `[migrate] job N started` line the wrapper prints; once
   through migrate's launcher (what `migrate run` does: a Ray task on a warm worker) and once as
   plain Ray jobs (a job supervisor process each), side by side.
2. round-robin per-host queues (today's `apply`): job k goes to host k mod 3's dispatcher.
3. one host: all 48 on the 4-slot host's dispatcher.
Makespan for 2 and 3 = first submit -> last `ended_at` the dispatchers record.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from migrate import ui  # noqa: E402
from migrate.agent.gpus import fake_state  # noqa: E402
from migrate.cluster import jobs as cluster_jobs  # noqa: E402
from migrate.cluster import ops, plan, state  # noqa: E402
from migrate.cluster.jobapi import job_api  # noqa: E402
from migrate.jobs.client import AgentClient, job_statuses, submit_jobs  # noqa: E402
from migrate.jobs.spec import DispatcherOptions, JobSpec  # noqa: E402
from migrate.remote.connection import connect  # noqa: E402
from migrate.remote.hosts import ConnectOptions  # noqa: E402

NAME = "bench"
FAKE = "/home/alice/.migrate/fake-gpus-bench.json"
BACKEND = f"fake:{FAKE}"
SLOTS = (1, 2, 4)
CONN = ConnectOptions()


def durations(n: int, scale: int) -> list[int]:
    rnd = random.Random(14)
    return [scale * rnd.choice([1, 1, 2, 2, 3, 4, 6, 10]) for _ in range(n)]


def prepare(hosts: list[str], keep_venv: bool) -> None:
    for host, slots in zip(hosts, SLOTS):
        with connect(host, CONN) as r:
            r.run(f"mkdir -p ~/.migrate && cat > {FAKE}", stdin=json.dumps(fake_state(slots)))
            if not keep_venv:
                r.run(f"{plan.stop_command()}; rm -rf ~/.migrate/ray", check=False)


def bench_cluster(hosts: list[str], secs: list[int]) -> dict:
    ops.down(NAME, CONN)
    t0 = time.monotonic()
    ops.up(ops.UpOptions(name=NAME, hosts=hosts, offline=True, gpu_backend=BACKEND), CONN)
    up_s = time.monotonic() - t0
    record = state.load(NAME)
    specs = [JobSpec(command=f"sleep {d}", name=f"b{i}", gpus=1) for i, d in enumerate(secs)]
    ids = state.next_job_ids(NAME, len(specs))
    with job_api(record, CONN) as api:
        start = time.time()
        for spec, jid in zip(specs, ids):
            api.submit(cluster_jobs.payload(record, spec, jid))
        wanted = {cluster_jobs.submission_id(NAME, j, 1) for j in ids}
        while True:
            mine = [j for j in api.jobs() if j["submission_id"] in wanted]
            if len(mine) == len(wanted) and all(j["status"] in ("SUCCEEDED", "FAILED", "STOPPED") for j in mine):
                break
            time.sleep(1)
        failed = [j["submission_id"] for j in mine if j["status"] != "SUCCEEDED"]
        makespan = max(j["end_time"] for j in mine) / 1000 - start
        hosts_by_node = cluster_jobs.node_hosts(record, api.nodes())
        per_host: dict[str, int] = {}
        for j in mine:
            h = hosts_by_node.get(j.get("driver_node_id") or "", "?")
            per_host[h] = per_host.get(h, 0) + 1
        latencies = start_latencies(api, record, 10)
        launcher = api.launcher
        api.launcher = None                       # the same jobs as plain Ray jobs
        plain = start_latencies(api, record, 10)
        api.launcher = launcher
    ops.down(NAME, CONN)
    return {"up_s": round(up_s, 1), "makespan_s": round(makespan, 1), "failed": failed, "per_host": per_host,
            "launcher": launcher is not None,
            "latency_median_s": round(statistics.median(latencies), 3),
            "latency_all_s": [round(x, 3) for x in latencies],
            "plain_ray_job_latency_median_s": round(statistics.median(plain), 3),
            "plain_ray_job_latency_all_s": [round(x, 3) for x in plain]}


def start_latencies(api, record, count: int) -> list[float]:
    """Submit `count` one-GPU `true` jobs one at a time; each: POST -> the wrapper's start line ([t=EPOCH])."""
    out = []
    for jid in state.next_job_ids(NAME, count):
        sub = time.time()
        sid = api.submit(cluster_jobs.payload(record, JobSpec(command="true", gpus=1), jid))
        while True:
            line = next((ln for ln in api.logs(sid).splitlines()
                         if ln.startswith("[migrate] job ") and "[t=" in ln), None)
            if line:
                out.append(float(line.rsplit("[t=", 1)[1].rstrip("]")) - sub)
                break
            time.sleep(0.02)
        while api.job(sid).get("status") not in ("SUCCEEDED", "FAILED", "STOPPED"):   # free capacity again
            time.sleep(0.05)
    return out


def bench_dispatchers(hosts: list[str], secs: list[int], assign: list[int], label: str) -> dict:
    """Submit job k to hosts[assign[k]]'s dispatcher, wait for all; makespan from the dispatchers' clocks."""
    options = DispatcherOptions(gpu_backend=BACKEND)
    groups: dict[int, list[JobSpec]] = {}
    for k, (d, h) in enumerate(zip(secs, assign)):
        groups.setdefault(h, []).append(JobSpec(command=f"sleep {d}", name=f"{label}{k}", gpus=1))
    start = time.time()
    ids = {h: {j.id for j in submit_jobs(hosts[h], CONN, specs, options)} for h, specs in groups.items()}
    ends = []
    for h, wanted in ids.items():
        while True:
            jobs = [j for j in job_statuses(hosts[h], CONN) if j["id"] in wanted]
            if all(j["state"] in ("done", "failed", "cancelled", "lost") for j in jobs):
                ends += [j["ended_at"] for j in jobs]
                break
            time.sleep(1)
    return {"makespan_s": round(max(ends) - start, 1), "per_host": {hosts[h]: len(s) for h, s in groups.items()}}


def stop_dispatchers(hosts: list[str]) -> None:
    for h in hosts:
        with connect(h, CONN) as r:
            AgentClient(r).call(["stop"], what="stop the dispatcher", need_queue=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hosts", nargs=3, default=None, help="three hosts (default: the current sandbox's 1..3)")
    p.add_argument("--jobs", type=int, default=48)
    p.add_argument("--scale", type=int, default=3, help="job lengths are 1-10 s times this")
    p.add_argument("--keep-venv", action="store_true", help="time `cluster up` with Ray already installed")
    a = p.parse_args()
    import os

    prefix = os.environ.get("MIGRATE_SANDBOX", "sandbox")
    hosts = a.hosts or [f"{prefix}{i}" for i in (1, 2, 3)]
    secs = durations(a.jobs, a.scale)
    ui.info(f"{a.jobs} jobs, {sum(secs)} s of work, hosts {', '.join(hosts)} offering {SLOTS} GPU slots "
            f"(ideal makespan on {sum(SLOTS)} slots >= {sum(secs) / sum(SLOTS):.1f} s)")
    prepare(hosts, a.keep_venv)
    result = {"jobs": a.jobs, "scale": a.scale, "work_s": sum(secs), "slots": dict(zip(hosts, SLOTS)),
              "ideal_makespan_s": round(sum(secs) / sum(SLOTS), 1)}
    result["cluster"] = bench_cluster(hosts, secs)
    ui.info(f"cluster: {result['cluster']}")
    result["round_robin"] = bench_dispatchers(hosts, secs, [k % 3 for k in range(a.jobs)], "rr")
    ui.info(f"round-robin: {result['round_robin']}")
    result["one_host"] = bench_dispatchers(hosts, secs, [2] * a.jobs, "one")
    ui.info(f"one host: {result['one_host']}")
    stop_dispatchers(hosts)
    c, rr, one = (result[k]["makespan_s"] for k in ("cluster", "round_robin", "one_host"))
    result["speedup_vs_round_robin"] = round(rr / c, 2)
    result["speedup_vs_one_host"] = round(one / c, 2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
