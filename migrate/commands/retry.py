"""`migrate retry HOST JOB...`: put finished (failed, lost, cancelled, done) jobs back in the queue."""

from __future__ import annotations

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.cluster import jobs as cluster_jobs
from migrate.cluster import state as cluster_state
from migrate.jobs.client import call_agent, check_job_refs, print_answer, report_dispatcher
from migrate.remote.hosts import ConnectOptions


@click.command("retry", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@click.argument("jobs", nargs=-1, required=True)
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(host: str, jobs: tuple[str, ...], conn: ConnectOptions, as_json: bool) -> None:
    """Queue JOBS (ids, names or keys) on HOST again, keeping their id and log.

    The next attempt appends to the same log and gets its --retries budget back.
    """
    check_job_refs(jobs)
    if cluster_state.exists(host):  # a cluster name (issue 14)
        cluster_jobs.retry(host, conn, jobs, as_json=as_json)
        return
    data, name = call_agent(host, conn, ["retry", *jobs], what="retry jobs")
    if as_json:
        print_answer(name, data)
        return
    for r in data["retried"]:
        ui.step(f"job {r['id']} ({r['name']}) was {r['was']}: queued again")
    if data.get("dispatcher"):
        report_dispatcher(data["dispatcher"], name)
    if data.get("paused"):
        ui.warn(f"the queue is paused: {data['paused']}")
