"""`migrate run/status/logs/cancel/retry/resume/gpus/tunnel` against real sshd hosts (dedicated sandbox `runq`).

The hosts have no GPU but 4 MOCK GPUs (`sandbox up --gpus 4`): the dispatcher reads them through
its real NVML backend and pynvml from the sandbox's mock libnvidia-ml.so.1, and these tests change
them with `migrate sandbox gpu` (bob's real processes on a GPU, NVML faults, lost GPUs, MIG, old
driver generations). Everything else is real too: the
agent is shipped over SFTP, the dispatcher outlives the SSH sessions, jobs are real processes and
real Docker containers (Docker is installed on runq1 by the fixture, in the background, while the
first tests run).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from migrate.errors import MigrateError
from migrate.jobs.client import AgentClient
from tests.conftest import assert_one_line_error, wait_until
from tests.integration.sandbox_host import DOCKER_INSTALL, SandboxHost

IMAGE = "migrate-runq-busybox:test"
FINAL = ("done", "failed", "cancelled", "lost")


class Host(SandboxHost):
    """One sandbox host: raw shell access, the agent over SSH, and the CLI with the right env."""

    def run(self, *args: str):
        res = self.cli("run", self.alias, *args)
        assert res.code == 0, res.output
        return res

    def run_json(self, *args: str) -> list[dict]:
        return json.loads(self.run("--json", *args).stdout)["jobs"]

    def agent(self, *args: str) -> dict:
        return AgentClient(self.remote).call(list(args), what="agent call")

    def jobs(self) -> dict[int, dict]:
        return {j["id"]: j for j in self.agent("status", "--all")["jobs"]}

    def wait(self, predicate, timeout: float = 60, interval: float = 0.5) -> dict[int, dict]:
        deadline = time.monotonic() + timeout
        jobs: dict = {}
        while time.monotonic() < deadline:
            jobs = self.jobs()
            if predicate(jobs):
                return jobs
            time.sleep(interval)
        raise AssertionError(f"timed out: {[(j['id'], j['state'], j['reason']) for j in jobs.values()]}")

    def wait_final(self, ids: list[int], timeout: float = 60) -> dict[int, dict]:
        """Wait until these jobs are finished; return them (only them)."""
        jobs = self.wait(lambda js: all(js[i]["state"] in FINAL for i in ids), timeout)
        return {i: jobs[i] for i in ids}

    def gpu(self, *args: str) -> dict:
        """`migrate sandbox gpu HOST ARGS --json`: change the mock GPUs."""
        res = self.cli("sandbox", "gpu", self.alias, *args, "--json")
        assert res.code == 0, res.output
        return json.loads(res.stdout)

    def daemon(self) -> dict:
        return self.agent("status")["daemon"]


@pytest.fixture(scope="module")
def runq(dedicated_sandbox):
    hosts = [Host(h) for h in dedicated_sandbox("runq", 2, gpus=4)]
    h1, h2 = hosts
    h1.sh("rm -f /tmp/docker-ready; " + DOCKER_INSTALL)
    for h in hosts:
        h.sh("mkdir -p ~/.migrate && chmod 700 ~/.migrate")
        h.gpu("--reset", "--driver", "v3")
    yield hosts
    for h in hosts:
        h.reset_connection()


@pytest.fixture
def h1(runq):
    return runq[0]


@pytest.fixture
def h2(runq):
    h = runq[1]
    h.gpu("--reset")
    return h


def test_agent_is_shipped_over_sftp_and_the_dispatcher_started(h1, h2):
    t0 = time.monotonic()
    res = h2.run("--gpus-per-job", "0", "--", "echo hello from $MIGRATE_JOB_ID")
    assert time.monotonic() - t0 < 20
    assert "installing the dispatcher agent" in res.stderr and "dispatcher started" in res.stderr
    assert "GPU backend nvml" in res.stderr and "FAKE" not in res.stderr
    modes = h2.sh("stat -c '%a %n' ~/.migrate ~/.migrate/agent ~/.migrate/agent/*.pyz ~/.migrate/dispatcher "
                  "~/.migrate/dispatcher/queue.db").split("\n")
    assert [m.split()[0] for m in modes if m] == ["700", "700", "600", "700", "600"]
    first = h2.daemon()
    assert first["running"] and first["mode"] == "setsid"
    again = h2.run("--gpus-per-job", "0", "--", "true")
    assert "installing" not in again.stderr and "dispatcher started" not in again.stderr
    assert h2.daemon()["pid"] == first["pid"]  # same version: not restarted
    # runq1 gets a dispatcher now, before its user joins the docker group (see the container test)
    h1.run("--gpus-per-job", "0", "--", "true")


def test_jobs_keep_running_after_the_ssh_session_closes_and_are_logged(h2):
    jobs = h2.run_json("--sweep", "n=0,3", "--name", "sweep", "--",
                       "echo start {n} on $CUDA_VISIBLE_DEVICES; sleep 5; echo end {n}; exit {n}")
    ids = [j["id"] for j in jobs]
    h2.reset_connection()  # the CLI's session is gone; use a fresh one
    running = h2.wait(lambda js: all(js[i]["state"] == "running" for i in ids), timeout=20)
    assert len({running[i]["gpu_uuids"][0] for i in ids}) == 2
    follow = h2.cli("logs", h2.alias, str(ids[0]), "-f", timeout=60)  # returns when the job ends
    assert follow.code == 0 and "start 0" in follow.stdout and "end 0" in follow.stdout, follow.output
    assert "done: exit code 0" in follow.stdout
    done = h2.wait_final(ids, timeout=30)
    assert [(done[i]["state"], done[i]["exit_code"]) for i in ids] == [("done", 0), ("failed", 3)]
    res = h2.cli("logs", h2.alias, "sweep[n=3]")
    assert res.code == 0, res.output
    assert f"start 3 on {done[ids[1]]['gpu_uuids'][0]}" in res.stdout and "end 3" in res.stdout
    assert "failed: exit code 3" in res.stdout
    status = h2.cli("status", h2.alias)
    assert "sweep[n=3]" in status.stdout and "failed" in status.stdout and "dispatcher pid" in status.stderr
    retried = h2.cli("retry", h2.alias, str(ids[1]))
    assert retried.code == 0 and "queued again" in retried.stderr
    again = h2.wait_final([ids[1]])
    assert again[ids[1]]["attempt"] == 2 and again[ids[1]]["exit_code"] == 3


def test_kill9_dispatcher_mid_run_readopts_jobs_none_twice_exit_codes_right(h2, tmp_path):
    h2.sh("rm -f ~/starts.txt ~/k9-release")
    wait_release = "while [ ! -e ~/k9-release ]; do sleep 0.2; done"
    jobs_file = tmp_path / "jobs.yaml"
    jobs_file.write_text(
        "defaults:\n  gpus: 1\njobs:\n"
        "  - {name: k9-quick, command: 'echo $MIGRATE_JOB_ID >> ~/starts.txt; sleep 2'}\n"
        + "".join(f"  - {{name: k9-{c}, command: 'echo $MIGRATE_JOB_ID >> ~/starts.txt; {wait_release}; exit {c}'}}\n"
                  for c in (5, 0, 6)))
    jobs = h2.run_json("--jobs", str(jobs_file))
    ids = [j["id"] for j in jobs]
    assert [j["name"] for j in jobs] == ["k9-quick", "k9-5", "k9-0", "k9-6"]
    h2.wait(lambda js: all(js[i]["state"] == "running" for i in ids), timeout=20)
    pid = h2.daemon()["pid"]
    h2.sh(f"kill -9 {pid}")
    # the quick job ends while no dispatcher runs (and is recorded seconds after its end)
    wait_until(lambda: h2.sh(f"cat ~/.migrate/dispatcher/jobs/{ids[0]}/exit 2>/dev/null || true").strip(),
               timeout=20, interval=0.3, what="the quick job to end")
    assert not h2.daemon()["running"]
    res = h2.cli("resume", h2.alias)
    assert res.code == 0 and "dispatcher started" in res.stderr, res.output
    wait_until(lambda: f"recovered: adopted {ids[1:]}" in h2.sh("cat ~/.migrate/dispatcher/agent.log"),
               timeout=20, interval=0.3, what="the dispatcher to adopt the jobs")
    h2.sh("touch ~/k9-release")
    done = h2.wait_final(ids, timeout=40)
    assert [(done[i]["state"], done[i]["exit_code"]) for i in ids] == [
        ("done", 0), ("failed", 5), ("done", 0), ("failed", 6)]
    # issue 12.6: the quick job ran ~2 s; it was recorded seconds later, but its end is its exit file's time
    assert done[ids[0]]["runtime_s"] < 4, done[ids[0]]
    assert sorted(h2.sh("cat ~/starts.txt").split()) == sorted(str(i) for i in ids)  # each ran exactly once
    assert all(done[i]["attempt"] == 1 for i in ids)


def test_logs_follow_ends_after_the_dispatcher_is_killed(h2):
    """Issue 12.1: `logs -f` must not hang when the dispatcher dies under it; it records the end and warns."""
    h2.run("--gpus-per-job", "0", "--name", "f1-follow", "--", "echo begin; sleep 8; echo end")
    h2.wait(lambda js: any(j["name"] == "f1-follow" and j["state"] == "running" for j in js.values()), timeout=20)
    env = dict(os.environ, **h2.env, COLUMNS="200")
    follower = subprocess.Popen([sys.executable, "-m", "migrate", "logs", h2.alias, "f1-follow", "-f"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        time.sleep(2)
        h2.sh(f"kill -9 {h2.daemon()['pid']}")
        out, err = follower.communicate(timeout=60)  # hung forever before the fix
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, (out, err)
    assert "begin" in out and "end" in out and "done: exit code 0 after" in out, out
    assert "the dispatcher is not running" in err and "`migrate resume " in err and h2.alias in err, err
    (job,) = [j for j in h2.jobs().values() if j["name"] == "f1-follow"]
    assert (job["state"], job["exit_code"]) == ("done", 0)
    assert not h2.daemon()["running"]
    res = h2.cli("resume", h2.alias)
    assert res.code == 0 and "dispatcher started" in res.stderr, res.output


def test_cancel_kills_the_whole_process_group(h2):
    (job,) = h2.run_json("--gpus-per-job", "0", "--name", "stubborn", "--",
                         "sh -c 'trap \"\" TERM; sleep 600' & sleep 600")
    pgid = h2.wait(lambda js: js[job["id"]]["state"] == "running", timeout=20)[job["id"]]["pgid"]
    time.sleep(0.5)
    assert len(h2.sh(f"pgrep -g {pgid} || true").split()) >= 3
    res = h2.cli("cancel", h2.alias, "stubborn", "--grace", "2")
    assert res.code == 0, res.output
    assert "SIGKILL" in res.stdout
    assert h2.sh(f"pgrep -g {pgid} || true").split() == []
    assert h2.jobs()[job["id"]]["state"] == "cancelled"
    again = h2.cli("cancel", h2.alias, str(job["id"]))
    assert "already cancelled" in again.stderr


def test_twenty_jobs_on_four_gpus_zero_double_bookings(h2):
    h2.sh("rm -f ~/trace")
    cmd = ('echo "$CUDA_VISIBLE_DEVICES start $(date +%s.%N)" >> ~/trace; sleep 0.5; '
           'echo "$CUDA_VISIBLE_DEVICES end $(date +%s.%N)" >> ~/trace')
    jobs = h2.run_json("--sweep", "i=" + ",".join(str(i) for i in range(20)), "--name", "race", "--",
                       cmd + " # {i}")
    done = h2.wait_final([j["id"] for j in jobs], timeout=90)
    bad = [(j["id"], j["state"], j["exit_code"], j["reason"]) for j in done.values() if j["state"] != "done"]
    assert not bad, (bad, h2.sh("tail -30 ~/.migrate/dispatcher/agent.log"))
    holders: dict[str, int] = {}
    count = 0
    for line in h2.sh("cat ~/trace").splitlines():
        uuid, what, _ = line.split()
        if what == "start":
            assert uuid not in holders, f"{uuid} given to two jobs at once"
            holders[uuid] = 1
            count += 1
        else:
            holders.pop(uuid)
    assert count == 20


def test_foreign_processes_block_nvml_faults_degrade(h2):
    pids = [h2.gpu("--take", str(i), "--mib", "30000")["started_pid"] for i in (0, 1)]
    gpu_jobs = h2.run_json("--gpu-pool", "0,1", "--name", "polite", "--", "echo got $CUDA_VISIBLE_DEVICES")
    shared = h2.run_json("--gpu-pool", "0,1", "--name", "shared", "--allow-shared", "--min-free-mem", "40g", "--",
                         "true")
    gid, sid = gpu_jobs[0]["id"], shared[0]["id"]
    jobs = h2.wait(lambda js: f"in use by pid {pids[0]} (bob)" in js[gid]["reason"] and js[sid]["state"] == "done")
    assert jobs[gid]["state"] == "queued"
    view = json.loads(h2.cli("gpus", h2.alias, "--json").stdout)
    assert not view["fake"] and view["backend"] == "nvml" and "mock" in view["driver"]
    assert [d["verdict"] for d in view["devices"]] == ["busy", "busy", "free", "free"]
    assert view["devices"][0]["processes"][0]["user"] == "bob"
    assert view["devices"][0]["processes"][0]["used_mib"] == 30000
    h2.gpu("--nvml-error", "999")
    (cpu,) = h2.run_json("--gpus-per-job", "0", "--", "echo cpu still flows")
    jobs = h2.wait(lambda js: js[cpu["id"]]["state"] == "done" and "GPU view unavailable" in js[gid]["reason"])
    assert jobs[gid]["state"] == "queued"
    status = h2.cli("status", h2.alias)
    assert "Unknown Error" in status.stderr and "nvidia-ctk" in status.stderr
    h2.gpu("--nvml-error", "none", "--release", str(pids[0]))
    done = h2.wait_final([gid], timeout=40)[gid]
    assert done["state"] == "done" and done["gpu_uuids"] == [view["devices"][0]["uuid"]]


def test_a_job_waiting_for_a_foreign_process_starts_within_a_second_after_it_exits(h2):
    pid = h2.gpu("--take", "3", "--mib", "20000")["started_pid"]
    (job,) = h2.run_json("--gpu-pool", "3", "--name", "waiter", "--", "true")
    h2.wait(lambda js: f"in use by pid {pid} (bob)" in js[job["id"]]["reason"])
    time.sleep(0.3)  # free it between two NVML polls: the pidfd, not the poll, must notice
    freed = float(h2.sh(f"sudo kill {pid}; date +%s.%N"))
    started = h2.wait_final([job["id"]], timeout=20)[job["id"]]["started_at"]
    assert started - freed < 1.0, started - freed


@pytest.mark.parametrize("driver, call", [("v1", "nvmlDeviceGetComputeRunningProcesses"),
                                          ("v2", "nvmlDeviceGetComputeRunningProcesses_v2"),
                                          ("v3", "nvmlDeviceGetComputeRunningProcesses_v3")])
def test_each_driver_generation_shows_foreign_processes(h2, driver, call):
    """The process-list fallback for old drivers, run for real: the library lacks the newer calls."""
    h2.agent("stop")  # the next dispatcher loads the swapped library
    h2.gpu("--driver", driver)
    pid = h2.gpu("--take", "2")["started_pid"]
    (job,) = h2.run_json("--gpu-pool", "2", "--name", f"old-{driver}", "--", "true")
    h2.wait(lambda js: f"in use by pid {pid} (bob)" in js[job["id"]]["reason"])
    daemon = h2.daemon()["pid"]
    ran = {ln.split()[1] for ln in h2.sh("cat /var/log/migrate-mock-nvml.calls").splitlines()
           if ln.split()[0] == str(daemon)}
    assert call in ran
    newer = {"v1": ["_v2", "_v3"], "v2": ["_v3"], "v3": []}[driver]
    assert not [f for f in ran if any(f.endswith(v) and "Processes" in f for v in newer)]
    h2.gpu("--release", str(pid))
    assert h2.wait_final([job["id"]], timeout=20)[job["id"]]["state"] == "done"
    h2.agent("stop")
    h2.gpu("--driver", "v3")


def test_a_gpu_lost_mid_job_and_mig_instances(h2):
    (long_job,) = h2.run_json("--gpu-pool", "1", "--name", "outlives-loss", "--", "sleep 3; echo survived")
    h2.wait(lambda js: js[long_job["id"]]["state"] == "running")
    h2.gpu("--lose", "1")
    (second,) = h2.run_json("--gpu-pool", "1", "--name", "after-loss", "--", "true")
    h2.wait(lambda js: "GPU is lost" in js[second["id"]]["reason"])
    done = h2.wait_final([long_job["id"]], timeout=30)[long_job["id"]]
    assert done["state"] == "done" and "survived" in h2.cli("logs", h2.alias, str(long_job["id"])).stdout
    assert h2.jobs()[second["id"]]["state"] == "queued"
    h2.gpu("--restore", "1")
    assert h2.wait_final([second["id"]], timeout=30)[second["id"]]["state"] == "done"
    # MIG: GPU 0 in two instances, one taken by bob: a job goes to the other, by its MIG UUID
    state = h2.gpu("--mig", "0=2", "--take", "0:1", "--mib", "100")["state"]
    (mig_job,) = h2.run_json("--gpu-pool", "0", "--name", "on-mig", "--", "echo on $CUDA_VISIBLE_DEVICES")
    done = h2.wait_final([mig_job["id"]], timeout=30)[mig_job["id"]]
    assert done["gpu_uuids"] == [state["gpus"][0]["migs"][0]["uuid"]]


def test_unlisted_memory_above_the_measured_idle_baseline_blocks(h2):
    (learn,) = h2.run_json("--gpu-pool", "0", "--name", "learn", "--", "true")  # idle: 0 MiB used, no process
    assert h2.wait_final([learn["id"]])[learn["id"]]["state"] == "done"
    assert "idle baseline 0 MiB" in h2.sh("cat ~/.migrate/dispatcher/agent.log")
    # 400 MiB used by nobody NVML lists: under the fixed 512 MiB ceiling, over baseline + 256
    h2.gpu("--unlisted-mib", "0=400")
    (sneaky,) = h2.run_json("--gpu-pool", "0", "--name", "sneaky", "--", "true")
    jobs = h2.wait(lambda js: "idle threshold 256 MiB" in js[sneaky["id"]]["reason"])
    assert jobs[sneaky["id"]]["state"] == "queued"
    view = json.loads(h2.cli("gpus", h2.alias, "--json").stdout)
    assert view["devices"][0]["verdict"] == "busy"
    h2.gpu("--unlisted-mib", "0=0")
    assert h2.wait_final([sneaky["id"]], timeout=40)[sneaky["id"]]["state"] == "done"


def test_more_gpus_than_the_host_has_is_refused_at_submit(h2):
    res = h2.cli("run", h2.alias, "--gpus-per-job", "5", "--name", "huge", "--", "true")
    assert_one_line_error(res, "job 'huge' needs 5 GPUs; this host offers 4: 0, 1, 2, 3 "
                               "(NVIDIA H100 80GB HBM3 (sandbox mock))")


def test_a_reboot_marks_running_jobs_lost_and_pauses_the_queue(h2):
    (long_job,) = h2.run_json("--gpus-per-job", "0", "--", "sleep 600")
    h2.wait(lambda js: js[long_job["id"]]["state"] == "running")
    h2.reset_connection()
    subprocess.run(["docker", "restart", "-t", "5", h2.container], check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 90
    while True:
        try:
            h2.sh("true")
            break
        except Exception:
            h2.reset_connection()
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    res = h2.cli("status", h2.alias)
    assert res.code == 0, res.output
    assert "queue paused" in res.stderr and "rebooted" in res.stderr
    # issue 12.7: one sentence, readable ids, no Python lists
    assert res.stderr.count("queue paused") == 1 and "[" not in res.stderr, res.stderr
    assert f"the host rebooted while job {long_job['id']} ran (marked lost)" in res.stderr, res.stderr
    assert f"recorded meanwhile: job {long_job['id']} lost" in res.stderr, res.stderr
    assert h2.jobs()[long_job["id"]]["state"] == "lost"
    log = h2.cli("logs", h2.alias, str(long_job["id"])).stdout  # issue 12.6: its end is not known, only bounded
    assert "lost: no exit code, ended before " in log, log
    res = h2.run("--json", "--gpus-per-job", "0", "--", "echo after reboot")
    assert "queue on" in res.stderr and "is paused" in res.stderr
    (later,) = json.loads(res.stdout)["jobs"]
    time.sleep(2)
    assert h2.jobs()[later["id"]]["state"] == "queued"  # nothing starts by surprise
    res = h2.cli("resume", h2.alias)
    assert res.code == 0 and "resumed" in res.stderr, res.output
    assert h2.wait_final([later["id"]])[later["id"]]["state"] == "done"


def test_template_experiments_get_their_own_copies(h1, tmp_path):
    src = tmp_path / "proj"
    (src / ".git").mkdir(parents=True)
    (src / ".git" / "HEAD").write_text("x")
    (src / "train.py").write_text("print('train')\n")
    (src / "scratch.tmp").write_text("x")
    args = ("--gpus-per-job", "0", "--from-template", str(src), "--experiments", "a,b", "--ignore", "*.tmp", "--",
            "pwd; ls -A; echo exp={experiment} env=$MIGRATE_EXPERIMENT")
    jobs = h1.run_json(*args)
    done = h1.wait_final([j["id"] for j in jobs])
    for j, exp in zip(jobs, ("a", "b")):
        log = h1.cli("logs", h1.alias, str(j["id"])).stdout
        assert f"/home/alice/.migrate/runs/proj/{exp}\n" in log and f"exp={exp} env={exp}" in log
        assert "train.py" in log and ".git" not in log and "scratch.tmp" not in log
        assert done[j["id"]]["state"] == "done"
    again = h1.cli("run", h1.alias, *args)
    assert again.code == 2 and "already exists" in again.stderr


def test_tunnel_reaches_a_server_started_as_a_job(h1):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        local = s.getsockname()[1]
    (job,) = h1.run_json("--gpus-per-job", "0", "--name", "web", "--",
                         "echo tensorboard-stand-in > index.html; exec python3 -m http.server 18080 --bind 127.0.0.1")
    h1.wait(lambda js: js[job["id"]]["state"] == "running")
    tunnel = subprocess.Popen([sys.executable, "-m", "migrate", "tunnel", h1.alias, f"{local}:18080"],
                              env={**__import__("os").environ, **h1.env}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        body = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{local}/index.html", timeout=3).read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert "tensorboard-stand-in" in body
    finally:
        tunnel.terminate()
        _, err = tunnel.communicate(timeout=20)
    assert tunnel.returncode == 0 and "tunnel closed" in err
    assert h1.cli("cancel", h1.alias, "web", "--grace", "2").code == 0


def test_container_jobs_run_with_the_right_flags(h1):
    deadline = time.monotonic() + 300
    while "ready" not in h1.sh("[ -e /tmp/docker-ready ] && echo ready || true"):
        assert time.monotonic() < deadline, h1.sh("tail -5 /tmp/docker-install.log")
        time.sleep(2)
    h1.reset_connection()  # a new session has the docker group
    h1.remote.put_bytes(Path("/bin/busybox").read_bytes(), "/home/alice/busybox", mode=0o755)
    h1.sh("set -e; rm -rf /tmp/bb; mkdir -p /tmp/bb/bin /tmp/bb/tmp; cp ~/busybox /tmp/bb/bin/; "
          "for a in sh id cat sleep echo env; do ln -sf busybox /tmp/bb/bin/$a; done; "
          f"tar -C /tmp/bb -c . | docker import - {IMAGE} >/dev/null; mkdir -p ~/data; echo dataset > ~/data/x")
    res = h1.run("--json", "--image", IMAGE, "--gpus-per-job", "2", "--shm-size", "256m", "--mount", "~/data:/data:ro",
                 "--publish", "127.0.0.1:18081:80", "-e", "SECRET=s3cr3t", "--",
                 "id -u; cat /data/x; echo secret=$SECRET order=$CUDA_DEVICE_ORDER; sleep 8")
    (job,) = json.loads(res.stdout)["jobs"]
    # the dispatcher started before alice joined the docker group was restarted (by this or an earlier run)
    assert "group membership changed" in h1.sh("cat ~/.migrate/dispatcher/agent.log")
    running = h1.wait(lambda js: js[job["id"]]["state"] == "running")[job["id"]]
    name = running["container"]
    assert name == f"migrate-alice-{job['id']}"
    deadline = time.monotonic() + 30
    while True:
        found = json.loads(h1.sh(f"docker inspect {name} 2>/dev/null || true") or "[]")
        if found:
            break
        assert time.monotonic() < deadline, (h1.jobs()[job["id"]], h1.cli("logs", h1.alias, str(job["id"])).output)
        time.sleep(0.5)
    info = found[0]
    hc = info["HostConfig"]
    assert hc["DeviceRequests"][0]["DeviceIDs"] == running["gpu_uuids"]
    assert info["Config"]["User"] == "1000:1000" and hc["ShmSize"] == 256 * 1024 * 1024
    assert hc["Binds"] == ["/home/alice/data:/data:ro"] and hc["Init"] is True
    assert hc["PortBindings"]["80/tcp"][0] == {"HostIp": "127.0.0.1", "HostPort": "18081"}
    assert info["Config"]["Labels"]["migrate.job"] == str(job["id"])
    assert "--env-file" in h1.sh("ps -eo args | grep '[d]ocker run'")
    assert "s3cr3t" not in h1.sh("ps -eo args")  # the value goes through a 0600 --env-file, not argv
    done = h1.wait_final([job["id"]])[job["id"]]
    assert (done["state"], done["exit_code"]) == ("done", 0)
    log = h1.cli("logs", h1.alias, str(job["id"])).stdout
    assert "1000\ndataset\nsecret=s3cr3t order=PCI_BUS_ID" in log
    assert h1.sh(f"docker ps -aq --filter name={name}").strip() == ""  # removed after it ended
    (cpu,) = h1.run_json("--image", IMAGE, "--gpus-per-job", "0", "--name", "ctr-cancel", "--", "sleep 600")
    cname = h1.wait(lambda js: js[cpu["id"]]["state"] == "running")[cpu["id"]]["container"]
    deadline = time.monotonic() + 30
    while not h1.sh(f"docker ps -q --filter name={cname}").strip():
        assert time.monotonic() < deadline
        time.sleep(0.5)
    inspect = json.loads(h1.sh(f"docker inspect {cname}"))[0]
    assert inspect["HostConfig"]["IpcMode"] == "host" and "NVIDIA_VISIBLE_DEVICES=void" in inspect["Config"]["Env"]
    res = h1.cli("cancel", h1.alias, "ctr-cancel", "--grace", "3")
    assert res.code == 0 and "docker stop" in res.stdout, res.output
    assert h1.jobs()[cpu["id"]]["state"] == "cancelled"
    assert h1.sh(f"docker ps -aq --filter name={cname}").strip() == ""


def test_submit_jobs_api_is_idempotent_per_key(h2):
    from migrate.jobs.submit import DispatcherOptions, JobSpec, job_statuses, submit_jobs
    from migrate.remote.hosts import ConnectOptions

    jobs = [JobSpec(command=f"echo api {n}", name=f"api-{n}", gpus=0, key=f"test:api:{n}")
            for n in range(2)]
    first = submit_jobs(h2.alias, ConnectOptions(), jobs, DispatcherOptions())
    again = submit_jobs(h2.alias, ConnectOptions(), jobs, DispatcherOptions())
    assert [j.status for j in first] == ["queued", "queued"] and [j.status for j in again] == ["existing"] * 2
    assert [j.id for j in first] == [j.id for j in again] and first[0].key == "test:api:0"
    rows = {r["id"]: r for r in job_statuses(h2.alias, ConnectOptions())}
    assert rows[first[0].id]["name"] == "api-0" and rows[first[0].id]["key"] == "test:api:0"


def test_read_only_verbs_change_nothing_on_a_fresh_account(h1):
    bob = f"bob@{h1.alias}"  # same host, another user who never queued anything
    res = h1.cli("status", bob)
    assert res.code == 0 and "no jobs on bob@" in res.stderr, res.output
    assert json.loads(h1.cli("status", bob, "--json").stdout)["jobs"] == []
    assert_one_line_error(h1.cli("logs", bob, "1"), "no jobs on bob@")
    assert_one_line_error(h1.cli("cancel", bob, "--all"), "no jobs on bob@")
    assert h1.cli("gpus", bob).code == 0  # the agent runs from memory: it is not installed
    assert h1.sh("sudo test -e /home/bob/.migrate && echo exists || echo absent").strip() == "absent"


def test_user_errors_are_one_line(h2):
    assert_one_line_error(h2.cli("logs", h2.alias, "99999"), "no job '99999'")
    # issue 20.6: an id SQLite cannot hold was a remote OverflowError; the agent answers it itself (for
    # clients that do not check it first: this one refuses it before connecting, exit 2)
    for verb in ("logs", "cancel", "retry"):
        with pytest.raises(MigrateError, match="job id 1{38} is out of range"):
            h2.agent(verb, "1" * 38)
    assert h2.cli("logs", h2.alias, "1" * 38).code == 2
    assert_one_line_error(h2.cli("cancel", h2.alias, "nosuchjob"), "no job 'nosuchjob'")
    (job,) = h2.run_json("--gpus-per-job", "0", "--", "sleep 30")
    assert_one_line_error(h2.cli("retry", h2.alias, str(job["id"])), "not finished")
    bad = h2.cli("run", h2.alias, "--cwd", "/nonexistent", "--", "true")
    assert_one_line_error(bad, "does not exist on this host")
    dry = json.loads(h2.cli("cancel", h2.alias, "--all", "--dry-run", "--json").stdout)
    assert job["id"] in [j["id"] for j in dry["would_cancel"]]
    assert h2.jobs()[job["id"]]["state"] == "running"  # a dry run changes nothing
    res = h2.cli("cancel", h2.alias, "--all", "--grace", "1")
    assert res.code == 0 and "terminated (SIGTERM)" in res.stdout, res.output


def test_hard_mode_host_needs_linger_and_then_jobs_survive_logout(h2):
    """logind KillUserProcesses=yes (some hardened servers): setsid dies at logout, systemd --user + linger not."""
    h2.sh("sudo sh -c 'printf \"[Login]\\nKillUserProcesses=yes\\n\" > /etc/systemd/logind.conf.d/migrate-sandbox.conf"
          " && systemctl restart systemd-logind' && sleep 1")
    h2.reset_connection()
    warned = h2.run("--gpus-per-job", "0", "--", "true")
    assert "KillUserProcesses=yes" in warned.stderr and "--enable-linger" in warned.stderr
    res = h2.run("--enable-linger", "--gpus-per-job", "0", "--name", "survivor", "--", "sleep 8; echo survived")
    assert "enabled lingering" in res.stderr and "systemd" in res.stderr, res.output
    h2.reset_connection()
    time.sleep(12)  # past logind's UserStopDelaySec after the last session closed
    job = next(j for j in h2.jobs().values() if j["name"] == "survivor")
    done = h2.wait_final([job["id"]], timeout=30)[job["id"]]
    assert (done["state"], done["exit_code"]) == ("done", 0)
    assert h2.daemon()["mode"].startswith("systemd:")
    assert "survived" in h2.cli("logs", h2.alias, "survivor").stdout
