"""`migrate wait`: job selection, the polling loop (fake readers, fake clock), exit codes, the last-run record."""

from __future__ import annotations

import os
import stat

import pytest
from rich.console import Console

from migrate.commands.wait import wait_targets
from migrate.errors import ConnectError, MigrateError, UsageError
from migrate.jobs import lastrun
from migrate.jobs import wait as w
from migrate.units import parse_duration


def job(i: int, state: str, code: int | None = None, name: str = "", key: str | None = None) -> dict:
    return {"id": i, "name": name or f"job-{i}", "state": state, "exit_code": code, "runtime_s": 1.0,
            "reason": "", "key": key}


class Reader:
    """A target whose job list follows a script: one list per poll (the last one repeats)."""

    def __init__(self, name: str, polls: list, tails: dict | None = None) -> None:
        self.name = name
        self.polls = polls
        self.calls = 0
        self.tails = tails or {}
        self.closed = False

    def jobs(self) -> list[dict]:
        step = self.polls[min(self.calls, len(self.polls) - 1)]
        self.calls += 1
        if isinstance(step, Exception):
            raise step
        return step

    def tail(self, job_id: str, lines: int) -> str:
        return self.tails.get(job_id, "")

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


def run(readers, chosen, timeout=None, interval=2.0, **kw):
    clock = Clock()
    finished: list = []
    res = w.wait_for_jobs(readers, chosen, timeout=timeout, interval=interval, clock=clock, sleep=clock.sleep,
                          on_finished=finished.append, **kw)
    return res, finished, clock


def test_all_done_exits_0_and_each_job_is_announced_once():
    r = Reader("h1", [[job(1, "running"), job(2, "queued"), job(9, "running")],
                      [job(1, "done", 0), job(2, "running"), job(9, "running")],
                      [job(1, "done", 0), job(2, "done", 0), job(9, "running")]])
    res, finished, clock = run([r], {"h1": ["1", "2"]})
    assert w.wait_exit_code(res) == 0 and not res.timed_out
    assert [f.id for f in finished] == ["1", "2"]
    assert r.calls == 3 and clock.sleeps == [2.0, 2.0]  # one read per poll, no extra sleeps
    assert [row.id for row in res.rows] == ["1", "2"]  # job 9 was not asked for


def test_one_failed_exits_1_with_its_log_tail():
    r = Reader("h1", [[job(1, "done", 0), job(2, "failed", 3)]], tails={"2": "Traceback\nValueError: nan\n"})
    res, _, _ = run([r], {"h1": ["1", "2"]})
    assert w.wait_exit_code(res) == 1
    assert [f.id for f in res.failed] == ["2"]
    report = w.failure_report(res)
    assert report[0].startswith("h1 job 2 (job-2) failed, exit 3") and report[-1] == "    ValueError: nan"


@pytest.mark.parametrize("state", ["cancelled", "lost"])
def test_cancelled_and_lost_jobs_are_not_success(state):
    res, _, _ = run([Reader("h", [[job(1, state)]])], {"h": ["1"]})
    assert w.wait_exit_code(res) == 1


def test_done_with_nonzero_exit_is_not_success():
    assert not w.JobRow("h", "1", state="done", exit_code=2).ok


def test_timeout_exits_124_and_the_last_sleep_is_cut_to_the_deadline():
    r = Reader("h1", [[job(1, "running")]])
    res, _, clock = run([r], {"h1": ["1"]}, timeout=5, interval=2)
    assert res.timed_out and w.wait_exit_code(res) == w.EXIT_TIMEOUT == 124
    assert clock.sleeps == [2, 2, 1] and [u.id for u in res.unfinished] == ["1"]


def test_several_targets_are_polled_together_until_all_are_final():
    a = Reader("a", [[job(1, "running")], [job(1, "done", 0)]])
    b = Reader("b", [[job(5, "queued")], [job(5, "running")], [job(5, "done", 0)]])
    res, finished, _ = run([a, b], {"a": ["1"], "b": ["5"]})
    assert w.wait_exit_code(res) == 0 and a.calls == b.calls == 3
    assert {(f.target, f.id) for f in finished} == {("a", "1"), ("b", "5")}


def test_a_dropped_host_is_retried_and_shown_not_fatal():
    a = Reader("a", [[job(1, "running")], ConnectError("ssh to a failed: timeout"), [job(1, "done", 0)]])
    seen: list = []
    res, _, _ = run([a], {"a": ["1"]}, on_poll=lambda rows, errors, t: seen.append(dict(errors)))
    assert w.wait_exit_code(res) == 0
    assert seen[1] and "timeout" in seen[1]["a"] and seen[2] == {}


def test_an_error_at_the_first_poll_is_fatal():
    with pytest.raises(MigrateError, match="cannot read the jobs on a"):
        run([Reader("a", [ConnectError("no route")])], {"a": ["1"]})


def test_jobs_are_picked_by_id_name_or_key():
    jobs = [job(1, "done", name="base"), job(2, "running", key="k2"), job(3, "queued", name="dup"),
            job(4, "queued", name="dup")]
    assert w.pick_jobs(jobs, ["2", "base", "k2"], "h") == ["2", "1"]
    with pytest.raises(UsageError, match="no job 'nope' on h"):
        w.pick_jobs(jobs, ["nope"], "h")
    with pytest.raises(UsageError, match="several jobs"):
        w.pick_jobs(jobs, ["dup"], "h")
    assert w.active_ids(jobs) == ["2", "3", "4"]


def test_a_job_gone_from_the_queue_counts_as_lost():
    res, _, _ = run([Reader("h", [[job(1, "running"), job(2, "running")], [job(1, "done", 0)]])],
                    {"h": ["1", "2"]})
    assert w.wait_exit_code(res) == 1 and res.failed[0].id == "2" and "not in the queue" in res.failed[0].reason


def test_wait_all_takes_the_unfinished_jobs_of_the_first_poll():
    r = Reader("h", [[job(1, "done", 0), job(2, "running")], [job(1, "done", 0), job(2, "done", 0),
                                                               job(3, "queued")]])
    res, _, _ = run([r], {"h": None})
    assert [row.id for row in res.rows] == ["2"]


def test_lines_and_summary():
    row = w.JobRow("gpu1", "3", name="train[lr=0.1]", state="failed", exit_code=2, runtime_s=75, reason="oom")
    assert w.finished_line(row) == "gpu1 job 3 (train[lr=0.1]) failed, exit 2, 1m15s: oom"
    rows = [row, w.JobRow("gpu1", "4", state="done", exit_code=0), w.JobRow("gpu1", "5", state="running")]
    assert w.summary_text(rows) == "2 of 3 finished: 1 done, 1 failed; 1 running"


def test_live_table_fits_80_columns_and_keeps_brackets():
    rows = [w.JobRow("a-very-long-host-name", str(i), name="x" * 60 + "[lr=1]", state="running", runtime_s=9)
            for i in range(50)]
    console = Console(width=80, record=True)
    console.print(w.live_table(rows, {"h9": "timed out"}, 12.0, max_rows=10))
    text = console.export_text()
    assert max(len(ln) for ln in text.splitlines()) <= 80
    assert "and 40 more" in text and "unreachable" in text
    console = Console(width=80, record=True)
    console.print(w.live_table([w.JobRow("h", "1", name="job[s=1]", state="done")], {}, 1.0, max_rows=5))
    assert "job[s=1]" in console.export_text()  # a name is text, not rich markup


def test_wait_targets_from_the_last_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path / "state"))
    with pytest.raises(UsageError, match="no `migrate run gpu1` recorded"):
        wait_targets("gpu1", (), (), False)
    lastrun.record("gpu1", [4, 5])
    lastrun.record("gpu2", [1])
    lastrun.record("gpu3", [])  # nothing queued: nothing recorded
    assert wait_targets("gpu1", ("gpu2",), (), False) == {"gpu1": ["4", "5"], "gpu2": ["1"]}
    assert wait_targets(None, ("gpu1",), ("7",), False) == {"gpu1": ["7"]}
    assert wait_targets("gpu9", (), (), True) == {"gpu9": None}
    with pytest.raises(UsageError, match="one target"):
        wait_targets("gpu1", ("gpu2",), ("3",), False)
    with pytest.raises(UsageError, match="name a host"):
        wait_targets(None, (), (), False)
    path = lastrun.record_path()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


def test_the_record_keeps_the_newest_targets(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(lastrun, "MAX_TARGETS", 3)
    for i in range(5):
        lastrun.record(f"h{i}", [i], now=float(i))
    assert sorted(lastrun.load_all()) == ["h2", "h3", "h4"]


@pytest.mark.parametrize("text,seconds", [("90", 90), ("30s", 30), ("10m", 600), ("1.5h", 5400),
                                          ("1h30m", 5400), ("1d", 86400), (45, 45)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "0", "-5", "m"])
def test_bad_durations(text):
    with pytest.raises(UsageError):
        parse_duration(text, what="--timeout")


def test_a_cluster_is_read_with_cluster_jobs_and_its_log_through_the_job_api(monkeypatch):
    from migrate.cluster import jobs as cluster_jobs

    views = [{"id": "1", "name": "a", "state": "done", "exit_code": 0, "runtime_s": 2.0, "reason": "",
              "submission_id": "c-1"}, {"id": "2", "name": "b", "state": "failed", "exit_code": 1,
                                        "runtime_s": 1.0, "reason": "x", "submission_id": "c-2.2"}]
    calls: list = []
    monkeypatch.setattr(cluster_jobs, "cluster_jobs", lambda name, conn: calls.append(name) or views)
    reader = w.ClusterReader("c", None)
    res, _, _ = run([reader], {"c": ["1", "2"]}, tail_lines=0)
    assert calls == ["c"] and w.wait_exit_code(res) == 1 and reader.submissions == {"1": "c-1", "2": "c-2.2"}
