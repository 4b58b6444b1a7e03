"""Rows for the dispatcher's tables (status, gpus, run): pure functions of the agent's JSON."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text

from migrate import ui
from migrate.agent.recovery import job_ids_text
from migrate.errors import UsageError
from migrate.jobs.model import NAMES, JobState, is_terminal

STATE_COLOURS = {JobState.QUEUED.value: "cyan", JobState.STARTING.value: "yellow", JobState.RUNNING.value: "green",
                 JobState.DONE.value: "green", JobState.FAILED.value: "bold red", JobState.CANCELLED.value: "yellow",
                 JobState.LOST.value: "red"}


def duration(seconds: float | None) -> str:
    """12 -> '12s', 75 -> '1m15s', 3720 -> '1h02m', 90000 -> '1d01h'."""
    if seconds is None:
        return ""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def gpu_cell(job: dict) -> str:
    if int(job.get("gpus", 1)) == 0:
        return "cpu"
    if job.get("gpu_indices"):
        return ",".join(job["gpu_indices"])
    return f"{job.get('gpus', 1)}×"


def exit_cell(job: dict) -> str:
    code = job.get("exit_code")
    return "" if code is None else str(code)


def info_cell(job: dict, width: int = 70) -> str:
    parts = []
    if job.get("image"):
        parts.append(f"[{job['image']}]")
    if job.get("reason"):
        parts.append(job["reason"])
    elif not is_terminal(job["state"]):
        parts.append(job["command"])
    if job.get("attempt", 0) > 1:
        parts.append(f"(attempt {job['attempt']})")
    text = " ".join(parts)
    return text if len(text) <= width else text[: width - 1] + "…"


def runtime_cell(job: dict) -> str:
    """The runtime; '≤1m09s' when only an upper bound is known (a lost job: it ended unseen)."""
    text = duration(job.get("runtime_s"))
    return "≤" + text if text and job.get("runtime_at_most") else text


def status_rows(jobs: list[dict]) -> list[tuple]:
    return [(str(j["id"]), j["name"], Text(j["state"], style=STATE_COLOURS.get(j["state"], "")), gpu_cell(j),
             str(j.get("priority", 0) or ""), runtime_cell(j), exit_cell(j), info_cell(j)) for j in jobs]


STATUS_COLUMNS = ["id", "name", "state", "gpu", "prio", "runtime", "exit", "info"]


def select_jobs(jobs: list[dict], *, show_all: bool, states: list[str] | None, last: int) -> tuple[list[dict], int]:
    """`status --state/--all/--last` over job rows: (the rows shown, finished ones left out) (pure).

    The agent's `status` (migrate/agent/main.py cmd_status) answers the same way in SQL: --state wins,
    then --all, else every unfinished job plus the newest `last` finished ones, in id order."""
    if states:
        return [j for j in jobs if j["state"] in states], 0
    if show_all:
        return list(jobs), 0
    finished = sorted((j for j in jobs if is_terminal(j["state"])), key=lambda j: -int(j["id"]))
    kept = finished[:last]
    rows = [j for j in jobs if not is_terminal(j["state"])] + kept
    return sorted(rows, key=lambda j: int(j["id"])), len(finished) - len(kept)


def dispatcher_line(data: dict, host: str) -> str:
    d = data.get("daemon") or {}
    counts = data.get("counts") or {}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    backend = data.get("backend") or d.get("backend") or "nvml"
    fake = " (FAKE test double)" if str(backend).startswith("fake:") else ""
    if d.get("running"):
        since = duration(time.time() - float(d.get("started_at") or time.time()))
        who = f"dispatcher pid {d.get('pid')} ({d.get('mode')}, up {since}, agent {d.get('version')})"
    else:
        who = "dispatcher NOT running"
    return f"{host}: {who}; GPU backend {backend}{fake}; jobs: {summary or 'none'}"


def gpu_rows(devices: list[dict]) -> list[tuple]:
    rows = []
    for d in devices:
        mem = ""
        if d.get("memory_total_mib") is not None:
            mem = f"{ui.human_bytes((d.get('memory_used_mib') or 0) * 1048576)} / " \
                  f"{ui.human_bytes(d['memory_total_mib'] * 1048576)}"
        util = "" if d.get("utilization") is None else f"{d['utilization']}%"
        procs = "; ".join(
            f"{p['pid']} {p.get('user') or '?'}" + (f" job {p['job']}" if p.get("job") else "")
            + (f" {ui.human_bytes(p['used_mib'] * 1048576)}" if p.get("used_mib") is not None else "")
            for p in d.get("processes") or [])
        verdict = d.get("verdict", "")
        style = ui.VERDICT_STYLES.get(VERDICT_LOOK.get(verdict, ""), "")
        rows.append((d["index"], _short_uuid(d["uuid"]), d.get("name", ""), mem, util, procs,
                     Text(verdict, style=style), d.get("reason") or ""))
    return rows


VERDICT_LOOK = {"free": "ok", "reserved": "info", "busy": "warn", "error": "failed", "mig-parent": "info"}
GPU_COLUMNS = ["gpu", "uuid", "name", "memory", "util", "processes (pid user job mem)", "verdict", "why"]


def _short_uuid(uuid: str) -> str:
    return uuid if len(uuid) <= 20 else uuid[:12] + "…" + uuid[-6:]


def submitted_rows(jobs: list[dict], specs: list[Any]) -> list[tuple]:
    rows = []
    for j, s in zip(jobs, specs):
        gpus = "cpu" if s.gpus == 0 else str(s.gpus)
        rows.append((str(j["id"]), j["name"], j["status"], gpus, s.image or "", s.command))
    return rows


SUBMITTED_COLUMNS = ["id", "name", "result", "gpus", "image", "command"]


# -- `status HOST`: the query and the warnings under the table ----------------------------------------
def parse_states(states: str | None) -> list[str] | None:
    """`--state failed,lost` as a list; an unknown state is a usage error (pure)."""
    if not states:
        return None
    wanted = states.split(",")
    bad = [s for s in wanted if s not in NAMES]
    if bad:
        raise UsageError(f"unknown state {bad[0]!r}", hint="states: " + ", ".join(NAMES))
    return wanted


def status_args(show_all: bool, states: str | None, last: int) -> list[str]:
    """Agent arguments for a status query (pure)."""
    if states is not None and parse_states(states):  # parse_states(None) is None: the same test, for mypy
        return ["status", "--state", states]
    return ["status", "--all"] if show_all else ["status", "--limit", str(last)]


def show_status(data: dict, host: str) -> None:
    """The table and the warnings a person needs (pure apart from printing)."""
    ui.info(dispatcher_line(data, host))
    ui.table(None, STATUS_COLUMNS, status_rows(data["jobs"]))
    if data.get("hidden_finished"):
        ui.info(f"{data['hidden_finished']} older finished job(s) not shown (--all shows every job)")
    counts = data.get("counts") or {}
    waiting = counts.get("queued", 0)
    if data.get("paused"):
        ui.warn(paused_warning(data["paused"], host))
    elif not (data.get("daemon") or {}).get("running") and (waiting or counts.get("running")):
        ui.warn(f"the dispatcher is not running on {host}: queued jobs will not start "
                f"(start it with `migrate resume {host}`)")
    if data.get("gpu_error"):
        ui.warn(f"GPU view: {data['gpu_error']}")
    recorded = recorded_text(data.get("recovered") or {})
    if recorded:
        ui.info(recorded)


def paused_warning(paused: str, host: str) -> str:
    """One sentence: why the queue is paused and what to do (pure)."""
    paused = paused.split("; queue paused:")[0]  # the old agents' text said it twice
    return (f"queue paused on {host}: {paused.rstrip('.')}; nothing starts until `migrate resume {host}` "
            f"(`migrate retry {host} JOB` first for what should run again)")


def recorded_text(rec: dict) -> str:
    """'recorded meanwhile: job 3 finished; jobs 9-12 lost' ('' when nothing was recorded) (pure)."""
    parts = [f"{job_ids_text(rec[k])} {k}" for k in ("finished", "lost") if rec.get(k)]
    return "recorded meanwhile: " + "; ".join(parts) if parts else ""
