"""`migrate retry --all / --dry-run` (issue 23.6): the agent's choice of jobs, the CLI's routing on a cluster."""

from __future__ import annotations

import contextlib
import json

import pytest

from migrate.cluster import plan, state
from migrate.cluster import target as ctarget
from migrate.cluster.state import ClusterRecord, Node
from migrate.errors import UsageError
from migrate.jobs import target
from migrate.remote.hosts import ConnectOptions
from tests.agent_helpers import LocalAgent
from tests.conftest import run_cli


@pytest.fixture
def agent(tmp_path):
    a = LocalAgent(tmp_path / "home")
    a.home.mkdir()
    a.fake_gpus(1)
    yield a
    a.cleanup()


def test_retry_args_need_jobs_or_all_but_not_both():
    assert target.retry_args(("3", "x"), False, False) == ["retry", "3", "x"]
    assert target.retry_args((), True, True) == ["retry", "--all", "--dry-run"]
    with pytest.raises(UsageError, match="which jobs"):
        target.check_choice((), False, "hint")
    with pytest.raises(UsageError, match="not both"):
        target.check_choice(("3",), True, "hint")


def test_the_agent_retries_all_unsuccessful_jobs_and_a_dry_run_changes_nothing(agent):
    ok, bad, stopped = agent.submit([{"command": "true", "gpus": 0}, {"command": "exit 3", "gpus": 0},
                                     {"command": "sleep 300", "gpus": 0}])
    agent.wait(lambda js: next(j for j in js if j["id"] == stopped["id"])["state"] == "running")
    agent.call("cancel", str(stopped["id"]), "--grace", "0")
    agent.wait_final([ok["id"], bad["id"], stopped["id"]])
    before = {j["id"]: (j["state"], j["attempt"]) for j in agent.jobs()}

    dry = agent.call("retry", "--all", "--dry-run")
    assert [(r["id"], r["was"]) for r in dry["would_retry"]] == [(bad["id"], "failed"), (stopped["id"], "cancelled")]
    assert {j["id"]: (j["state"], j["attempt"]) for j in agent.jobs()} == before  # nothing changed
    assert agent.call("retry", str(ok["id"]), "--dry-run")["would_retry"][0]["was"] == "done"  # named: allowed

    res = agent.call("retry", "--all")
    assert sorted(r["id"] for r in res["retried"]) == [bad["id"], stopped["id"]]
    assert agent.job(ok["id"])["state"] == "done"  # --all leaves done jobs alone
    (again,) = agent.submit([{"command": "sleep 300", "gpus": 0}])
    agent.wait(lambda js: next(j for j in js if j["id"] == again["id"])["state"] == "running")
    refused = agent.call("retry", str(again["id"]), "--dry-run", ok=False)
    assert not refused["ok"] and "not finished" in refused["error"]
    assert not agent.call("retry", ok=False)["ok"] and not agent.call("retry", "1", "--all", ok=False)["ok"]


def test_the_cli_refuses_no_jobs_and_both_before_connecting():
    res = run_cli("retry", "nowhere.invalid")
    assert res.code == 2 and "which jobs?" in res.stderr
    res = run_cli("retry", "nowhere.invalid", "3", "--all")
    assert res.code == 2 and "not both" in res.stderr


# -- a cluster: through the cluster's own lookup and retry ------------------------------------------------------
def ray_job(jid: str, status: str) -> dict:
    meta = {"migrate_cluster": "lab", "migrate_id": jid, "migrate_name": f"job-{jid}", "migrate_attempt": "1"}
    return {"submission_id": f"lab-{jid}", "status": status, "metadata": meta}


class FakeApi:
    def __init__(self, jobs: list[dict]) -> None:
        self._jobs = jobs

    def jobs(self) -> list[dict]:
        return self._jobs


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                             nodes=[Node("gpu1", "10.0.0.1", ["0"], 8, head=True)]))
    jobs = [ray_job("1", "SUCCEEDED"), ray_job("2", "FAILED"), ray_job("3", "STOPPED"), ray_job("4", "RUNNING")]
    monkeypatch.setattr(ctarget, "job_api", lambda rec, conn: contextlib.nullcontext(FakeApi(jobs)))
    retried: list[tuple[str, ...]] = []
    monkeypatch.setattr(ctarget.cluster_jobs, "retry", lambda name, conn, ids, as_json: retried.append(ids) or 0)
    return retried, {"MIGRATE_STATE_DIR": str(tmp_path)}


def test_on_a_cluster_all_and_dry_run_choose_through_the_cluster_functions(cluster):
    retried, env = cluster
    lab = target.job_target("lab", ConnectOptions())
    assert isinstance(lab, ctarget.ClusterTarget)
    rows = lab.would_retry((), True)
    assert [(r["id"], r["was"]) for r in rows] == [("2", "failed"), ("3", "cancelled")]
    assert lab.would_retry(("job-1",), False)[0]["was"] == "done"
    with pytest.raises(UsageError, match="job 4 is running"):
        lab.would_retry(("4",), False)

    dry = run_cli("retry", "lab", "--all", "--dry-run", "--json", env=env)
    assert dry.code == 0, dry.output
    assert [r["id"] for r in json.loads(dry.stdout)["would_retry"]] == ["2", "3"] and retried == []
    res = run_cli("retry", "lab", "--all", env=env)
    assert res.code == 0, res.output
    assert retried == [("2", "3")]
