"""`migrate gpus HOST`: the live GPU view the dispatcher decides with."""

from __future__ import annotations

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_host
from migrate.jobs.client import call_agent, print_answer
from migrate.jobs.options import backend_args, gpu_backend_option
from migrate.jobs.render import GPU_COLUMNS, gpu_rows
from migrate.remote.hosts import ConnectOptions


@click.command("gpus", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_host)
@connection_options
@gpu_backend_option("what the host's dispatcher uses")
@click.option("--json", "as_json", is_flag=True, help="Print the devices as JSON.")
def command(host: str, conn: ConnectOptions, gpu_backend: str | None, as_json: bool) -> None:
    """Show HOST's GPUs now: memory, utilisation, whose processes, and whether a job could start.

    Each GPU (or MIG instance) gets a verdict: free, reserved (by one of your jobs), busy (someone
    else's process, memory in use above the GPU's measured idle threshold, or high utilisation:
    the reason says which) or error. Only looks: where the dispatcher agent is not installed
    it runs from memory, and nothing is written on the host.

    \b
    Examples:
      migrate gpus gpu1
      migrate gpus gpu1 --json
    """
    args = ["gpus", *backend_args(gpu_backend)]
    data, name = call_agent(host, conn, args, what="read the GPUs", need_queue=False, install=False)
    if as_json:
        print_answer(name, data)
        return
    label = " (FAKE test double, not real GPUs)" if data.get("fake") else ""
    if data.get("error"):
        ui.warn(f"{name}: GPU backend {data['backend']}{label}: {data['error']}"
                + (f" (hint: {data['hint']})" if data.get("hint") else ""))
        return
    ui.info(f"{name}: GPU backend {data['backend']}{label}, driver {data.get('driver') or '?'}")
    if not data["devices"]:
        ui.info("no GPUs found")
        return
    ui.table(None, GPU_COLUMNS, gpu_rows(data["devices"]))
