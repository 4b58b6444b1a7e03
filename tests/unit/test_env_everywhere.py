"""Issue 21's remaining pieces: `run CLUSTER --env NAME`, `shell/exec HOST --env NAME`, and the
user-level mirror for `cluster up`'s Ray (pure builders, the CLI in-process, the wrapper run here)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from migrate.cluster import install, jobs, plan, state
from migrate.cluster.state import ClusterRecord, Node
from migrate.env import known
from migrate.env import plan as env_plan
from migrate.env import push as env_push
from migrate.errors import MigrateError, UsageError
from migrate.jobs.spec import JobSpec
from tests.conftest import run_cli

WRAPPER = str(Path(jobs.__file__).parent / "shipped" / "job_wrapper.py")


def record(name: str = "lab") -> ClusterRecord:
    return ClusterRecord(name=name, ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                         nodes=[Node("gpu1", "10.0.0.1", ["0"], 8, head=True), Node("gpu2", "10.0.0.2", ["0"], 8)])


def fake_env(home: Path, name: str, conda: bool = False) -> Path:
    """~/.migrate/envs/NAME laid out as push-env leaves it, with a `python` that says who it is."""
    prefix = home / ".migrate" / "envs" / name
    (prefix / "bin").mkdir(parents=True)
    if conda:
        (prefix / "conda-meta").mkdir()
    py = prefix / "bin" / "python"
    py.write_text(f"#!/bin/sh\necho python-of-{name}\n")
    py.chmod(0o755)
    return prefix


# -- run CLUSTER --env NAME ----------------------------------------------------------------------------
def test_cluster_job_carries_the_env_name_to_the_wrapper():
    body = jobs.payload(record(), JobSpec(command="python t.py", python_env="torch"), "3")
    assert body["runtime_env"]["env_vars"]["MIGRATE_ENV"] == "torch"
    plain = jobs.payload(record(), JobSpec(command="x"), "4")["runtime_env"]["env_vars"]
    assert "MIGRATE_ENV" not in plain


def test_run_cluster_env_needs_a_source_pushed_from_here(tmp_path, monkeypatch):
    env = {"MIGRATE_STATE_DIR": str(tmp_path)}
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    res = run_cli("run", "lab", "--dry-run", "--env", "torch", "--", "python t.py", env=env)
    assert res.code == 2, res.output
    assert "environment torch was never pushed from this machine" in res.stderr
    assert "migrate push-env lab SOURCE --name torch" in res.stderr
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    known.remember("torch", env_plan_source(req), "python3.11")
    res = run_cli("run", "lab", "--dry-run", "--json", "--env", "torch", "--", "python t.py", env=env)
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert data["envs_to_push"] == ["torch"]
    assert data["jobs"][0]["runtime_env"]["env_vars"]["MIGRATE_ENV"] == "torch"
    req.unlink()
    gone = run_cli("run", "lab", "--dry-run", "--env", "torch", "--", "python t.py", env=env)
    assert gone.code == 2 and "which is gone" in gone.stderr


def env_plan_source(path: Path):
    from migrate.env.source import read_source

    return read_source(str(path))


def test_ensure_on_hosts_pushes_the_remembered_source_to_every_node(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    known.remember("torch", env_plan_source(req), "python3.11")
    assert os.stat(known.record_path()).st_mode & 0o777 == 0o600
    calls = []

    def fake_push(hosts, src, opts, conn):
        calls.append((list(hosts), src.path, opts.name, opts.python, opts.dry_run))
        return [env_push.EnvResult(host=h, name=opts.name, status="unchanged") for h in hosts]

    monkeypatch.setattr(env_push, "push_env", fake_push)
    env_push.ensure_on_hosts(["gpu1", "gpu2"], ["torch"], None, where="lab", dry_run=False)
    assert calls == [(["gpu1", "gpu2"], req.resolve(), "torch", "python3.11", False)]
    calls.clear()
    assert env_push.ensure_on_hosts(["gpu1", "gpu2"], ["torch"], None, where="lab", dry_run=True) == []
    assert calls == []  # a dry run connects to nothing

    def failing(hosts, src, opts, conn):
        return [env_push.EnvResult(host="gpu2", name=opts.name, error="no python3.11")]

    monkeypatch.setattr(env_push, "push_env", failing)
    with pytest.raises(MigrateError, match="pushing environment torch to gpu2 failed: no python3.11"):
        env_push.ensure_on_hosts(["gpu1", "gpu2"], ["torch"], None, where="lab", dry_run=False)


def test_push_env_to_a_cluster_name_means_its_hosts_and_remembers_the_source(tmp_path, monkeypatch):
    from migrate.commands import push_env as cmd

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    seen = []

    def fake_push(hosts, src, opts, conn):
        seen.append(list(hosts))
        return [env_push.EnvResult(host=h, name=opts.name, status="installed") for h in hosts]

    monkeypatch.setattr(cmd, "push_env", fake_push)
    res = run_cli("push-env", "lab", "gpu3", str(req), "--name", "torch", "--json",
                  env={"MIGRATE_STATE_DIR": str(tmp_path)})
    assert res.code == 0, res.output
    assert seen == [["gpu1", "gpu2", "gpu3"]]
    src, python = known.recall("torch", "lab")
    assert src.path == req.resolve() and src.kind == "requirements" and python == "python3"


def test_the_wrapper_activates_the_env_and_fails_clearly_without_it(tmp_path):
    fake_env(tmp_path, "nb")
    fake_env(tmp_path, "cx", conda=True)
    base = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "MIGRATE_AGENT",
                                                             "VIRTUAL_ENV", "CONDA_PREFIX")}
    base.update(HOME=str(tmp_path), PYTHONHOME="/nowhere")
    show = 'python; echo "venv=$VIRTUAL_ENV conda=$CONDA_PREFIX home=${PYTHONHOME-unset}"'
    for name, want in (("nb", f"venv={tmp_path}/.migrate/envs/nb conda= home=unset"),
                       ("cx", f"venv= conda={tmp_path}/.migrate/envs/cx home=unset")):
        res = subprocess.run([sys.executable, "-I", "-S", WRAPPER, "--", show], env={**base, "MIGRATE_ENV": name},
                             capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, res.stderr
        assert res.stdout.splitlines()[1:] == [f"python-of-{name}", want]
    res = subprocess.run([sys.executable, "-I", "-S", WRAPPER, "--", "echo ran"], env={**base, "MIGRATE_ENV": "zz"},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 127 and "ran" not in res.stdout
    assert "no environment zz on this node" in res.stderr


# -- shell/exec HOST --env NAME --------------------------------------------------------------------------
@pytest.mark.parametrize("conda", [False, True])
def test_session_command_runs_cmd_in_the_env_after_the_profile(tmp_path, conda):
    prefix = fake_env(tmp_path, "nb", conda=conda)
    (tmp_path / ".profile").write_text("PATH=/usr/bin:/bin; export PATH\n")  # a profile that resets PATH
    cmd = env_plan.session_command("nb", 'python; echo "$VIRTUAL_ENV$CONDA_PREFIX"')
    res = subprocess.run(["sh", "-c", cmd], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["python-of-nb", str(prefix)]


def test_session_command_interactive_shell_and_missing_env(tmp_path):
    fake_env(tmp_path, "nb")
    (tmp_path / ".bashrc").write_text("PATH=/usr/bin:/bin\n")  # e.g. a conda init block putting base first
    res = subprocess.run(["sh", "-c", env_plan.session_command("nb", None)], input="python\n",
                         env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30)
    assert "python-of-nb" in res.stdout, res.stderr
    res = subprocess.run(["sh", "-c", env_plan.session_command("zz", "echo ran")],
                         env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]}, capture_output=True, text=True)
    assert res.returncode == 127 and res.stdout == ""
    assert "no environment zz on this host" in res.stderr


def test_shell_and_exec_with_env_dry_run(tmp_path):
    env = {"MIGRATE_STATE_DIR": str(tmp_path)}
    res = run_cli("exec", "nohost.invalid", "--env", "nb", "--dry-run", "--", "python", "-V", env=env)
    assert res.code == 0, res.output
    remote = shlex.split(res.stdout.strip())[-1]
    assert remote == env_plan.session_command("nb", "python -V")
    assert "-T" in shlex.split(res.stdout)
    res = run_cli("shell", "nohost.invalid", "--env", "nb", "--dry-run", env=env)
    assert res.code == 0 and shlex.split(res.stdout.strip())[-1] == env_plan.session_command("nb", None)
    bad = run_cli("exec", "nohost.invalid", "--env", "../x", "--dry-run", "--", "true", env=env)
    assert bad.code == 2 and "bad environment name" in bad.stderr
    rank = run_cli("exec", "nohost.invalid", "--env", "nb", "--rank", "1", "--", "true", env=env)
    assert rank.code == 2 and "--env opens a session on one host" in rank.stderr


# -- cluster up installs Ray from the user's mirror ------------------------------------------------------
def test_ray_comes_from_the_users_mirror(tmp_path):
    cmd = install.install_command("/usr/bin/python3", offline=False, index_url="https://mirrors.ustc.edu.cn/pypi/simple")
    assert "--index-url https://mirrors.ustc.edu.cn/pypi/simple 'ray[default]==" in cmd
    assert "--index-url" not in install.install_command("/usr/bin/python3", offline=False)
    assert "--index-url" not in install.install_command("/usr/bin/python3", offline=True, index_url="https://m/simple")
    journal = tmp_path / ".migrate" / "mirror" / "journal.json"
    journal.parent.mkdir(parents=True)
    journal.write_text(json.dumps({"url": "http://127.0.0.1:9/simple", "files": []}))
    out = subprocess.run(["sh", "-c", plan.preflight_command([0], check_index=True)], env={**os.environ,
                         "HOME": str(tmp_path)}, capture_output=True, text=True, check=True).stdout
    facts = plan.parse_preflight("here", out)
    assert facts.mirror == "http://127.0.0.1:9/simple"
    # the mirror (port 9: nothing listens) is what was asked; pypi.org answers from this machine
    assert facts.index and facts.index != "ok" and "refused" in facts.index.lower()


def test_usage_error_for_env_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    with pytest.raises(UsageError, match="never pushed"):
        known.recall("nope", "lab")


def test_exec_into_a_job_that_runs_in_an_env_has_it_active(tmp_path):
    """`migrate exec HOST JOB -- CMD` for a `run --env NAME` job: the agent's enter plan activates NAME."""
    from migrate.agent import enter

    fake_env(tmp_path, "nb")
    job = {"id": 3, "pid": 10, "cwd": str(tmp_path), "env": {"MIGRATE_ENV": "nb"}, "gpu_uuids": []}
    session = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    plan = enter.process_plan(job, session_env=session, home=str(tmp_path), bash="/bin/bash", tty=False,
                              command='python; echo "$VIRTUAL_ENV"')
    res = subprocess.run(plan.argv, env=plan.env, cwd=plan.cwd, capture_output=True, text=True, timeout=30)
    assert res.stdout.splitlines() == ["python-of-nb", f"{tmp_path}/.migrate/envs/nb"], res.stderr
    shell = enter.process_plan(job, session_env=session, home=str(tmp_path), bash="/bin/bash", tty=True, command=None)
    assert shell.argv[:2] == ["/bin/bash", "-lc"] and shell.argv[2].endswith("exec /bin/bash -i")
    plain = enter.process_plan({**job, "env": {}}, session_env=session, home=str(tmp_path), bash="/bin/bash",
                               tty=True, command=None)
    assert plain.argv == ["/bin/bash", "-l"]


def test_a_conda_envs_activation_scripts_run_wherever_it_is_activated(tmp_path):
    """`conda activate` runs etc/conda/activate.d/*.sh (a CUDA toolkit's or GDAL's variables): the agent
    (host jobs), the cluster wrapper and shell/exec --env do too."""
    from migrate.agent.launch import activate

    prefix = fake_env(tmp_path, "cx", conda=True)
    (prefix / "etc" / "conda" / "activate.d").mkdir(parents=True)
    (prefix / "etc" / "conda" / "activate.d" / "x.sh").write_text('export FROM_ACTIVATE_D="$CONDA_PREFIX"\n')
    want = f"got {prefix}"
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    show = 'echo "got $FROM_ACTIVATE_D"'
    host_job = subprocess.run(["sh", "-c", activate(show, {"MIGRATE_ENV": "cx"}, str(tmp_path))], env=env,
                              capture_output=True, text=True)
    assert host_job.stdout.strip() == want, host_job.stderr
    session = subprocess.run(["sh", "-c", env_plan.session_command("cx", show)], env=env, capture_output=True,
                             text=True)
    assert session.stdout.strip() == want, session.stderr
    wrapper = subprocess.run([sys.executable, "-I", "-S", WRAPPER, "--", show], env={**env, "MIGRATE_ENV": "cx"},
                             capture_output=True, text=True, timeout=30)
    assert wrapper.stdout.splitlines()[1:] == [want], wrapper.stderr


def test_the_shipped_wrapper_keeps_the_agents_conda_activation():
    from migrate.agent.launch import CONDA_ACTIVATE_D

    sys.path.insert(0, os.path.dirname(WRAPPER))
    try:
        import job_wrapper
    finally:
        sys.path.pop(0)
    assert job_wrapper.CONDA_ACTIVATE_D == CONDA_ACTIVATE_D


def test_a_playbook_cluster_job_runs_in_the_env_its_envs_stage_pushed(tmp_path, monkeypatch):
    """`cluster:` with `run.python_env`: the envs stage pushes to the playbook's hosts (the cluster's
    nodes), and every submitted Ray job names the env for the wrapper to activate."""
    from contextlib import contextmanager

    from migrate.cluster import jobapi, ops
    from migrate.playbook import apply as apply_mod
    from migrate.playbook.loader import parse_playbook
    from tests.unit.test_cluster import RecordingApi

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    monkeypatch.setattr(ops, "up", lambda opts, conn: state.save(record()))
    api = RecordingApi()

    @contextmanager
    def fake_api(rec, conn):
        yield api

    monkeypatch.setattr(jobapi, "job_api", fake_api)
    (tmp_path / "requirements.txt").write_text("six==1.16.0\n")
    pb = parse_playbook("hosts: [gpu1, gpu2]\ncluster: lab\nenvs: [{name: torch, source: requirements.txt}]\n"
                        "run: {command: python t.py, python_env: torch}\n", tmp_path / "exp.yml")
    report = apply_mod.ApplyReport(hosts=pb.hosts, stages=["run"])
    apply_mod._run_stage(pb, pb.hosts, None, False, report)
    assert [b["runtime_env"]["env_vars"]["MIGRATE_ENV"] for b in api.submitted] == ["torch"]
