"""`migrate resume HOST`: unpause the queue (after a reboot) and make sure the dispatcher runs."""

from __future__ import annotations

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.jobs.client import call_agent, print_answer, report_dispatcher
from migrate.jobs.options import backend_args, gpu_backend_option
from migrate.remote.hosts import ConnectOptions


@click.command("resume", context_settings=CONTEXT_SETTINGS)
@click.argument("host")
@connection_options
@gpu_backend_option("what the host used last")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(host: str, conn: ConnectOptions, gpu_backend: str | None, as_json: bool) -> None:
    """Resume HOST's queue and start its dispatcher if it is not running.

    After a reboot the dispatcher marks the jobs that were running as `lost` and pauses the
    queue, so nothing starts by surprise on a machine that just came back; look at
    `migrate status HOST`, `migrate retry` what should run again, then resume.

    \b
    Examples:
      migrate status gpu1 --state lost     # after a reboot: what was lost
      migrate retry gpu1 --all -n
      migrate resume gpu1
    """
    args = ["resume", *backend_args(gpu_backend)]
    data, name = call_agent(host, conn, args, what="resume the queue", need_queue=False)
    if as_json:
        print_answer(name, data)
        return
    if data.get("was_paused"):
        ui.step(f"queue on {name} resumed (it was paused: {data['was_paused']})")
    else:
        ui.step(f"queue on {name} was not paused")
    report_dispatcher(data["dispatcher"], name)
