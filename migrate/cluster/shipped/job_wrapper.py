"""migrate's polite wrapper around every Ray job's command (shipped to ~/.migrate/ray/bin/migrate-ray-job.py).

usage: python migrate-ray-job.py [--cwd DIR] -- COMMAND

Ray hands the job its GPUs in CUDA_VISIBLE_DEVICES (from those the node offered at `cluster up`).
Before COMMAND starts, the wrapper asks migrate's agent on this host for its GPU view (the same
free-GPU rule as the dispatcher: `migrate-agent gpus`): while one of those GPUs carries another
user's process (or is reserved by a job of the host's own dispatcher, or is busy with memory nobody
shows), it waits and says so in the job's log instead of sharing the GPU. Then it prints a
`[migrate] job N started ... on <node-ip>, GPU i (UUID) [t=<epoch>]` line, sets CUDA_VISIBLE_DEVICES
to the assigned GPUs' UUIDs (as a host job gets them), and runs COMMAND under /bin/sh in DIR (default: $HOME), in
a process group of its own. It stays COMMAND's parent as a watchdog: stop signals (Ray stopping the
job) go to the whole group; when the Ray process that started it dies (`ray stop`, a node's Ray
killed) it stops the group; and a small guard process stops the group if the wrapper itself is
SIGKILLed (Ray does that to a dead worker's children). So no job keeps a GPU after its node left the
cluster or its gang was cancelled. While COMMAND runs, a private record of it (pid, process group,
cwd, environment without Ray's own RAY_* variables) sits in ~/.migrate/ray/run/ (0700, files 0600):
`migrate shell/exec CLUSTER JOB` finds the job there (shipped/enter_job.py). Stdlib only; python >= 3.8.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

POLL_S = float(os.environ.get("MIGRATE_POLITE_POLL_S", "5"))
RUN_DIR = "~/.migrate/ray/run"   # one record per running command, read by `migrate shell/exec CLUSTER JOB`


def record_path(cluster: str, job: str, rank: str) -> str:
    """Where the record of this job's command (rank `rank` of a gang, "0" otherwise) lives on this node."""
    return os.path.join(os.path.expanduser(RUN_DIR), f"{cluster}-{job}-{rank}.json")


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks (/proc/PID/stat field 22): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def job_environment(env: dict) -> dict:
    """The job's environment as a shell in it gets it: everything but Ray's own variables (pure)."""
    return {k: v for k, v in env.items() if not k.startswith(("RAY_", "_RAY"))}


def write_record(pid: int, cwd: str) -> str:
    """Record the running command privately (0600 in a 0700 dir); its path, or "" when not a migrate job."""
    cluster, job = os.environ.get("MIGRATE_CLUSTER"), os.environ.get("MIGRATE_JOB_ID")
    if not cluster or not job:
        return ""
    path = record_path(cluster, job, os.environ.get("NODE_RANK", "0"))
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        os.chmod(os.path.dirname(path), 0o700)
        data = {"pid": pid, "pgid": pid, "ticks": start_ticks(pid), "cwd": cwd, "started": time.time(),
                "env": job_environment(dict(os.environ))}
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
        return path
    except OSError as exc:
        print(f"migrate: cannot record the job for `migrate shell` ({exc})", flush=True)
        return ""


def remove_record(path: str) -> None:
    if path:
        try:
            os.unlink(path)
        except OSError:
            pass


def node_ip() -> str:
    """The address this node has towards the head (RAY_ADDRESS is the head's GCS in a Ray job)."""
    if os.environ.get("MIGRATE_NODE_IP"):
        return os.environ["MIGRATE_NODE_IP"]
    host, _, port = os.environ.get("RAY_ADDRESS", "").rpartition(":")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host or "192.0.2.1", int(port or 9)))
            return s.getsockname()[0]
    except (OSError, ValueError):
        return socket.gethostbyname(socket.gethostname())


def stop_group(group: int, grace: float = 5) -> None:
    """SIGTERM COMMAND's process group, SIGKILL after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except OSError:
            return
        if sig == signal.SIGTERM:
            time.sleep(grace)


GUARD_PY = """
import os, signal, sys, time
group, wrapper = int(sys.argv[1]), int(sys.argv[2])
def alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except OSError:
        return False
while alive(group):
    if os.getppid() != wrapper:          # the wrapper is gone (Ray SIGKILLs a dead worker's children)
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 0)):
            try:
                os.killpg(group, sig)
            except OSError:
                break
            end = time.time() + wait
            while alive(group) and time.time() < end:
                time.sleep(0.2)
        break
    time.sleep(0.5)
"""


def guard(group: int) -> None:
    """A tiny process that stops COMMAND's group if this wrapper is killed outright.

    Ray SIGKILLs the direct children of a worker that exits (a cancelled rank, a stopped job), which
    would leave COMMAND running without us; the guard notices (it is reparented) and stops the group.
    It exits by itself once the group is empty."""
    subprocess.Popen([sys.executable, "-I", "-S", "-c", GUARD_PY, str(group), str(os.getpid())],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)


def run(command: str, cwd: str) -> int:
    """COMMAND in its own process group, our child; its exit code (128+N for a signal).

    Stop signals to us (Ray stopping the job) go to COMMAND's whole group; if the Ray process that
    started us dies, we stop the group ourselves; if we are killed outright, the guard does."""
    parent = os.getppid()
    child = subprocess.Popen(["/bin/sh", "-c", command], cwd=cwd, start_new_session=True)
    group = child.pid
    guard(group)
    record = write_record(child.pid, cwd)
    try:
        return watch(child, group, parent)
    finally:
        remove_record(record)


def watch(child: subprocess.Popen, group: int, parent: int) -> int:
    """Wait for COMMAND as its watchdog (see `run`)."""

    def forward(signum, frame):
        try:
            os.killpg(group, signum)
        except OSError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait(timeout=1)
            return code if code >= 0 else 128 - code
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent:  # Ray's process for this job is gone
            print("migrate: Ray stopped this job's worker (node lost or ray stop): stopping the job", flush=True)
            stop_group(group)


def gpu_view() -> list:
    """The agent's `gpus` answer (devices with verdicts), or [] when there is no agent to ask."""
    agent = os.path.expanduser(os.environ.get("MIGRATE_AGENT", ""))
    if not agent or not os.path.isfile(agent):
        return []
    args = ["python3", "-I", "-S", agent, "gpus"]
    if os.environ.get("MIGRATE_GPU_BACKEND"):
        args += ["--backend", os.environ["MIGRATE_GPU_BACKEND"]]
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=60).stdout
        return json.loads(out.strip().splitlines()[-1]).get("devices", [])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return []


def why_not(device: dict, me: str, need_mib=None, allow_shared: bool = False) -> str:
    """Why this GPU must not be used now ("" = ours to use). As the dispatcher admits: with
    --min-free-mem N it needs N MiB free; --allow-shared (which needs --min-free-mem) also takes a GPU
    that only other people's processes or memory keep busy, when N MiB fit."""
    free = device.get("free_mib")
    if need_mib is not None and (free is None or free < need_mib):
        return f"{'?' if free is None else free} MiB free, the job needs {need_mib} MiB (--min-free-mem)"
    if device.get("verdict") == "reserved":
        return f"job {device.get('reserved_by')} of this host's dispatcher holds it"
    if allow_shared and need_mib is not None:
        return ""
    foreign = [p for p in device.get("processes") or [] if p.get("user") != me]
    if foreign:
        p = foreign[0]
        return f"process {p.get('pid')} of user {p.get('user')} runs on it"
    if device.get("verdict") == "busy" and not device.get("processes"):
        return device.get("reason") or "busy"
    return ""


def wait_for_gpus(assigned: list, need_mib=None, allow_shared: bool = False) -> dict:
    """Wait until every assigned GPU is ours to use; the GPU view (index -> device) seen then."""
    import getpass

    me = getpass.getuser()
    said = ""
    while True:
        view = {str(d.get("index")): d for d in gpu_view()}
        blocked = [(i, why_not(view[i], me, need_mib, allow_shared)) for i in assigned if i in view]
        blocked = [(i, w) for i, w in blocked if w]
        if not blocked:
            if said:
                print(f"migrate: GPU(s) {','.join(assigned)} free again, starting", flush=True)
            return view
        line = "; ".join(f"GPU {i}: {w}" for i, w in blocked)
        if line != said:
            print(f"migrate: waiting, not sharing: {line}", flush=True)
            said = line
        time.sleep(POLL_S)


# a copy of migrate/agent/launch.py's (this file is shipped alone); a unit test keeps them equal
CONDA_ACTIVATE_D = ('for f in "$CONDA_PREFIX"/etc/conda/activate.d/*.sh; do [ -r "$f" ] && . "$f"; done; '
                    'unset f; ')


def activate_env(env: dict, home: str, command: str):
    """`run CLUSTER --env NAME` (issue 21): put ~/.migrate/envs/NAME (pushed to every node by the client
    before submitting) first on PATH, with VIRTUAL_ENV, or CONDA_PREFIX for a conda env (whose
    etc/conda/activate.d/*.sh scripts then run before COMMAND, as `conda activate` runs them), as the
    host agent's launch.activate does. Changes `env` in place; returns (command, error line when the env
    is missing on this node). The shell and exec records (write_record) carry the activated env."""
    name = env.get("MIGRATE_ENV")
    if not name:
        return command, None
    prefix = os.path.join(home, ".migrate", "envs", name)
    if not os.path.isdir(prefix):
        return command, (f"migrate: no environment {name} on this node (~/.migrate/envs/{name}); "
                         f"push it with: migrate push-env HOST --name {name} SOURCE")
    conda = os.path.isdir(os.path.join(prefix, "conda-meta"))
    env["CONDA_PREFIX" if conda else "VIRTUAL_ENV"] = prefix
    env["PATH"] = os.path.join(prefix, "bin") + os.pathsep + env.get("PATH", "")
    env.pop("PYTHONHOME", None)
    return (CONDA_ACTIVATE_D + command if conda else command), None


def main(argv: list) -> int:
    cwd = os.path.expanduser("~")
    if argv[:1] == ["--cwd"]:
        cwd, argv = os.path.expanduser(argv[1]), argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("migrate-ray-job: no command", file=sys.stderr)
        return 2
    command = argv[0] if len(argv) == 1 else " ".join(argv)
    command, missing = activate_env(os.environ, os.path.expanduser("~"), command)
    if missing:
        print(missing, file=sys.stderr, flush=True)
        return 127
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    assigned = [g for g in visible.split(",") if g.strip()]
    need = os.environ.get("MIGRATE_MIN_FREE_MEM_MIB", "")
    view = {}
    if assigned:
        view = wait_for_gpus(assigned, int(need) if need.isdigit() else None,
                             os.environ.get("MIGRATE_ALLOW_SHARED") == "1")
    os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    uuids = uuids_for(assigned, view)
    if uuids:   # as on one host: UUIDs name the same GPUs whatever the order or the numbering
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(uuids)
        os.environ["MIGRATE_GPU_INDICES"] = ",".join(assigned)
    print(start_line(os.environ.get("MIGRATE_JOB_ID", "?"), time.time(), node_ip(), assigned, uuids), flush=True)
    return run(command, cwd)


def uuids_for(assigned: list, view: dict) -> list:
    """The UUIDs of the GPUs Ray assigned (by index), or [] when any of them is unknown."""
    uuids = [str((view.get(i) or {}).get("uuid") or "") for i in assigned]
    return uuids if assigned and all(uuids) else []


def start_line(job: str, now: float, ip: str, assigned: list, uuids: list) -> str:
    """The job log's first line, worded as a host job's; `[t=EPOCH]` is for benchmarks/cluster.py."""
    where = (f"GPU {','.join(assigned)} ({','.join(uuids)})" if uuids else f"GPU {','.join(assigned)}") \
        if assigned else "no GPU (CPU job)"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    return f"[migrate] job {job} started {stamp} on {ip}, {where} [t={now:.3f}]"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
