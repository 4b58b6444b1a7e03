"""--sync-back: when a pull is due, retries after failures, the record of what came back (fake pulls, fake clock)."""

from __future__ import annotations

import pytest

from migrate.data.syncback import FINAL_TRIES, Syncer, SyncTask, parse_sync_back
from migrate.errors import ConnectError, UsageError
from migrate.jobs import lastrun
from migrate.jobs.spec import JobSpec
from migrate.jobs.submit import sync_groups


def test_parse():
    assert parse_sync_back("runs/exp1:./results") == ("runs/exp1", "./results")
    for bad in ("runs", ":x", "x:", ""):
        with pytest.raises(UsageError):
            parse_sync_back(bad)


def test_due_every_while_running_then_final():
    t = SyncTask(target="h", spec="a:b", jobs=["1", "2"], every=10)
    assert t.due({"1": "queued", "2": "queued"}, 0) == ""  # nothing runs yet: nothing to bring back
    assert t.due({"1": "running", "2": "queued"}, 0) == "every"
    t.tried_at = 0
    assert t.due({"1": "running", "2": "queued"}, 5) == ""
    assert t.due({"1": "running", "2": "queued"}, 10) == "every"
    assert t.due({"1": "done", "2": "failed"}, 11) == "final"
    assert SyncTask(target="h", spec="a:b", jobs=["1"]).due({"1": "running"}, 99) == ""  # no --every


class Pulls:
    def __init__(self, fail: int = 0) -> None:
        self.calls: list = []
        self.fail = fail

    def __call__(self, host, remote, local, conn):
        self.calls.append((host, remote, local))
        if self.fail:
            self.fail -= 1
            raise ConnectError("ssh to h failed: connection reset")
        return None


def test_a_failed_pull_is_retried_and_the_final_one_settles_the_wait():
    clock = [0.0]
    saved: list = []
    pulls = Pulls(fail=2)
    t = SyncTask(target="h", spec="out:/tmp/r", jobs=["1"], every=5)
    s = Syncer([t], None, pull=pulls, save=lambda x: saved.append((x.final, x.last_ok is not None)),
               clock=lambda: clock[0])
    s.after_poll({("h", "1"): "running"})  # fails: tried again after --every
    clock[0] = 1
    s.after_poll({("h", "1"): "running"})
    assert len(pulls.calls) == 1 and not s.settled()
    s.after_poll({("h", "1"): "done"})  # final: fails once, then at the next poll succeeds
    assert not s.settled() and t.final_tries == 1
    s.after_poll({("h", "1"): "done"})
    assert s.settled() and saved == [(True, True)] and pulls.calls[-1] == ("h", "out", "/tmp/r")
    s.after_poll({("h", "1"): "done"})
    assert len(pulls.calls) == 3  # nothing more once final


def test_the_final_pull_gives_up_after_a_few_tries():
    s = Syncer([SyncTask(target="h", spec="a:b", jobs=["1"])], None, pull=Pulls(fail=99))
    for _ in range(FINAL_TRIES + 2):
        s.after_poll({("h", "1"): "done"})
    assert s.settled()


def test_the_record_keeps_sync_backs_per_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    specs = [JobSpec(command="a", sync_back="out:/r"), JobSpec(command="b", sync_back="out:/r"), JobSpec(command="c")]
    groups = sync_groups(specs, [{"id": 4}, {"id": 5}, {"id": 6}], 600.0)
    assert groups == [{"spec": "out:/r", "every": 600.0, "jobs": [4, 5]}]
    lastrun.record("h", [4, 5, 6], sync=groups)
    [e] = lastrun.sync_entries("h")
    assert e == {"spec": "out:/r", "every": 600.0, "jobs": ["4", "5"], "last_ok": None, "final": False}
    lastrun.save_sync("h", "out:/r", last_ok=12.5, final=True)
    assert lastrun.sync_entries("h")[0]["final"] and lastrun.sync_entries("h")[0]["last_ok"] == 12.5
    assert JobSpec(command="x", sync_back="a:b").payload().get("sync_back") is None  # never sent to the host


def test_status_says_when_results_last_came_back():
    from migrate.data.syncback import sync_line

    entry = {"spec": "runs/e1:./res", "jobs": ["4", "5"], "last_ok": None, "final": False}
    assert sync_line(entry, "gpu1") == ("sync-back runs/e1 -> ./res (job(s) 4, 5): not brought back yet "
                                        "(it runs while `migrate wait gpu1` runs)")
    entry.update(last_ok=1000.0, final=True)
    assert sync_line(entry, "gpu1", now=1720.0).endswith("last brought back 12m00s ago, after the jobs ended")


def test_pending_jobs_and_tasks_leave_out_what_came_back_after_its_jobs_ended(tmp_path, monkeypatch):
    from migrate.data.syncback import pending_jobs, pending_tasks

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    lastrun.record("h1", [4, 5], sync=[{"spec": "out:/a", "every": 60.0, "jobs": [4]},
                                       {"spec": "ck:/b", "every": None, "jobs": [4, 5]}])
    lastrun.record("h2", [9], sync=[{"spec": "out:/c", "every": None, "jobs": [9]}])
    lastrun.record("h3", [1])  # no sync-back
    assert pending_jobs() == {"h1": ["4", "5"], "h2": ["9"]}
    lastrun.save_sync("h2", "out:/c", last_ok=1.0, final=True)
    assert pending_jobs() == {"h1": ["4", "5"]} and pending_jobs("h2") == {} and pending_jobs("h9") == {}
    assert [t.spec for t in pending_tasks({"h1": ["5"]})] == ["ck:/b"]
    assert [(t.spec, t.every) for t in pending_tasks({"h1": None}, every=5.0)] == [("out:/a", 5.0), ("ck:/b", 5.0)]


def test_tick_until_ticks_while_running_and_once_more_after_stop_and_survives_read_errors():
    import threading

    from migrate.data.syncback import tick_until

    pulls = Pulls()
    s = Syncer([SyncTask(target="h", spec="a:b", jobs=["1"], every=1e-9)], None, pull=pulls)
    stop = threading.Event()
    reads: list = [ConnectionResetError("dropped"), {("h", "1"): "running"}, {("h", "1"): "done"}]

    def read():
        value = reads.pop(0)
        if isinstance(value, Exception):
            raise value
        if value[("h", "1")] == "running":
            stop.set()  # the follow ends after this tick
        else:
            assert stop.is_set()  # the last read is the one after the follow ended
        return value

    thread = threading.Thread(target=tick_until, args=(s, read, stop, 0.0))
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and reads == []
    assert [c[1] for c in pulls.calls] == ["a", "a"] and s.settled()  # one every-pull, then the final


def test_sync_dry_run_lists_the_pending_and_nothing_pending_is_said(tmp_path, monkeypatch):
    import json

    from tests.conftest import run_cli

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    env = {"MIGRATE_STATE_DIR": str(tmp_path)}
    res = run_cli("sync", "--dry-run", env=env)
    assert res.code == 0 and "nothing to sync back" in res.stderr, res.output
    lastrun.record("nohost.invalid", [4], sync=[{"spec": "runs/x:/tmp/r", "every": 600.0, "jobs": [4]}])
    res = run_cli("sync", "--dry-run", env=env)
    assert res.code == 0, res.output
    assert "would pull nohost.invalid:runs/x -> /tmp/r (job(s) 4) every 10m00s while they run" in res.stderr
    res = run_cli("sync", "nohost.invalid", "--dry-run", "--json", "--every", "1m", env=env)
    [task] = json.loads(res.stdout)
    assert (task["spec"], task["every"], task["final"]) == ("runs/x:/tmp/r", 60.0, False)


def test_a_cluster_run_records_one_sync_back_pulled_from_the_head_and_notify_stays_refused(tmp_path, monkeypatch):
    from migrate.cluster import jobs as cluster_jobs
    from migrate.cluster import state
    from migrate.data.syncback import cluster_sync_groups, pull_host
    from tests.conftest import run_cli
    from tests.unit.test_cluster import record

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record("lab"))
    assert pull_host("lab") == record("lab").head.host and pull_host("gpu7") == "gpu7"
    submitted: list = []

    def run_on_cluster(name, conn, specs, **kw):  # what the Ray job API would have taken: the next ids
        submitted.append(state.next_job_ids(name, len(specs)))
        return 0

    monkeypatch.setattr(cluster_jobs, "run_on_cluster", run_on_cluster)
    env = {"MIGRATE_STATE_DIR": str(tmp_path)}
    res = run_cli("run", "lab", "--sweep", "s=1,2", "--sync-back", "out:/tmp/r", "--every", "1m", "--", "echo {s}",
                  env=env)
    assert res.code == 0, res.output
    assert lastrun.sync_entries("lab") == [{"spec": "out:/tmp/r", "every": 60.0, "jobs": submitted[0],
                                            "last_ok": None, "final": False}]
    res = run_cli("run", "lab", "--notify", "https://ntfy.sh/t", "--", "echo", env=env)
    assert res.code == 2 and "--notify is not supported on a cluster" in res.stderr
    assert "migrate wait lab --notify URL" in res.stderr and len(submitted) == 1
    two = [JobSpec(command="a", sync_back="x:/a"), JobSpec(command="b", sync_back="y:/b")]
    with pytest.raises(UsageError, match="one --sync-back"):
        cluster_sync_groups(two, [], None)
    assert cluster_sync_groups([JobSpec(command="a", sync_back="x:/a")], [], None) == []  # nothing queued
