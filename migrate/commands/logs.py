"""`migrate logs HOST JOB [-f]`: a job's output (stdout and stderr)."""

from __future__ import annotations

import sys
from contextlib import nullcontext

import click

from migrate.cli_common import CONTEXT_SETTINGS, SHORT_N, connection_options, old_spelling
from migrate.cluster import jobs as cluster_jobs
from migrate.cluster import state as cluster_state
from migrate.data.syncback import follow_syncing
from migrate.jobs.client import agent_session, check_job_refs
from migrate.remote.hosts import ConnectOptions


def logs_args(job: str, follow: bool, tail: int | None) -> list[str]:
    args = ["logs", job]
    if follow:
        args.append("--follow")
    if tail:
        args += ["--tail", str(tail)]
    return args


@click.command("logs", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@click.argument("job")
@connection_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing new output until the job ends (Ctrl-C stops).")
@click.option("--tail", type=click.IntRange(1, 10_000_000), default=None, metavar="N", help="Only the last N lines.")
@click.option("-n", "tail_n", type=click.IntRange(1, 10_000_000), default=None, hidden=True)  # old --tail; one release
def command(host: str, job: str, conn: ConnectOptions, follow: bool, tail: int | None, tail_n: int | None) -> None:
    """Print the output of JOB (its id, name or key) on HOST.

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
    if cluster_state.exists(host):  # a cluster name (issue 14)
        sys.exit(cluster_jobs.logs(host, conn, job, follow=follow, tail=tail))
    # -f: the last run's --sync-back that includes this job pulls as under `migrate wait` (migrate.data.syncback);
    # lazy: the log streams over ssh, so no paramiko handshake unless the agent must be installed
    with follow_syncing(host, conn, job) if follow else nullcontext(), \
            agent_session(host, conn, lazy=True) as client:
        code = client.stream(logs_args(job, follow, tail))
    sys.exit(code)
