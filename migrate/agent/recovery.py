"""Bringing the queue in line with reality: exit codes, re-adoption, reboots (cheap to import).

Used by the dispatcher at start (and while it runs, for jobs it did not start itself), by
`cancel`, and by `status`/`resume` when no dispatcher runs, so the queue is always truthful.
"""

from __future__ import annotations

import os
import pwd
import time
from typing import Any

from . import launch, procs
from .db import STARTING, Queue
from .layout import Layout


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


def job_ids_text(ids: list, limit: int = 8) -> str:
    """[9, 10, 11, 12] -> 'jobs 9-12'; [3] -> 'job 3'; [1, 3, 4, 5, 8] -> 'jobs 1, 3-5 and 8' (pure)."""
    nums = sorted({int(i) for i in ids})
    if not nums:
        return "no jobs"
    runs = []  # type: list
    for n in nums:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    runs = [r for a, b in runs for r in ([[a, a], [b, b]] if b == a + 1 else [[a, b]])]  # 1, 2 not 1-2
    parts = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    more = ""
    if len(parts) > limit:
        shown = sum(b - a + 1 for a, b in runs[:limit])
        parts, more = parts[:limit], f" and {len(nums) - shown} more"
    text = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 and not more else ", ".join(parts)
    return ("job " if len(nums) == 1 else "jobs ") + text + more


def append_log(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as fh:
            fh.write(text)
    except OSError:
        pass


def docker_state(name: str) -> tuple:
    """(status, exit_code) of a container: ('running', None), ('exited', 3) or ('missing', None)."""
    import subprocess

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
    import subprocess

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
                               launch.container_name(current_user(), job["id"]) if job.get("image") else None)
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


def reboot_reason(lost: list) -> str:
    """Why the queue is paused after a reboot: one clause, without advice (the client adds that)."""
    if not lost:
        return "the host rebooted"
    return f"the host rebooted while {job_ids_text(lost)} ran (marked lost)"


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
            why = reboot_reason(lost)
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


def current_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())
