"""`migrate cancel HOST JOB...|--all`: stop jobs (SIGTERM to the process group, SIGKILL after a grace period)."""

from __future__ import annotations

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.cluster import jobs as cluster_jobs
from migrate.cluster import state as cluster_state
from migrate.errors import UsageError
from migrate.jobs.client import call_agent, check_job_refs, print_answer
from migrate.remote.hosts import ConnectOptions


def cancel_args(jobs: tuple[str, ...], all_jobs: bool, grace: float, dry_run: bool) -> list[str]:
    """Agent arguments for a cancel (pure)."""
    if all_jobs and jobs:
        raise UsageError("give job ids or --all, not both")
    if not all_jobs and not jobs:
        raise UsageError("which jobs?", hint="give job ids/names, or --all for every queued and running job")
    args = ["cancel", *jobs, "--grace", str(grace)]
    if all_jobs:
        args.append("--all")
    if dry_run:
        args.append("--dry-run")
    return args


@click.command("cancel", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@click.argument("jobs", nargs=-1)
@connection_options
@click.option("--all", "all_jobs", is_flag=True, help="Cancel every queued and running job.")
@click.option("--grace", type=click.FloatRange(0, 3600), default=10, show_default=True,
              help="Seconds between SIGTERM (docker stop) and SIGKILL.")
@click.option("--dry-run", is_flag=True, help="Show what would be cancelled.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(host: str, jobs: tuple[str, ...], conn: ConnectOptions, all_jobs: bool, grace: float, dry_run: bool,
            as_json: bool) -> None:
    """Cancel JOBS (ids, names or keys) on HOST.

    Queued jobs leave the queue. Running jobs get SIGTERM on their whole process group (container
    jobs: docker stop), then SIGKILL if they are still there after --grace seconds; the command
    returns when they are gone. Finished jobs are left as they are.

    \b
    Examples:
      migrate cancel gpu1 7 train-big
      migrate cancel gpu1 --all --dry-run  # what --all would stop
      migrate cancel gpu1 7 --grace 60     # a minute to save a checkpoint
    """
    check_job_refs(jobs)
    if cluster_state.exists(host):  # a cluster name: --grace and --dry-run mean the same there
        cluster_jobs.cancel(host, conn, jobs, all_jobs=all_jobs, as_json=as_json, grace=grace, dry_run=dry_run)
        return
    args = cancel_args(jobs, all_jobs, grace, dry_run)
    with ui.err.status(f"cancelling on {host}"):
        data, name = call_agent(host, conn, args, what="cancel jobs", timeout=grace + 120)
    if as_json:
        print_answer(name, data)
        return
    if dry_run:
        rows = [(str(j["id"]), j["name"], j["state"]) for j in data["would_cancel"]]
        ui.table(f"dry run: would cancel on {name}", ["id", "name", "state"], rows)
        return
    rows = [(str(r["id"]), r["name"], r["was"], r["outcome"]) for r in data["cancelled"]]
    if rows:
        ui.table(f"cancelled on {name}", ["id", "name", "was", "outcome"], rows)
    else:
        ui.info("nothing to cancel")
    for s in data.get("skipped") or []:
        ui.info(f"job {s['id']} ({s['name']}) is already {s['state']}; left as it is")
