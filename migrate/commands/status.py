"""`migrate status HOST`: the jobs on a host's dispatcher (or a cluster), their state, GPUs, runtime and exit code."""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, SHORT_N, connection_options, host_option, old_spelling
from migrate.completion import complete_target
from migrate.errors import UsageError
from migrate.jobs import multi
from migrate.jobs.render import dispatcher_line, parse_states, show_status
from migrate.jobs.target import job_target
from migrate.remote.hosts import ConnectOptions

__all__ = ["command", "parse_states", "show_status"]  # the last two: moved to migrate.jobs.render

def show_many(hosts: list[str], conn: ConnectOptions, *, show_all: bool, states: str | None, last: int,
              as_json: bool) -> int:
    """Every host at once (in parallel): one table with a host column; 0 when at least one answered."""
    outcomes = multi.read_hosts(hosts, conn, show_all=show_all, states=parse_states(states), last=last)
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
@click.argument("first", metavar="[HOST]", required=False, shell_complete=complete_target)
@host_option("Another host or cluster (repeatable): all are asked in parallel and shown in one table.",
             clusters=True)
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
    [target] = every
    sys.exit(job_target(target, conn).status(show_all=show_all, states=parse_states(states), last=last,
                                           as_json=as_json))
