"""The dispatcher: one long-running process per user that starts queued jobs when GPUs are free.

Loop: reap finished jobs -> admit what fits -> sleep until something can change. It sleeps on a
pipe that signals write to (SIGCHLD when a job it started ends, SIGUSR1 when a client queued
something, SIGTERM to stop), so a job starts right after its GPU is released by one of ours;
GPUs released by other people are noticed by polling NVML every second while GPU jobs wait.
With nothing queued it wakes once a minute.

Crash safety: only one dispatcher per user (an flock). A job's GPUs are reserved in the queue
before it is launched; every job runs in its own session with a wrapper that writes its exit
code to a file; on start, `recover()` re-adopts jobs that are still running (wrapper pid + start
time, else its process group / token, or its container), records the exit codes of those that
ended meanwhile, puts back in the queue a launch that never happened, and never starts a job
twice. After a reboot (the boot identity changed) running jobs are marked `lost` and the queue is
paused until the user runs `migrate resume`.

Stopping the dispatcher (SIGTERM) leaves running jobs alone; the next one adopts them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pwd
import select
import signal
import subprocess
import sys
import time
import traceback
import uuid
from typing import Any

from . import VERSION, admission, launch, procs
from .db import ACTIVE, STARTING, Queue
from .gpus import GpuBackendError, open_backend
from .layout import Layout, private_dir, read_json, write_private

LOG_MAX_BYTES = 5 * 1024 * 1024
GPU_POLL_S = 1.0  # while GPU jobs wait: how often NVML is asked whether a GPU became free
ADOPTED_POLL_S = 2.0  # jobs we did not start ourselves (after a restart): exit-file checks
LIVENESS_EVERY_S = 5.0  # process checks for adopted jobs
IDLE_S = 60.0
BACKOFF_MAX_S = 300.0


class AgentLog:
    """The dispatcher's own log: one timestamped line per event, rotated at 5 MiB."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __call__(self, message: str) -> None:
        line = "{} {}\n".format(time.strftime("%Y-%m-%d %H:%M:%S"), message)
        try:
            if os.path.exists(self.path) and os.path.getsize(self.path) > LOG_MAX_BYTES:
                os.replace(self.path, self.path + ".1")
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a") as fh:
                fh.write(line)
        except OSError:
            pass


def acquire_lock(path: str, wait_s: float = 0.0) -> int | None:
    """An exclusive flock on `path` (an fd to keep open), or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
        if time.monotonic() >= deadline:
            os.close(fd)
            return None
        time.sleep(0.1)


def lock_is_held(path: str) -> bool:
    """True when some process holds the dispatcher lock."""
    if not os.path.exists(path):
        return False
    fd = acquire_lock(path)
    if fd is None:
        return True
    os.close(fd)
    return False


def read_exit_code(path: str) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return None


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def append_log(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(text)
    except OSError:
        pass


def docker_state(name: str) -> tuple:
    """(status, exit_code) of a container: ('running', None), ('exited', 3) or ('missing', None)."""
    try:
        proc = subprocess.run(["docker", "inspect", "-f", "{{.State.Status}} {{.State.ExitCode}}", name],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ("unknown", None)
    if proc.returncode != 0:
        return ("missing", None)
    parts = proc.stdout.split()
    status = parts[0] if parts else "unknown"
    code = int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else None
    return (status, code)


def remove_container(name: str) -> None:
    try:
        subprocess.run(["docker", "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pass


def job_is_alive(job: dict) -> bool:
    """Are any of this job's processes (or its container) still running?"""
    if procs.is_running(job.get("pid") or 0, job.get("start_ticks")):
        return True
    token = ("MIGRATE_JOB_TOKEN={}".format(job.get("token"))).encode()
    members = procs.group_members(job.get("pgid") or 0)
    if any(procs.environ_has(pid, token) for pid in members):
        return True
    if job.get("container"):
        return docker_state(job["container"])[0] in ("running", "restarting", "paused", "created")
    return False


def settle(queue: Queue, layout: Layout, job: dict, log: Any, *, exit_code: int | None, lost: bool = False,
           reason: str = "") -> str | None:
    """Record the end of a job (idempotent): queue state, a footer in its log, tidy files."""
    state = queue.finish(job["id"], exit_code, lost=lost, reason=reason)
    if state is None:
        return None
    ran = time.time() - float(job.get("started_at") or time.time())
    text = f"exit code {exit_code}" if exit_code is not None else "no exit code"
    what = state if state != "queued" else "failed, queued again"
    why = f" ({reason})" if reason else ""
    append_log(layout.job_log(job["id"]), f"[migrate] job {job['id']} {what}: {text} after {duration(ran)}{why}\n")
    try:
        os.unlink(os.path.join(layout.job_dir(job["id"]), "container.env"))
    except OSError:
        pass
    if job.get("container"):
        remove_container(job["container"])
    log(f"job {job['id']} ({job.get('name')}) -> {state}, {text}{((f' ({reason})') if reason else '')}")
    return state


def check_job(queue: Queue, layout: Layout, job: dict, log: Any) -> str:
    """Bring one active job's record in line with reality; return 'running' or what it became."""
    code = read_exit_code(layout.job_exit(job["id"]))
    if code is not None:
        return settle(queue, layout, job, log, exit_code=code) or "gone"
    if job["state"] == STARTING:
        token = ("MIGRATE_JOB_TOKEN={}".format(job.get("token"))).encode()
        pids = procs.find_by_env(token) if job.get("token") else []
        leaders = [p for p in pids if (procs.read_stat(p) or procs.ProcStat(0, "", 0, -1, 0, 0)).pgid == p]
        if leaders:
            pid = leaders[0]
            queue.mark_running(job["id"], pid, pid, procs.start_ticks(pid),
                               launch.container_name(_user(), job["id"]) if job.get("image") else None)
            log(f"job {job['id']}: found running although its launch was not recorded; adopted (pid {pid})")
            return "running"
        if not pids:
            queue.unreserve(job["id"], "the dispatcher stopped before launching it; queued again")
            log(f"job {job['id']}: launch never happened; back in the queue")
            return "queued"
        return "running"
    if job_is_alive(job):
        return "running"
    if job.get("container"):
        status, ccode = docker_state(job["container"])
        if status == "exited" and ccode is not None:
            return settle(queue, layout, job, log, exit_code=ccode,
                          reason="exit code read from its container") or "gone"
    return settle(queue, layout, job, log, exit_code=None, lost=True,
                  reason="its processes ended without recording an exit code (killed with SIGKILL?)") or "gone"


def recover(queue: Queue, layout: Layout, log: Any) -> dict:
    """Reconcile the queue with the processes that exist (run with the dispatcher lock held)."""
    boot = procs.boot_identity()
    last_boot = queue.get_meta("boot_id")
    summary = {"adopted": [], "finished": [], "lost": [], "requeued": [], "paused": ""}
    if last_boot and last_boot != boot:
        lost = []
        for job in queue.active():
            if job.get("boot_id") != boot and settle(queue, layout, job, log, exit_code=None, lost=True,
                      reason="the host rebooted while it ran"):
                lost.append(job["id"])
        queued = queue.counts()["queued"]
        if lost or queued:
            plural = "" if len(lost) == 1 else "s"
            why = (f"the host rebooted ({len(lost)} running job{plural} marked lost); "
                   "queue paused: run `migrate resume HOST`")
            queue.set_meta("paused", why)
            summary["paused"] = why
            log("boot changed: " + why)
        summary["lost"] = lost
    for job in queue.active():
        outcome = check_job(queue, layout, job, log)
        if outcome == "running":
            summary["adopted"].append(job["id"])
        elif outcome == "queued":
            summary["requeued"].append(job["id"])
        elif outcome == "lost":
            summary["lost"].append(job["id"])
        else:
            summary["finished"].append(job["id"])
    queue.set_meta("boot_id", boot)
    return summary


def _user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


class Daemon:
    """The dispatcher loop (see the module docstring)."""

    def __init__(self, layout: Layout, backend_spec: str, policy: admission.Policy | None = None,
                 mode: str = "foreground") -> None:
        self.layout = layout
        self.backend_spec = backend_spec
        self.backend = open_backend(backend_spec)
        self.policy = policy or admission.Policy()
        self.mode = mode
        self.log = AgentLog(layout.log)
        self.children = {}  # type: dict  # job id -> Popen (jobs this process started)
        self.stopping = False
        self.gpu_error = None  # type: str | None
        self.gpu_retry_at = 0.0
        self.gpu_backoff = 1.0
        self.device_errors = {}  # type: dict
        self.last_liveness = 0.0
        self.last_reasons = {}  # type: dict
        self.boot = procs.boot_identity()
        self.user = _user()
        self.home = os.path.expanduser("~")
        self.bash = launch.find_bash()
        self._wake_r = self._wake_w = -1

    # -- lifecycle -----------------------------------------------------------------------------
    def run(self) -> int:
        self.layout.ensure()
        lock_fd = acquire_lock(self.layout.lock, wait_s=5.0)
        if lock_fd is None:
            self.log(f"another dispatcher holds {self.layout.lock}; exiting")
            return 0
        try:
            os.chdir(self.home)
        except OSError:
            pass
        self.queue = Queue(self.layout.db)
        self._write_pidfile()
        self._install_signals()
        self.log(f"dispatcher {VERSION} started (pid {os.getpid()}, {self.mode}, "
                 f"python {sys.version.split()[0]}, GPU backend {self.backend_spec})")
        try:
            summary = recover(self.queue, self.layout, self.log)
            if any(summary[k] for k in ("adopted", "finished", "lost", "requeued")):
                self.log("recovered: adopted {}, finished {}, lost {}, requeued {}".format(
                    summary["adopted"], summary["finished"], summary["lost"], summary["requeued"]))
            while not self.stopping:
                self.tick()
                if not self.stopping:
                    self._sleep(self.next_timeout())
        except Exception:
            self.log("dispatcher crashed:\n" + traceback.format_exc())
            raise
        finally:
            self._remove_pidfile()
            self.backend.close()
            self.log("dispatcher stopped (running jobs keep running; the next dispatcher adopts them)")
            os.close(lock_fd)
        return 0

    def _write_pidfile(self) -> None:
        info = {"pid": os.getpid(), "start_ticks": procs.start_ticks(os.getpid()), "version": VERSION,
                "backend": self.backend_spec, "mode": self.mode, "started_at": time.time(),
                "python": sys.version.split()[0]}
        write_private(self.layout.pidfile, json.dumps(info))

    def _remove_pidfile(self) -> None:
        info = read_json(self.layout.pidfile) or {}
        if info.get("pid") == os.getpid():
            try:
                os.unlink(self.layout.pidfile)
            except OSError:
                pass

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        for fd in (self._wake_r, self._wake_w):
            fl = fcntl.fcntl(fd, fcntl.F_GETFL)
            fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
        signal.set_wakeup_fd(self._wake_w)

        def stop(signum: int, frame: Any) -> None:
            self.stopping = True

        def wake(signum: int, frame: Any) -> None:
            pass

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGCHLD, wake)
        signal.signal(signal.SIGUSR1, wake)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)

    def _sleep(self, timeout: float) -> None:
        try:
            ready, _, _ = select.select([self._wake_r], [], [], timeout)
        except InterruptedError:
            ready = []
        if ready:
            try:
                while os.read(self._wake_r, 512):
                    pass
            except OSError:
                pass

    def next_timeout(self) -> float:
        counts = self.queue.counts()
        if self.queue.get_meta("paused"):
            return IDLE_S if not self._adopted_ids() else ADOPTED_POLL_S
        timeout = IDLE_S
        if counts["queued"]:
            waiting_gpu = self.queue.conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND gpus > 0").fetchone()[0]
            if waiting_gpu:
                timeout = min(timeout, GPU_POLL_S if self.gpu_error is None
                              else max(0.2, self.gpu_retry_at - time.time()))
        if self._adopted_ids():
            timeout = min(timeout, ADOPTED_POLL_S)
        return timeout

    def _adopted_ids(self) -> list:
        return [j["id"] for j in self.queue.active() if j["id"] not in self.children]

    # -- one iteration -------------------------------------------------------------------------
    def tick(self) -> None:
        now = time.time()
        self.reap(now)
        if self.stopping:
            return
        if not os.path.isdir(self.layout.state_dir):
            self.log(f"state directory {self.layout.state_dir} disappeared; stopping")
            self.stopping = True
            return
        paused = self.queue.get_meta("paused")
        if paused:
            self._set_reasons({j["id"]: "queue paused: " + paused for j in self.queue.queued()})
            return
        self.admit(now)

    def reap(self, now: float) -> None:
        for job_id, proc in list(self.children.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del self.children[job_id]
            job = self.queue.get(job_id)
            if job is None or job["state"] not in ACTIVE:
                continue
            code = read_exit_code(self.layout.job_exit(job_id))
            if code is not None:
                settle(self.queue, self.layout, job, self.log, exit_code=code)
                continue
            if job_is_alive(job):  # the wrapper died but the job's processes live on: keep watching
                self.log(f"job {job_id}: wrapper exited ({rc}) but its processes still run; watching them")
                continue
            code = 128 - rc if rc < 0 else rc
            settle(self.queue, self.layout, job, self.log, exit_code=code,
                   reason=f"killed by signal {-rc}" if rc < 0 else "")
        adopted = [j for j in self.queue.active() if j["id"] not in self.children]
        if not adopted:
            return
        check_liveness = now - self.last_liveness >= LIVENESS_EVERY_S
        if check_liveness:
            self.last_liveness = now
        for job in adopted:
            if job["state"] == STARTING:
                continue  # launch() in progress in this process cannot be seen here; recover() handles crashes
            code = read_exit_code(self.layout.job_exit(job["id"]))
            if code is not None:
                settle(self.queue, self.layout, job, self.log, exit_code=code)
            elif check_liveness:
                check_job(self.queue, self.layout, job, self.log)

    def gpu_view(self, now: float) -> tuple:
        """(snapshot, error text); backs off exponentially while the GPU view fails."""
        if self.gpu_error is not None and now < self.gpu_retry_at:
            return None, f"{self.gpu_error}; retrying in {max(1, int(self.gpu_retry_at - now))}s"
        try:
            snap = self.backend.snapshot()
        except GpuBackendError as exc:
            return None, self._gpu_failed(now, exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
        except Exception as exc:  # a bug or an odd binding error must not kill the dispatcher
            return None, self._gpu_failed(now, f"GPU view failed: {type(exc).__name__}: {exc}")
        if self.gpu_error is not None:
            self.log(f"GPU view is back ({len(snap.devices)} devices)")
            self.queue.set_meta("gpu_error", "")
        self.gpu_error, self.gpu_backoff = None, 1.0
        errors = {d.uuid: d.error for d in snap.devices if d.error}
        if errors != self.device_errors:
            for u, e in errors.items():
                if self.device_errors.get(u) != e:
                    self.log(f"GPU {u}: {e}; no new jobs go there until it recovers")
            for u in self.device_errors:
                if u not in errors:
                    self.log(f"GPU {u} recovered")
            self.device_errors = errors
        return snap, None

    def _gpu_failed(self, now: float, message: str) -> str:
        if message != self.gpu_error:
            self.log(f"GPU view unavailable: {message}; running jobs continue, CPU jobs still start; retrying with "
                     "backoff")
            self.queue.set_meta("gpu_error", message)
        self.gpu_error = message
        self.gpu_retry_at = now + self.gpu_backoff
        self.gpu_backoff = min(BACKOFF_MAX_S, self.gpu_backoff * 2)
        return message

    def _policy(self) -> admission.Policy:
        p = self.policy
        slots = self.queue.get_meta("cpu_slots")
        if slots.isdigit() and int(slots) > 0:
            p.cpu_slots = int(slots)
        return p

    def admit(self, now: float) -> None:
        queued = self.queue.queued()
        if not queued:
            return
        snapshot, error = (None, None)
        if any(int(j.get("gpus", 1)) > 0 for j in queued):
            snapshot, error = self.gpu_view(now)
        active = self.queue.active()
        running_cpu = sum(1 for j in active if int(j.get("gpus", 1)) == 0)
        owners = {}
        if snapshot is not None:
            for d in snapshot.devices:
                for p in d.processes:
                    owners[p.pid] = procs.owner(p.pid) or "?"
        admissions, reasons = admission.plan(queued, snapshot, error, self.queue.reservations(), running_cpu,
                                             self._policy(), now, owners)
        for adm in admissions:
            if self.stopping:
                break
            self.launch(adm.job, adm.devices)
        self._set_reasons(reasons)

    def _set_reasons(self, reasons: dict) -> None:
        changed = {k: v for k, v in reasons.items() if self.last_reasons.get(k) != v}
        if changed:
            self.queue.set_reasons(changed)
            self.last_reasons.update(changed)

    def launch(self, job: dict, devices: list) -> None:
        job_id = job["id"]
        job_dir = private_dir(self.layout.job_dir(job_id))
        exit_path = self.layout.job_exit(job_id)
        try:
            os.unlink(exit_path)  # a previous attempt's; must go before the reservation
        except OSError:
            pass
        token = uuid.uuid4().hex
        uuids = [d.uuid for d in devices]
        indices = [d.index for d in devices]
        if not self.queue.reserve(job_id, uuids, indices, token, self.boot):
            return
        job = self.queue.get(job_id) or job
        log_path = self.layout.job_log(job_id)
        where = f"GPU {','.join(indices)} ({','.join(uuids)})" if uuids else "no GPU (CPU job)"
        image = f", image {job['image']}" if job.get("image") else ""
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        append_log(log_path, f"[migrate] job {job_id} ({job['name']}) attempt {job['attempt']} started {started} "
                             f"on {where}{image}\n")
        plan = launch.plan_launch(job, job_dir=job_dir, log_path=log_path, gpu_uuids=uuids, token=token,
                                  base_env=dict(os.environ), home=self.home, user=self.user, uid=os.getuid(),
                                  gid=os.getgid(), bash=self.bash)
        try:
            proc = launch.spawn(plan)
        except OSError as exc:
            append_log(log_path, f"[migrate] could not start: {exc}\n")
            settle(self.queue, self.layout, job, self.log, exit_code=None, reason=f"could not start: {exc}")
            return
        self.children[job_id] = proc
        self.queue.mark_running(job_id, proc.pid, proc.pid, procs.start_ticks(proc.pid), plan.container)
        self.log(f"job {job_id} ({job['name']}) attempt {job['attempt']} started on {where}, pid {proc.pid}")
        current = self.queue.get(job_id)
        if current and current["cancel_requested"]:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except OSError:
                pass
