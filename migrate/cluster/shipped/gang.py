"""migrate's driver for one job across servers (shipped to ~/.migrate/ray/bin/migrate-ray-gang.py).

usage: <ray venv>/bin/python migrate-ray-gang.py --nodes N --gpus-per-node K [--cpus-per-node C]
       [--master-port P] [--cwd DIR] -- COMMAND

Submitted as the Ray job itself. It reserves N nodes at once with a STRICT_SPREAD placement group
(one bundle per node: K GPUs, C CPUs), so the ranks start all or none, then runs COMMAND once per
bundle through the polite wrapper with MASTER_ADDR (the IP of bundle 0's node), MASTER_PORT,
NODE_RANK, NNODES, NPROC_PER_NODE (K, at least 1) and WORLD_SIZE (NNODES x NPROC_PER_NODE) set for
`torchrun`. When a rank fails, the others are cancelled and the job fails with its exit code.
"""

import argparse
import ctypes
import os
import signal
import subprocess
import sys
import time

import ray
from ray.util.placement_group import placement_group, placement_group_table
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

HERE = os.path.dirname(os.path.abspath(__file__))


def _die_with_parent() -> None:
    """Our rank's wrapper gets SIGTERM when its Ray worker dies (a cancelled rank, a lost node), and stops
    its whole process group: nothing of the rank is left behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setsid()


def run_rank(rank: int, env: dict, cwd: str, command: str) -> int:
    full = dict(os.environ, **env)
    argv = [sys.executable, os.path.join(HERE, "migrate-ray-job.py"), "--cwd", cwd, "--", command]
    proc = subprocess.Popen(argv, env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            preexec_fn=_die_with_parent)
    assert proc.stdout is not None
    for raw in proc.stdout:
        print(f"[rank {rank}] {raw.decode(errors='replace').rstrip()}", flush=True)
    return proc.wait()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--cpus-per-node", type=float, default=1)
    p.add_argument("--master-port", type=int, default=29500)
    p.add_argument("--cwd", default="~")
    p.add_argument("command", nargs=argparse.REMAINDER)
    a = p.parse_args()
    command = " ".join(c for c in a.command if c != "--") if len(a.command) > 2 else a.command[-1]
    ray.init(log_to_driver=True)
    bundle = {"CPU": a.cpus_per_node}
    if a.gpus_per_node:
        bundle["GPU"] = a.gpus_per_node
    pg = placement_group([dict(bundle) for _ in range(a.nodes)], strategy="STRICT_SPREAD")
    t0 = time.time()
    while True:
        ready, _ = ray.wait([pg.ready()], timeout=30)
        if ready:
            break
        print(f"migrate: waiting for {a.nodes} nodes with {bundle} each ({time.time() - t0:.0f} s)", flush=True)
    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    table = placement_group_table(pg)["bundles_to_node_id"]
    ips = [nodes[table[i]] for i in range(a.nodes)]
    print(f"migrate: {a.nodes} nodes reserved: {', '.join(ips)}", flush=True)
    nproc = max(1, a.gpus_per_node)
    remote = ray.remote(run_rank)
    refs = {}
    for i in range(a.nodes):
        env = {"MASTER_ADDR": ips[0], "MASTER_PORT": str(a.master_port), "NODE_RANK": str(i),
               "NNODES": str(a.nodes), "NPROC_PER_NODE": str(nproc), "WORLD_SIZE": str(a.nodes * nproc),
               "MIGRATE_NODE_IP": ips[i]}
        opts = remote.options(num_cpus=a.cpus_per_node, num_gpus=a.gpus_per_node, max_retries=0,
                              scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=i))
        refs[opts.remote(i, env, a.cwd, command)] = i
    pending = list(refs)
    code = 0
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        rank = refs[done[0]]
        try:
            rc = ray.get(done[0])
        except Exception as exc:  # the rank's node died, or it was cancelled
            print(f"migrate: rank {rank} failed: {type(exc).__name__}", flush=True)
            rc = 1
        if rc != 0:
            print(f"migrate: rank {rank} exited {rc}; stopping the other ranks", flush=True)
            for ref in pending:
                ray.cancel(ref, force=True)
            code = rc
            break
    print(f"migrate: all ranks done, exit {code}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
