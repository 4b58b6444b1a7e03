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
    return read_exit(path)[0]


def read_exit(path: str) -> tuple:
    """(exit code, when it was written) from a job's exit file; (None, None) when there is none.

    The wrapper writes the file the moment the job ends, so its mtime is the job's real end time,
    even when the dispatcher records it much later (after a kill, a crash or from `status`).
    """
    try:
        with open(path) as fh:
            code = int(fh.read().strip())
            return code, os.fstat(fh.fileno()).st_mtime
    except (OSError, ValueError):
        return None, None


def clock(t: float) -> str:
    """A wall-clock time on this host, as the log's start lines write it."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


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
    """(status, exit_code, finished_at) of a container: ('running', None, None), ('exited', 3, 1.7e9)
    or ('missing', None, None)."""
    import subprocess

    try:
        proc = subprocess.run(["docker", "inspect", "-f",
                               "{{.State.Status}} {{.State.ExitCode}} {{.State.FinishedAt}}", name],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ("unknown", None, None)
    if proc.returncode != 0:
        return ("missing", None, None)
    parts = proc.stdout.split()
    status = parts[0] if parts else "unknown"
    code = int(parts[1]) if len(parts) > 1 and parts[1].lstrip("-").isdigit() else None
    return (status, code, docker_time(parts[2]) if len(parts) > 2 else None)


def docker_time(text: str) -> float | None:
    """Docker's RFC 3339 UTC time ('2026-11-30T08:40:00.123456789Z') in epoch seconds; None if unset."""
    import calendar

    try:
        main, _, rest = text.partition(".")
        if not rest and main.endswith("Z"):
            main = main[:-1]
        t: float = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    frac = rest.rstrip("Z")
    if frac.isdigit():
        t += float("0." + frac)
    return t if t > 86400 else None  # "0001-01-01T00:00:00Z": never finished


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
           reason: str = "", ended_at: float | None = None, ended_before: float | None = None) -> str | None:
    """Record the end of a job (idempotent): queue state, a footer in its log, tidy files.

    `ended_at`: when it really ended (its exit file's mtime), if known; else `ended_before`: the
    latest it can have ended (a reboot, or now for processes found gone), said as such in the log;
    with neither, it ended just now.
    """
    now = time.time()
    started = float(job.get("started_at") or now)
    end = ended_at if ended_at is not None else (ended_before if ended_before is not None else now)
    end = min(max(end, started), now)
    state = queue.finish(job["id"], exit_code, lost=lost, reason=reason, ended_at=end)
    if state is None:
        return None
    text = f"exit code {exit_code}" if exit_code is not None else "no exit code"
    if ended_at is None and ended_before is not None:
        text += f", ended before {clock(end)} (at most {duration(end - started)} after it started)"
    else:
        text += f" after {duration(end - started)}"
    what = state if state != "queued" else "failed, queued again"
    why = f" ({reason})" if reason else ""
    append_log(layout.job_log(job["id"]), f"[migrate] job {job['id']} {what}: {text}{why}\n")
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
    code, ended = read_exit(layout.job_exit(job["id"]))
    if code is not None:
        return settle(queue, layout, job, log, exit_code=code, ended_at=ended) or "gone"
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
        status, ccode, finished = docker_state(job["container"])
        if status == "exited" and ccode is not None:
            return settle(queue, layout, job, log, exit_code=ccode, ended_at=finished,
                          ended_before=None if finished else time.time(),
                          reason="exit code read from its container") or "gone"
    return settle(queue, layout, job, log, exit_code=None, lost=True, ended_before=time.time(),
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
    summary: dict[str, Any] = {"adopted": [], "finished": [], "lost": [], "requeued": [], "paused": ""}
    if last_boot and last_boot != boot:
        lost = []
        booted = procs.boot_time()  # the jobs of the old boot ended before this one began
        for job in queue.active():
            if job.get("boot_id") != boot and settle(queue, layout, job, log, exit_code=None, lost=True,
                                                     ended_before=booted or time.time(),
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
