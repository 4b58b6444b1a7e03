"""The dispatcher: one long-running process per user that starts queued jobs when GPUs are free.

Loop: reap finished jobs -> admit what fits -> sleep until something can change. It sleeps on a
pipe that signals write to (SIGCHLD when a job it started ends, SIGUSR1 when a client queued
something, SIGTERM to stop), so a job starts right after its GPU is released by one of ours;
GPUs released by other people are noticed at once where their processes can be watched: while
GPU jobs wait, the dispatcher holds a pidfd for each process NVML lists (python >= 3.9 on Linux
>= 5.3) and sleeps on those too, so one's exit wakes it. NVML is still polled every second (the
fallback on python 3.8, for PIDs of other PID namespaces, and for memory or utilisation changes).
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

import fcntl
import json
import os
import select
import signal
import sys
import time
import traceback
import uuid
from typing import Any

from . import VERSION, admission, launch, procs
from .db import ACTIVE, STARTING, Queue
from .gpus import GpuBackendError, GpuSnapshot, open_backend
from .layout import Layout, private_dir, read_json, write_private
from .lock import AgentLog, acquire_lock
from .recovery import append_log, check_job, current_user, job_is_alive, read_exit, recover, settle

GPU_POLL_S = 1.0  # while GPU jobs wait: how often NVML is asked whether a GPU became free
ADOPTED_POLL_S = 2.0  # jobs we did not start ourselves (after a restart): exit-file checks
LIVENESS_EVERY_S = 5.0  # process checks for adopted jobs
IDLE_S = 60.0
BACKOFF_MAX_S = 300.0


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
        self.idle_baselines = None  # type: dict | None  # loaded from the queue's meta on first use
        self.boot = procs.boot_identity()
        self.user = current_user()
        self.home = os.path.expanduser("~")
        self.bash = launch.find_bash()
        self._wake_r = self._wake_w = -1
        self.watched = {}  # type: dict  # pid -> pidfd of a process on a GPU while GPU jobs wait

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
            failures = 0
            while not self.stopping:
                try:
                    self.tick()
                    timeout = self.next_timeout()
                    failures = 0
                except Exception:  # a full disk or a locked queue must not end the dispatcher: retry
                    failures += 1
                    timeout = min(60.0, 2.0 ** failures)
                    self.log(f"error in the dispatcher loop (retrying in {timeout:.0f} s):\n"
                             + traceback.format_exc())
                if not self.stopping:
                    self._sleep(timeout)
        except Exception:
            self.log("dispatcher crashed:\n" + traceback.format_exc())
            raise
        finally:
            self._remove_pidfile()
            self.watch_gpu_processes([])
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

    def watch_gpu_processes(self, pids: list) -> None:
        """Hold a pidfd for each of these PIDs (and none other), so `_sleep` wakes when one exits.

        Where pidfds do not exist (python 3.8, Linux < 5.3) or a PID is not visible here (another
        PID namespace), nothing is watched and the NVML poll notices instead.
        """
        open_pidfd = getattr(os, "pidfd_open", None)  # python >= 3.9
        wanted = set(pids) if open_pidfd is not None else set()
        for pid in [p for p in self.watched if p not in wanted]:
            os.close(self.watched.pop(pid))
        for pid in wanted - set(self.watched):
            assert open_pidfd is not None  # wanted is empty without it
            try:
                self.watched[pid] = open_pidfd(pid)
            except OSError:
                pass

    def _sleep(self, timeout: float) -> None:
        fds = [self._wake_r, *self.watched.values()]
        try:
            ready, _, _ = select.select(fds, [], [], timeout)
        except InterruptedError:
            ready = []
        for pid, fd in list(self.watched.items()):
            if fd in ready:  # that process exited: forget it; the next tick reads NVML again
                os.close(self.watched.pop(pid))
        if self._wake_r in ready:
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
        from . import notify  # issue 22: a webhook post when a job or a sweep ends (never raises; threads)
        notify.deliver(self.queue, self.layout, self.log)
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
            code, ended = read_exit(self.layout.job_exit(job_id))
            if code is not None:
                settle(self.queue, self.layout, job, self.log, exit_code=code, ended_at=ended)
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
            code, ended = read_exit(self.layout.job_exit(job["id"]))
            if code is not None:
                settle(self.queue, self.layout, job, self.log, exit_code=code, ended_at=ended)
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
            self.watch_gpu_processes([])
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
        reserved = self.queue.reservations()
        baselines = self._learn_baselines(snapshot, reserved)
        admissions, reasons = admission.plan(queued, snapshot, error, reserved, running_cpu,
                                             self._policy(), now, owners, baselines)
        for adm in admissions:
            if self.stopping:
                break
            self.launch(adm.job, adm.devices)
        self._set_reasons(reasons)
        waiting_gpu = snapshot is not None and any(int(queued_job.get("gpus", 1)) > 0 and queued_job["id"] in reasons
                                                   for queued_job in queued)
        self.watch_gpu_processes([p.pid for d in snapshot.devices for p in d.processes]
                                 if waiting_gpu and snapshot is not None else [])  # waiting_gpu implies a snapshot

    def _learn_baselines(self, snapshot: GpuSnapshot | None, reserved: dict) -> dict:
        """Idle baselines, updated from this snapshot and kept in the queue (they survive restarts)."""
        if self.idle_baselines is None:
            self.idle_baselines = admission.load_idle_baselines(self.queue)
        if snapshot is None:
            return self.idle_baselines
        learned = admission.learn_idle_baseline(snapshot.leaves(), reserved, self.idle_baselines)
        if learned != self.idle_baselines:
            for key, mib in learned.items():
                if key not in self.idle_baselines:
                    self.log(f"GPU {key.split('/')[0]}: idle baseline {mib} MiB used")
            self.queue.set_meta("idle_baselines", json.dumps(learned, sort_keys=True))
            self.idle_baselines = learned
        return learned

    def _set_reasons(self, reasons: dict) -> None:
        changed = {k: v for k, v in reasons.items() if self.last_reasons.get(k) != v}
        if changed:
            self.queue.set_reasons(changed)
            self.last_reasons.update(changed)

    def launch(self, job: dict, devices: list) -> None:
        job_id = job["id"]
        try:
            os.unlink(self.layout.job_exit(job_id))  # a previous attempt's; must go before the reservation
        except OSError:
            pass
        token = uuid.uuid4().hex
        uuids = [d.uuid for d in devices]
        indices = [d.index for d in devices]
        if not self.queue.reserve(job_id, uuids, indices, token, self.boot):
            return
        job = self.queue.get(job_id) or job
        try:
            job_dir = private_dir(self.layout.job_dir(job_id))
        except OSError as exc:  # this job fails, not the dispatcher
            settle(self.queue, self.layout, job, self.log, exit_code=None,
                   reason=f"could not create its directory {self.layout.job_dir(job_id)}: {exc.strerror or exc}")
            return
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
