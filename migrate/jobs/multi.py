"""`migrate status -H h1 -H h2 ...`: every host's jobs at once, asked in parallel, shown as one view.

Each host is read as `status HOST` reads it (`JobTarget.status_answer`: the agent's `status` on a
host, the head's job API on a cluster), all at once with
`remote.parallel.for_each_host`. A host that does not answer is one line of the view, not the end
of it: the exit code is 0 when at least one host answered (`multi_exit_code`).
"""

from __future__ import annotations

from typing import Any

from rich.text import Text

from migrate.jobs.render import STATE_COLOURS, STATUS_COLUMNS, status_rows
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import HostOutcome, for_each_host

MULTI_COLUMNS = ["host", *STATUS_COLUMNS]


def playbook_targets(path: str) -> list[str]:
    """Where a playbook's jobs are (`status -f`): its cluster when it names one, else its hosts (the
    loader refuses a playbook without hosts)."""
    from migrate.playbook.loader import load_playbook

    pb = load_playbook(path)
    return [pb.cluster] if pb.cluster else list(pb.hosts)


def read_hosts(hosts: list[str], conn: ConnectOptions, *, show_all: bool = False, states: list[str] | None = None,
               last: int = 20) -> list[HostOutcome[dict]]:
    """Every host's answer (or its one-line error), asked in parallel; each target chooses its jobs as the
    agent chooses (--state, --all, --last)."""
    from migrate.jobs.target import job_target

    return for_each_host(hosts, lambda host: job_target(host, conn).status_answer(show_all=show_all, states=states,
                                                                                  last=last), max_workers=16)


def multi_exit_code(outcomes: list[HostOutcome]) -> int:
    """0 when at least one host answered, else 1 (pure)."""
    return 0 if any(o.ok for o in outcomes) else 1


def multi_rows(outcomes: list[HostOutcome[dict]]) -> list[tuple]:
    """One table: each host's jobs with the host in front; an unreachable host is one row (pure)."""
    rows: list[tuple] = []
    for o in outcomes:
        if not o.ok:
            reason = (o.error or "").split(" (hint:")[0]
            rows.append((Text(o.host), "", "", Text("unreachable", style="bold red"), "", "", "", "",
                         Text(reason if len(reason) <= 70 else reason[:69] + "…")))
            continue
        data = o.value or {}
        jobs = data.get("jobs") or []
        if not jobs:
            rows.append((Text(o.host), "", "", Text("no jobs", style="dim"), "", "", "", "", ""))
            continue
        rows += [(Text(o.host), *row) for row in _rows(jobs)]
    return rows


def _rows(jobs: list[dict]) -> list[tuple]:
    if jobs and "submission_id" in jobs[0]:  # a cluster's job views
        return [(str(j["id"]), j["name"], Text(j["state"], style=STATE_COLOURS.get(j["state"], "")),
                 str(j["gpus"]) if j["gpus"] else "cpu", "", "", "" if j["exit_code"] is None else str(j["exit_code"]),
                 (j.get("reason") or j.get("command") or "")[:70]) for j in jobs]
    return status_rows(jobs)


def multi_json(outcomes: list[HostOutcome[dict]]) -> dict[str, Any]:
    """`status -H ... --json`: per-host summaries, then every job with its host (pure)."""
    hosts: list[dict[str, Any]] = []
    jobs: list[dict[str, Any]] = []
    for o in outcomes:
        if not o.ok:
            hosts.append({"host": o.host, "ok": False, "error": o.error})
            continue
        data = dict(o.value or {})
        host_jobs = data.pop("jobs", [])
        hosts.append({"host": o.host, "ok": True, **{k: v for k, v in data.items() if k != "host"},
                      "display": data.get("host")})
        jobs += [{"host": o.host, **j} for j in host_jobs]
    counts: dict[str, int] = {}
    for h in hosts:
        for state, n in (h.get("counts") or {}).items():
            counts[state] = counts.get(state, 0) + n
    return {"hosts": hosts, "counts": counts, "unreachable": [h["host"] for h in hosts if not h["ok"]], "jobs": jobs}
