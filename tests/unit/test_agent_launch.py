"""Launch command building (pure), and the job wrapper run for real with /bin/sh."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from migrate.agent import launch, procs
from tests.conftest import wait_until

JOB = {"id": 7, "name": "lr-sweep[lr=1e-3]", "attempt": 2, "command": "python train.py --lr 1e-3",
       "env": {"WANDB_MODE": "offline"}, "gpus": 2}


def test_process_env_sets_uuids_order_and_drops_session_variables():
    base = {"PATH": "/usr/bin", "HOME": "/home/a", "SSH_CONNECTION": "1 2 3 4", "MIGRATE_AGENT_HOME": "/x",
            "CUDA_VISIBLE_DEVICES": "0", "XDG_SESSION_ID": "5"}
    env = launch.job_env(JOB, base, ["GPU-a", "GPU-b"], "tok")
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-a,GPU-b"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["MIGRATE_JOB_ID"] == "7" and env["MIGRATE_JOB_ATTEMPT"] == "2" and env["MIGRATE_JOB_TOKEN"] == "tok"
    assert env["WANDB_MODE"] == "offline" and env["PATH"] == "/usr/bin"
    for gone in ("SSH_CONNECTION", "MIGRATE_AGENT_HOME", "XDG_SESSION_ID"):
        assert gone not in env


def test_cpu_job_sees_no_gpu():
    env = launch.job_env({**JOB, "gpus": 0}, {}, [], "t")
    assert env["CUDA_VISIBLE_DEVICES"] == ""


def test_process_plan_runs_a_login_bash_in_the_cwd(tmp_path):
    plan = launch.plan_launch({**JOB, "cwd": str(tmp_path)}, job_dir="/j/7", log_path="/j/7/output.log",
                              gpu_uuids=["GPU-a"], token="t", base_env={}, home="/home/a", user="alice", uid=1000,
                              gid=1000, bash="/bin/bash")
    assert plan.argv[:3] == ["/bin/sh", "-c", launch.WRAPPER]
    assert plan.argv[3:] == ["migrate-job", "/j/7", "", "/bin/bash", "-lc", JOB["command"]]
    assert plan.cwd == str(tmp_path) and plan.container is None


def test_docker_argv_has_the_gpu_user_shm_mounts_label_and_name():
    job = {**JOB, "image": "mylab/torch:2.3", "mounts": ["/data:/data:ro"], "shm_size": "16g",
           "ports": ["6006"], "cwd": "/work"}
    argv = launch.docker_argv(job, name="migrate-alice-7", user="alice", uid=1000, gid=1001,
                              gpu_uuids=["GPU-a", "GPU-b"], token="tok", env_file="/j/7/container.env")
    assert argv[:4] == ["docker", "run", "--name", "migrate-alice-7"]
    joined = " ".join(argv)
    assert '--gpus "device=GPU-a,GPU-b"' in joined
    assert "--label migrate.job=7" in joined and "--label migrate.token=tok" in joined
    assert "--shm-size 16g" in joined and "--ipc=host" not in joined
    assert "-u 1000:1001" in joined and "-v /data:/data:ro" in joined and "-p 6006" in joined
    assert "-w /work" in joined and "--env-file /j/7/container.env" in joined
    assert argv[-4:] == ["mylab/torch:2.3", "sh", "-c", JOB["command"]]
    assert "WANDB_MODE" not in joined  # values stay off the command line (ps shows it to everyone)


def test_docker_cpu_job_hides_gpus_and_defaults_to_host_ipc():
    argv = launch.docker_argv({**JOB, "gpus": 0, "image": "img"}, name="n", user="u", uid=1, gid=1,
                              gpu_uuids=[], token="t", env_file="/e")
    assert "--gpus" not in argv and "NVIDIA_VISIBLE_DEVICES=void" in argv and "--ipc=host" in argv


def test_env_file_and_container_name():
    text = launch.env_file_text(JOB, ["MIG-x"], "tok")
    assert "WANDB_MODE=offline\n" in text and "MIGRATE_GPU_UUIDS=MIG-x\n" in text
    assert "CUDA_VISIBLE_DEVICES" not in text  # the runtime exposes only the assigned devices
    assert launch.container_name("al ice", 3) == "migrate-al_ice-3"


def _run_wrapper(tmp_path, command: str) -> subprocess.Popen:
    argv = launch.wrapper_argv(str(tmp_path), "", ["/bin/sh", "-c", command])
    return subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _job_started(pgid: int) -> bool:
    """The job's own program runs (`sleep`): a SIGTERM before it, between the wrapper's fork and exec,
    would meet the wrapper's ignoring trap and not end the job."""
    for pid in procs.group_members(pgid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0] == b"sleep":
                return True
        except OSError:
            continue
    return False


def test_wrapper_records_the_exit_code(tmp_path):
    assert _run_wrapper(tmp_path, "exit 3").wait(10) == 3
    assert (tmp_path / "exit").read_text() == "3\n"


def test_wrapper_records_sigterm_of_the_process_group(tmp_path):
    proc = _run_wrapper(tmp_path, "sleep 30")
    wait_until(lambda: _job_started(proc.pid), timeout=10, what="the job's `sleep` to run")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(10) == 143
    assert (tmp_path / "exit").read_text() == "143\n"
