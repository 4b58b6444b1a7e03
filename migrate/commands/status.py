"""`migrate status HOST`: the jobs on a host's dispatcher, their state, GPUs, runtime and exit code."""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.agent.recovery import job_ids_text
from migrate.cli_common import CONTEXT_SETTINGS, SHORT_N, connection_options, host_option, old_spelling
from migrate.cluster import jobs as cluster_jobs
from migrate.cluster import state as cluster_state
from migrate.data.syncback import sync_line
from migrate.errors import UsageError
from migrate.jobs import lastrun, multi
from migrate.jobs.client import agent_session
from migrate.jobs.render import STATUS_COLUMNS, dispatcher_line, status_rows
from migrate.remote.hosts import ConnectOptions

STATES = ("queued", "starting", "running", "done", "failed", "cancelled", "lost")


def parse_states(states: str | None) -> list[str] | None:
    """`--state failed,lost` as a list; an unknown state is a usage error (pure)."""
    if not states:
        return None
    wanted = states.split(",")
    bad = [s for s in wanted if s not in STATES]
    if bad:
        raise UsageError(f"unknown state {bad[0]!r}", hint="states: " + ", ".join(STATES))
    return wanted


def status_args(show_all: bool, states: str | None, last: int) -> list[str]:
    """Agent arguments for a status query (pure)."""
    if parse_states(states):
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


def show_many(hosts: list[str], conn: ConnectOptions, *, show_all: bool, states: str | None, last: int,
              as_json: bool) -> int:
    """Every host at once (in parallel): one table with a host column; 0 when at least one answered."""
    outcomes = multi.read_hosts(hosts, conn, status_args(show_all, states, last), show_all=show_all,
                                states=parse_states(states), last=last)
    if as_json:
        ui.print_json(multi.multi_json(outcomes))
        return multi.multi_exit_code(outcomes)
    for o in outcomes:
        if o.ok and not (o.value or {}).get("cluster"):
            ui.info(dispatcher_line({**(o.value or {}), "daemon": (o.value or {}).get("dispatcher")}, o.host))
    ui.table(None, multi.MULTI_COLUMNS, multi.multi_rows(outcomes))
    hidden = sum((o.value or {}).get("hidden_finished") or 0 for o in outcomes if o.ok)
    if hidden:
        ui.info(f"{hidden} older finished job(s) not shown (--all shows every job)")
    down = [o for o in outcomes if not o.ok]
    for o in down:
        ui.warn(f"{o.host} did not answer: {o.error}")
    if len(down) == len(outcomes):
        ui.error(f"none of the {len(outcomes)} hosts answered")
    return multi.multi_exit_code(outcomes)


@click.command("status", context_settings=CONTEXT_SETTINGS)
@click.argument("first", metavar="[HOST]", required=False)
@host_option("Another host or cluster (repeatable): all are asked in parallel and shown in one table.")
@connection_options
@click.option("-f", "--playbook", metavar="FILE", type=click.Path(dir_okay=False),
              help="Also every host of this playbook (its cluster if it names one), as `apply` reads it.")
@click.option("--all", "show_all", is_flag=True, help="Show every job, not just unfinished and recent ones.")
@click.option("--state", "states", metavar="LIST", help="Only jobs in these states, e.g. failed,lost.")
@click.option("--last", type=click.IntRange(0, 100000), default=20, show_default=True,
              help="How many finished jobs to show.")
@click.option("-n", "last_n", type=click.IntRange(0, 100000), default=None, hidden=True)  # old --last; one release
@click.option("--json", "as_json", is_flag=True,
              help="Print {host, dispatcher, paused, counts, jobs: [...]} as JSON (several hosts: "
                   "{hosts: [...], counts, unreachable, jobs: [{host, ...}]}).")
def command(first: str | None, host: tuple[str, ...], conn: ConnectOptions, playbook: str | None, show_all: bool,
            states: str | None, last: int, last_n: int | None, as_json: bool) -> None:
    """Show the jobs on HOST: state, GPU, runtime, exit code and why a job waits.

    \b
    Examples:
      migrate status gpu1
      migrate status gpu1 --state failed,lost
      migrate status -H gpu1 -H gpu2 -H gpu3   # in parallel, one table
      migrate status -f migrate.yml            # every host of a playbook

    Works from any machine and any SSH session: the queue lives on the host. Finished jobs
    whose dispatcher was not running are recorded now (their exit codes were kept). With several
    hosts, one that does not answer is one line of the table; the exit code is 0 when at least
    one host answered.
    """
    if last_n is not None:
        old_spelling(f"status -n {last_n}", f"status --last {last_n}", SHORT_N)
        last = last_n
    every = ([first] if first else []) + [h for h in host if h != first]
    every += [t for t in (multi.playbook_targets(playbook) if playbook else []) if t not in every]
    if not every:
        raise UsageError("name a host", hint="e.g. migrate status gpu1, -H gpu1 -H gpu2, or -f migrate.yml")
    if len(every) > 1:
        sys.exit(show_many(every, conn, show_all=show_all, states=states, last=last, as_json=as_json))
    [host] = every
    if cluster_state.exists(host):  # a cluster name (issue 14)
        sys.exit(cluster_jobs.show_status(host, conn, as_json=as_json, show_all=show_all,
                                          states=parse_states(states), last=last))
    args = status_args(show_all, states, last)
    with agent_session(host, conn) as client:
        data = client.call(args, what="read job status", need_queue=True)
        name = client.remote.name
        display = client.remote.target.display
    if data.get("no_queue"):
        if as_json:
            ui.print_json({"host": display, "dispatcher": None, "paused": "", "backend": None, "gpu_error": "",
                           "counts": {}, "jobs": []})
        else:
            ui.info(f"no jobs on {name} yet (queue one with `migrate run {name} -- CMD`)")
        sys.exit(0)
    if as_json:
        ui.print_json({"host": display, "dispatcher": data.get("daemon"), "paused": data.get("paused"),
                       "backend": data.get("backend"), "gpu_error": data.get("gpu_error"),
                       "counts": data.get("counts"), "jobs": data["jobs"]})
    else:
        show_status(data, name)
        for entry in lastrun.sync_entries(host):  # `run --sync-back`: when results last came back here
            ui.info(sync_line(entry, host))
    sys.exit(0)
