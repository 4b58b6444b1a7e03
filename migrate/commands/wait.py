"""`migrate wait TARGET [JOB...]`: block until jobs end; exit 0 only if every one succeeded."""

from __future__ import annotations

import sys

import click
from rich.live import Live

from migrate import ui
from migrate.agent.notify import describe as describe_target
from migrate.agent.notify import post as post_notification
from migrate.cli_common import CONTEXT_SETTINGS, connection_options, host_option
from migrate.completion import complete_job, complete_target
from migrate.data.syncback import pending_tasks, recording_syncer
from migrate.errors import UsageError
from migrate.jobs import lastrun
from migrate.jobs import wait as w
from migrate.jobs.options import notify_format_option, notify_target
from migrate.remote.hosts import ConnectOptions
from migrate.units import parse_duration


def wait_targets(target: str | None, hosts: tuple[str, ...], refs: tuple[str, ...], every_active: bool) \
        -> w.Chosen:
    """target -> the job refs to wait for (None: every unfinished job), from the command line and the
    record of the last `run` on each target (pure apart from reading that record)."""
    targets = ([target] if target else []) + [h for h in hosts if h != target]
    if not targets:
        raise UsageError("name a host or cluster", hint="e.g. migrate wait gpu1, or -H gpu1 -H gpu2")
    if refs and len(targets) > 1:
        raise UsageError("job ids go with one target", hint="wait for every host's last run: migrate wait -H h1 -H h2")
    if refs and every_active:
        raise UsageError("give job ids or --all, not both")
    chosen: w.Chosen = {}
    for t in targets:
        if refs:
            chosen[t] = list(refs)
        elif every_active:
            chosen[t] = None
        else:
            ids = lastrun.last_ids(t)
            if ids is None:
                raise UsageError(f"no `migrate run {t}` recorded on this machine",
                                 hint=f"name the jobs (migrate wait {t} 3 4), or --all for every unfinished job")
            chosen[t] = ids
    return chosen


@click.command("wait", context_settings=CONTEXT_SETTINGS)
@click.argument("target", required=False, shell_complete=complete_target)
@click.argument("jobs", nargs=-1, metavar="[JOB]...", shell_complete=complete_job)
@host_option("Another host or cluster to wait on (repeatable); each waits for its last run's jobs.",
             clusters=True)
@connection_options
@click.option("--all", "every_active", is_flag=True, help="Wait for every job that is queued or running now.")
@click.option("--timeout", metavar="DURATION", help="Give up waiting after this long (90, 30m, 2h): exit 124; "
              "the jobs keep running.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=2.0, show_default=True, metavar="SECONDS",
              help="How often each host is asked (one SSH round trip per host).")
@click.option("--tail", "tail_lines", type=click.IntRange(0, 1000), default=w.TAIL_LINES, show_default=True,
              metavar="N", help="Log lines shown for each job that did not succeed.")
@click.option("--every", metavar="DURATION", help="Pull the last run's --sync-back every DURATION while its jobs "
              "run (default: what `run --every` said).")
@click.option("--notify", metavar="URL", help="Post a summary here from this machine when the wait ends: "
              "[FORMAT+]URL, as `run --notify` (docs/run.md).")
@notify_format_option
@click.option("--json", "as_json", is_flag=True, help="Print {ok, timed_out, jobs: [...], failed: [...]} at the end.")
def command(target: str | None, jobs: tuple[str, ...], host: tuple[str, ...], conn: ConnectOptions,
            every_active: bool, timeout: str | None, interval: float, tail_lines: int, every: str | None,
            notify: str | None,
            notify_format: str | None, as_json: bool) -> None:
    """Wait until jobs on TARGET (a host or a cluster) end; exit 0 only if every one succeeded.

    \b
    Examples:
      migrate run gpu1 --sweep lr=1e-3,1e-4 -- python train.py --lr {lr} \\
          && migrate wait gpu1
      migrate wait gpu1 3 7 train-big      # these jobs (ids, names or keys)
      migrate wait -H gpu1 -H gpu2          # the last run on each host
      migrate wait mycluster --all --timeout 2h
      migrate wait gpu1 --notify https://ntfy.sh/my-topic

    Without JOB it waits for every job the last `migrate run TARGET` on this machine queued. On a
    terminal it shows a live table; otherwise one line per job as it finishes. Exit codes: 0 every
    job done with exit 0; 1 all ended and some failed, were cancelled or lost (listed with their
    last log lines); 124 --timeout passed first; 130 Ctrl-C. Waiting only reads: Ctrl-C and
    --timeout stop the waiting, never the jobs. If that run had --sync-back, its results are
    pulled while the jobs run (--every) and once more after they end (docs/run.md).
    """
    chosen = wait_targets(target, host, jobs, every_active)
    notify = notify_target(notify, notify_format)
    limit = parse_duration(timeout, what="--timeout") if timeout else None
    syncer = recording_syncer(pending_tasks(chosen, parse_duration(every, what="--every") if every else None), conn)
    readers = [w.reader_for(t, conn) for t in chosen]
    live = ui.out.is_terminal and not as_json
    count = sum(len(v) for v in chosen.values() if v is not None)
    what = f"{count} job(s)" if count and all(v is not None for v in chosen.values()) else "the jobs"

    def print_finished(row: w.JobRow) -> None:
        if not live and not as_json:
            ui.line(w.finished_line(row))

    try:
        if not live:
            ui.info(f"waiting for {what} on {', '.join(chosen)}" + (f" (at most {timeout})" if timeout else ""))
        if live:
            with Live(console=ui.out, auto_refresh=False, transient=False) as view:
                def redraw(rows: list[w.JobRow], errors: dict[str, str], elapsed: float) -> None:
                    view.update(w.live_table(rows, errors, elapsed, max_rows=max(3, ui.out.height - 8),
                                             width=ui.out.width), refresh=True)

                result = w.wait_for_jobs(readers, chosen, timeout=limit, interval=interval, on_poll=redraw,
                                         tail_lines=tail_lines, after_poll=syncer.after_poll, settled=syncer.settled)
        else:
            result = w.wait_for_jobs(readers, chosen, timeout=limit, interval=interval, on_poll=w.UnreachableWarnings(),
                                     on_finished=print_finished, tail_lines=tail_lines,
                                     after_poll=syncer.after_poll, settled=syncer.settled)
    except KeyboardInterrupt:
        ui.error("stopped waiting (interrupted); the jobs keep running")
        sys.exit(w.EXIT_INTERRUPTED)
    finally:
        for r in readers:
            r.close()
    code = w.wait_exit_code(result)
    if as_json:
        ui.print_json({"ok": code == 0, "timed_out": result.timed_out, "elapsed_s": round(result.elapsed_s, 1),
                       "jobs": [r.to_json() for r in result.rows],
                       "failed": [{**r.to_json(), "log_tail": result.tails.get((r.target, r.id), "")}
                                  for r in result.failed],
                       "unreachable": result.errors})
    report(result, limit)
    tell(result, list(chosen), notify, desktop=ui.err.is_terminal and not as_json)
    sys.exit(code)


def tell(result: w.WaitResult, targets: list[str], notify: str | None, *, desktop: bool) -> None:
    """The webhook post (--notify) and the desktop notification; neither changes the exit code."""
    if not notify and not desktop:
        return
    title, text = w.wait_message(result, targets)
    if desktop:
        w.desktop_notify(title, text)
    if notify:
        error = post_notification(notify, title, text)
        if error:
            ui.warn(f"notification to {describe_target(notify)} failed: {error}")
        else:
            ui.info(f"notified {describe_target(notify)}")


def report(result: w.WaitResult, limit: float | None) -> None:
    """The closing lines on stderr: what failed (with its last log lines), or what still runs."""
    for target, err in result.errors.items():
        ui.warn(f"{target} did not answer at the last poll: {err}")
    if result.failed:
        ui.error(f"{len(result.failed)} of {len(result.rows)} job(s) did not succeed:")
        for ln in w.failure_report(result):
            ui.info("  " + ln)
    if result.timed_out:
        ui.error(f"timed out after {w.duration(limit)}: {len(result.unfinished)} job(s) still queued or "
                 "running (they keep running)")
    elif not result.rows:
        ui.info("no unfinished jobs to wait for")
    elif not result.failed:
        ui.info(f"all {len(result.rows)} job(s) done")
