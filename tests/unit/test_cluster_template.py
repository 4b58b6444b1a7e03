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


# -- --from-template -------------------------------------------------------------------------------------
def make_template(tmp_path):
    src = tmp_path / "exp"
    (src / "cfg").mkdir(parents=True)
    (src / "train.py").write_text("print('hi')\n")
    (src / "cfg" / "a.yaml").write_text("lr: 1\n")
    (src / "__pycache__").mkdir()
    (src / "__pycache__" / "x.pyc").write_text("")
    (src / "big.ckpt").write_text("0" * 10)
    return src


def test_template_plan_copies_to_every_host_and_each_job_runs_in_its_copy(tmp_path, monkeypatch):
    from migrate.cluster import template as ctpl
    from migrate.jobs import template as tpl
    from migrate.jobs.submit import build_specs

    rec = record()
    plan = tpl.plan_template(str(make_template(tmp_path)), ["a", "b"], None, ["*.ckpt"])
    assert ctpl.copies(rec, plan) == [{"experiment": "a", "dest": "~/.migrate/runs/exp/a", "hosts": ["gpu1", "gpu2"]},
                                      {"experiment": "b", "dest": "~/.migrate/runs/exp/b", "hosts": ["gpu1", "gpu2"]}]
    assert sorted(plan.ignored) == ["__pycache__", "big.ckpt"] and "big.ckpt" not in plan.files
    specs = build_specs(("python train.py --cfg {experiment}",), jobs_file=None, sweeps=(), name=None, cwd=None,
                        env={}, gpus=1, min_free_mem=None, allow_shared=False, gpu_pool=None, priority=0, retries=0,
                        image=None, mounts=(), shm_size=None, ports=(), key=None, experiments=["a", "b"])
    ctpl.point_specs(plan, specs)
    assert [(s.cwd, s.command) for s in specs] == [("~/.migrate/runs/exp/a", "python train.py --cfg a"),
                                                   ("~/.migrate/runs/exp/b", "python train.py --cfg b")]
    body = jobs.payload(rec, specs[1], "2")
    assert "--cwd '~/.migrate/runs/exp/b'" in body["entrypoint"]  # the wrapper expands ~ on the node
    assert body["runtime_env"]["env_vars"]["MIGRATE_EXPERIMENT"] == "b"
    with pytest.raises(UsageError, match="under your home on every host"):
        ctpl.check_dest(tpl.plan_template(str(tmp_path / "exp"), ["a"], "/srv/runs", []))


def test_template_sync_copies_as_on_one_host_to_every_host_and_never_overwrites(tmp_path, monkeypatch, capsys):
    """One way --from-template copies, on hosts and clusters alike: one archive unpacked into new directories
    only; an experiment directory on any host stops it before anything is copied anywhere."""
    from migrate.cluster import template as ctpl
    from migrate.jobs import submit
    from migrate.jobs import template as tpl
    from tests.fakehost import FakeHost, FakeTarget

    uploads = []
    monkeypatch.setattr(submit, "_upload_template", lambda remote, plan, data: uploads.append((remote.name, data)))
    hosts = {h: FakeHost(target=FakeTarget(alias=h)) for h in ("gpu1", "gpu2")}
    src = make_template(tmp_path)
    plan = tpl.plan_template(str(src), ["a", "b"], "~/runs", [])
    ctpl.sync(record(), plan, None, dry_run=True, connector=lambda h: pytest.fail("connected on a dry run"))
    assert "new directories only" in capsys.readouterr().err
    ctpl.sync(record(), plan, None, dry_run=False, connector=hosts.get)
    assert [u[0] for u in uploads] == ["alice@gpu1", "alice@gpu2"] and uploads[0][1] == uploads[1][1] == tpl.pack(plan)
    assert all(tpl.existing_check_command(plan) in h.commands() for h in hosts.values())
    uploads.clear()
    hosts["gpu2"].reply("for d in", "/home/u/runs/b\n")
    with pytest.raises(UsageError, match="experiment directory /home/u/runs/b already exists on alice@gpu2"):
        ctpl.sync(record(), plan, None, dry_run=False, connector=hosts.get)
    assert uploads == []


def test_run_from_template_on_a_cluster_dry_run_says_what_goes_where(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    env = {"MIGRATE_STATE_DIR": str(tmp_path / "state")}
    monkeypatch.setenv("MIGRATE_STATE_DIR", env["MIGRATE_STATE_DIR"])
    state.save(record())
    src = make_template(tmp_path)
    res = run_cli("run", "lab", "--dry-run", "--json", "--from-template", str(src), "--experiments", "a,b",
                  "--ignore", "*.ckpt", "--", "python train.py --cfg {experiment}", env=env)
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert [c["dest"] for c in data["template"]["copies"]] == ["~/.migrate/runs/exp/a", "~/.migrate/runs/exp/b"]
    assert data["template"]["files"] == 2 and data["template"]["copies"][0]["hosts"] == ["gpu1", "gpu2"]
    assert "--cfg b" in data["jobs"][1]["entrypoint"] and "exp/b'" in data["jobs"][1]["entrypoint"]
    text = run_cli("run", "lab", "--dry-run", "--from-template", str(src), "--experiments", "a,b", "--",
                   "python train.py", env=env)
    assert text.code == 0 and "would copy" in text.output and "gpu1, gpu2" in text.output
    refused = run_cli("run", "lab", "--dry-run", "--from-template", str(src), "--experiments", "a", "--image",
                      "a:1", "--", "x", env=env)
    assert refused.code == 2 and "--from-template with --image" in refused.stderr
    gang = run_cli("run", "lab", "--dry-run", "--json", "--from-template", str(src), "--experiments", "a",
                   "--nodes", "2", "--gpus-per-node", "1", "--", "torchrun train.py", env=env)
    assert gang.code == 0, gang.output
    (job,) = json.loads(gang.stdout)["jobs"]
    assert "migrate-ray-gang.py" in job["entrypoint"] and "--cwd '~/.migrate/runs/exp/a'" in job["entrypoint"]
    assert job["runtime_env"]["env_vars"]["MIGRATE_EXPERIMENT"] == "a"   # every rank runs in its host's copy
    two = run_cli("run", "lab", "--dry-run", "--from-template", str(src), "--experiments", "a,b", "--nodes", "2",
                  "--", "x", env=env)
    assert two.code == 2 and "--nodes runs one job" in two.stderr


def test_a_host_the_template_cannot_reach_stops_before_anything_is_submitted(tmp_path, monkeypatch):
    from migrate.cluster import template as ctpl
    from migrate.errors import MigrateError
    from migrate.jobs import template as tpl
    from migrate.jobs.spec import JobSpec
    from tests.fakehost import FakeHost, FakeTarget

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path / "state"))
    state.save(record())

    def connector(host):
        if host == "gpu2":
            raise MigrateError("cannot connect to gpu2")
        return FakeHost(target=FakeTarget(alias=host))

    monkeypatch.setattr(ctpl, "connect", lambda host, conn: connector(host))
    monkeypatch.setattr(jobs, "job_api", lambda *a, **k: pytest.fail("submitted although a copy failed"))
    plan = tpl.plan_template(str(make_template(tmp_path)), ["a"], None, [])
    spec = JobSpec(command="x", env={"MIGRATE_EXPERIMENT": "a"})
    with pytest.raises(MigrateError, match="could not copy the template to gpu2: cannot connect to gpu2"):
        jobs.run_on_cluster("lab", None, [spec], dry_run=False, as_json=True, follow=False, template=plan)
    assert ctpl.copies(record(), plan)[0]["hosts"] == ["gpu1", "gpu2"]
