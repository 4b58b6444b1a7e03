"""Cancelling jobs: queued ones leave the queue; running ones get SIGTERM, then SIGKILL.

A process-mode job is signalled as a whole process group (the wrapper, `bash -lc`, and every
child they started without a new session); a container-mode job gets `docker stop -t GRACE`
(TERM, then KILL after the grace period). The grace period is waited for here, so when the
command returns the jobs are gone and their state is recorded, whether or not a dispatcher runs.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import Any

from . import procs
from .db import STARTING, Queue
from .layout import Layout
from .recovery import job_is_alive, read_exit_code, settle


def _docker_stop(names: list, grace: float) -> None:
    if not names:
        return
    try:
        subprocess.run(["docker", "stop", "-t", str(int(grace))] + names, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=grace + 60)
    except (OSError, subprocess.TimeoutExpired):
        pass


def _wait_started(queue: Queue, job: dict, timeout: float = 5.0) -> dict:
    """A job being launched right now: wait until its pid is recorded."""
    deadline = time.monotonic() + timeout
    while job["state"] == STARTING and time.monotonic() < deadline:
        time.sleep(0.05)
        job = queue.get(job["id"]) or job
    return job


def cancel(queue: Queue, layout: Layout, job_ids: list, grace: float, log: Any) -> list:
    """Cancel jobs; return one result dict per job: id, name, was, outcome."""
    cancelled, to_signal = queue.request_cancel(job_ids)
    results = [{"id": j["id"], "name": j["name"], "was": "queued", "outcome": "removed from the queue"}
               for j in cancelled]
    targets = [_wait_started(queue, j) for j in to_signal]
    containers = [j["container"] for j in targets if j.get("container")]
    stopper = threading.Thread(target=_docker_stop, args=(containers, grace), daemon=True)
    stopper.start()
    for job in targets:
        if not job.get("container"):
            procs.signal_group(job.get("pgid") or 0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    pending = list(targets)
    while pending and time.monotonic() < deadline:
        pending = [j for j in pending if job_is_alive(j)]
        if pending:
            time.sleep(0.1)
    killed = set()
    for job in pending:
        if procs.signal_group(job.get("pgid") or 0, signal.SIGKILL):
            killed.add(job["id"])
    stopper.join(timeout=60)
    for job in targets:
        wait_until = time.monotonic() + 5
        while job_is_alive(job) and time.monotonic() < wait_until:
            time.sleep(0.05)
        code = read_exit_code(layout.job_exit(job["id"]))
        if code is None and job["id"] in killed:
            code = 128 + signal.SIGKILL
        settle(queue, layout, job, log, exit_code=code,
               reason="cancelled by the user" + (f" (SIGKILL after {int(grace)}s)" if job["id"] in killed else ""))
        results.append({"id": job["id"], "name": job["name"], "was": job["state"],
                        "outcome": f"killed (SIGKILL after {int(grace)}s grace)" if job["id"] in killed
                        else ("stopped (docker stop)" if job.get("container") else "terminated (SIGTERM)")})
    return sorted(results, key=lambda r: r["id"])


def still_alive(job: dict) -> list:
    """Pids of a job's process group (for tests and diagnostics)."""
    return procs.group_members(job.get("pgid") or 0)
