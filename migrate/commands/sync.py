"""`migrate sync [TARGET]`: bring back the last runs' --sync-back results until their jobs end (issue 22)."""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options
from migrate.completion import complete_target
from migrate.data.syncback import parse_sync_back, pending_jobs, pending_tasks, sync_loop
from migrate.jobs.render import duration
from migrate.remote.hosts import ConnectOptions
from migrate.units import parse_duration


@click.command("sync", context_settings=CONTEXT_SETTINGS)
@click.argument("target", required=False, shell_complete=complete_target)
@connection_options
@click.option("--every", metavar="DURATION", help="Pull every DURATION while the jobs run (default: what "
              "`run --every` said; without it only after they end).")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=5.0, show_default=True, metavar="SECONDS",
              help="How often each host's job states are read.")
@click.option("-n", "--dry-run", is_flag=True, help="List the pending sync-backs; connect to nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print [{target, spec, jobs, last_ok, final}] at the end.")
def command(target: str | None, conn: ConnectOptions, every: str | None, interval: float, dry_run: bool,
            as_json: bool) -> None:
    """Pull the last runs' --sync-back results until their jobs end (Ctrl-C stops only this).

    \b
    Examples:
      migrate run gpu1 --sync-back runs/exp1:./results --every 10m -- \\
          python train.py --out runs/exp1
      migrate sync              # every host's pending sync-backs
      migrate sync gpu1         # only gpu1's
      migrate sync --dry-run    # what is pending, connect to nothing

    A loop in this terminal, no daemon: what `migrate wait` does for the results, for every
    target whose last `migrate run` on this machine had --sync-back and whose final pull has not
    happened yet. A laptop that was away catches up: jobs that ended meanwhile get their final
    pull at once. Exit 0 once every final pull is done, 1 if one gave up, 130 on Ctrl-C (the jobs
    keep running; run it again to go on).
    """
    every_s = parse_duration(every, what="--every") if every else None
    chosen = pending_jobs(target)
    if not chosen:
        ui.info(f"nothing to sync back{' from ' + target if target else ''}: no pending --sync-back of a "
                "recorded `migrate run`")
        if as_json:
            ui.print_json([])
        sys.exit(0)
    if dry_run:
        tasks = pending_tasks(dict(chosen), every_s)
        if as_json:
            ui.print_json([task_json(t) for t in tasks])
        for t in tasks:
            remote, local = parse_sync_back(t.spec)
            ui.step(f"would pull {t.target}:{remote} -> {local} (job(s) {', '.join(t.jobs)})"
                    + (f" every {duration(t.every)} while they run" if t.every else "") + ", and after they end")
        sys.exit(0)
    ui.info(f"syncing back from {', '.join(chosen)} until the jobs end (Ctrl-C stops this, not the jobs)")
    try:
        tasks = sync_loop(chosen, conn, every=every_s, interval=interval)
    except KeyboardInterrupt:
        ui.error("stopped syncing (interrupted); the jobs keep running: `migrate sync` goes on later")
        sys.exit(130)
    if as_json:
        ui.print_json([task_json(t) for t in tasks])
    gave_up = [t for t in tasks if not t.final]
    for t in gave_up:
        ui.error(f"gave up on {t.target}:{t.spec}: use `migrate pull-data` or `migrate sync` later")
    if not gave_up:
        ui.info(f"all {len(tasks)} sync-back(s) brought back after their jobs ended")
    sys.exit(1 if gave_up else 0)


def task_json(t) -> dict:
    """One sync-back as --json shows it."""
    return {"target": t.target, "spec": t.spec, "jobs": t.jobs, "every": t.every, "last_ok": t.last_ok,
            "final": t.final}
