"""`migrate logs HOST JOB [-f]`: a job's output (stdout and stderr), on a host or a cluster."""

from __future__ import annotations

import sys

import click

from migrate.cli_common import CONTEXT_SETTINGS, SHORT_N, connection_options, old_spelling
from migrate.completion import complete_job, complete_target
from migrate.jobs.client import check_job_refs
from migrate.jobs.target import job_target
from migrate.remote.hosts import ConnectOptions


@click.command("logs", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_target)
@click.argument("job", shell_complete=complete_job)
@connection_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the job ends (Ctrl-C stops).")
@click.option("--tail", type=click.IntRange(1, 10_000_000), default=None, metavar="N", help="Only the last N lines.")
@click.option("-n", "tail_n", type=click.IntRange(1, 10_000_000), default=None, hidden=True)  # old --tail; one release
def command(host: str, job: str, conn: ConnectOptions, follow: bool, tail: int | None, tail_n: int | None) -> None:
    """Print the output of JOB (its id, name or key) on HOST (or a cluster).

    The log holds every attempt, each starting with a `[migrate] ... started` line and ending
    with the exit code. With -f it waits for a queued job to start and stops when it ends; if
    the dispatcher is not running it records the job's end itself and warns, and a queued job that
    cannot start (no dispatcher, paused queue) ends the follow with an error. If the last
    `migrate run HOST` had --sync-back for this job, -f pulls it as `migrate wait` does.

    \b
    Examples:
      migrate logs gpu1 7
      migrate logs gpu1 train-big -f       # follow until the job ends
      migrate logs gpu1 7 --tail 50
    """
    check_job_refs([job])
    if tail_n is not None:
        old_spelling(f"logs -n {tail_n}", f"logs --tail {tail_n}", SHORT_N)
        tail = tail_n
    sys.exit(job_target(host, conn).logs(job, follow=follow, tail=tail))
