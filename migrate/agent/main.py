"""The agent's command line: what the client runs over SSH.

    python3 migrate-agent-<v>.pyz SUBCOMMAND [options]

Every subcommand except `logs` and `daemon` prints one JSON object on stdout:
`{"ok": true, ...}` or `{"ok": false, "error": ..., "hint": ...}` (exit code 1). `submit` reads
its jobs as JSON on stdin. Nothing here trusts the client more than the user: inputs are checked
(and refused as a whole) before anything is queued.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from . import VERSION, control, notify
from .db import ACTIVE, CANCELLED, FAILED, FINAL, LOST, QUEUED, STATES, Queue, QueueError, retry_refusal
from .layout import Layout, write_private
from .lock import AgentLog, acquire_lock
from .validate import SpecError
from .validate import validate_spec as _validate

# Heavier modules (the daemon, the GPU view, admission, cancel) are imported by the subcommands that
# need them: `status` runs on every `migrate status` and should start fast.

RETRY_ALL = (FAILED, CANCELLED, LOST)  # `retry --all`: every job that did not succeed (done ones stay done)
FOLLOW_CHECK_S = 2.0  # logs --follow: how often it checks that a dispatcher is there to end the job
AGENT_ERROR_MARK = "MIGRATE-ERROR "  # stderr lines the client turns into an error (logs streams stdout)
AGENT_WARN_MARK = "MIGRATE-WARN "  # ... and into a warning
NO_DISPATCHER = "the dispatcher is not running"


class AgentError(Exception):
    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


def emit(data: dict) -> None:
    sys.stdout.write(json.dumps(data, default=str) + "\n")
    sys.stdout.flush()


# -- validation (the one validator: validate.py) -----------------------------------------------------
def validate_spec(spec: Any, n: int) -> dict:
    """Check and normalise one job spec on this host; raise AgentError saying what is wrong."""
    try:
        return _validate(spec, n, on_host=True)
    except SpecError as exc:
        raise AgentError(exc.message, exc.hint) from None


# -- helpers -----------------------------------------------------------------------------------
def open_queue(layout: Layout) -> Queue:
    layout.ensure()
    return Queue(layout.db)


def backend_spec(queue: Queue, requested: str | None) -> str:
    """The GPU backend to use: the requested one, else the host's last one, else nvml.

    A FAKE backend whose state file does not exist yet gets one with 4 idle FAKE GPUs.
    """
    from .gpus import fake_state, open_backend

    spec = requested or queue.get_meta("backend") or "nvml"
    try:
        backend = open_backend(spec)
    except ValueError as exc:
        raise AgentError(str(exc)) from None
    if backend.fake and not os.path.exists(backend.path):
        write_private(backend.path, json.dumps(fake_state(4), indent=2) + "\n")
    return backend.spec


def reconcile_if_idle(queue: Queue, layout: Layout) -> dict | None:
    """With no dispatcher running, bring job states up to date (exit codes, reboot) ourselves."""
    from .recovery import recover

    fd = acquire_lock(layout.lock)
    if fd is None:
        return None
    try:
        return recover(queue, layout, AgentLog(layout.log))
    finally:
        os.close(fd)


def waiting_reason(job: dict, running: bool, paused: str) -> str:
    """Why a queued job waits, as things are now (pure).

    The stored reason is what the dispatcher last saw; with the queue paused, or with no
    dispatcher at all, that is stale ("waiting for a CPU slot (4 CPU jobs running, limit 4)" when
    none runs), and the real reason is the pause or the missing dispatcher.
    """
    if job["state"] != QUEUED:
        return job.get("reason") or ""
    if paused:
        return "queue paused: " + paused
    if not running:
        return f"not starting: {NO_DISPATCHER} (`migrate resume` starts it)"
    return job.get("reason") or ""


def _job_view(job: dict, now: float, running: bool = True, paused: str = "") -> dict:
    out = dict(job)
    out["reason"] = waiting_reason(job, running, paused)
    start, end = job.get("started_at"), job.get("ended_at")
    if start and job["state"] in ACTIVE:
        out["runtime_s"] = round(now - start, 1)
    elif start and end and job["state"] in FINAL:
        out["runtime_s"] = round(end - start, 1)
    else:
        out["runtime_s"] = None
    # a lost job's end is not known, only the latest it can have been (see recovery.settle)
    out["runtime_at_most"] = job["state"] == LOST and out["runtime_s"] is not None
    out.pop("token", None)
    return out


def _resolve(queue: Queue, refs: list) -> list:
    jobs = []
    for ref in refs:
        try:
            jobs.append(queue.find(ref))
        except QueueError as exc:
            raise AgentError(exc.message, exc.hint) from None
    return jobs


# -- subcommands -------------------------------------------------------------------------------
def cmd_version(args: Any, layout: Layout) -> dict:
    return {"version": VERSION, "python": sys.version.split()[0], "home": layout.home}


def _ensure(queue: Queue, layout: Layout, backend: str | None, mode: str, cpu_slots: int | None) -> dict:
    spec = backend_spec(queue, backend)
    if backend:
        queue.set_meta("backend", spec)
    if cpu_slots:
        queue.set_meta("cpu_slots", str(cpu_slots))
    try:
        result = control.ensure(layout, spec, mode_preference=mode)
    except RuntimeError as exc:
        raise AgentError(str(exc), "see ~/.migrate/dispatcher/agent.log on the host") from None
    result["daemon"] = control.describe(result["daemon"])
    return result


def cmd_ensure(args: Any, layout: Layout) -> dict:
    queue = open_queue(layout)
    return {"dispatcher": _ensure(queue, layout, args.backend, args.mode, args.cpu_slots)}


def cmd_submit(args: Any, layout: Layout) -> dict:
    try:
        payload = json.loads(sys.stdin.read() or "{}")
    except ValueError as exc:
        raise AgentError(f"submit: stdin is not JSON: {exc}") from None
    specs = payload.get("jobs") if isinstance(payload, dict) else None
    if not isinstance(specs, list) or not specs:
        raise AgentError("submit: no jobs given")
    jobs = [validate_spec(s, i) for i, s in enumerate(specs)]
    queue = open_queue(layout)
    _refuse_never_fitting(jobs, backend_spec(queue, args.backend))
    result: dict[str, Any] = {}
    if not args.no_start:  # first, so an outdated dispatcher never picks up these jobs
        result["dispatcher"] = _ensure(queue, layout, args.backend, args.mode, args.cpu_slots)
    result["jobs"] = queue.submit(jobs)
    notify.remember(layout, jobs, result["jobs"])  # before the wake: the dispatcher finds the record
    control.wake(layout)
    result["paused"] = queue.get_meta("paused")
    return result


def _refuse_never_fitting(jobs: list, spec: str) -> None:
    """A job asking for more GPUs than this host has is refused now, not queued for ever.

    When the GPU view cannot be read, nothing is refused: the queue shows why jobs wait.
    """
    from .admission import never_fits
    from .gpus import GpuBackendError, open_backend

    if not any(int(j.get("gpus", 1)) > 0 for j in jobs):
        return
    backend = open_backend(spec)
    try:
        snap = backend.snapshot()
    except GpuBackendError:
        return
    finally:
        backend.close()
    for job in jobs:
        why = never_fits(job, snap)
        if why:
            raise AgentError(why, "ask for fewer GPUs with --gpus-per-job (or another --gpu-pool), "
                                  "or run it on a cluster of hosts (`migrate cluster`)")


def cmd_status(args: Any, layout: Layout) -> dict:
    t0 = time.time()
    queue = open_queue(layout)
    info = control.daemon_info(layout)
    recovered = None
    if not info["running"]:
        recovered = reconcile_if_idle(queue, layout)
    now = time.time()
    if args.all:
        jobs, hidden = queue.jobs(), 0
    elif args.state:
        jobs, hidden = queue.jobs([s for s in args.state.split(",") if s in STATES]), 0
    else:
        jobs, hidden = queue.recent(args.limit)
    paused = queue.get_meta("paused")
    return {"daemon": control.describe(info), "paused": paused,
            "backend": queue.get_meta("backend") or "nvml", "gpu_error": queue.get_meta("gpu_error"),
            "counts": queue.counts(), "hidden_finished": hidden, "recovered": recovered,
            "jobs": [_job_view(j, now, info["running"], paused) for j in jobs],
            "elapsed_ms": round((time.time() - t0) * 1000, 1), "home": layout.home}


def cmd_gpus(args: Any, layout: Layout) -> dict:
    from . import admission, procs
    from .gpus import GpuBackendError, open_backend

    # read-only: a host where nothing was ever queued gets no queue (nor directory) from a look
    queue = open_queue(layout) if os.path.exists(layout.db) else None
    spec = backend_spec(queue, args.backend) if queue is not None else (args.backend or "nvml")
    try:
        backend = open_backend(spec)
    except ValueError as exc:
        raise AgentError(str(exc)) from None
    if queue is None and backend.fake and not os.path.exists(backend.path):
        raise AgentError(f"no FAKE GPU state at {backend.path}", "the test double needs its state file")
    try:
        snap = backend.snapshot()
    except GpuBackendError as exc:
        return {"backend": spec, "fake": spec.startswith("fake:"), "error": exc.message, "hint": exc.hint,
                "devices": []}
    finally:
        backend.close()
    reserved = queue.reservations() if queue is not None else {}
    by_group = {}
    for job in (queue.active() if queue is not None else []):
        if job.get("pgid"):
            by_group[job["pgid"]] = job["id"]
    devices = []
    policy = admission.Policy()
    owners = {}
    for d in snap.devices:
        for p in d.processes:
            owners[p.pid] = procs.owner(p.pid) or "?"
    known = admission.load_idle_baselines(queue) if queue is not None else {}
    baselines = admission.learn_idle_baseline(snap.leaves(), reserved, known)
    for d in snap.devices:
        verdict = admission.gpu_verdict(d, reserved, policy, owners, baselines)
        row = d.to_dict()
        row["verdict"], row["reason"] = verdict.verdict, verdict.reason
        row["reserved_by"] = reserved.get(d.uuid)
        for p in row["processes"]:
            p["user"] = owners.get(p["pid"]) or "?"
            st = procs.read_stat(p["pid"])
            p["job"] = by_group.get(st.pgid) if st else None
            p["command"] = procs.cmdline(p["pid"])[:120]
        devices.append(row)
    return {"backend": spec, "fake": snap.fake, "driver": snap.driver, "devices": devices}


def cmd_cancel(args: Any, layout: Layout) -> dict:
    from .cancel import cancel as cancel_jobs

    queue = open_queue(layout)
    if args.all:
        jobs = queue.jobs((QUEUED,) + ACTIVE)
    else:
        jobs = _resolve(queue, args.jobs)
    if args.dry_run:
        return {"would_cancel": [{"id": j["id"], "name": j["name"], "state": j["state"]} for j in jobs]}
    results = cancel_jobs(queue, layout, [j["id"] for j in jobs], args.grace, AgentLog(layout.log))
    skipped = [{"id": j["id"], "name": j["name"], "state": j["state"]} for j in jobs
               if j["state"] in FINAL]
    control.wake(layout)
    return {"cancelled": results, "skipped": skipped}


def cmd_retry(args: Any, layout: Layout) -> dict:
    queue = open_queue(layout)
    if args.all == bool(args.jobs):
        raise AgentError("give job ids or --all" if not args.jobs else "give job ids or --all, not both")
    jobs = queue.jobs(RETRY_ALL) if args.all else _resolve(queue, args.jobs)
    if args.dry_run:
        for job in jobs:
            refusal = retry_refusal(job)
            if refusal:
                raise AgentError(refusal.message, refusal.hint)
        return {"would_retry": [{"id": j["id"], "name": j["name"], "was": j["state"]} for j in jobs]}
    out = []
    for job in jobs:
        try:
            queue.retry(job["id"])
        except QueueError as exc:
            raise AgentError(exc.message, exc.hint) from None
        out.append({"id": job["id"], "name": job["name"], "was": job["state"]})
    result = {"retried": out, "dispatcher": _ensure(queue, layout, None, args.mode, None)}
    control.wake(layout)
    result["paused"] = queue.get_meta("paused")
    return result


def cmd_resume(args: Any, layout: Layout) -> dict:
    queue = open_queue(layout)
    was = queue.get_meta("paused")
    info = control.daemon_info(layout)
    if not info["running"]:
        reconcile_if_idle(queue, layout)
        was = queue.get_meta("paused")
    queue.set_meta("paused", "")
    result = {"was_paused": was, "dispatcher": _ensure(queue, layout, args.backend, args.mode, None)}
    control.wake(layout)
    return result


def cmd_stop(args: Any, layout: Layout) -> dict:
    return {"stopped": control.stop(layout)}


def cmd_fake_gpus(args: Any, layout: Layout) -> dict:
    from .gpus import fake_state

    path = os.path.abspath(os.path.expanduser(args.path))
    write_private(path, json.dumps(fake_state(args.count), indent=2) + "\n")
    return {"path": path, "count": args.count, "backend": "fake:" + path}


def cmd_logs(args: Any, layout: Layout) -> int:
    """Print a job's log (and with --follow, keep printing until the job ends)."""
    queue = open_queue(layout)
    try:
        job = queue.find(args.job)
    except QueueError as exc:
        sys.stderr.write(AGENT_ERROR_MARK + json.dumps({"error": exc.message, "hint": exc.hint}) + "\n")
        return 3
    path = layout.job_log(job["id"])
    out: Any = getattr(sys.stdout, "buffer", sys.stdout)  # the binary stdout: log bytes go out as they are
    pos = 0
    if args.tail and os.path.exists(path):
        pos = _tail_offset(path, args.tail)
    if not args.follow:
        if not os.path.exists(path):
            reason = waiting_reason(job, control.daemon_info(layout)["running"], queue.get_meta("paused"))
            why = f": {reason}" if reason else ""
            sys.stderr.write(f"job {job['id']} ({job['name']}) has no output yet ({job['state']}{why})\n")
            return 0
        with open(path, "rb") as fh:
            fh.seek(pos)
            while True:
                chunk = fh.read(65536)
                if not chunk:
                    break
                out.write(chunk)
        out.flush()
        return 0
    quiet_since = None
    next_check = time.monotonic() + FOLLOW_CHECK_S
    warned = False
    while True:
        wrote = False
        if os.path.exists(path):
            with open(path, "rb") as fh:
                fh.seek(pos)
                chunk = fh.read(1 << 20)
                if chunk:
                    out.write(chunk)
                    out.flush()
                    pos += len(chunk)
                    wrote = True
        current = queue.get(job["id"]) or job
        if current["state"] in FINAL and not wrote:
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 0.5:
                return 0
        else:
            quiet_since = None
        if current["state"] not in FINAL and not wrote and time.monotonic() >= next_check:
            next_check = time.monotonic() + FOLLOW_CHECK_S
            stuck, warned = _follow_check(queue, layout, current, warned)
            if stuck:
                sys.stderr.write(AGENT_ERROR_MARK + json.dumps(stuck) + "\n")
                return 4
            continue  # the check may have recorded the job's end: read its last lines now
        if not wrote:
            time.sleep(0.25)


def _follow_check(queue: Queue, layout: Layout, job: dict, warned: bool) -> tuple:
    """While `logs --follow` waits: is anyone going to move this job on? -> (error or None, warned).

    Without a running dispatcher nobody records the job's end, so we reconcile here as `status`
    does (exit codes, processes, reboots) and say once that the dispatcher is not running. A job
    that is queued behind a dead dispatcher or a paused queue will not start: that ends the follow
    with an error instead of waiting forever.
    """
    running = control.daemon_info(layout)["running"]
    if not running:
        reconcile_if_idle(queue, layout)
        if not warned:
            sys.stderr.write(AGENT_WARN_MARK + json.dumps({"warning": NO_DISPATCHER, "resume": True}) + "\n")
            sys.stderr.flush()
            warned = True
    current = queue.get(job["id"]) or job
    if current["state"] != QUEUED:
        return None, warned
    paused = queue.get_meta("paused")
    label = f"job {current['id']} ({current['name']}) is queued"
    if paused:
        return {"error": f"{label} and the queue is paused: {paused}", "resume": True}, warned
    if not running:
        return {"error": f"{label} and will not start: {NO_DISPATCHER}", "resume": True}, warned
    return None, warned


def _tail_offset(path: str, lines: int) -> int:
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        end = fh.tell()
        pos, found = end, 0
        while pos > 0 and found <= lines:
            step = min(65536, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step)
            found += data.count(b"\n")
        if found <= lines:
            return 0
        fh.seek(pos)
        data = fh.read(end - pos)
        cut = len(data)
        for _ in range(lines + 1):
            cut = data.rfind(b"\n", 0, cut)
        return pos + cut + 1


# -- enter (migrate shell / migrate exec; the logic is in enter.py) ------------------------------
def cmd_enter(args: Any, layout: Layout) -> Any:
    """A shell or CMD inside a running job. With --check: JSON (what would run). Without: exec it, or
    print one `error: ...` line on stderr and return 1 (the client has already checked; this is a race)."""
    from .enter import enter

    queue = open_queue(layout)
    if not control.daemon_info(layout)["running"]:
        reconcile_if_idle(queue, layout)  # a job that ended while no dispatcher ran is not "running"
    words = list(args.words)  # the client sends `enter [--tty] [--check] -- JOB [CMD...]`
    if args.check:
        return enter(queue, args.job, tty=args.tty, check=True, words=words)
    try:
        enter(queue, args.job, tty=args.tty, check=False, words=words)
    except QueueError as exc:
        sys.stderr.write(f"error: {exc.message}" + (f" (hint: {exc.hint})" if exc.hint else "") + "\n")
    except OSError as exc:
        sys.stderr.write(f"error: cannot start {exc.filename or 'the shell'}: {exc.strerror}\n")
    return 1
# -- end enter ---------------------------------------------------------------------------------


# -- a node of a migrate cluster (the logic is in raynode.py) ---------------------------------------------
def cmd_ray_job(args: Any, layout: Layout) -> int:
    """The polite wrapper around a cluster job's command (what ~/.migrate/ray/bin/migrate-ray-job.py runs)."""
    from .raynode import wrapper_main

    return wrapper_main(list(args.words))


def cmd_ray_enter(args: Any, layout: Layout) -> int:
    """`migrate shell/exec CLUSTER JOB` on the job's node: `ray-enter [--tty] [--check] CLUSTER JOB RANK -- CMD`."""
    from .raynode import enter_main

    return enter_main(list(args.words))


def cmd_daemon(args: Any, layout: Layout) -> int:
    from . import admission
    from .daemon import Daemon

    mode = os.environ.get("MIGRATE_AGENT_MODE", "foreground")
    policy = admission.Policy()
    return Daemon(layout, args.backend or "nvml", policy, mode=mode).run()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="migrate-agent", description="migrate's dispatcher agent (runs on the host)")
    sub = p.add_subparsers(dest="cmd")
    sub.required = True

    def add(name: str, fn: Any, **kw: Any) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, **kw)
        sp.set_defaults(fn=fn)
        return sp

    def start_opts(sp: argparse.ArgumentParser, slots: bool = True) -> None:
        sp.add_argument("--backend", default=None, help="nvml, or fake:PATH (test double)")
        sp.add_argument("--mode", default="auto", choices=("auto", "systemd", "setsid"))
        if slots:
            sp.add_argument("--cpu-slots", type=int, default=None)

    add("version", cmd_version)
    start_opts(add("ensure", cmd_ensure))
    sp = add("submit", cmd_submit)
    start_opts(sp)
    sp.add_argument("--no-start", action="store_true")
    sp = add("status", cmd_status)
    sp.add_argument("--all", action="store_true")
    sp.add_argument("--state", default=None)
    sp.add_argument("--limit", type=int, default=20)
    sp = add("gpus", cmd_gpus)
    sp.add_argument("--backend", default=None)
    sp = add("cancel", cmd_cancel)
    sp.add_argument("jobs", nargs="*")
    sp.add_argument("--all", action="store_true")
    sp.add_argument("--grace", type=float, default=10.0)
    sp.add_argument("--dry-run", action="store_true")
    sp = add("retry", cmd_retry)
    sp.add_argument("jobs", nargs="*")
    sp.add_argument("--all", action="store_true", help="every failed, cancelled or lost job")
    sp.add_argument("--dry-run", action="store_true")
    sp.add_argument("--mode", default="auto", choices=("auto", "systemd", "setsid"))
    start_opts(add("resume", cmd_resume), slots=False)
    add("stop", cmd_stop)
    sp = add("fake-gpus", cmd_fake_gpus, help="write a FAKE GPU state file (test double)")
    sp.add_argument("path")
    sp.add_argument("--count", type=int, default=4)
    sp = add("logs", cmd_logs)
    sp.add_argument("job")
    sp.add_argument("--follow", "-f", action="store_true")
    sp.add_argument("--tail", type=int, default=0)
    sp = add("enter", cmd_enter, help="a shell or CMD inside a running job (migrate shell/exec)")
    sp.add_argument("job")
    sp.add_argument("--tty", action="store_true")
    sp.add_argument("--check", action="store_true")
    sp.add_argument("words", nargs=argparse.REMAINDER)
    for name, fn, text in (("ray-job", cmd_ray_job, "a cluster job's polite wrapper: [--cwd DIR] -- COMMAND"),
                           ("ray-enter", cmd_ray_enter, "shell/exec in a cluster job on this node")):
        sp = add(name, fn, help=text, prefix_chars="\0")  # every word is the subcommand's own
        sp.add_argument("words", nargs=argparse.REMAINDER)
    sp = add("daemon", cmd_daemon)
    sp.add_argument("--backend", default=None)
    return p


def main(argv: list | None = None) -> int:
    args = build_parser().parse_args(argv)
    layout = Layout()
    if args.cmd in ("logs", "daemon", "ray-job", "ray-enter") or (args.cmd == "enter" and not args.check):
        return args.fn(args, layout)
    try:
        result = args.fn(args, layout)
    except AgentError as exc:
        emit({"ok": False, "error": exc.message, "hint": exc.hint})
        return 1
    except QueueError as exc:
        emit({"ok": False, "error": exc.message, "hint": exc.hint})
        return 1
    result["ok"] = True
    emit(result)
    return 0
