"""--sync-back driven by `logs -f` and by the `migrate sync` loop (shared sandbox, second host, alice):
real agent, real rsync over ssh, CPU jobs (`--gpus-per-job 0`). `wait` driving it is in test_wait.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from migrate.jobs import lastrun
from migrate.jobs.client import AgentClient
from migrate.remote.connection import connect
from tests.conftest import run_cli, wait_until


@pytest.fixture
def host(sandbox_hosts):
    alias = sandbox_hosts[1]["alias"]
    work = "sb" + uuid.uuid4().hex[:6]
    with connect(alias) as remote:
        yield alias, work, remote
        remote.run(f"rm -rf ~/{work}")


def run(alias: str, *args: str) -> str:
    res = run_cli("run", alias, "--gpus-per-job", "0", "--json", *args)
    assert res.code == 0, res.output
    [job] = json.loads(res.stdout)["jobs"]
    return str(job["id"])


def state(remote, jid: str) -> str:
    """The job's state, read in-process (no CLI start per poll)."""
    jobs = AgentClient(remote).call(["status", "--all"], what="read job status")["jobs"]
    return {str(j["id"]): j["state"] for j in jobs}[jid]


def cli_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "migrate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "COLUMNS": "200"})


def gated_job(work: str) -> str:
    """Writes a checkpoint, then waits for ~/WORK/go before writing its result."""
    return (f"mkdir -p ~/{work}/out && echo step1 > ~/{work}/out/ckpt1 && echo ckpt written && "
            f"while [ ! -e ~/{work}/go ]; do sleep 0.2; done; echo final > ~/{work}/out/result")


def test_logs_follow_brings_a_checkpoint_back_while_the_job_runs_and_the_result_after(host, tmp_path):
    alias, work, remote = host
    local = tmp_path / "res"
    jid = run(alias, "--sync-back", f"{work}/out:{local}", "--every", "1s", "--", gated_job(work))
    proc = cli_process("logs", alias, jid, "-f")
    try:
        wait_until(lambda: (local / "ckpt1").exists(), timeout=30)  # pulled while the job still runs
        assert state(remote, jid) == "running" and not (local / "result").exists()
        remote.run(f"touch ~/{work}/go")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "ckpt written" in out  # the follow itself is unchanged
    assert (local / "result").read_text() == "final\n" and "(final)" in err
    assert [e["final"] for e in lastrun.sync_entries(alias)] == [True]  # nothing left pending


def test_sync_catches_up_after_the_laptop_was_away_and_ctrl_c_stops_only_the_loop(host, tmp_path):
    alias, work, remote = host
    # the jobs end while nothing runs here: the next `migrate sync` makes the final pull at once
    local = tmp_path / "away"
    jid = run(alias, "--sync-back", f"{work}/out:{local}", "--",
              f"mkdir -p ~/{work}/out && echo r > ~/{work}/out/result")
    wait_until(lambda: state(remote, jid) == "done", timeout=30)
    assert not local.exists()
    res = run_cli("sync", alias, "--interval", "0.3", "--json")
    assert res.code == 0, res.output
    [task] = json.loads(res.stdout)
    assert task["final"] and (local / "result").read_text() == "r\n"
    again = run_cli("sync", alias)
    assert again.code == 0 and "nothing to sync back" in again.stderr

    # a running job: the loop pulls its checkpoint; Ctrl-C stops the loop, not the job; the next one ends it
    local = tmp_path / "live"
    remote.run(f"rm -rf ~/{work}/out")
    jid = run(alias, "--sync-back", f"{work}/out:{local}", "--every", "1s", "--", gated_job(work))
    proc = cli_process("sync", alias, "--interval", "0.3")
    try:
        wait_until(lambda: (local / "ckpt1").exists(), timeout=30)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "the jobs keep running" in err, err
    assert state(remote, jid) == "running" and not (local / "result").exists()
    remote.run(f"touch ~/{work}/go")
    res = run_cli("sync", alias, "--interval", "0.3")
    assert res.code == 0, res.output
    assert (local / "result").read_text() == "final\n" and "(final)" in res.stderr
