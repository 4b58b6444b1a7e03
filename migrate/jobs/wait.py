"""`migrate wait`: block until jobs on one or more hosts (or a cluster) end, then say how they ended.

Jobs are read with the same code `migrate status` uses: a host's agent (`status --all` through
`AgentClient.call`, on one connection kept open for the whole wait: one SSH round trip per host
per poll) and, for a cluster name, `migrate.cluster.jobs.cluster_jobs`. Hosts are polled in
parallel (`remote.parallel.for_each_host`). A host that stops answering after the first poll is
shown as such and asked again at the next poll (laptops sleep, links drop); the jobs are never
touched: waiting only reads.

Exit codes (`wait_exit_code`): 0 every job done (exit 0); 1 every job ended and at least one did not
succeed (failed, cancelled, lost); 124 the --timeout passed first (like timeout(1)); 130 Ctrl-C.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.table import Table
from rich.text import Text

from migrate.errors import MigrateError, UsageError
from migrate.jobs.client import AgentClient, agent_command, no_queue_error
from migrate.jobs.model import TERMINAL, Job, JobState, is_terminal
from migrate.jobs.render import STATE_COLOURS, duration
from migrate.remote.connection import connect
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host

EXIT_ALL_DONE = 0
EXIT_SOME_FAILED = 1
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130
TAIL_LINES = 5
LIVE_WIDTH = 80


@dataclass
class JobRow:
    """One job being waited for, as last read."""

    target: str
    id: str
    name: str = ""
    state: str = "?"
    exit_code: int | None = None
    runtime_s: float | None = None
    reason: str = ""

    @property
    def final(self) -> bool:
        return is_terminal(self.state)

    @property
    def ok(self) -> bool:
        return self.state == JobState.DONE and self.exit_code in (0, None)

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "id": self.id, "name": self.name, "state": self.state,
                "exit_code": self.exit_code, "runtime_s": self.runtime_s, "reason": self.reason}


@dataclass
class WaitResult:
    """How the wait ended: the jobs as last read, whether the timeout passed, per-target read errors."""

    rows: list[JobRow]
    timed_out: bool = False
    elapsed_s: float = 0.0
    errors: dict[str, str] = field(default_factory=dict)
    tails: dict[tuple[str, str], str] = field(default_factory=dict)  # (target, id) -> last log lines

    @property
    def failed(self) -> list[JobRow]:
        return [r for r in self.rows if r.final and not r.ok]

    @property
    def unfinished(self) -> list[JobRow]:
        return [r for r in self.rows if not r.final]


def wait_exit_code(result: WaitResult) -> int:
    """0 all done, 124 timed out, 1 some job did not succeed (pure)."""
    if result.timed_out:
        return EXIT_TIMEOUT
    return EXIT_SOME_FAILED if result.failed else EXIT_ALL_DONE


class JobReader(Protocol):
    """Where a target's jobs are read from: one host's agent, or a cluster."""

    name: str

    def jobs(self) -> list[dict]: ...

    def tail(self, job_id: str, lines: int) -> str: ...

    def close(self) -> None: ...


class HostReader:
    """A host's agent on one connection kept open; reconnects on the next poll after a drop."""

    def __init__(self, host: str, conn: ConnectOptions) -> None:
        self.name = host
        self.conn = conn
        self.client: AgentClient | None = None

    def _client(self) -> AgentClient:
        if self.client is None:
            self.client = AgentClient(connect(self.name, self.conn))
        return self.client

    def jobs(self) -> list[dict]:
        try:
            data = self._client().call(["status", "--all"], what="read job status", need_queue=True)
        except Exception:  # a dropped link shows as ConnectError or as paramiko's own errors
            self.close()  # a fresh connection at the next poll
            raise
        if data.get("no_queue"):
            raise no_queue_error(self.name)
        return data["jobs"]

    def tail(self, job_id: str, lines: int) -> str:
        client = self._client()
        res = client.remote.run(agent_command(client.bundle, ["logs", job_id, "--tail", str(lines)],
                                              need_queue=True), check=False, what="read the job's log")
        return res.stdout

    def close(self) -> None:
        if self.client is not None:
            self.client.remote.close()
            self.client = None


class ClusterReader:
    """A cluster's jobs through migrate.cluster.jobs (what `status NAME` reads)."""

    def __init__(self, name: str, conn: ConnectOptions) -> None:
        self.name = name
        self.conn = conn
        self.submissions: dict[str, str] = {}

    def jobs(self) -> list[dict]:
        from migrate.cluster.jobs import cluster_jobs

        views = cluster_jobs(self.name, self.conn)
        self.submissions = {str(v["id"]): v.get("submission_id") or "" for v in views}
        return views

    def tail(self, job_id: str, lines: int) -> str:
        from migrate.cluster import state
        from migrate.cluster.jobapi import job_api
        from migrate.cluster.jobs import clean_log

        sub = self.submissions.get(job_id)
        if not sub:
            return ""
        with job_api(state.load(self.name), self.conn) as api:
            text = clean_log(api.logs(sub))
        return "\n".join(text.splitlines()[-lines:])

    def close(self) -> None:
        pass


def reader_for(target: str, conn: ConnectOptions) -> JobReader:
    """The reader of `target`'s jobs: its job target's (migrate/jobs/target.py decides host or cluster)."""
    from migrate.jobs.target import job_target

    return job_target(target, conn).reader()


def pick_jobs(jobs: list[dict], refs: Sequence[str], target: str) -> list[str]:
    """The ids of the jobs `refs` name (an id, a name or a key; ids first), in the order given (pure)."""
    by_id = {str(j["id"]): j for j in jobs}
    out: list[str] = []
    for ref in refs:
        if ref in by_id:
            found = ref
        else:
            named = [str(j["id"]) for j in jobs if ref in (j.get("name"), j.get("key"))]
            if len(named) != 1:
                raise UsageError(f"no job {ref!r} on {target}" if not named
                                 else f"several jobs on {target} are named {ref!r}",
                                 hint=f"see the ids in `migrate status {target}`")
            found = named[0]
        if found not in out:
            out.append(found)
    return out


def active_ids(jobs: list[dict]) -> list[str]:
    """Every job not finished yet (`wait --all`) (pure)."""
    return [str(j["id"]) for j in jobs if not is_terminal(j.get("state"))]


def row_of(target: str, job_id: str, job: dict | None) -> JobRow:
    """A JobRow from one job of `status --json` (a host's or a cluster's) (pure)."""
    if job is None:
        return JobRow(target=target, id=job_id, state=JobState.LOST.value, reason="not in the queue any more")
    j = Job.from_agent(job)
    return JobRow(target=target, id=job_id, name=j.name, state=str(job.get("state") or "?"), exit_code=j.exit_code,
                  runtime_s=j.runtime_s, reason=j.reason)


def finished_line(row: JobRow) -> str:
    """`wtest1 job 3 (train[lr=0.1]) done, exit 0, 12s` (pure): what a pipe sees per finished job."""
    name = f" ({row.name})" if row.name else ""
    code = "" if row.exit_code is None else f", exit {row.exit_code}"
    took = f", {duration(row.runtime_s)}" if row.runtime_s is not None else ""
    why = f": {row.reason}" if row.reason and not row.ok else ""
    return f"{row.target} job {row.id}{name} {row.state}{code}{took}{why}"


def summary_text(rows: list[JobRow]) -> str:
    """`3 of 8 finished: 2 done, 1 failed; 5 running` (pure)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    done = sum(1 for r in rows if r.final)
    finished = ", ".join(f"{counts[s.value]} {s.value}" for s in TERMINAL if counts.get(s.value))
    waiting = ", ".join(f"{n} {s}" for s, n in counts.items() if not is_terminal(s))
    text = f"{done} of {len(rows)} finished" + (f": {finished}" if finished else "")
    return text + (f"; {waiting}" if waiting else "")


def live_table(rows: list[JobRow], errors: dict[str, str], elapsed_s: float, max_rows: int,
               width: int = LIVE_WIDTH) -> Table:
    """The live view (at most `width` columns): unfinished and failed jobs first, then the rest (pure)."""
    t = Table(title=f"{summary_text(rows)} · waited {duration(elapsed_s)}", title_justify="left",
              caption="Ctrl-C stops waiting, not the jobs", caption_justify="left", show_lines=False)
    narrow = width < LIVE_WIDTH  # 80 columns fit the widths below; narrower terminals squeeze the name
    for col, w in (("host", 12), ("id", 5), ("name", 22 if not narrow else 10), ("state", 9), ("runtime", 7),
                   ("exit", 4)):
        t.add_column(col, max_width=w, overflow="ellipsis", no_wrap=True)
    order = sorted(rows, key=lambda r: (r.final and r.ok, r.final, r.target, _id_key(r.id)))
    shown = order[:max(1, max_rows)]
    for r in shown:
        t.add_row(Text(r.target), Text(r.id), Text(r.name), Text(r.state, style=STATE_COLOURS.get(r.state, "")),
                  Text(duration(r.runtime_s)), Text("" if r.exit_code is None else str(r.exit_code)))
    if len(order) > len(shown):
        t.caption = f"... and {len(order) - len(shown)} more; Ctrl-C stops waiting, not the jobs"
    for target, err in errors.items():
        t.add_row(Text(target), Text(""), Text(f"unreachable: {err}", style="yellow"), Text(""), Text(""), Text(""))
    return t


def _id_key(job_id: str) -> tuple:
    return (0, int(job_id), "") if job_id.isdigit() else (1, 0, job_id)


Chosen = dict[str, list[str] | None]  # target -> job refs (None: every unfinished job now)


def wait_for_jobs(readers: list[JobReader], chosen: Chosen, *, timeout: float | None, interval: float,
                  on_poll: Callable[[list[JobRow], dict[str, str], float], None] | None = None,
                  on_finished: Callable[[JobRow], None] | None = None, tail_lines: int = TAIL_LINES,
                  after_poll: Callable[[dict[tuple[str, str], str]], None] | None = None,
                  settled: Callable[[], bool] | None = None,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> WaitResult:
    """Poll every reader until all chosen jobs are finished or `timeout` seconds passed.

    The first poll resolves the refs (a mistake there is an error); later read errors are shown
    per target and retried at the next poll. `after_poll` sees every job's state after each poll (the
    sync-backs run there); the wait ends only once `settled()` too (their final pulls are done).
    Ctrl-C (KeyboardInterrupt) passes through: the caller
    says the jobs keep running.
    """
    by_name = {r.name: r for r in readers}
    start = clock()
    ids: dict[str, list[str]] = {}
    rows: dict[tuple[str, str], JobRow] = {}
    errors: dict[str, str] = {}
    announced: set[tuple[str, str]] = set()
    first = True
    while True:
        outcomes = for_each_host(list(by_name), lambda name: by_name[name].jobs())
        for out in outcomes:
            if not out.ok:
                if first:
                    raise MigrateError(f"cannot read the jobs on {out.host}: {out.error}")
                errors[out.host] = out.error or "?"
                continue
            errors.pop(out.host, None)
            jobs = out.value or []
            if out.host not in ids:
                refs = chosen.get(out.host)
                ids[out.host] = active_ids(jobs) if refs is None else pick_jobs(jobs, refs, out.host)
            index = {str(j["id"]): j for j in jobs}
            for job_id in ids[out.host]:
                row = row_of(out.host, job_id, index.get(job_id))
                key = (out.host, job_id)
                rows[key] = row
                if row.final and key not in announced:
                    announced.add(key)
                    if on_finished:
                        on_finished(row)
        first = False
        elapsed = clock() - start
        current = [rows[k] for k in sorted(rows, key=lambda k: (k[0], _id_key(k[1])))]
        if on_poll:
            on_poll(current, dict(errors), elapsed)
        if after_poll:
            after_poll({(r.target, r.id): r.state for r in current})
        done = len(ids) == len(by_name) and all(r.final for r in current) and (settled is None or settled())
        timed_out = timeout is not None and elapsed >= timeout
        if done or timed_out:
            result = WaitResult(rows=current, timed_out=timed_out and not done, elapsed_s=elapsed,
                                errors=dict(errors))
            _read_tails(result, by_name, tail_lines)
            return result
        pause = interval if timeout is None else min(interval, max(0.0, timeout - elapsed))
        sleep(pause)


class UnreachableWarnings:
    """An `on_poll` callback: one warning when a target stops answering (again after it answered)."""

    def __init__(self) -> None:
        self.silent: set[str] = set()

    def __call__(self, rows: list[JobRow], errors: dict[str, str], elapsed: float) -> None:
        from migrate import ui

        for target, err in errors.items():
            if target not in self.silent:
                ui.warn(f"{target} did not answer ({err}); asking again at the next poll")
        self.silent = set(errors)


def _read_tails(result: WaitResult, readers: dict[str, JobReader], lines: int) -> None:
    """The last log lines of every job that did not succeed (best effort: a read error is shown instead)."""
    if lines <= 0:
        return
    for row in result.failed:
        try:
            result.tails[(row.target, row.id)] = readers[row.target].tail(row.id, lines)
        except MigrateError as exc:
            result.tails[(row.target, row.id)] = f"(could not read its log: {exc.one_line()})"


def failure_report(result: WaitResult) -> list[str]:
    """The lines that list each job that did not succeed, with its last log lines (pure)."""
    out = []
    for row in result.failed:
        out.append(finished_line(row))
        for ln in (result.tails.get((row.target, row.id)) or "").rstrip("\n").splitlines():
            out.append("    " + ln)
    return out


# -- telling people: a webhook from the laptop, a desktop notification -----------------------------
def wait_message(result: WaitResult, targets: Sequence[str]) -> tuple[str, str]:
    """(title, text) of the message `wait --notify` posts (pure): the agent's wording for ended jobs."""
    from migrate.agent.notify import job_line, message

    where = ", ".join(targets)
    if result.timed_out:
        bad = [job_line(_as_job(r)) for r in result.failed]
        return (f"⌛ migrate: stopped waiting on {where} after {duration(result.elapsed_s)}: "
                f"{summary_text(result.rows)}", "\n".join(bad))
    if not result.rows:
        return f"✔ migrate: no unfinished jobs on {where}", ""
    return message([_as_job(r) for r in result.rows], where)


def _as_job(row: JobRow) -> dict[str, Any]:
    return {"id": row.id, "name": row.name, "state": row.state, "exit_code": row.exit_code,
            "runtime_s": row.runtime_s, "reason": row.reason}


def desktop_notify(title: str, text: str) -> bool:
    """A desktop notification where the platform has one (notify-send, macOS osascript); False otherwise."""
    import json
    import shutil
    import subprocess

    if shutil.which("notify-send"):
        argv = ["notify-send", "--app-name=migrate", title, text]
    elif sys.platform == "darwin" and shutil.which("osascript"):
        argv = ["osascript", "-e", f"display notification {json.dumps(text)} with title {json.dumps(title)}"]
    else:
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False
