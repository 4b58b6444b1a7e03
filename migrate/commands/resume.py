"""`migrate resume HOST`: unpause the queue (after a reboot) and make sure the dispatcher runs."""

from __future__ import annotations

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.jobs.client import agent_session, check_backend, report_dispatcher
from migrate.remote.hosts import ConnectOptions


@click.command("resume", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@connection_options
@click.option("--gpu-backend", envvar="MIGRATE_GPU_BACKEND",
              help="nvml, or fake:PATH (the FAKE test double); default: what the host used last.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(host: str, conn: ConnectOptions, gpu_backend: str | None, as_json: bool) -> None:
    """Resume HOST's queue and start its dispatcher if it is not running.

    After a reboot the dispatcher marks the jobs that were running as `lost` and pauses the
    queue, so nothing starts by surprise on a machine that just came back; look at
    `migrate status HOST`, `migrate retry` what should run again, then resume.
    """
    args = ["resume"] + (["--backend", check_backend(gpu_backend) or "nvml"] if gpu_backend else [])
    with agent_session(host, conn) as client:
        data = client.call(args, what="resume the queue")
        name = client.remote.name
    if as_json:
        ui.print_json({"host": name, **{k: v for k, v in data.items() if k != "ok"}})
        return
    if data.get("was_paused"):
        ui.step(f"queue on {name} resumed (it was paused: {data['was_paused']})")
    else:
        ui.step(f"queue on {name} was not paused")
    report_dispatcher(data["dispatcher"], name)
