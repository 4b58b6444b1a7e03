"""`migrate retry HOST JOB...`: put finished (failed, lost, cancelled, done) jobs back in the queue."""

from __future__ import annotations

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.jobs.client import agent_session, report_dispatcher
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
    with agent_session(host, conn) as client:
        data = client.call(["retry", *jobs], what="retry jobs")
        name = client.remote.name
    if as_json:
        ui.print_json({"host": name, **{k: v for k, v in data.items() if k != "ok"}})
        return
    for r in data["retried"]:
        ui.step(f"job {r['id']} ({r['name']}) was {r['was']}: queued again")
    if data.get("dispatcher"):
        report_dispatcher(data["dispatcher"], name)
    if data.get("paused"):
        ui.warn(f"the queue is paused: {data['paused']}")
