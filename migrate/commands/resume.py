"""`migrate resume HOST`: unpause the queue (after a reboot) and make sure the dispatcher runs."""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_host
from migrate.jobs.client import agent_session, call_agent, print_answer, report_dispatcher
from migrate.jobs.options import backend_args, gpu_backend_option
from migrate.remote.hosts import ConnectOptions


def show_would_resume(host: str, conn: ConnectOptions, as_json: bool) -> int:
    """--dry-run: whether the queue is paused and the dispatcher runs, from the agent's read-only status
    (run from memory where it is not installed; a host without a queue gets nothing written)."""
    with agent_session(host, conn) as client:
        data = client.call(["status", "--limit", "0"], what="read the queue", need_queue=True, install=False)
        name = client.remote.name
    paused, running = data.get("paused") or "", bool((data.get("daemon") or {}).get("running"))
    if as_json:
        print_answer(name, {"dry_run": True, "would_resume": bool(paused), "paused": paused,
                            "would_start_dispatcher": not running})
        return 0
    ui.info(f"dry run: queue on {name} " + (f"is paused ({paused}): would resume it" if paused else "is not paused"))
    ui.info(f"dry run: the dispatcher on {name} " + ("runs" if running else "is not running: would start it"))
    return 0


@click.command("resume", context_settings=CONTEXT_SETTINGS)
@click.argument("host", shell_complete=complete_host)
@connection_options
@gpu_backend_option("what the host used last")
@click.option("-n", "--dry-run", is_flag=True, help="Say whether the queue is paused and the dispatcher runs; "
              "change nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def command(host: str, conn: ConnectOptions, gpu_backend: str | None, dry_run: bool, as_json: bool) -> None:
    """Resume HOST's queue and start its dispatcher if it is not running.

    After a reboot the dispatcher marks the jobs that were running as `lost` and pauses the
    queue, so nothing starts by surprise on a machine that just came back; look at
    `migrate status HOST`, `migrate retry` what should run again, then resume.

    \b
    Examples:
      migrate status gpu1 --state lost     # after a reboot: what was lost
      migrate retry gpu1 --all -n
      migrate resume gpu1 -n               # what resume would change
      migrate resume gpu1
    """
    if dry_run:
        sys.exit(show_would_resume(host, conn, as_json))
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
