"""The job queue: state machine, idempotent submit, reservations, retries, and a multi-process race."""

from __future__ import annotations

import multiprocessing
import os
import random
import stat
import time

import pytest

from migrate.agent import db
from migrate.agent.admission import Policy, plan
from migrate.agent.db import Queue, QueueError, check_transition
from migrate.agent.gpus import GpuDevice, GpuSnapshot


@pytest.fixture
def q(tmp_path):
    queue = Queue(str(tmp_path / "queue.db"))
    yield queue
    queue.close()


def spec(command="true", **kw):
    return {"command": command, "gpus": 1, **kw}


def test_database_is_private_and_in_wal_mode(tmp_path):
    old = os.umask(0o022)
    try:
        queue = Queue(str(tmp_path / "queue.db"))
        queue.submit([spec()])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "queue.db").st_mode) == 0o600
    assert queue.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize("old,new,ok", [
    ("queued", "starting", True), ("queued", "running", False), ("queued", "cancelled", True),
    ("starting", "running", True), ("running", "done", True), ("running", "queued", True),
    ("done", "running", False), ("failed", "queued", True), ("lost", "queued", True), ("cancelled", "done", False),
])
def test_state_machine(old, new, ok):
    if ok:
        check_transition(old, new)
    else:
        with pytest.raises(ValueError):
            check_transition(old, new)


def test_submit_names_and_idempotency_key(q):
    first = q.submit([spec(key="k1", name="a"), spec()])
    assert [j["status"] for j in first] == ["queued", "queued"]
    assert first[1]["name"] == f"job-{first[1]['id']}"
    again = q.submit([spec(key="k1", name="a")])
    assert again[0]["status"] == "existing" and again[0]["id"] == first[0]["id"]
    assert q.counts()["queued"] == 2


def test_reservation_before_launch_and_no_double_booking(q):
    a, b = (j["id"] for j in q.submit([spec(), spec()]))
    assert q.reserve(a, ["GPU-1"], ["1"], "tok-a", "boot")
    assert q.get(a)["state"] == "starting" and q.reservations() == {"GPU-1": a}
    assert not q.reserve(b, ["GPU-1"], ["1"], "tok-b", "boot")  # already reserved
    assert q.get(b)["state"] == "queued"
    assert not q.reserve(a, ["GPU-2"], ["2"], "tok", "boot")  # not queued any more
    q.mark_running(a, 100, 100, 5)
    assert q.finish(a, 0) == "done"
    assert q.reservations() == {}
    assert q.finish(a, 0) is None  # recorded once


def test_failure_retries_then_fails(q):
    (jid,) = (j["id"] for j in q.submit([spec(retries=2)]))
    for attempt in (1, 2):
        q.reserve(jid, ["G"], ["0"], f"t{attempt}", "b")
        assert q.finish(jid, 1) == "queued"
        assert f"retry {attempt} of 2 after exit code 1" in q.get(jid)["reason"]
    q.reserve(jid, ["G"], ["0"], "t3", "b")
    assert q.finish(jid, 1) == "failed"
    job = q.get(jid)
    assert job["attempt"] == 3 and job["exit_code"] == 1


def test_cancel_queued_now_and_active_flagged(q):
    a, b, c = (j["id"] for j in q.submit([spec(), spec(), spec()]))
    q.reserve(b, ["G"], ["0"], "t", "b")
    q.reserve(c, ["H"], ["1"], "t2", "b")
    q.finish(c, 0)
    cancelled, to_signal = q.request_cancel([a, b, c])
    assert [j["id"] for j in cancelled] == [a] and q.get(a)["state"] == "cancelled"
    assert [j["id"] for j in to_signal] == [b]
    assert q.finish(b, 143) == "cancelled"
    assert q.get(c)["state"] == "done"


def test_lost_and_manual_retry(q):
    (jid,) = (j["id"] for j in q.submit([spec(retries=1)]))
    q.reserve(jid, ["G"], ["0"], "t", "b")
    assert q.finish(jid, None, lost=True, reason="reboot") == "lost"  # lost jobs are not retried automatically
    job = q.retry(jid)
    assert job["state"] == "queued" and job["exit_code"] is None and job["gpu_uuids"] == []
    with pytest.raises(QueueError, match="not finished"):
        q.retry(jid)


def test_unreserve_puts_a_launch_that_never_happened_back(q):
    (jid,) = (j["id"] for j in q.submit([spec()]))
    q.reserve(jid, ["G"], ["0"], "t", "b")
    assert q.unreserve(jid, "crash")
    job = q.get(jid)
    assert job["state"] == "queued" and job["attempt"] == 0 and q.reservations() == {}


def test_find_by_id_key_and_name(q):
    ids = [j["id"] for j in q.submit([spec(name="x", key="kx"), spec(name="dup"), spec(name="dup")])]
    assert q.find(str(ids[0]))["id"] == ids[0]
    assert q.find("kx")["id"] == ids[0]
    assert q.find("x")["id"] == ids[0]
    with pytest.raises(QueueError, match="ambiguous"):
        q.find("dup")
    with pytest.raises(QueueError, match="no job"):
        q.find("nope")


def test_an_id_sqlite_cannot_hold_is_a_clear_error_and_other_digits_are_names(q):
    """Issue 20.6: `logs HOST <38 digits>` was an OverflowError from SQLite (cancel/retry/exec: internal error)."""
    (job,) = q.submit([spec(name="\u0663")])  # Arabic-Indic three: a name, not job 3
    with pytest.raises(QueueError, match="job id 1{38} is out of range"):
        q.find("1" * 38)
    with pytest.raises(QueueError, match="no job"):
        q.find(str(db.MAX_JOB_ID))
    assert q.find("\u0663")["id"] == job["id"]


def test_recent_hides_old_finished_jobs(q):
    ids = [j["id"] for j in q.submit([spec() for _ in range(30)])]
    for jid in ids[:25]:
        q.reserve(jid, [f"G{jid}"], ["0"], "t", "b")
        q.finish(jid, 0)
    jobs, hidden = q.recent(5)
    assert hidden == 20 and len(jobs) == 10
    assert [j["id"] for j in jobs if j["state"] == "done"] == ids[20:25]


def test_dispatch_order(q):
    ids = [j["id"] for j in q.submit([spec(priority=0), spec(priority=5), spec(priority=5)])]
    assert [j["id"] for j in q.queued()] == [ids[1], ids[2], ids[0]]


# -- race: several dispatchers on one queue (as if the lock were broken) ------------------------------
GPUS = [f"GPU-race-{i}" for i in range(4)]


def _admitter(path: str, seed: int) -> None:
    rnd = random.Random(seed)
    queue = Queue(path)
    snapshot = GpuSnapshot(backend="race", devices=[GpuDevice(index=str(i), uuid=u, memory_total_mib=1000,
                                                              memory_used_mib=0, utilization=0)
                                                    for i, u in enumerate(GPUS)])
    deadline = time.time() + 30
    while time.time() < deadline:
        queued = queue.queued()
        active = queue.active()
        if not queued and not active:
            return
        admissions, _ = plan(queued, snapshot, None, queue.reservations(), 0, Policy(), time.time())
        for adm in admissions:
            if queue.reserve(adm.job["id"], [d.uuid for d in adm.devices], ["0"], f"t{seed}", "b"):
                queue.mark_running(adm.job["id"], os.getpid(), os.getpid(), None)
                time.sleep(rnd.uniform(0.005, 0.03))
                queue.finish(adm.job["id"], 0)
        time.sleep(rnd.uniform(0, 0.005))


def test_twenty_jobs_four_gpus_four_racing_dispatchers_zero_double_bookings(tmp_path):
    path = str(tmp_path / "queue.db")
    parent = Queue(path)
    parent.submit([spec() for _ in range(20)])
    parent.close()  # SQLite must not have this file open across fork() (the children get "disk I/O error")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_admitter, args=(path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0], "a racing dispatcher failed (its error is above)"
    jobs = Queue(path).jobs()
    assert all(j["state"] == db.DONE for j in jobs), [j["state"] for j in jobs]
    assert all(j["attempt"] == 1 for j in jobs)  # nobody ran twice
    by_gpu: dict[str, list] = {}
    for j in jobs:
        (uuid,) = j["gpu_uuids"]
        by_gpu.setdefault(uuid, []).append((j["started_at"], j["ended_at"]))
    for spans in by_gpu.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, "two jobs held the same GPU at once"


# -- end times after a crash or reboot (issue 12.6) ------------------------------------------------
def _running_job(tmp_path, started_ago: float, boot: str = "boot/1"):
    from migrate.agent.layout import Layout

    layout = Layout(str(tmp_path / "home")).ensure()
    q = Queue(layout.db)
    (job,) = q.submit([{"command": "sleep 12", "gpus": 0}])
    q.reserve(job["id"], [], [], "tok", boot, now=time.time() - started_ago)
    q.mark_running(job["id"], 999999, 999999, 1)
    os.makedirs(layout.job_dir(job["id"]), exist_ok=True)
    return layout, q, q.get(job["id"])


def test_an_exit_recorded_late_keeps_the_real_end_time(tmp_path):
    """The dispatcher was dead for a minute: the exit file's mtime, not the reconciliation, is the end."""
    from migrate.agent.recovery import check_job

    layout, q, job = _running_job(tmp_path, started_ago=69)
    exit_file = layout.job_exit(job["id"])
    with open(exit_file, "w") as fh:
        fh.write("0\n")
    os.utime(exit_file, (time.time() - 57, time.time() - 57))  # it ended 12 s after its start
    assert check_job(q, layout, job, lambda msg: None) == "done"
    done = q.get(job["id"])
    assert 11.5 < done["ended_at"] - done["started_at"] < 12.5
    with open(layout.job_log(job["id"])) as fh:
        assert f"[migrate] job {job['id']} done: exit code 0 after 12s\n" in fh.read()


def test_a_job_lost_in_a_reboot_ended_before_the_boot(tmp_path, monkeypatch):
    from migrate.agent import procs
    from migrate.agent.main import _job_view
    from migrate.agent.recovery import clock, recover
    from migrate.jobs.render import runtime_cell

    layout, q, job = _running_job(tmp_path, started_ago=600, boot="old-boot/1")
    q.set_meta("boot_id", "old-boot/1")
    booted = job["started_at"] + 30  # the host went down within 30 s of the start, and came back
    monkeypatch.setattr(procs, "boot_time", lambda: booted)
    recover(q, layout, lambda msg: None)
    lost = q.get(job["id"])
    assert lost["state"] == "lost" and lost["ended_at"] == pytest.approx(booted)
    with open(layout.job_log(job["id"])) as fh:
        line = fh.read().strip()
    assert line == (f"[migrate] job {job['id']} lost: no exit code, ended before {clock(booted)} (at most 30s "
                    "after it started) (the host rebooted while it ran)")
    view = _job_view(lost, time.time())
    assert view["runtime_at_most"] and runtime_cell(view) == "≤30s"


def test_processes_found_gone_ended_before_now(tmp_path):
    from migrate.agent.recovery import check_job

    layout, q, job = _running_job(tmp_path, started_ago=5)
    assert check_job(q, layout, job, lambda msg: None) == "lost"
    with open(layout.job_log(job["id"])) as fh:
        assert "lost: no exit code, ended before " in fh.read()


def test_docker_finished_at_is_read():
    from migrate.agent.recovery import docker_time

    assert docker_time("2026-11-30T08:40:00.5Z") == pytest.approx(1796028000.5)
    assert docker_time("0001-01-01T00:00:00Z") is None and docker_time("garbage") is None
