"""Results come back on their own: `run --sync-back HOST_PATH:LOCAL_DIR [--every DURATION]` (issue 22).

Nothing runs on the host for this: `run` records the job ids and the sync-back in this machine's
last-run record, and `migrate wait` (also `logs -f`: `follow_syncing`, and the `migrate sync` loop)
pulls HOST_PATH into LOCAL_DIR with pull-data (`pull_data`: one rsync, only changes cross, partial
files kept aside in .migrate-partial/ and never written over a good file) every DURATION while any
of those jobs runs, and once more after the last of them ended. A pull that fails (a dropped
connection, a host away) is a warning and is tried again at the next interval; the final pull is
tried at every poll until it succeeds (at most FINAL_TRIES times). A wait that starts after the jobs
ended (the laptop was away) makes the final pull at once. The record keeps when each sync-back last
succeeded and whether its final pull happened.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from migrate import ui
from migrate.errors import MigrateError, UsageError

FINAL_TRIES = 3


def parse_sync_back(text: str) -> tuple[str, str]:
    """`HOST_PATH:LOCAL_DIR` -> (host path, local dir) (pure)."""
    remote, sep, local = str(text).partition(":")
    if not sep or not remote.strip() or not local.strip():
        raise UsageError(f"bad --sync-back {text!r}",
                         hint="use --sync-back HOST_PATH:LOCAL_DIR, e.g. runs/exp1:./results")
    return remote, local


@dataclass
class SyncTask:
    """One sync-back of one run on one target: which jobs it follows, how often, how far it got."""

    target: str
    spec: str  # HOST_PATH:LOCAL_DIR as given
    jobs: list[str]
    every: float | None = None
    last_ok: float | None = None  # wall clock of the last successful pull
    final: bool = False  # the pull after the last job ended succeeded
    tried_at: float | None = None  # monotonic time of the last attempt
    final_tries: int = 0

    def due(self, states: dict[str, str], now: float) -> str:
        """'final', 'every' or '' (pure): what this task should do after a poll that saw `states`."""
        from migrate.jobs.model import is_terminal, state_of

        if self.final or self.final_tries >= FINAL_TRIES:
            return ""
        mine = [states.get(j) for j in self.jobs]
        if all(is_terminal(s) for s in mine if s is not None):
            return "final"
        running = any((st := state_of(s)) is not None and st.is_active for s in mine)
        if running and self.every and (self.tried_at is None or now - self.tried_at >= self.every):
            return "every"
        return ""


class Syncer:
    """Runs the due pulls after each poll of `migrate wait`; `settled()` once every final pull is done."""

    def __init__(self, tasks: list[SyncTask], conn: Any, *, pull: Callable[..., Any] | None = None,
                 save: Callable[[SyncTask], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.tasks = tasks
        self.conn = conn
        self.pull = pull or _pull
        self.save = save
        self.clock = clock

    def after_poll(self, states: dict[tuple[str, str], str]) -> None:
        now = self.clock()
        for t in self.tasks:
            mine = {j: s for (target, j), s in states.items() if target == t.target}
            what = t.due(mine, now)
            if not what:
                continue
            t.tried_at = now
            remote, local = parse_sync_back(t.spec)
            try:
                result = self.pull(t.target, remote, local, self.conn)
            except MigrateError as exc:
                if what == "final":
                    t.final_tries += 1
                ui.warn(f"sync-back {t.target}:{remote} -> {local} failed ({exc.one_line()}); "
                        + ("trying again at the next poll" if what == "final" and t.final_tries < FINAL_TRIES
                           else "trying again later" if what == "every" else "giving up: use pull-data"))
                continue
            t.last_ok = time.time()
            t.final = what == "final"
            ui.info(f"synced back {t.target}:{remote} -> {local}" + (" (final)" if t.final else "")
                    + (f": {getattr(result, 'files_transferred', 0)} file(s) changed" if result is not None else ""))
            if self.save:
                self.save(t)

    def settled(self) -> bool:
        return all(t.final or t.final_tries >= FINAL_TRIES for t in self.tasks)


def pending_tasks(chosen: dict[str, list[str] | None], every: float | None = None) -> list[SyncTask]:
    """The unfinished sync-backs of the last run on each target that concern the chosen jobs (None: any)."""
    from migrate.jobs import lastrun

    tasks = []
    for target, refs in chosen.items():
        for e in lastrun.sync_entries(target):
            if e.get("final") or (refs is not None and not set(e["jobs"]) & set(refs)):
                continue
            tasks.append(SyncTask(target=target, spec=e["spec"], jobs=e["jobs"], every=every or e.get("every"),
                                  last_ok=e.get("last_ok")))
    return tasks


def recording_syncer(tasks: list[SyncTask], conn: Any) -> Syncer:
    """A Syncer that keeps how far each sync-back got in the last-run record."""
    from migrate.jobs import lastrun

    return Syncer(tasks, conn, save=lambda t: lastrun.save_sync(t.target, t.spec, last_ok=t.last_ok, final=t.final))


def pending_jobs(target: str | None = None) -> dict[str, list[str]]:
    """target -> the job ids of the last run's unfinished sync-backs there (`migrate sync`): every target
    recorded on this machine, or just `target`."""
    from migrate.jobs import lastrun

    out: dict[str, list[str]] = {}
    for t in [target] if target else sorted(lastrun.load_all()):
        ids = [j for e in lastrun.sync_entries(t) if not e.get("final") for j in e["jobs"]]
        if ids:
            out[t] = list(dict.fromkeys(ids))
    return out


def sync_loop(chosen: dict[str, list[str]], conn: Any, *, every: float | None, interval: float) -> list[SyncTask]:
    """`migrate sync`: the pending sync-backs' ticks until every one made its final pull (or gave up);
    their jobs are only read. Ctrl-C (KeyboardInterrupt) passes through."""
    from migrate.jobs import wait as w

    syncer = recording_syncer(pending_tasks(dict(chosen), every), conn)
    readers = [w.reader_for(t, conn) for t in chosen]
    try:
        w.wait_for_jobs(readers, dict(chosen), timeout=None, interval=interval, on_poll=w.UnreachableWarnings(),
                        tail_lines=0, after_poll=syncer.after_poll, settled=syncer.settled)
    finally:
        for r in readers:
            r.close()
    return syncer.tasks


POLL_S = 2.0  # how often `logs -f` reads the job states for its sync-backs


@contextmanager
def follow_syncing(host: str, conn: Any, job_ref: str, *, interval: float = POLL_S) -> Iterator[None]:
    """While the body follows `job_ref`'s log: the sync-back ticks of the last run's sync-backs that
    include it, in a thread on a connection of its own, then one last tick when the body returns (the
    final pull when every job of the sync-back has ended). An exception (Ctrl-C) stops it without that."""
    from migrate.jobs import wait as w

    if not pending_tasks({host: None}):
        yield
        return
    reader = w.HostReader(host, conn)
    try:
        [job_id] = w.pick_jobs(reader.jobs(), [job_ref], host)
    except Exception:  # the follow itself reports a wrong job or an unreachable host
        reader.close()
        yield
        return
    syncer = recording_syncer(pending_tasks({host: [job_id]}), conn)
    stop = threading.Event()

    def read_states() -> dict[tuple[str, str], str]:
        return {(host, str(j["id"])): str(j.get("state")) for j in reader.jobs()}

    thread = threading.Thread(target=tick_until, args=(syncer, read_states, stop, interval), daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        stop.set()
        raise
    finally:
        if not stop.is_set():  # the follow ended: the last tick, then the thread ends
            stop.set()
            thread.join()
        reader.close()


def tick_until(syncer: Syncer, read_states: Callable[[], dict[tuple[str, str], str]], stop: threading.Event,
               interval: float) -> None:
    """Read the states and run the syncer's due pulls every `interval` until `stop`; once more after it
    is set (a read error is one warning per run of errors and the tick is skipped)."""
    failing = False
    while True:
        last = stop.wait(interval)
        try:
            states = read_states()
        except Exception as exc:  # a dropped link: paramiko's own errors too
            if not failing:
                ui.warn(f"sync-back: could not read the job states ({exc}); trying again")
            failing = True
        else:
            failing = False
            syncer.after_poll(states)
        if last:
            return


def pull_host(target: str) -> str:
    """Where a target's sync-back pulls from: the host itself, or a cluster's head node (its job target says)."""
    from migrate.jobs.target import job_target
    from migrate.remote.hosts import ConnectOptions

    return job_target(target, ConnectOptions()).files_host


def cluster_sync_groups(specs: list[Any], ids: list, every: float | None) -> list[dict]:
    """A cluster run's sync-back (pure): one for all the jobs the run queued, pulled from the head node.

    Jobs whose --key was already on the cluster get no id, so the ids cannot be told apart per spec:
    a run on a cluster takes one HOST_PATH:LOCAL_DIR for all its jobs (checked before submitting).
    """
    wanted = {s.sync_back for s in specs if s.sync_back}
    if len(wanted) > 1:
        raise UsageError("a run on a cluster takes one --sync-back for all its jobs",
                         hint="give the jobs one sync_back, or run them in separate `migrate run` calls")
    return [{"spec": wanted.pop(), "every": every, "jobs": list(ids)}] if wanted and ids else []


def _pull(host: str, remote: str, local: str, conn: Any) -> Any:
    from migrate.data.plan import PushDataOptions
    from migrate.data.pull import pull_data

    with ui.data_to_stderr():
        return pull_data(pull_host(host), remote, local, conn, PushDataOptions(method="rsync"))


def sync_line(entry: dict, host: str, now: float | None = None) -> str:
    """`sync-back runs/exp1 -> ./results (jobs 4, 5): last brought back 12m ago, after the jobs ended` (pure)."""
    from migrate.jobs.render import duration

    now = time.time() if now is None else now
    remote, local = parse_sync_back(entry["spec"])
    head = f"sync-back {remote} -> {local} (job(s) {', '.join(entry.get('jobs') or [])}): "
    if not entry.get("last_ok"):
        return head + f"not brought back yet (it runs while `migrate wait {host}` runs)"
    when = f"last brought back {duration(now - float(entry['last_ok']))} ago"
    return head + when + (", after the jobs ended" if entry.get("final") else "")
