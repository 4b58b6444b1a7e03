"""The agent on a node of a `migrate cluster`: the polite job wrapper, `enter` for shell/exec, the retry rule.

`cluster up` ships this agent's zipapp next to its scripts (~/.migrate/ray/bin/migrate-agent.pyz, the
same bytes as ~/.migrate/agent/), and the scripts there are thin: `migrate-ray-job.py` (the wrapper
around every cluster job's command, also each rank of a gang) calls `wrapper_main`, the launcher imports
`next_attempt` and the process-group stop, and `migrate shell/exec CLUSTER JOB` runs the agent's
`ray-enter` subcommand on the job's node. So the node side uses the agent's own process facts
(procs.py: start times, stopping a process group), private files (layout.py) and enter code (enter.py).

The wrapper: Ray hands the job its GPUs in CUDA_VISIBLE_DEVICES (from those the node offered at `cluster
up`). Before COMMAND starts, it asks the agent on this host for its GPU view (the dispatcher's free-GPU
rule: `migrate-agent gpus`): while one of those GPUs carries another user's process (or is reserved by a
job of the host's own dispatcher, or is busy with memory nobody shows), it waits and says so in the job's
log instead of sharing the GPU. Then it prints a `[migrate] job N started ... on <node-ip>, GPU i (UUID)
[t=<epoch>]` line, sets CUDA_VISIBLE_DEVICES to the assigned GPUs' UUIDs (as a host job gets them), and
runs COMMAND under /bin/sh in DIR (default: $HOME), in a process group of its own. It stays COMMAND's
parent as a watchdog: stop signals (Ray stopping the job) go to the whole group; when the Ray process that
started it dies (`ray stop`, a node's Ray killed) it stops the group; and a small guard process stops the
group if the wrapper itself is SIGKILLed (Ray does that to a dead worker's children). While COMMAND runs,
a private record of it (pid, process group, start time, cwd, environment without Ray's RAY_* variables)
sits in ~/.migrate/ray/run/ (0700, files 0600): `ray-enter` finds the job there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import MutableMapping
from typing import Any

from . import procs
from .layout import private_dir, read_json, write_private

POLL_S = float(os.environ.get("MIGRATE_POLITE_POLL_S", "5"))
RUN_DIR = "~/.migrate/ray/run"   # one record per running command, read by `ray-enter`
STOP_GRACE_S = 5                 # SIGTERM, then SIGKILL after this long


# -- the retry rule (the launcher on the head, and `migrate retry CLUSTER` on the laptop) -------------------
def submission_id(cluster: str, job_id: str, attempt: int) -> str:
    """Ray's submission id of attempt `attempt` of migrate job `job_id` on `cluster`."""
    return f"{cluster}-{job_id}" if attempt == 1 else f"{cluster}-{job_id}.{attempt}"


def next_attempt(job: dict, *, use_retry: bool) -> dict:
    """The submission of a job's next attempt: same entrypoint, resources and env, attempt + 1 (pure).
    `use_retry`: the attempt is one of its --retries (one fewer left), not a `migrate retry`."""
    meta = dict(job.get("metadata") or {})
    attempt = int(meta.get("migrate_attempt", "1")) + 1
    meta["migrate_attempt"] = str(attempt)
    if use_retry:
        meta["migrate_retries"] = str(int(meta.get("migrate_retries", "0")) - 1)
    nodes = int(meta.get("migrate_nodes", "0") or 0)
    gpus = 0 if nodes else int(meta.get("migrate_gpus", "0") or 0)
    runtime_env = dict(job.get("runtime_env") or {})
    runtime_env["env_vars"] = dict(runtime_env.get("env_vars") or {}, MIGRATE_JOB_ATTEMPT=str(attempt))
    return {"entrypoint": job["entrypoint"],
            "submission_id": submission_id(meta["migrate_cluster"], meta["migrate_id"], attempt),
            "entrypoint_num_gpus": gpus, "entrypoint_num_cpus": 0 if (nodes or gpus) else 1,
            "runtime_env": runtime_env, "metadata": meta}


def retries_left(job: dict) -> int:
    """How many --retries a migrate job has left (0 for a job that is not migrate's)."""
    meta = job.get("metadata") or {}
    try:
        return int(meta.get("migrate_retries", "0")) if meta.get("migrate_id") and meta.get("migrate_cluster") else 0
    except ValueError:
        return 0


# -- the record of a running command ---------------------------------------------------------------------
def record_path(cluster: str, job: str, rank: str) -> str:
    """Where the record of this job's command (rank `rank` of a gang, "0" otherwise) lives on this node."""
    return os.path.join(os.path.expanduser(RUN_DIR), f"{cluster}-{job}-{rank}.json")


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
        private_dir(os.path.dirname(path))
        data = {"pid": pid, "pgid": pid, "ticks": procs.start_ticks(pid), "cwd": cwd, "started": time.time(),
                "env": job_environment(dict(os.environ))}
        write_private(path, json.dumps(data))
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


# -- the wrapper -------------------------------------------------------------------------------------------
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


def _import_root() -> str:
    """The sys.path entry this package was imported from (the zipapp, or the source tree)."""
    root = os.path.abspath(__file__)
    for _ in range((__package__ or "x").count(".") + 2):
        root = os.path.dirname(root)
    return root


def guard_main(group: int, wrapper: int) -> None:
    """Stop COMMAND's group once the wrapper is gone (we were reparented); end when the group is empty."""
    while procs.group_alive(group):
        if os.getppid() != wrapper:   # the wrapper is gone (Ray SIGKILLs a dead worker's children)
            procs.stop_group(group, STOP_GRACE_S, poll=0.2)
            return
        time.sleep(0.5)


def guard(group: int) -> None:
    """A tiny process that stops COMMAND's group if this wrapper is killed outright.

    Ray SIGKILLs the direct children of a worker that exits (a cancelled rank, a stopped job), which
    would leave COMMAND running without us; the guard notices (it is reparented) and stops the group.
    It exits by itself once the group is empty."""
    code = (f"import sys; sys.path.insert(0, {_import_root()!r}); "
            f"from {__package__}.raynode import guard_main; guard_main({int(group)}, {os.getpid()})")
    subprocess.Popen([sys.executable, "-I", "-S", "-c", code], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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

    def forward(signum: int, frame: Any) -> None:
        procs.signal_group(group, signum)

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
            procs.stop_group(group, STOP_GRACE_S)


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


def why_not(device: dict, me: str, need_mib: int | None = None, allow_shared: bool = False) -> str:
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


def wait_for_gpus(assigned: list, need_mib: int | None = None, allow_shared: bool = False) -> dict:
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


def activate_env(env: MutableMapping[str, str], home: str, command: str) -> tuple:
    """`run CLUSTER --env NAME` (issue 21): put ~/.migrate/envs/NAME (pushed to every node by the client
    before submitting) first on PATH, with VIRTUAL_ENV, or CONDA_PREFIX for a conda env (whose
    etc/conda/activate.d/*.sh scripts then run before COMMAND, as `conda activate` runs them: the agent's
    own launch.CONDA_ACTIVATE_D), as the host agent's launch.activate does. Changes `env` in place; returns
    (command, error line when the env is missing on this node). The shell and exec records (write_record)
    carry the activated env."""
    from .launch import CONDA_ACTIVATE_D, ENV_VAR

    name = env.get(ENV_VAR)
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


def wrapper_main(argv: list) -> int:
    """`migrate-ray-job.py [--cwd DIR] -- COMMAND` (the `ray-job` subcommand): see the module's doc."""
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
    view: dict = {}
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


# -- enter (`migrate shell/exec CLUSTER JOB` on the job's node) -----------------------------------------------
class NotEnterable(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def command_alive(rec: dict) -> bool:
    """Whether the recorded command still runs: the pid exists, leads its group, same start time."""
    pid = int(rec.get("pid") or 0)
    st = procs.read_stat(pid) if pid > 0 else None
    if st is None or st.state in ("Z", "X") or st.pgid != int(rec.get("pgid") or pid):
        return False
    ticks = rec.get("ticks")
    return not ticks or st.start_ticks == int(ticks)


def load_record(cluster: str, job: str, rank: str) -> dict:
    """The job's record, checked; NotEnterable when its command is not running here."""
    where = f"job {job} of cluster {cluster}" + (f" (rank {rank})" if rank != "0" else "")
    logs = f"see `migrate logs {cluster} {job}`"
    rec = read_json(record_path(cluster, job, rank))
    if rec is None:
        raise NotEnterable(f"{where} has no running command on this node: it is starting, waiting for its "
                           "GPUs, or has just ended", logs)
    if not command_alive(rec):
        raise NotEnterable(f"{where}: its command (pid {rec.get('pid')}) has ended", logs)
    if not os.path.isdir(rec.get("cwd") or ""):
        raise NotEnterable(f"{where}: its working directory {rec.get('cwd')} is gone")
    return rec


def enter_plan(rec: dict, words: list, session_env: dict, bash: str | None) -> Any:
    """The shell or CMD inside the recorded job (pure): the job's cwd and environment, as enter.py builds
    a process job's shell on one host."""
    from .enter import EnterPlan, command_line, keep_session, shell_argv

    env = keep_session({str(k): str(v) for k, v in (rec.get("env") or {}).items()}, session_env)
    cwd = rec["cwd"]
    env["PWD"] = cwd
    return EnterPlan("process", shell_argv(bash, command_line(words)), env, cwd, f"pid {rec.get('pid')}")


def enter_main(argv: list) -> int:
    """`ray-enter [--tty] [--check] CLUSTER JOB RANK -- [CMD...]`: become the shell or CMD in the job; with
    --check print one JSON line instead ({"ok": true, ...} or {"error": ..., "hint": ...}). Without
    --check an error is one `error:` line on stderr and exit 1."""
    from .enter import execute
    from .launch import find_bash

    tty = check = False
    while argv and argv[0] in ("--tty", "--check"):
        tty, check = tty or argv[0] == "--tty", check or argv[0] == "--check"
        argv = argv[1:]
    cluster, job, rank = argv[:3]
    words = argv[4:] if argv[3:4] == ["--"] else argv[3:]
    try:
        rec = load_record(cluster, job, rank)
    except NotEnterable as exc:
        if check:
            print(json.dumps({"error": str(exc), "hint": exc.hint}))
            return 0
        print(f"error: {exc}", file=sys.stderr)
        return 1
    plan = enter_plan(rec, words, dict(os.environ), find_bash())
    if check:
        print(json.dumps({"ok": True, "pid": rec["pid"], "cwd": plan.cwd, "tty": tty,
                          "gpus": plan.env.get("CUDA_VISIBLE_DEVICES", "")}))
        return 0
    try:
        execute(plan)
    except OSError as exc:
        print(f"error: cannot start {exc.filename or 'the shell'}: {exc.strerror}", file=sys.stderr)
    return 1
