"""The agent's `enter` (migrate shell/exec on the host): pure plans, Docker access modes, and the
subcommand itself on this machine (real dispatcher, real job processes, FAKE GPUs, no SSH)."""

from __future__ import annotations

import os
import shlex
import time

import pytest

from migrate.agent import enter
from migrate.agent.db import QueueError
from tests.agent_helpers import LocalAgent

JOB = {"id": 7, "name": "train", "state": "running", "command": "python train.py", "cwd": "/data/run",
       "env": {"MYVAR": "x y", "LR": "1e-3"}, "gpu_uuids": ["GPU-a", "GPU-b"], "attempt": 2, "image": None,
       "container": None, "pid": 4242, "token": "secret-token"}
SESSION = {"PATH": "/usr/bin:/bin", "HOME": "/home/alice", "TERM": "xterm-256color", "SSH_TTY": "/dev/pts/3",
           "SSH_CONNECTION": "1 2 3 4", "CUDA_VISIBLE_DEVICES": "0", "MIGRATE_AGENT_HOME": "/x",
           "XDG_SESSION_ID": "9", "OLDPWD": "/old"}


def test_a_process_shell_gets_the_jobs_dir_env_and_gpus_but_not_its_recovery_token():
    plan = enter.process_plan(JOB, session_env=SESSION, home="/home/alice", bash="/bin/bash", tty=True, command=None)
    assert plan.argv == ["/bin/bash", "-l"] and plan.cwd == "/data/run"
    env = plan.env
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b" and env["MIGRATE_GPU_UUIDS"] == "GPU-a,GPU-b"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and env["MYVAR"] == "x y" and env["LR"] == "1e-3"
    assert (env["MIGRATE_JOB_ID"], env["MIGRATE_JOB_NAME"], env["MIGRATE_JOB_ATTEMPT"]) == ("7", "train", "2")
    assert "MIGRATE_JOB_TOKEN" not in env and "MIGRATE_AGENT_HOME" not in env  # a shell is no job process
    assert "XDG_SESSION_ID" not in env and "OLDPWD" not in env and env["PWD"] == "/data/run"
    assert env["TERM"] == "xterm-256color" and env["SSH_TTY"] == "/dev/pts/3" and env["PATH"] == "/usr/bin:/bin"


def test_a_process_command_runs_as_the_job_does_and_cpu_jobs_see_no_gpu():
    cpu = dict(JOB, gpu_uuids=[], cwd=None)
    plan = enter.process_plan(cpu, session_env=SESSION, home="/home/alice", bash="/usr/bin/bash", tty=False,
                              command="nvidia-smi; exit 3")
    assert plan.argv == ["/usr/bin/bash", "-lc", "nvidia-smi; exit 3"] and plan.cwd == "/home/alice"
    assert plan.env["CUDA_VISIBLE_DEVICES"] == ""
    no_bash = enter.process_plan(JOB, session_env=SESSION, home="/h", bash=None, tty=True, command=None)
    assert no_bash.argv == ["/bin/sh", "-l"]


@pytest.mark.parametrize("words,line", [
    (["echo hi; exit 3"], "echo hi; exit 3"),                      # one word: a command line as it is
    (["python", "-c", "print('a b')"], "python -c 'print('\"'\"'a b'\"'\"')'"),  # several: quoted
    (["ls", "$(rm -rf ~)"], "ls '$(rm -rf ~)'"),
    ([], None),
])
def test_cmd_words_become_one_command_line(words, line):
    assert enter.command_line(words) == line
    if len(words) > 1:
        assert shlex.split(line) == words


@pytest.mark.parametrize("access,prefix", [
    ("direct", []),
    ("sudo", ["sudo", "-n"]),
    ("sudo-password", ["sudo"]),
])
def test_docker_exec_through_each_access_mode(access, prefix):
    argv = enter.docker_exec_argv(access, "migrate-alice-7", tty=True, command=None, term="xterm")
    assert argv == [*prefix, "docker", "exec", "-i", "-t", "-e", "TERM=xterm", "migrate-alice-7", "sh", "-c",
                    enter.CONTAINER_SHELL]
    argv = enter.docker_exec_argv(access, "migrate-alice-7", tty=False, command="ls 'a b'", term="xterm")
    assert argv == [*prefix, "docker", "exec", "-i", "migrate-alice-7", "sh", "-c", "ls 'a b'"]


def test_docker_exec_through_the_docker_group_is_one_quoted_sg_command():
    argv = enter.docker_exec_argv("group", "migrate-al ice-7", tty=False, command="echo '$HOME' \"x\"")
    assert argv[:3] == ["sg", "docker", "-c"] and len(argv) == 4
    assert shlex.split(argv[3]) == ["docker", "exec", "-i", "migrate-al ice-7", "sh", "-c", "echo '$HOME' \"x\""]
    with pytest.raises(ValueError):
        enter.docker_exec_argv("ssh", "c", tty=False, command=None)


def _runner(answers):
    calls = []

    def run(argv):
        calls.append(argv)
        return answers[len(calls) - 1]
    return run, calls


def test_docker_access_direct_then_group_then_sudo(monkeypatch):
    monkeypatch.setattr(enter.shutil, "which", lambda name: f"/usr/bin/{name}")  # sudo exists (not here)
    run, calls = _runner([(0, "running\n", "")])
    assert enter.docker_access("c", "alice", tty=False, run=run) == ("direct", "running")
    denied = (1, "", "permission denied while trying to connect to the Docker daemon socket")
    monkeypatch.setattr(enter, "in_docker_group", lambda user: True)
    run, calls = _runner([denied, (0, "running\n", "")])
    assert enter.docker_access("c", "alice", tty=False, run=run) == ("group", "running")
    assert calls[1][:3] == ["sg", "docker", "-c"]
    monkeypatch.setattr(enter, "in_docker_group", lambda user: False)
    run, calls = _runner([denied, (1, "", "Error: No such object: c")])
    assert enter.docker_access("c", "alice", tty=False, run=run) == ("sudo", "missing")
    assert calls[1][:2] == ["sudo", "-n"]
    run, _ = _runner([denied, (1, "", "sudo: a password is required")])
    assert enter.docker_access("c", "alice", tty=True, run=run) == ("sudo-password", "")
    run, _ = _runner([denied, (1, "", "sudo: a password is required")])
    with pytest.raises(QueueError, match="sudo with a password"):
        enter.docker_access("c", "alice", tty=False, run=run)
    run, _ = _runner([denied])
    with pytest.raises(QueueError, match="no sudo"):
        enter.docker_access("c", "alice", tty=True, run=run, which=lambda name: None)  # not in group, no sudo
    run, _ = _runner([(1, "", "Cannot connect to the Docker daemon at unix:///var/run/docker.sock")])
    with pytest.raises(QueueError, match="Cannot connect"):
        enter.docker_access("c", "alice", tty=False, run=run)


def test_container_plans_and_a_container_that_is_gone():
    job = dict(JOB, image="pytorch:24", container="migrate-alice-7")
    plan = enter.plan_for(job, tty=True, command=None, session_env=SESSION, home="/h", user="alice", bash=None,
                          access_finder=lambda name, user, tty: ("direct", "running"))
    assert plan.kind == "container" and plan.env is None and plan.argv[:4] == ["docker", "exec", "-i", "-t"]
    assert "migrate-alice-7" in plan.argv
    unnamed = dict(job, container=None)
    plan = enter.plan_for(unnamed, tty=False, command="id", session_env={}, home="/h", user="bo b", bash=None,
                          access_finder=lambda name, user, tty: ("sudo", "running"))
    assert plan.argv == ["sudo", "-n", "docker", "exec", "-i", "migrate-bo_b-7", "sh", "-c", "id"]
    with pytest.raises(QueueError, match="its container migrate-alice-7 is exited"):
        enter.plan_for(job, tty=True, command=None, session_env={}, home="/h", user="alice", bash=None,
                       access_finder=lambda name, user, tty: ("direct", "exited"))


@pytest.mark.parametrize("state,extra,needle", [
    ("queued", {"reason": "waiting for 1 GPU"}, "is queued, not running yet: waiting for 1 GPU"),
    ("starting", {}, "is starting"),
    ("done", {"exit_code": 0, "ended_at": 1.0e9}, "finished (exit 0) at 20"),
    ("failed", {"exit_code": 3, "ended_at": 1.0e9}, "finished (exit 3)"),
    ("cancelled", {"ended_at": 1.0e9}, "was cancelled at"),
    ("lost", {"reason": "host rebooted"}, "was lost (host rebooted)"),
])
def test_only_running_jobs_can_be_entered(state, extra, needle):
    for image, gone in ((None, "its processes are gone"), ("img:1", "its container is gone")):
        job = dict(JOB, state=state, image=image, **extra)
        with pytest.raises(QueueError) as exc:
            enter.check_enterable(job)
        assert needle in exc.value.message and "job 7 (train)" in exc.value.message
        if state in ("done", "failed", "cancelled", "lost"):
            assert exc.value.message.endswith(gone) and "migrate logs HOST 7" in exc.value.hint


def test_a_process_job_whose_directory_is_gone(tmp_path):
    job = dict(JOB, cwd=str(tmp_path / "gone"))
    with pytest.raises(QueueError, match="working directory .* is gone"):
        enter.plan_for(job, tty=True, command=None, session_env={}, home="/h", user="alice", bash=None)


# -- the subcommand on this machine ------------------------------------------------------------------
@pytest.fixture
def agent(tmp_path):
    a = LocalAgent(tmp_path / "home")
    a.home.mkdir()
    a.fake_gpus(2)
    yield a
    a.cleanup()


@pytest.mark.slow
def test_enter_runs_in_a_running_job_and_refuses_queued_unknown_and_finished_ones(agent, tmp_path):
    work = tmp_path / "work dir"
    work.mkdir()
    running, finished = agent.submit([
        {"command": "sleep 60", "name": "long", "cwd": str(work), "env": {"MYVAR": "x y"}},
        {"command": "exit 4", "name": "quick", "gpus": 0},
    ])
    agent.wait(lambda js: {j["id"]: j["state"] for j in js} == {running["id"]: "running", finished["id"]: "failed"})
    check = agent.call("enter", "--check", "--", "long")
    assert check["job"]["id"] == running["id"] and check["plan"]["kind"] == "process"
    assert check["plan"]["cwd"] == str(work)
    t0 = time.monotonic()
    res = agent.run("enter", "--", str(running["id"]),
                    "echo pwd=$PWD gpu=$CUDA_VISIBLE_DEVICES my=$MYVAR id=$MIGRATE_JOB_ID tok=$MIGRATE_JOB_TOKEN; "
                    "echo oops >&2; exit 3")
    assert time.monotonic() - t0 < 10
    gpu = agent.job(running["id"])["gpu_uuids"][0]
    assert res.returncode == 3, res.stderr
    assert res.stdout.strip().splitlines()[-1] == f"pwd={work} gpu={gpu} my=x y id={running['id']} tok="
    assert res.stderr.strip().splitlines()[-1] == "oops"
    words = agent.run("enter", "--", "long", "python3", "-c", "import os,sys; print(os.getcwd(), sys.argv[1:])",
                      "a b", "$HOME")
    assert words.returncode == 0 and words.stdout.strip().endswith(f"{work} ['a b', '$HOME']")
    for ref, needle in ((str(finished["id"]), "finished (exit 4)"), ("nope", "no job 'nope'")):
        res = agent.run("enter", "--", ref, "true")
        assert res.returncode == 1 and res.stderr.startswith("error: ") and needle in res.stderr
        data = agent.call("enter", "--check", "--", ref, ok=False)
        assert not data["ok"] and needle in data["error"]
    assert os.path.isdir(work)
