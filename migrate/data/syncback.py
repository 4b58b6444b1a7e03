"""Results come back on their own: `run --sync-back HOST_PATH:LOCAL_DIR [--every DURATION]` (issue 22).

Nothing runs on the host for this: `run` records the job ids and the sync-back in this machine's
last-run record, and `migrate wait` pulls HOST_PATH into LOCAL_DIR with pull-data (`pull_data`: one
rsync, only changes cross, partial files kept aside in .migrate-partial/ and never written over a good
file) every DURATION while any of those jobs runs, and once more after the last of them ended. A pull
that fails (a dropped connection, a host away) is a warning and is tried again at the next interval; the
final pull is tried at every poll until it succeeds (at most FINAL_TRIES times). A wait that starts
after the jobs ended (the laptop was away) makes the final pull at once. The record keeps when each
sync-back last succeeded and whether its final pull happened.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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


def _pull(host: str, remote: str, local: str, conn: Any) -> Any:
    from migrate.data.plan import PushDataOptions
    from migrate.data.pull import pull_data

    with ui.data_to_stderr():
        return pull_data(host, remote, local, conn, PushDataOptions(method="rsync"))


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
