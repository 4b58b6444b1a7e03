"""Several hosts at once: connect and probe in parallel, ask sudo passwords one host at a time,
then set up (or undo) every host in parallel with one progress line each and a summary table.

One host failing never stops the others (`migrate.remote.parallel.for_each_host`); each host's
report says what happened. These functions print through `migrate.ui` and never exit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from migrate import ui
from migrate.errors import MigrateError, UsageError
from migrate.remote import shell
from migrate.remote.connection import connect, target_for
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host
from migrate.setup import apt, journal
from migrate.setup.facts import JOURNAL_FILE, SetupFacts, gather
from migrate.setup.offline import load_offline_set
from migrate.setup.options import HostSetupOptions, HostSetupReport, StepResult, nvidia_base_url, validate_options
from migrate.setup.plan import ROOT_EQUIVALENT, PlanContext, plan_steps, render_plan
from migrate.setup.runner import RunContext, TimedRemote, complete_facts, run_steps

ROOT_EQUIVALENT_PREFIX = ROOT_EQUIVALENT.split("{host}")[0]


@dataclass
class Session:
    """One host through the phases: open connection, facts, and the report being filled."""

    host: str
    remote: TimedRemote | None = None
    facts: SetupFacts | None = None
    report: HostSetupReport = field(default_factory=lambda: HostSetupReport(host=""))
    started: float = field(default_factory=time.monotonic)
    extra: dict = field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.remote.target.display if self.remote is not None else self.host

    def close(self) -> None:
        if self.remote is not None:
            self.remote.close()


def _check_hosts(hosts: list[str], conn: ConnectOptions) -> None:
    """Malformed host arguments are usage errors for the whole command (before any connection)."""
    seen = set()
    for h in hosts:
        if h in seen:
            raise UsageError(f"host {h!r} is given twice", hint="give each host once")
        seen.add(h)
        target_for(h, conn)


def _open_all(hosts: list[str], conn: ConnectOptions, prepare) -> list[Session]:
    """Connect to every host in parallel and run `prepare(session)` there; failures are recorded."""

    def work(host: str) -> Session:
        s = Session(host=host)
        s.report.host = host
        s.remote = TimedRemote(connect(host, conn))
        try:
            prepare(s)
        except BaseException:
            s.remote.close()  # the failed host's row is all that stays; its connection must not
            raise
        return s

    with ui.err.status(f"connecting to {len(hosts)} host(s)" if len(hosts) > 1 else f"connecting to {hosts[0]}"):
        outcomes = for_each_host(hosts, work)
    sessions = []
    for o in outcomes:
        if o.ok and o.value is not None:
            sessions.append(o.value)
        else:
            s = Session(host=o.host)
            s.report = HostSetupReport(host=o.host, error=o.error)
            sessions.append(s)
    return sessions


def _ask_passwords(sessions: list[Session], needs_root) -> None:
    """Prompt (or read $MIGRATE_SUDO_PASSWORD) one host at a time, before any progress display."""
    for s in sessions:
        if s.report.error or s.remote is None or s.facts is None:
            continue
        if s.facts.host.sudo == "password" and needs_root(s):
            try:
                s.remote.check_sudo()
            except MigrateError as exc:
                s.report.error = exc.one_line()


def _run_parallel(sessions: list[Session], work, title: str) -> None:
    """`work(session, progress_callback)` on every live session in parallel, one status line each."""
    live = [s for s in sessions if not s.report.error and s.remote is not None]
    if not live:
        return
    with ui.host_progress() as progress:
        tasks = [progress.add_task(title, host=s.display, total=1) for s in live]

        def one(key: str) -> None:  # key: the session's position (two arguments may name one host)
            s, task = live[int(key)], tasks[int(key)]

            def say(text: str) -> None:
                progress.update(task, description=text)

            try:
                work(s, say)
            except MigrateError as exc:
                s.report.error = exc.one_line()
            finally:
                r = s.report
                r.wall_seconds = time.monotonic() - s.started
                if r.ok:
                    say(f"done: {r.changed} changed" if not r.dry_run else "planned")
                else:
                    say(f"FAILED: {r.error or next((x.name for x in r.steps if x.status == 'failed'), '?')}")
                progress.update(task, completed=1)

        outcomes = for_each_host([str(i) for i in range(len(live))], one)
        for o in outcomes:  # a bug in one host's work: recorded, never hides the others
            if not o.ok:
                s = live[int(o.host)]
                s.report.error = s.report.error or o.error


def _finish(sessions: list[Session]) -> list[HostSetupReport]:
    reports = []
    for s in sessions:
        if not s.report.wall_seconds:
            s.report.wall_seconds = time.monotonic() - s.started
        if s.remote is not None:
            s.report.remote_seconds = s.remote.seconds
        s.close()
        reports.append(s.report)
    return reports


def print_reports(reports: list[HostSetupReport], *, verb: str = "host-setup") -> None:
    """Step tables per host, warnings, the root-equivalence note once, and a summary table.

    One host that could not even be reached (or asked for sudo) is one error line, like every verb."""
    if len(reports) == 1 and reports[0].error and not reports[0].steps:
        ui.error(reports[0].error)
        return
    root_hosts = []
    for r in reports:
        if r.dry_run:
            continue  # the plan itself was printed, with its warnings
        if r.steps:
            ui.table(f"{verb} {r.host}" + (" (dry run)" if r.dry_run else ""), ["step", "result", "detail"],
                     [(s.name, s.status, s.detail) for s in r.steps])
        seen = set()
        for s in r.steps:
            for w in s.warnings:
                if w.startswith(ROOT_EQUIVALENT_PREFIX):
                    root_hosts.append(r.host)
                elif w not in seen:
                    seen.add(w)
                    ui.warn(f"{r.host}: {w}")
    if root_hosts:
        # hosts are separate arguments: `host-setup hx1, hx2 --undo` was itself a usage error
        ui.warn(ROOT_EQUIVALENT.format(host=", ".join(root_hosts), host_args=shell.join(root_hosts)))
    rows = []
    for r in reports:
        failed = next((s for s in r.steps if s.status == "failed"), None)
        error = r.error or (f"{failed.name}: {failed.detail}" if failed else "")
        rows.append((r.host, "ok" if r.ok else "failed", str(r.changed), f"{r.wall_seconds:.1f}s",
                     f"{r.remote_seconds:.1f}s", error))
    ui.table(f"{verb} summary", ["host", "result", "changed", "wall", "remote work", "error"], rows)


# --------------------------------------------------------------------------------------------
# setup

def setup_hosts(hosts: list[str], conn: ConnectOptions, options: HostSetupOptions, *,
                dry_run: bool = False, quiet: bool = False) -> list[HostSetupReport]:
    """Set up (or, with dry_run, plan) every host in parallel; never exits. `quiet` prints nothing
    but progress (for --json and for `migrate apply`)."""
    source = validate_options(options)
    _check_hosts(hosts, conn)
    offline = load_offline_set(options.offline) if options.offline else None
    nvidia_base = nvidia_base_url(options) if options.nvidia else options.nvidia_url

    def plan_ctx(s: Session) -> PlanContext:
        return PlanContext(options=options, source=source, nvidia_base=nvidia_base, offline=offline,
                           display=s.display)

    def prepare(s: Session) -> None:
        assert s.remote is not None  # _open_all connects before it calls prepare
        s.facts = gather(s.remote)
        if s.facts.host.sudo != "password":
            s.facts = complete_facts(s.remote, s.facts)

    sessions = _open_all(hosts, conn, prepare)

    def needs_root(s: Session) -> bool:
        assert s.facts is not None  # _ask_passwords asks only about sessions with facts
        unreadable = s.facts.daemon_json_exists and not s.facts.daemon_json_readable
        if dry_run:
            return unreadable
        return unreadable or any(p.status == "change" for p in plan_steps(s.facts, plan_ctx(s)))

    _ask_passwords(sessions, needs_root)
    for s in sessions:
        if not s.report.error and s.remote is not None and s.facts is not None and s.facts.host.sudo == "password":
            try:
                s.facts = complete_facts(s.remote, s.facts)
            except MigrateError as exc:
                s.report.error = exc.one_line()

    if dry_run:
        for s in sessions:
            s.report.dry_run = True
            if s.report.error or s.facts is None:
                continue
            plans = plan_steps(s.facts, plan_ctx(s))
            status_map = {"change": "changed", "check": "ok"}
            s.report.steps = [StepResult(p.name, status_map.get(p.status, p.status),
                                         p.detail + (f" (hint: {p.hint})" if p.hint else ""), p.warnings)
                              for p in plans]
            if not quiet:
                ui.line(f"host-setup plan for {s.display} (dry run: nothing is changed)", "bold")
                styles = {"ok": "green", "change": "yellow", "check": "cyan", "skipped": "cyan",
                          "failed": "bold red", "warn": "yellow", "action": "dim"}
                for status, head, text in render_plan(plans):
                    ui.line(f"{head} {text}", styles.get(status))
                ui.line("")
        reports = _finish(sessions)
        if not quiet:
            print_reports(reports)
        return reports

    def work(s: Session, say) -> None:
        # _run_parallel runs only live sessions: connected, and prepare (which sets facts) did not fail
        assert s.remote is not None and s.facts is not None
        ctx = RunContext(remote=s.remote, plan_ctx=plan_ctx(s), home=s.facts.host.home or s.remote.home(),
                         progress=say)
        try:
            run_steps(ctx, s.facts, s.report.steps)
        finally:
            s.report.docker_restarts = ctx.docker_restarts

    _run_parallel(sessions, work, "starting")
    reports = _finish(sessions)
    if not quiet:
        print_reports(reports)
    return reports


# --------------------------------------------------------------------------------------------
# undo

def _members(getent: str) -> tuple[set[str], dict[str, list[str]]]:
    groups, members = set(), {}
    for line in getent.splitlines():
        parts = line.split(":")
        if len(parts) >= 4:
            groups.add(parts[0])
            members[parts[0]] = [m for m in parts[3].split(",") if m]
    return groups, members


UNDO_NAMES = {"purge": "packages", "restart": "docker-service", "note": "note", "run": "undo", "cleanup": "cleanup"}


def undo_hosts(hosts: list[str], conn: ConnectOptions, *, dry_run: bool = False,
               quiet: bool = False) -> list[HostSetupReport]:
    """Reverse what host-setup recorded in each host's journal, newest change first."""
    _check_hosts(hosts, conn)

    def prepare(s: Session) -> None:
        assert s.remote is not None  # _open_all connects before it calls prepare
        s.facts = gather(s.remote)
        text = s.remote.run(journal.read_command(), what="read the host-setup journal").stdout
        entries, problems = journal.parse(text)
        installed = {apt.bare_name(k): v for k, v in
                     apt.parse_installed(s.remote.run(apt.INSTALLED_QUERY, what="list packages").stdout).items()}
        groups, members = _members(s.remote.run("getent group", what="list groups").stdout)
        plan = journal.plan_undo(entries, installed, groups, members, docker_unit=s.facts.docker_unit or "yes")
        plan.problems[:0] = problems
        s.extra.update(entries=entries, plan=plan)

    sessions = _open_all(hosts, conn, prepare)
    _ask_passwords(sessions, lambda s: not dry_run and any(a.commands for a in s.extra["plan"].actions))

    for s in sessions:
        if s.report.error or "plan" not in s.extra:
            continue
        plan = s.extra["plan"]
        if dry_run:
            s.report.dry_run = True
            s.report.steps = [StepResult(UNDO_NAMES[a.kind], "changed" if a.commands else "ok", a.title)
                              for a in plan.actions]
            if not quiet:
                ui.line(f"host-setup --undo plan for {s.display} (dry run: nothing is changed)", "bold")
                for a in plan.actions:
                    ui.line(f"  {a.title}", "yellow" if a.commands else "green")
                    for c in a.commands:
                        ui.line(f"     [root] $ {c}", "dim")
                for text in plan.not_undoable:
                    ui.line(f"  cannot undo: {text}", "red")
                if plan.empty:
                    ui.line("  nothing to undo (no journal in ~/" + JOURNAL_FILE + ")", "green")
                ui.line("")

    def work(s: Session, say) -> None:
        assert s.remote is not None  # _run_parallel runs only connected sessions
        plan = s.extra["plan"]
        entries = s.extra["entries"]
        steps, settled, failed = [], set(), False
        for a in plan.actions:
            say(a.title)
            try:
                for cmd in a.commands:
                    s.remote.run(cmd, sudo=True, what=a.title, timeout=1800 if a.kind == "purge" else 180)
                if a.kind == "purge":
                    left = apt.parse_installed(s.remote.run(apt.INSTALLED_QUERY, what="list packages").stdout)
                    still = [p for p in a.packages if apt.bare_name(p) in {apt.bare_name(k) for k in left}]
                    if still:
                        raise MigrateError(f"still installed after purge: {' '.join(still)}")
            except MigrateError as exc:
                failed = True
                steps.append(StepResult(UNDO_NAMES[a.kind], "failed", f"{a.title}: {exc.one_line()}"))
                continue
            settled.update(a.settles)
            steps.append(StepResult(UNDO_NAMES[a.kind], "changed" if a.commands else "ok", a.title))
        for text in plan.not_undoable:
            steps.append(StepResult("not undone", "skipped", text, [f"could not undo: {text}"]))
        for text in plan.problems:
            steps.append(StepResult("journal", "skipped", text, [text]))
        if plan.empty and not plan.problems:
            steps.append(StepResult("journal", "ok", "nothing to undo (no changes recorded in ~/" + JOURNAL_FILE + ")"))
        s.report.steps = steps
        if entries:
            say("updating the journal")
            _settle_journal(s, entries, settled, complete=not failed)

    if not dry_run:
        _run_parallel([s for s in sessions if "plan" in s.extra], work, "undo")
    reports = _finish(sessions)
    if not quiet:
        print_reports(reports, verb="host-setup --undo")
    return reports


def _settle_journal(s: Session, entries: list[dict], settled: set[str], *, complete: bool) -> None:
    """Archive the journal after a complete undo; otherwise keep only what is still to undo."""
    assert s.remote is not None and s.facts is not None  # called from undo's work: a live, prepared session
    path = shell.home_path(JOURNAL_FILE)
    if complete:
        archived = shell.home_path(JOURNAL_FILE.replace(".jsonl", f".undone-{journal.timestamp()}.jsonl"))
        s.remote.run(f"mv -f {path} {archived} && rm -f {journal.open_marker('')}*", what="archive the journal")
        return
    keep = [e for e in entries if e.get("id") not in settled]
    text = "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in keep)
    s.remote.put_bytes(text.encode(), s.facts.host.home.rstrip("/") + "/" + JOURNAL_FILE, mode=0o600)
