"""`migrate retry HOST JOB...|--all`: put finished (failed, lost, cancelled, done) jobs back in the queue."""

from __future__ import annotations

import sys

import click

from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_job, complete_target
from migrate.jobs.client import check_job_refs
from migrate.jobs.target import check_choice, job_target
from migrate.remote.hosts import ConnectOptions


@click.command("retry", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_target)
@click.argument("jobs", nargs=-1, shell_complete=complete_job)
@connection_options
@click.option("--all", "all_jobs", is_flag=True, help="Retry every failed, cancelled or lost job.")
@click.option("-n", "--dry-run", is_flag=True, help="Show which jobs would be queued again; change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(host: str, jobs: tuple[str, ...], conn: ConnectOptions, all_jobs: bool, dry_run: bool,
            as_json: bool) -> None:
    """Queue JOBS (ids, names or keys) on HOST again, keeping their id and log.

    The next attempt appends to the same log and gets its --retries budget back. --all takes every
    failed, cancelled or lost job (done jobs stay done). HOST may be a cluster name.

    \b
    Examples:
      migrate retry gpu1 3 7          # jobs 3 and 7
      migrate retry gpu1 --all -n     # which jobs --all would take
      migrate retry lab --all         # every failed job on cluster lab
    """
    check_job_refs(jobs)
    check_choice(jobs, all_jobs, "give job ids/names, or --all for every failed, cancelled or lost job")
    sys.exit(job_target(host, conn).retry(jobs, all_jobs=all_jobs, dry_run=dry_run, as_json=as_json))
