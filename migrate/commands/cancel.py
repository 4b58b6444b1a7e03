"""`migrate cancel HOST JOB...|--all`: stop jobs (SIGTERM to the process group, SIGKILL after a grace period),
on a host or a cluster."""

from __future__ import annotations

import sys

import click

from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_job, complete_target
from migrate.jobs.client import check_job_refs
from migrate.jobs.target import check_choice, job_target
from migrate.remote.hosts import ConnectOptions


@click.command("cancel", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_target)
@click.argument("jobs", nargs=-1, shell_complete=complete_job)
@connection_options
@click.option("--all", "all_jobs", is_flag=True, help="Cancel every queued and running job.")
@click.option("--grace", type=click.FloatRange(0, 3600), default=10, show_default=True,
              help="Seconds between SIGTERM (docker stop) and SIGKILL.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be cancelled.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(host: str, jobs: tuple[str, ...], conn: ConnectOptions, all_jobs: bool, grace: float, dry_run: bool,
            as_json: bool) -> None:
    """Cancel JOBS (ids, names or keys) on HOST (or a cluster: the same --grace and --dry-run).

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
    check_choice(jobs, all_jobs, "give job ids/names, or --all for every queued and running job")
    sys.exit(job_target(host, conn).cancel(jobs, all_jobs=all_jobs, grace=grace, dry_run=dry_run, as_json=as_json))
