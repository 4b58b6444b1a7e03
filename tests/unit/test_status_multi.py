"""`status -H ...`: the merged table and JSON, and the exit code (pure functions over host outcomes)."""

from __future__ import annotations

from migrate.jobs import multi
from migrate.remote.parallel import HostOutcome


def host_data(host: str, *states: str) -> dict:
    jobs = [{"id": i + 1, "name": f"j{i + 1}", "state": s, "gpus": 0, "priority": 0, "runtime_s": 3.0,
             "exit_code": 0 if s == "done" else None, "reason": "", "command": "true", "attempt": 1}
            for i, s in enumerate(states)]
    counts: dict = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    return {"host": f"alice@{host}", "dispatcher": {"running": True}, "counts": counts, "jobs": jobs,
            "hidden_finished": 0}


OUTCOMES = [HostOutcome("gpu1", host_data("gpu1", "done", "running")),
            HostOutcome("gpu2", host_data("gpu2")),
            HostOutcome("gpu3", error="ssh to gpu3 failed: timed out (hint: is it up?)")]


def test_one_table_with_a_host_column_and_one_line_per_unreachable_host():
    rows = multi.multi_rows(OUTCOMES)
    assert len(multi.MULTI_COLUMNS) == len(rows[0])
    assert [str(r[0]) for r in rows] == ["gpu1", "gpu1", "gpu2", "gpu3"]
    assert str(rows[2][3]) == "no jobs"
    assert str(rows[3][3]) == "unreachable" and str(rows[3][-1]) == "ssh to gpu3 failed: timed out"


def test_json_merges_hosts_counts_and_jobs():
    data = multi.multi_json(OUTCOMES)
    assert [h["host"] for h in data["hosts"]] == ["gpu1", "gpu2", "gpu3"]
    assert data["hosts"][0]["display"] == "alice@gpu1" and data["hosts"][2] == {
        "host": "gpu3", "ok": False, "error": "ssh to gpu3 failed: timed out (hint: is it up?)"}
    assert data["counts"] == {"done": 1, "running": 1} and data["unreachable"] == ["gpu3"]
    assert [(j["host"], j["id"]) for j in data["jobs"]] == [("gpu1", 1), ("gpu1", 2)]


def test_exit_code_is_0_when_at_least_one_host_answered():
    assert multi.multi_exit_code(OUTCOMES) == 0
    assert multi.multi_exit_code([OUTCOMES[2], HostOutcome("gpu4", error="down")]) == 1
