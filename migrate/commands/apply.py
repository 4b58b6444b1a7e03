"""`migrate apply PLAYBOOK`: a whole migration from one file, stage by stage, idempotently.

The click adapter: validation first (exit 2 with line numbers, no remote work), then
`migrate.playbook.apply.apply_playbook` runs the stages (setup, images, data, run), and this module
prints its report (one row per host, one column per stage) and maps it to the exit code.
"""

from __future__ import annotations

import sys

import click

from migrate import ui
from migrate.cli_common import CONTEXT_SETTINGS, connection_options, host_option, hosts_from
from migrate.errors import UsageError
from migrate.jobs.limits import CONFIRM_JOBS, confirm_many_jobs, sweep_size
from migrate.playbook.apply import StageOutcome, apply_playbook
from migrate.playbook.loader import load_playbook
from migrate.playbook.schema import STAGES
from migrate.remote.hosts import ConnectOptions, HostSpec

__all__ = ["command"]


@click.command("apply", context_settings=CONTEXT_SETTINGS)
@click.argument("playbook", type=click.Path(dir_okay=False))
@click.option("-n", "--dry-run", is_flag=True, help="Validate and show what each stage would do; change nothing.")
@click.option("--only", metavar="STAGES", help=f"Comma-separated subset of: {','.join(STAGES)}.")
@host_option("Use this host instead of the playbook's (repeatable), e.g. -H sandbox1.")
@click.option("--hosts", "old_hosts", multiple=True, hidden=True)  # before -H; a comma list: one release
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("-y", "--yes", is_flag=True,
              help=f"Queue a sweep of more than {CONFIRM_JOBS} jobs without asking (for scripts).")
@connection_options
def command(playbook: str, dry_run: bool, only: str | None, host: tuple[str, ...], old_hosts: tuple[str, ...],
            as_json: bool, yes: bool, conn: ConnectOptions) -> None:
    """Run a playbook: setup -> images -> data -> run, each stage idempotent.

    The file is validated first: unknown keys, wrong types and missing local paths (data src,
    build dirs, compose file) stop apply with their line number before any remote work.
    Applying the same playbook again changes nothing and queues no duplicate jobs. Rehearse on the
    sandbox with `-H sandbox1`. A dry run counts what it would change (`N change(s) would be
    made`, "changed" in --json), checking the jobs already queued without installing anything.
    A sweep of more than 1000 jobs is confirmed first (on a terminal; --yes in scripts); more
    than 10000 is refused.

    \b
    Examples:
      migrate init                         # a commented migrate.yml
      migrate apply migrate.yml -n         # what each stage would change
      migrate apply migrate.yml -H sandbox1
      migrate apply migrate.yml --only data,run
    """
    pb = load_playbook(playbook)
    only_list = [s.strip() for s in only.split(",") if s.strip()] if only else []
    for s in only_list:
        if s not in STAGES:
            raise UsageError(f"unknown stage {s!r} in --only", hint=f"choose from {', '.join(STAGES)}")
    host_list = hosts_from("apply", host, old_lists=old_hosts) or pb.hosts
    if not host_list:
        raise UsageError("no hosts", hint="name them in the playbook or with -H HOST")
    for h in host_list:
        HostSpec.parse(h)  # a malformed host, or one starting with '-', is a usage error (exit 2)
    missing = pb.missing_local_paths(only_list or None)
    if missing:
        raise UsageError("; ".join(missing), hint="relative paths are relative to the playbook's directory")
    if pb.run is not None and not dry_run and (not only_list or "run" in only_list) and not pb.run.get("compose"):
        confirm_many_jobs(sweep_size(pb.run.get("sweep")), where=", ".join(host_list), yes=yes)
    report = apply_playbook(pb, host_list, conn, only=only_list, dry_run=dry_run)
    if as_json:
        ui.print_json({"playbook": str(pb.path), "hosts": host_list, "stages": report.stages,
                       "changed": report.changed,
                       "results": {h: {s: report.cells.get((h, s), StageOutcome("-")).__dict__
                                       for s in report.stages} for h in host_list}})
    else:
        rows = [[h, *[report.cells.get((h, s), StageOutcome("-")).text for s in report.stages]]
                for h in host_list]
        ui.table(f"migrate apply {pb.path.name}" + (" (dry run)" if dry_run else ""), ["host", *report.stages],
                 rows)
        ui.info(f"{report.changed} change(s)" + (" would be made" if dry_run else ""))
    for (h, s), o in report.cells.items():
        if o.failed:
            ui.error(f"{h}: {s}: {o.text.removeprefix('failed: ')}")
    if report.failed_hosts():
        sys.exit(1)
