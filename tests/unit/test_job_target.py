"""One job target (issue 23.1): host or cluster decided once, one Job model, one JobState."""

from __future__ import annotations

import contextlib
import json

import pytest

from migrate.agent import db
from migrate.cluster import plan, state
from migrate.cluster import target as ctarget
from migrate.cluster.state import ClusterRecord, Node
from migrate.errors import UsageError
from migrate.jobs import target
from migrate.jobs.model import RAY_STATES, RETRY_ALL, Job, JobState, is_terminal
from migrate.jobs.shell import SessionRequest
from migrate.remote.hosts import ConnectOptions
from tests.conftest import run_cli


def test_the_states_are_the_agents_and_active_means_one_thing():
    assert [s.value for s in JobState] == list(db.STATES)
    assert {s.value for s in JobState if s.is_terminal} == set(db.FINAL)
    assert {s.value for s in JobState if s.is_active} == set(db.ACTIVE) == {"starting", "running"}
    assert not JobState.QUEUED.is_active and not JobState.QUEUED.is_terminal
    assert [s.value for s in RETRY_ALL] == ["failed", "cancelled", "lost"]
    assert is_terminal("lost") and not is_terminal("running") and not is_terminal("?") and not is_terminal(None)


def test_rays_statuses_map_onto_the_same_states():
    assert {k: v.value for k, v in RAY_STATES.items()} == {
        "PENDING": "queued", "RUNNING": "running", "SUCCEEDED": "done", "FAILED": "failed", "STOPPED": "cancelled"}
    assert JobState.from_ray("RUNNING").is_active and JobState.from_ray("STOPPED").is_terminal


def test_a_job_from_the_agent_and_from_the_cluster_api():
    host = Job.from_agent({"id": 3, "name": "a", "state": "failed", "exit_code": 2, "runtime_s": 4.0,
                           "reason": "exit 2", "attempt": 2})
    assert (host.id, host.state, host.exit_code, host.attempt) == ("3", JobState.FAILED, 2, 2)
    ray = Job.from_ray({"status": "FAILED", "driver_exit_code": 1, "message": "boom",
                        "metadata": {"migrate_id": "7", "migrate_name": "b", "migrate_attempt": "3"}})
    assert (ray.id, ray.name, ray.state, ray.exit_code, ray.reason, ray.attempt) == ("7", "b", JobState.FAILED, 1,
                                                                                    "boom", 3)
    assert Job.from_agent({"id": 1, "state": "weird"}).state_name == "?"


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                             nodes=[Node("gpu1", "10.0.0.1", ["0"], 8, head=True)]))
    return {"MIGRATE_STATE_DIR": str(tmp_path)}


def test_the_name_decides_once(lab):
    assert isinstance(target.job_target("lab", ConnectOptions()), ctarget.ClusterTarget)
    assert isinstance(target.job_target("gpu1", ConnectOptions()), target.HostTarget)
    for t in (target.job_target("lab", ConnectOptions()), target.job_target("gpu1", ConnectOptions())):
        assert isinstance(t, target.JobTarget)  # every method of the interface, on both


def test_what_a_target_cannot_do_is_one_usage_line_before_connecting(lab):
    host, cluster = target.job_target("gpu1", ConnectOptions()), target.job_target("lab", ConnectOptions())
    with pytest.raises(UsageError, match="--nodes runs one job"):
        host.check_submit(nodes=2, notify=False, compose=False)
    with pytest.raises(UsageError, match="--compose is not supported on a cluster"):
        cluster.check_submit(nodes=0, notify=False, compose=True)
    res = run_cli("run", "lab", "-n", "--cpu-slots", "2", "--enable-linger", "--", "x", env=lab)
    assert res.code == 2 and "--cpu-slots, --enable-linger: a setting of one host's dispatcher" in res.stderr
    with pytest.raises(UsageError, match="--rank is for a job on a cluster"):
        host.enter(SessionRequest(host="gpu1", job="3"), rank=1, dry_run=True)
    with pytest.raises(UsageError, match="lab is a cluster: give a JOB"):
        cluster.enter(SessionRequest(host="lab"), rank=None, dry_run=True)
    for verb in ("cancel", "retry"):  # the same choice rule on both targets
        for name in ("gpu1", "lab"):
            res = run_cli(verb, name, env=lab)
            assert res.code == 2 and "which jobs?" in res.stderr, (verb, name, res.output)


class FakeApi:
    def __init__(self, jobs: list[dict]) -> None:
        self._jobs = jobs
        self.stopped: list[tuple[str, float | None]] = []

    def jobs(self) -> list[dict]:
        return self._jobs

    def stop(self, sub: str, grace: float | None) -> None:
        self.stopped.append((sub, grace))


def test_cancel_on_a_cluster_takes_grace_and_dry_run_as_on_a_host(lab, monkeypatch):
    from migrate.cluster import jobs as cluster_jobs

    meta = {"migrate_cluster": "lab", "migrate_id": "1", "migrate_name": "a", "migrate_attempt": "1"}
    api = FakeApi([{"submission_id": "lab-1", "status": "RUNNING", "metadata": meta}])
    monkeypatch.setattr(cluster_jobs, "job_api", lambda rec, conn: contextlib.nullcontext(api))
    dry = run_cli("cancel", "lab", "1", "--dry-run", "--json", env=lab)
    assert dry.code == 0 and json.loads(dry.stdout)["would_cancel"][0]["outcome"] == "would stop"
    assert api.stopped == []
    res = run_cli("cancel", "lab", "--all", "--grace", "30", env=lab)
    assert res.code == 0 and api.stopped == [("lab-1", 30.0)], res.output


def test_status_of_several_targets_asks_each_target_for_its_answer(lab, monkeypatch):
    from migrate.cluster import jobs as cluster_jobs
    from migrate.jobs import multi

    views = [{"id": str(i), "name": f"j{i}", "state": "done"} for i in range(1, 5)] + \
        [{"id": "5", "name": "j5", "state": "running"}]
    monkeypatch.setattr(cluster_jobs, "cluster_jobs", lambda name, conn: views)
    [out] = multi.read_hosts(["lab"], ConnectOptions(), last=2)
    assert out.ok and out.value["cluster"] and out.value["counts"] == {"done": 4, "running": 1}
    assert [j["id"] for j in out.value["jobs"]] == ["3", "4", "5"] and out.value["hidden_finished"] == 2
