"""`migrate shell/exec CLUSTER JOB` (issue 15): the wrapper's job record, the enter script, where a job runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate.cluster import plan, state
from migrate.cluster import shell as cshell
from migrate.cluster.state import ClusterRecord, Node
from migrate.errors import MigrateError, UsageError
from migrate.jobs.bundle import build_agent
from migrate.jobs.shell import session_argv
from migrate.remote.hosts import ConnectOptions
from tests.conftest import run_cli

SHIPPED = Path(plan.__file__).parent / "shipped"
WRAPPER = SHIPPED / "job_wrapper.py"


def record() -> ClusterRecord:
    return ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                         nodes=[Node("gpu1", "10.0.0.1", ["0"], 8, head=True), Node("gpu2", "10.0.0.2", ["0"], 8),
                                Node("gpu3", "10.0.0.3", ["0"], 8)])


def ray_job(jid: str = "7", status: str = "RUNNING", nodes: int = 0, **kw) -> dict:
    meta = {"migrate_cluster": "lab", "migrate_id": jid, "migrate_name": f"job-{jid}", "migrate_attempt": "1",
            "migrate_nodes": str(nodes)}
    return {"submission_id": f"lab-{jid}", "status": status, "metadata": meta, **kw}


# -- the wrapper's record and the enter script, for real on this machine --------------------------------------
def job_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "MIGRATE_", "NODE_RANK"))}
    return {**env, "HOME": str(home), "MIGRATE_CLUSTER": "lab", "MIGRATE_JOB_ID": "7",
            "CUDA_VISIBLE_DEVICES": "2", "MYVAR": "x y", "RAY_SECRETISH": "s", **extra}


def run_file(home: Path, rank: str = "0") -> Path:
    return home / ".migrate" / "ray" / "run" / f"lab-7-{rank}.json"


@contextlib.contextmanager
def running_job(tmp_path: Path, command: str = "sleep 60", **extra: str):
    """The shipped wrapper running COMMAND as cluster job lab/7 with HOME=tmp_path/home."""
    home = tmp_path / "home"
    work = tmp_path / "work dir"
    work.mkdir(parents=True)
    home.mkdir(exist_ok=True)
    proc = subprocess.Popen([sys.executable, str(WRAPPER), "--cwd", str(work), "--", command],
                            env=job_env(home, **extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not run_file(home, extra.get("NODE_RANK", "0")).exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the wrapper wrote no record"
            time.sleep(0.05)
        yield home, work, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def enter(home: Path, *args: str, session: dict | None = None) -> subprocess.CompletedProcess:
    """The remote command line `enter_command` builds, run by a local shell as sshd would."""
    agent = home / ".migrate" / "ray" / "bin" / "migrate-agent.pyz"   # as `cluster up` ships it
    if not agent.exists():
        agent.parent.mkdir(parents=True, exist_ok=True)
        agent.write_bytes(build_agent().data)
    line = cshell.enter_command(list(args))
    env = {"HOME": str(home), "PATH": os.environ["PATH"], "TERM": "xterm-test", **(session or {})}
    return subprocess.run(["/bin/sh", "-c", line], env=env, capture_output=True, text=True, timeout=30)


def test_wrapper_keeps_a_private_record_while_the_command_runs_and_removes_it_after(tmp_path):
    with running_job(tmp_path, NODE_RANK="1") as (home, work, proc):
        path = run_file(home, "1")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        rec = json.loads(path.read_text())
        assert rec["cwd"] == str(work) and rec["pgid"] == rec["pid"] != proc.pid
        assert rec["env"]["MYVAR"] == "x y" and rec["env"]["CUDA_VISIBLE_DEVICES"] == "2"
        assert rec["env"]["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID" and "RAY_SECRETISH" not in rec["env"]
        assert rec["ticks"]
    assert proc.returncode != 0 and not path.exists()


def test_exec_in_a_running_job_has_its_cwd_env_and_passes_the_exit_code(tmp_path):
    with running_job(tmp_path) as (home, work, _):
        check = enter(home, *cshell.enter_argv("lab", "7", 0, tty=False, check=True))
        answer = cshell.check_answer(check.stdout)
        assert answer["ok"] and answer["cwd"] == str(work) and answer["gpus"] == "2"
        res = enter(home, *cshell.enter_argv("lab", "7", 0, tty=False, words=(
            "sh", "-c", 'echo "$PWD|$CUDA_VISIBLE_DEVICES|$MYVAR|$TERM|${RAY_SECRETISH-unset}"; exit 3')))
        assert res.returncode == 3, res.stderr
        assert res.stdout.strip().splitlines()[-1] == f"{work}|2|x y|xterm-test|unset"


def test_enter_refuses_a_job_whose_command_ended_or_never_started(tmp_path):
    with running_job(tmp_path) as (home, _, proc):
        saved = run_file(home).read_text()
    run_file(home).write_text(saved)   # as left by a SIGKILLed wrapper: the pid is gone
    answer = cshell.check_answer(enter(home, "--check", "lab", "7", "0", "--").stdout)
    assert "has ended" in answer["error"] and "migrate logs lab 7" in answer["hint"]
    res = enter(home, "lab", "7", "0", "--", "echo never")
    assert res.returncode == 1 and res.stderr.startswith("error: job 7 of cluster lab") and "never" not in res.stdout
    gone = cshell.check_answer(enter(home, "--check", "lab", "8", "2", "--").stdout)
    assert "job 8 of cluster lab (rank 2) has no running command on this node" in gone["error"]


# -- pure builders ----------------------------------------------------------------------------------------
def test_enter_command_quotes_every_argument_and_execs():
    cmd = cshell.enter_command(cshell.enter_argv("lab", "7", 1, tty=True, words=("echo", "a b; c")))
    assert cmd == ('[ -f "$HOME"/.migrate/ray/bin/migrate-agent.pyz ] || exit 98; '
                   'exec python3 -I -S "$HOME"/.migrate/ray/bin/migrate-agent.pyz ray-enter --tty lab 7 1 -- '
                   "echo 'a b; c'")
    argv = session_argv(["ssh", "-F", "cfg", "gpu2"], tty=True, remote_command=cmd)
    assert argv[-3:] == ["-t", "gpu2", cmd]


def test_reserved_ips_come_from_the_gang_driver_log():
    log = "x\nmigrate: 3 nodes reserved: 10.0.0.3, 10.0.0.1, 10.0.0.2\n[rank 0] ...\n"
    assert cshell.reserved_ips(log) == ["10.0.0.3", "10.0.0.1", "10.0.0.2"]
    assert cshell.reserved_ips("migrate: waiting for 3 nodes") == []


def test_place_a_one_node_job_on_its_driver_node_and_a_gang_rank_on_its_reserved_node():
    rec = record()
    hosts = {"n1": "gpu1", "n2": "gpu2"}
    assert cshell.place(rec, ray_job(driver_node_id="n2"), hosts, None).host == "gpu2"
    with pytest.raises(UsageError, match="runs on one node"):
        cshell.place(rec, ray_job(driver_node_id="n2"), hosts, 1)
    with pytest.raises(MigrateError, match="is starting"):
        cshell.place(rec, ray_job(), hosts, None)
    log = "migrate: 2 nodes reserved: 10.0.0.3, 10.0.0.1\n"
    gang = ray_job(nodes=2, driver_node_id="n2")
    assert (cshell.place(rec, gang, hosts, None, log).host, cshell.place(rec, gang, hosts, 1, log).host) == (
        "gpu3", "gpu1")
    with pytest.raises(UsageError, match="ranks 0 to 1"):
        cshell.place(rec, gang, hosts, 2, log)
    with pytest.raises(MigrateError, match="waiting for its 2 nodes"):
        cshell.place(rec, gang, hosts, 0, "")


def test_not_running_jobs_are_one_line_errors_pointing_at_logs():
    queued = cshell.not_running_error(ray_job(status="PENDING"), "lab")
    assert "job 7 (job-7) on cluster lab is queued" in str(queued) and "logs lab 7 -f" in queued.hint
    done = cshell.not_running_error(ray_job(status="SUCCEEDED", driver_exit_code=0), "lab")
    assert "finished (exit 0); its processes are gone" in str(done) and done.hint == (
        "see its output with `migrate logs lab 7`")
    assert "failed (exit 3)" in str(cshell.not_running_error(ray_job(status="FAILED", driver_exit_code=3), "lab"))
    assert "was cancelled" in str(cshell.not_running_error(ray_job(status="STOPPED"), "lab"))


# -- resolution through the job API ----------------------------------------------------------------------------
class FakeApi:
    def __init__(self, jobs: list[dict], log: str = "") -> None:
        self._jobs, self._log = jobs, log

    def jobs(self) -> list[dict]:
        return self._jobs

    def nodes(self) -> list[dict]:
        return [{"node_id": "n1", "node_ip": "10.0.0.1"}, {"node_id": "n2", "node_ip": "10.0.0.2"}]

    def logs(self, submission: str) -> str:
        return self._log


def test_locate_finds_the_latest_attempt_by_id_or_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    jobs = [ray_job(status="FAILED", driver_node_id="n1"),
            {**ray_job(driver_node_id="n2"), "metadata": {**ray_job()["metadata"], "migrate_attempt": "2"}},
            ray_job("8", status="SUCCEEDED", driver_exit_code=0)]
    monkeypatch.setattr(cshell, "job_api", lambda rec, conn: contextlib.nullcontext(FakeApi(jobs)))
    assert cshell.locate("lab", ConnectOptions(), "7", None).host == "gpu2"
    assert cshell.locate("lab", ConnectOptions(), "job-7", None).job == "7"
    with pytest.raises(MigrateError, match="job 8 .* finished"):
        cshell.locate("lab", ConnectOptions(), "8", None)
    with pytest.raises(UsageError, match="no job '9'"):
        cshell.locate("lab", ConnectOptions(), "9", None)


# -- the command line ------------------------------------------------------------------------------------------
def test_shell_on_a_cluster_needs_a_job_and_rank_needs_a_cluster(tmp_path, monkeypatch):
    env = {"MIGRATE_STATE_DIR": str(tmp_path)}
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    res = run_cli("shell", "lab", env=env)
    assert res.code == 2 and "lab is a cluster: give a JOB" in res.stderr
    res = run_cli("exec", "gpu9", "1", "--rank", "1", "--", "true", env=env)
    assert res.code == 2 and "--rank is for a job on a cluster" in res.stderr
    assert "cluster name" in run_cli("exec", "--help").stdout
    assert "cluster name" in run_cli("shell", "--help").stdout


def test_an_unreachable_node_is_one_line_naming_it_and_dry_run_prints_the_session(monkeypatch, capsys):
    from migrate.errors import ConnectError

    monkeypatch.setattr(cshell, "locate", lambda *a, **k: cshell.Placement("lab", "7", "j", 1, "nowhere.invalid"))
    with pytest.raises(ConnectError, match="cannot reach node nowhere.invalid of cluster lab, where job 7 runs"):
        cshell.open_cluster_session("lab", "7", words=("true",), tty=False, conn=ConnectOptions())
    assert cshell.open_cluster_session("lab", "7", words=("echo", "a b"), tty=False, conn=ConnectOptions(),
                                       dry_run=True) == 0
    line = capsys.readouterr().out
    assert "exit 98; exec python3 -I -S \"$HOME\"/.migrate/ray/bin/migrate-agent.pyz ray-enter " in line
    assert "lab 7 1 -- echo '" in line


def test_a_node_without_the_agent_next_to_its_scripts_says_so(tmp_path):
    """A cluster brought up by an older migrate has no ~/.migrate/ray/bin/migrate-agent.pyz: a distinct exit
    code, which open_cluster_session turns into one line with what to do."""
    line = cshell.enter_command(cshell.enter_argv("lab", "7", 0, tty=False, check=True))
    res = subprocess.run(["/bin/sh", "-c", line], env={"HOME": str(tmp_path), "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == cshell.EXIT_NO_NODE_AGENT and res.stdout == ""
