"""Where jobs run: one host's dispatcher queue or a Ray cluster, behind one interface, chosen once.

`job_target(name, conn)` is the one place that decides host or cluster (a name with a record from
`migrate cluster up` is a cluster, anything else a host); run, status, logs, cancel, retry, shell,
exec and wait call the target it returns and never ask again. Both targets take the same options
with the same meaning (`--grace`, `--dry-run`, `--all`, `--json`); what one of them cannot do is
refused with the same kind of one-line usage error, before anything connects or changes.

`HostTarget` talks to the agent on the host (migrate/jobs/client.py, submit.py, shell.py);
`ClusterTarget` (migrate/cluster/target.py) to the head's job API (migrate/cluster/jobs.py, shell.py).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from migrate import ui
from migrate.data.syncback import follow_syncing, sync_line
from migrate.errors import UsageError
from migrate.jobs import idcache, lastrun
from migrate.jobs import template as tpl
from migrate.jobs.client import agent_session, call_agent, print_answer, report_dispatcher
from migrate.jobs.compose import ComposePlan
from migrate.jobs.limits import confirm_many_jobs
from migrate.jobs.render import show_status, status_args
from migrate.jobs.shell import SessionRequest, dry_run_argv, open_session
from migrate.jobs.spec import DispatcherOptions, JobSpec
from migrate.jobs.submit import run_command
from migrate.jobs.wait import HostReader, JobReader
from migrate.remote import shell as quoting
from migrate.remote.hosts import ConnectOptions


@dataclass
class Submission:
    """One `migrate run`: the specs and every option that says how they are queued."""

    specs: list[JobSpec]
    options: DispatcherOptions = field(default_factory=DispatcherOptions)
    template: tpl.TemplatePlan | None = None
    compose: ComposePlan | None = None
    dry_run: bool = False
    as_json: bool = False
    follow: bool = False
    yes: bool = False
    every: float | None = None          # --every (with --sync-back)
    nodes: int = 0                      # --nodes: one job across N servers (clusters only)
    gpus_per_node: int = 0              # with --nodes: GPUs on each node


@runtime_checkable
class JobTarget(Protocol):
    """A place jobs run. Every method prints what the verb shows and returns the verb's exit code."""

    name: str
    kind: str  # "host" or "cluster": for messages only, never to branch on

    @property
    def files_host(self) -> str:
        """The host whose files a job's results are pulled from (--sync-back): the host, or a cluster's head."""

    def require_one_host(self, what: str) -> None:
        """Refuse (UsageError) a verb that runs on one host only (`what`: e.g. 'a notebook runs on one host')."""

    def check_submit(self, *, nodes: int, notify: bool, compose: bool) -> None:
        """Refuse (UsageError) what this target cannot run, before any spec is built."""

    def submit(self, sub: Submission) -> int:
        """Queue the jobs (or show them with dry_run); record the ids for `migrate wait`."""

    def status(self, *, show_all: bool, states: list[str] | None, last: int, as_json: bool) -> int:
        """The jobs table (or JSON)."""

    def status_answer(self, *, show_all: bool, states: list[str] | None, last: int) -> dict:
        """The jobs chosen as `status` chooses them, in the shape of `status --json` (for `status -H`)."""

    def logs(self, job: str, *, follow: bool, tail: int | None) -> int:
        """A job's output; with follow until it ends (exit code: the job's where known)."""

    def cancel(self, refs: Sequence[str], *, all_jobs: bool, grace: float, dry_run: bool, as_json: bool) -> int:
        """Stop jobs: SIGTERM, SIGKILL after `grace` seconds; dry_run lists what would stop."""

    def retry(self, refs: Sequence[str], *, all_jobs: bool, dry_run: bool, as_json: bool) -> int:
        """Queue finished jobs again (all_jobs: every failed, cancelled or lost one)."""

    def enter(self, request: SessionRequest, *, rank: int | None, dry_run: bool) -> int:
        """`shell`/`exec`: a shell or CMD inside a running job, or (host only, no job) a login shell."""

    def reader(self) -> JobReader:
        """What `migrate wait` polls."""


def check_choice(refs: Sequence[str], all_jobs: bool, hint: str) -> None:
    """Job ids or --all, one of the two (pure): the same line for cancel and retry on every target."""
    if all_jobs and refs:
        raise UsageError("give job ids or --all, not both")
    if not all_jobs and not refs:
        raise UsageError("which jobs?", hint=hint)


def show_would_retry(where: str, rows: list[dict]) -> None:
    """A retry dry run's table (or a line saying there is nothing to retry)."""
    if rows:
        ui.table(f"dry run: would queue again on {where}", ["id", "name", "was"],
                 [(str(r["id"]), r["name"], r["was"]) for r in rows])
    else:
        ui.info("nothing to retry")


def refuse_rank(rank: int | None, name: str) -> None:
    if rank is not None:
        raise UsageError("--rank is for a job on a cluster", hint=f"{name} is no cluster here")


# -- one host's dispatcher -------------------------------------------------------------------------------
def cancel_args(jobs: Sequence[str], all_jobs: bool, grace: float, dry_run: bool) -> list[str]:
    """Agent arguments for a cancel (pure)."""
    return ["cancel", *jobs, "--grace", str(grace)] + (["--all"] if all_jobs else []) \
        + (["--dry-run"] if dry_run else [])


def retry_args(jobs: Sequence[str], all_jobs: bool, dry_run: bool) -> list[str]:
    """Agent arguments for a retry (pure)."""
    return ["retry", *jobs] + (["--all"] if all_jobs else []) + (["--dry-run"] if dry_run else [])


def logs_args(job: str, follow: bool, tail: int | None) -> list[str]:
    """Agent arguments for `logs` (pure)."""
    return ["logs", job] + (["--follow"] if follow else []) + (["--tail", str(tail)] if tail else [])


class HostTarget:
    """One host's dispatcher: the agent over SSH (migrate/jobs/client.py)."""

    kind = "host"

    def __init__(self, name: str, conn: ConnectOptions) -> None:
        self.name = name
        self.conn = conn

    @property
    def files_host(self) -> str:
        return self.name

    def require_one_host(self, what: str) -> None:
        pass

    def check_submit(self, *, nodes: int, notify: bool, compose: bool) -> None:
        if nodes:
            raise UsageError("--nodes runs one job across the servers of a cluster",
                             hint="create one with `migrate cluster up NAME HOST...`, then "
                                  "`migrate run NAME --nodes N`")

    def submit(self, sub: Submission) -> int:
        if not sub.dry_run:
            confirm_many_jobs(len(sub.specs), where=self.name, yes=sub.yes)  # >1000: ask; >10000 never built
        return run_command(self.name, self.conn, sub.specs, sub.options, plan=sub.template, dry_run=sub.dry_run,
                           as_json=sub.as_json, follow=sub.follow, compose=sub.compose, every=sub.every)

    def _read_status(self, show_all: bool, states: list[str] | None, last: int) -> tuple[dict, str, dict]:
        """The agent's status answer, the host's name for messages, and the answer as `status --json` prints it."""
        args = status_args(show_all, ",".join(states) if states else None, last)
        with agent_session(self.name, self.conn) as client:
            data = client.call(args, what="read job status", need_queue=True)
            name, display = client.remote.name, client.remote.target.display
        if data.get("no_queue"):
            return data, name, {"host": display, "dispatcher": None, "paused": "", "backend": None, "gpu_error": "",
                                "counts": {}, "jobs": []}
        return data, name, {"host": display, "dispatcher": data.get("daemon"), "paused": data.get("paused"),
                            "backend": data.get("backend"), "gpu_error": data.get("gpu_error"),
                            "counts": data.get("counts"), "jobs": data["jobs"]}

    def status(self, *, show_all: bool, states: list[str] | None, last: int, as_json: bool) -> int:
        data, name, answer = self._read_status(show_all, states, last)
        idcache.remember(self.name, answer["jobs"])  # for completing JOB in the shell
        if as_json:
            ui.print_json(answer)
        elif data.get("no_queue"):
            ui.info(f"no jobs on {name} yet (queue one with `migrate run {name} -- CMD`)")
        else:
            show_status(data, name)
            for entry in lastrun.sync_entries(self.name):  # `run --sync-back`: when results last came back here
                ui.info(sync_line(entry, self.name))
        return 0

    def status_answer(self, *, show_all: bool, states: list[str] | None, last: int) -> dict:
        data, _, answer = self._read_status(show_all, states, last)
        return {**answer, "hidden_finished": data.get("hidden_finished") or 0}

    def logs(self, job: str, *, follow: bool, tail: int | None) -> int:
        # -f: the last run's --sync-back that includes this job pulls as under `migrate wait` (data/syncback.py)
        # lazy: the log streams over its own ssh, so no paramiko handshake unless the agent must be installed
        with follow_syncing(self.name, self.conn, job) if follow else nullcontext(), \
                agent_session(self.name, self.conn, lazy=True) as client:
            return client.stream(logs_args(job, follow, tail))

    def cancel(self, refs: Sequence[str], *, all_jobs: bool, grace: float, dry_run: bool, as_json: bool) -> int:
        with ui.err.status(f"cancelling on {self.name}"):
            data, name = call_agent(self.name, self.conn, cancel_args(refs, all_jobs, grace, dry_run),
                                    what="cancel jobs", timeout=grace + 120)
        if as_json:
            print_answer(name, data)
            return 0
        if dry_run:
            rows = [(str(j["id"]), j["name"], j["state"]) for j in data["would_cancel"]]
            ui.table(f"dry run: would cancel on {name}", ["id", "name", "state"], rows)
            return 0
        done = [(str(r["id"]), r["name"], r["was"], r["outcome"]) for r in data["cancelled"]]
        if done:
            ui.table(f"cancelled on {name}", ["id", "name", "was", "outcome"], done)
        else:
            ui.info("nothing to cancel")
        for s in data.get("skipped") or []:
            ui.info(f"job {s['id']} ({s['name']}) is already {s['state']}; left as it is")
        return 0

    def retry(self, refs: Sequence[str], *, all_jobs: bool, dry_run: bool, as_json: bool) -> int:
        data, name = call_agent(self.name, self.conn, retry_args(refs, all_jobs, dry_run), what="retry jobs")
        if as_json:
            print_answer(name, data)
            return 0
        if dry_run:
            show_would_retry(name, data["would_retry"])
            return 0
        for r in data["retried"]:
            ui.step(f"job {r['id']} ({r['name']}) was {r['was']}: queued again")
        if not data["retried"]:
            ui.info("nothing to retry")
        if data.get("dispatcher"):
            report_dispatcher(data["dispatcher"], name)
        if data.get("paused"):
            ui.warn(f"the queue is paused: {data['paused']}")
        return 0

    def enter(self, request: SessionRequest, *, rank: int | None, dry_run: bool) -> int:
        refuse_rank(rank, self.name)
        if dry_run:
            sys.stdout.write(quoting.join(dry_run_argv(request)) + "\n")
            return 0
        return open_session(request)

    def reader(self) -> JobReader:
        return HostReader(self.name, self.conn)


def job_target(name: str, conn: ConnectOptions) -> JobTarget:
    """The one decision: a name `migrate cluster up` recorded is a cluster, anything else a host."""
    from migrate.cluster import state
    from migrate.cluster.target import ClusterTarget

    if state.exists(name):
        return ClusterTarget(name, conn)
    return HostTarget(name, conn)
