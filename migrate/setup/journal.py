"""The change journal kept on the host, and the undo plan built from it (pure).

Every change host-setup makes is appended, as one JSON line, to `~/.migrate/host-setup/journal.jsonl`
of the user who ran it (directory 0700, file 0600), *before* the change where that is possible
(a file's backup path, the package list before apt runs) so that a dropped connection still leaves
enough to undo. `--undo` reverses the entries in reverse order.

Entry types:
- `file`        {path, existed, backup, mode}: restore the backup, or remove a file we created
- `dir`         {path}: a directory we created (removed again if empty)
- `apt-begin`   {id, before}: the installed package set before an apt run
- `packages`    {id, installed, removed, upgraded, groups_created}: what that apt run changed
- `group-member` {group, user}; `group-created` {group}
- `reverted`    {ref}: an earlier entry that was already rolled back (e.g. daemon.json after dockerd failed)
"""

from __future__ import annotations

import datetime as _dt
import json
import uuid
from dataclasses import dataclass, field

from migrate.remote import shell
from migrate.setup import apt
from migrate.setup.facts import JOURNAL_DIR, JOURNAL_FILE

VERSION = 1


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def timestamp() -> str:
    """UTC time for journal entries and backup names: 20260101T120000Z."""
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def entry(kind: str, step: str, **data: object) -> dict:
    """A journal entry (adds version, id, time)."""
    return {"v": VERSION, "id": new_id(), "time": timestamp(), "type": kind, "step": step, **data}


def append_command(entry_obj: dict) -> str:
    """Shell command appending one entry to the journal (private dir and file)."""
    line = json.dumps(entry_obj, separators=(",", ":"), sort_keys=False)
    return (f"umask 077 && mkdir -p {shell.home_path(JOURNAL_DIR)} && "
            f"printf '%s\\n' {shell.quote(line)} >> {shell.home_path(JOURNAL_FILE)}")


def open_marker(entry_id: str) -> str:
    """The file that says an apt run's outcome is not recorded yet (its result never came back)."""
    return shell.home_path(f"{JOURNAL_DIR}/apt-open-{entry_id}")


def read_command() -> str:
    """Shell command printing the journal (nothing when there is none)."""
    path = shell.home_path(JOURNAL_FILE)
    return f"if [ -f {path} ]; then cat {path}; fi"


def parse(text: str) -> tuple[list[dict], list[str]]:
    """Journal text -> (entries, problems). A broken line is reported, never fatal."""
    entries, problems = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"journal line {n} is not JSON ({exc.msg}); skipped")
            continue
        if isinstance(obj, dict) and "type" in obj:
            entries.append(obj)
        else:
            problems.append(f"journal line {n} is not an entry; skipped")
    return entries, problems


def backup_path(path: str, stamp: str) -> str:
    """Where the old version of `path` is kept: next to it, timestamped."""
    return f"{path}.migrate-backup-{stamp}"


# --------------------------------------------------------------------------------------------
# undo plan

@dataclass
class UndoAction:
    """One reversal: what it does, the root commands, and the journal entries it settles."""

    title: str
    commands: list[str]
    settles: list[str] = field(default_factory=list)  # entry ids
    kind: str = "run"  # run | purge | restart | cleanup | note
    packages: list[str] = field(default_factory=list)  # for purge: what must be gone afterwards
    note: str = ""


@dataclass
class UndoPlan:
    actions: list[UndoAction] = field(default_factory=list)
    not_undoable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.actions and not self.not_undoable


def plan_undo(entries: list[dict], installed_now: dict[str, str], groups_now: set[str],
              members_now: dict[str, list[str]], lock_timeout: int = 300,
              docker_unit: str = "yes") -> UndoPlan:
    """Reverse `entries` (oldest first) given the host's current packages and groups.

    `installed_now` is parse_installed() of the host now (without arch suffixes), `members_now`
    maps group -> members. Packages are purged only if still installed, groups removed only if
    they still exist, and the daemon is restarted once at the end when daemon.json was restored
    and docker stays installed.
    """
    plan = UndoPlan()
    reverted = {e.get("ref") for e in entries if e.get("type") == "reverted"}
    finished_apt = {e.get("begin") for e in entries if e.get("type") == "packages"}
    restored_daemon_json = False
    purged: set[str] = set()
    by_id = {e.get("id"): e for e in entries}
    for e in reversed(entries):
        kind, eid = e.get("type"), e.get("id")
        if eid in reverted or kind == "reverted":
            continue
        if kind == "group-member":
            group, user = e.get("group", ""), e.get("user", "")
            if user in members_now.get(group, []):
                plan.actions.append(UndoAction(f"remove {user} from group {group}",
                                               [shell.join(["gpasswd", "-d", user, group])], [eid]))
            else:
                plan.actions.append(UndoAction(f"{user} is no longer in group {group}", [], [eid], kind="note"))
        elif kind == "file":
            path, backup = e.get("path", ""), e.get("backup")
            if e.get("existed") and backup:
                cmd = f"if [ -e {shell.quote(backup)} ]; then mv -f {shell.quote(backup)} {shell.quote(path)}; " \
                      f"else echo 'backup {backup} is missing' >&2; exit 3; fi"
                plan.actions.append(UndoAction(f"restore {path} from {backup}", [cmd], [eid]))
            elif not e.get("existed"):
                plan.actions.append(UndoAction(f"remove {path}", [shell.join(["rm", "-f", path])], [eid]))
            else:
                plan.not_undoable.append(f"{path} was changed without a backup")
                continue
            if path.endswith("/daemon.json"):
                restored_daemon_json = True
        elif kind == "dir":
            path = e.get("path", "")
            plan.actions.append(UndoAction(f"remove directory {path} if empty",
                                           [f"rmdir {shell.quote(path)} 2>/dev/null || true"], [eid]))
        elif kind == "packages":
            installed = [p[0] for p in e.get("installed", [])]
            still = [p for p in installed if apt.bare_name(p) in installed_now and p not in purged]
            settles = [eid] + ([e["begin"]] if e.get("begin") else [])
            if still:
                purged.update(still)
                plan.actions.append(UndoAction(f"purge {len(still)} package(s) installed by host-setup: "
                                               + " ".join(apt.bare_name(p) for p in still),
                                               [apt.survive_disconnect(apt.purge_command(still, lock_timeout),
                                                                       f"purge-{eid}")], settles, kind="purge",
                                               packages=still))
            elif installed:
                plan.actions.append(UndoAction("packages installed by host-setup are already gone", [], settles,
                                               kind="note"))
            for name, version in e.get("removed", []):
                plan.not_undoable.append(f"apt removed {apt.bare_name(name)} {version} during setup; "
                                         f"reinstall it with: sudo apt-get install {apt.bare_name(name)}")
            for name, old, new in e.get("upgraded", []):
                plan.not_undoable.append(f"apt upgraded {apt.bare_name(name)} from {old} to {new}; not downgraded")
            for path in e.get("paths_created", []):
                names = apt.RUNTIME_LEFTOVERS.get(path, ())
                files = [f"{path}/{n}" for n in names if not n.endswith("/")]
                dirs = [f"{path}/{n.rstrip('/')}" for n in names if n.endswith("/")]
                cmd = (f"rm -f {shell.join(files)}; " if files else "") + \
                    "".join(f"rmdir {shell.quote(d)} 2>/dev/null; " for d in dirs) + \
                    f"rmdir {shell.quote(path)} 2>/dev/null || true"
                plan.actions.append(UndoAction(f"remove {path} if nothing else is in it (created by the install)",
                                               [cmd], [], kind="cleanup"))
            for group in e.get("groups_created", []):
                if group in groups_now:
                    plan.actions.append(UndoAction(f"remove group {group} (created when the packages were "
                                                   "installed)", [f"groupdel {shell.quote(group)}"], [],
                                                   kind="run"))
        elif kind == "apt-begin":
            if eid in finished_apt:
                continue
            # apt was interrupted (connection lost?): undo what appeared since the snapshot
            before = {apt.bare_name(p) for p in e.get("before", {})}
            new = sorted(p for p in installed_now if apt.bare_name(p) not in before and p not in purged)
            for group in sorted(groups_now - set(e.get("groups", groups_now))):
                plan.actions.append(UndoAction(f"remove group {group} (appeared during an interrupted apt run)",
                                               [f"groupdel {shell.quote(group)}"], []))
            if new:
                purged.update(new)
                plan.actions.append(UndoAction(f"purge {len(new)} package(s) from an interrupted apt run: "
                                               + " ".join(new),
                                               [apt.survive_disconnect(apt.purge_command(new, lock_timeout),
                                                                       f"purge-{eid}")], [eid],
                                               kind="purge", packages=new))
            else:
                plan.actions.append(UndoAction("interrupted apt run left nothing installed", [], [eid], kind="note"))
        elif kind == "group-created":
            group = e.get("group", "")
            if group in groups_now:
                plan.actions.append(UndoAction(f"remove group {group}", [f"groupdel {shell.quote(group)}"], [eid]))
        else:
            plan.problems.append(f"unknown journal entry type {kind!r} ({by_id.get(eid, e).get('time', '?')}); "
                                 "skipped")
    docker_stays = not any(apt.bare_name(p) in ("docker.io", "docker-ce") for p in purged) and \
        any(p in installed_now for p in ("docker.io", "docker-ce"))
    if restored_daemon_json and docker_stays:
        restart = ("systemctl reset-failed docker.service >/dev/null 2>&1; systemctl restart docker"
                   if docker_unit == "yes" else "service docker restart")
        plan.actions.append(UndoAction("restart docker with the restored daemon.json", [restart], [],
                                       kind="restart"))
    # directories and groups the install created go after every purge (the packages use them)
    plan.actions.sort(key=lambda a: 1 if a.kind == "cleanup" or (a.commands and a.commands[0].startswith("groupdel"))
                      else 0)
    return plan
