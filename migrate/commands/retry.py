"""`migrate retry HOST JOB...|--all`: put finished (failed, lost, cancelled, done) jobs back in the queue."""

from __future__ import annotations

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.cluster import jobs as cluster_jobs
from migrate.cluster import state as cluster_state
from migrate.cluster.jobapi import job_api
from migrate.errors import UsageError
from migrate.jobs.client import call_agent, check_job_refs, print_answer, report_dispatcher
from migrate.remote.hosts import ConnectOptions

RETRY_ALL = ("failed", "cancelled", "lost")  # --all: every job that did not succeed (as the agent's RETRY_ALL)


def retry_args(jobs: tuple[str, ...], all_jobs: bool, dry_run: bool) -> list[str]:
    """Agent arguments for a retry (pure)."""
    if all_jobs and jobs:
        raise UsageError("give job ids or --all, not both")
    if not all_jobs and not jobs:
        raise UsageError("which jobs?", hint="give job ids/names, or --all for every failed, cancelled or lost job")
    return ["retry", *jobs] + (["--all"] if all_jobs else []) + (["--dry-run"] if dry_run else [])


def cluster_would_retry(name: str, conn: ConnectOptions, jobs: tuple[str, ...], all_jobs: bool) -> list[dict]:
    """The cluster jobs a retry would submit again (id, name, was), through the cluster's own job lookup."""
    with job_api(cluster_state.load(name), conn) as api:
        latest = cluster_jobs.latest_attempts(api.jobs())
    chosen = list(latest.values()) if all_jobs else [cluster_jobs._find(latest, j) for j in jobs]
    rows = []
    for j in chosen:
        was = cluster_jobs.RAY_STATES.get(j["status"], j["status"].lower())
        if all_jobs and was not in RETRY_ALL:
            continue
        if was in cluster_jobs.ACTIVE:
            raise UsageError(f"job {j['metadata']['migrate_id']} is {was}",
                             hint=f"cancel it first: migrate cancel {name} {j['metadata']['migrate_id']}")
        rows.append({"id": j["metadata"]["migrate_id"], "name": j["metadata"].get("migrate_name", ""), "was": was})
    return rows


def show_would_retry(where: str, rows: list[dict]) -> None:
    """The dry run's table (or a line saying there is nothing to retry)."""
    if rows:
        ui.table(f"dry run: would queue again on {where}", ["id", "name", "was"],
                 [(str(r["id"]), r["name"], r["was"]) for r in rows])
    else:
        ui.info("nothing to retry")


@click.command("retry", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@click.argument("jobs", nargs=-1)
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
    args = retry_args(jobs, all_jobs, dry_run)
    if cluster_state.exists(host):  # a cluster name (issue 14)
        if dry_run or all_jobs:
            rows = cluster_would_retry(host, conn, jobs, all_jobs)
            if dry_run:
                ui.print_json({"cluster": host, "would_retry": rows}) if as_json else show_would_retry(host, rows)
                return
            if not rows:
                ui.info("nothing to retry")
                return
            jobs = tuple(r["id"] for r in rows)
        cluster_jobs.retry(host, conn, jobs, as_json=as_json)
        return
    data, name = call_agent(host, conn, args, what="retry jobs")
    if as_json:
        print_answer(name, data)
        return
    if dry_run:
        show_would_retry(name, data["would_retry"])
        return
    for r in data["retried"]:
        ui.step(f"job {r['id']} ({r['name']}) was {r['was']}: queued again")
    if not data["retried"]:
        ui.info("nothing to retry")
    if data.get("dispatcher"):
        report_dispatcher(data["dispatcher"], name)
    if data.get("paused"):
        ui.warn(f"the queue is paused: {data['paused']}")
