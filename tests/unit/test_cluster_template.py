"""`--from-template` on a cluster and `status NAME --state/--last/--all` (issue 14)."""

from __future__ import annotations

import json

import pytest

from migrate.cluster import jobs, state
from migrate.commands.status import parse_states
from migrate.errors import UsageError
from migrate.jobs.render import select_jobs
from tests.unit.test_cluster import record


def rows(*states: str) -> list[dict]:
    return [{"id": str(i), "state": s} for i, s in enumerate(states, start=1)]


def ids(selected: tuple[list[dict], int]) -> tuple[list[str], int]:
    return [j["id"] for j in selected[0]], selected[1]


# -- status --------------------------------------------------------------------------------------------
def test_select_jobs_is_the_single_host_rule():
    jobs_ = rows("done", "failed", "running", "done", "queued", "cancelled")
    assert ids(select_jobs(jobs_, show_all=False, states=None, last=1)) == (["3", "5", "6"], 3)
    assert ids(select_jobs(jobs_, show_all=False, states=None, last=20)) == (["1", "2", "3", "4", "5", "6"], 0)
    assert ids(select_jobs(jobs_, show_all=False, states=None, last=0)) == (["3", "5"], 4)
    assert ids(select_jobs(jobs_, show_all=True, states=None, last=0)) == (["1", "2", "3", "4", "5", "6"], 0)
    assert ids(select_jobs(jobs_, show_all=True, states=["failed", "queued"], last=0)) == (["2", "5"], 0)
    with pytest.raises(UsageError, match="unknown state 'finished'"):
        parse_states("done,finished")


def test_status_on_a_cluster_filters_like_one_host(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    views = [{"id": str(i), "name": f"j{i}", "state": s, "gpus": 0, "nodes": 0, "node": "gpu1", "attempt": 1,
              "retries_left": 0, "command": "x", "runtime_s": 1.0, "exit_code": 0, "reason": "", "submission_id": ""}
             for i, s in enumerate(("done", "failed", "running", "done"), start=1)]
    monkeypatch.setattr(jobs, "cluster_jobs", lambda name, conn: views)
    assert jobs.show_status("lab", None, as_json=True, states=["failed"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in out["jobs"]] == ["2"] and out["counts"] == {"done": 2, "failed": 1, "running": 1}
    assert jobs.show_status("lab", None, as_json=True, last=1) == 0
    out = json.loads(capsys.readouterr().out)
    assert [j["id"] for j in out["jobs"]] == ["3", "4"] and out["hidden_finished"] == 2
    assert jobs.show_status("lab", None, as_json=True, show_all=True, last=1) == 0
    assert len(json.loads(capsys.readouterr().out)["jobs"]) == 4
    assert jobs.show_status("lab", None, as_json=False, last=1) == 0
    shown = capsys.readouterr()
    assert "2 older finished job(s) not shown" in shown.err + shown.out
