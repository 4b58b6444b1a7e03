"""The agent as a whole on this machine: real daemon, real job processes, real SQLite, FAKE GPUs.

No SSH here (the sandbox integration tests cover that); this checks the dispatcher's behaviour
quickly: exit codes and logs, crash re-adoption, cancel of a whole process group, NVML faults,
foreign processes, reboot handling, and 20 jobs on 4 GPUs without a double booking.
"""

from __future__ import annotations

import os
import signal
import stat
import time

import pytest

from migrate.agent import procs
from migrate.agent.db import Queue
from tests.agent_helpers import LocalAgent
from tests.conftest import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def agent(tmp_path):
    a = LocalAgent(tmp_path / "home")
    a.home.mkdir()
    a.fake_gpus(4)
    yield a
    a.cleanup()


def test_jobs_run_with_exit_codes_logs_and_private_files(agent):
    jobs = agent.submit([
        {"command": "echo gpu=$CUDA_VISIBLE_DEVICES order=$CUDA_DEVICE_ORDER", "name": "ok"},
        {"command": "echo failing >&2; exit 3", "gpus": 1},
        {"command": "echo cpu=[$CUDA_VISIBLE_DEVICES]", "gpus": 0},
    ])
    done = agent.wait_final([j["id"] for j in jobs])
    a, b, c = (done[j["id"]] for j in jobs)
    assert (a["state"], a["exit_code"]) == ("done", 0)
    assert (b["state"], b["exit_code"]) == ("failed", 3)
    assert (c["state"], c["exit_code"]) == ("done", 0)
    log = agent.log_of(a["id"])
    assert f"gpu={a['gpu_uuids'][0]} order=PCI_BUS_ID" in log
    assert log.startswith(f"[migrate] job {a['id']} (ok) attempt 1 started") and "done: exit code 0" in log
    assert "failing" in agent.log_of(b["id"]) and "cpu=[]" in agent.log_of(c["id"])
    state = agent.home / "dispatcher"
    for d in (agent.home, state, state / "jobs", state / "jobs" / str(a["id"])):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, d
    for f in (state / "queue.db", state / "agent.log", state / "jobs" / str(a["id"]) / "output.log"):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f


def test_submit_is_refused_as_a_whole_on_bad_input(agent, tmp_path):
    res = agent.call("submit", "--no-start", stdin='{"jobs": [{"command": "true"}, {"command": "true", '
                     f'"cwd": "{tmp_path}/missing"}}]}}', ok=False)
    assert not res["ok"] and "does not exist" in res["error"]
    assert agent.jobs() == []


def test_kill9_dispatcher_mid_run_readopts_all_jobs_without_duplicates(agent, tmp_path):
    marks, release = tmp_path / "starts.txt", tmp_path / "release"
    release.mkdir()
    # each job ends when its release file appears, not after a sleep: a loaded machine once let a
    # `sleep 1` job end before the last one had started, and the "all running" wait never came true
    jobs = agent.submit([{"command": f"echo $MIGRATE_JOB_ID >> {marks}; "
                                     f"while [ ! -e {release}/$MIGRATE_JOB_ID ]; do sleep 0.1; done; exit {code}",
                          "gpus": 1} for code in (0, 4, 0, 7)])
    agent.wait(lambda js: all(j["state"] == "running" for j in js))
    os.kill(agent.daemon_pid(), signal.SIGKILL)
    (release / str(jobs[0]["id"])).touch()
    first_exit = agent.home / "dispatcher" / "jobs" / str(jobs[0]["id"]) / "exit"
    wait_until(first_exit.exists, timeout=10, what="job 1 to end while no dispatcher runs")
    assert agent.daemon_pid() is None
    agent.call("ensure", "--mode", "setsid")
    for job in jobs[1:]:
        (release / str(job["id"])).touch()
    done = agent.wait_final([j["id"] for j in jobs], timeout=30)
    assert [(done[j["id"]]["state"], done[j["id"]]["exit_code"]) for j in jobs] == [
        ("done", 0), ("failed", 4), ("done", 0), ("failed", 7)]
    started = marks.read_text().split()
    assert sorted(started) == sorted(str(j["id"]) for j in jobs)  # each job ran exactly once
    assert all(done[j["id"]]["attempt"] == 1 for j in jobs)


def test_cancel_kills_the_whole_process_group_even_if_it_ignores_sigterm(agent):
    (job,) = agent.submit([{"command": "sh -c 'trap \"\" TERM; sleep 300' & sleep 300", "gpus": 0}])
    running = agent.wait(lambda js: js[0]["state"] == "running")[0]
    wait_until(lambda: len(procs.group_members(running["pgid"])) >= 3, timeout=10, what="the job's 3 processes")
    res = agent.call("cancel", str(job["id"]), "--grace", "1")
    assert "SIGKILL" in res["cancelled"][0]["outcome"]
    assert procs.group_members(running["pgid"]) == []
    final = agent.job(job["id"])
    assert final["state"] == "cancelled" and final["exit_code"] in (137, 143)


def test_foreign_process_blocks_admission_until_it_leaves(agent):
    state = agent.fake_gpus(1)
    state["gpus"][0]["processes"] = [{"pid": 999999, "used_mib": 20480}]
    state["gpus"][0]["memory_used_mib"] = 20480
    agent.write_fake(state)
    (job,) = agent.submit([{"command": "true"}])
    waiting = agent.wait(lambda js: "in use by pid 999999" in js[0]["reason"])[0]
    assert waiting["state"] == "queued"
    time.sleep(1.5)
    assert agent.job(job["id"])["state"] == "queued"
    freed = time.time()
    agent.fake_gpus(1)
    started = agent.wait(lambda js: js[0]["started_at"] is not None, interval=0.1)[0]["started_at"]
    assert started - freed < 3.0  # 1 s NVML poll + launch; the benchmark measures it properly


def test_nvml_fault_keeps_cpu_jobs_flowing_and_gpu_jobs_wait(agent):
    state = agent.fake_gpus(2)
    release = agent.home / "release-long-job"  # not `sleep 4`: a loaded machine let it end before the check
    (long_job,) = agent.submit([{"command": f"while [ ! -e {release} ]; do sleep 0.1; done"}])
    agent.wait(lambda js: js[0]["state"] == "running")
    state["error"] = "Unknown Error"
    agent.write_fake(state)
    gpu_job, cpu_job = agent.submit([{"command": "true"}, {"command": "true", "gpus": 0}])
    agent.wait_final([cpu_job["id"]])
    jobs = agent.wait(lambda js: "GPU view unavailable" in next(j for j in js if j["id"] == gpu_job["id"])["reason"])
    by_id = {j["id"]: j for j in jobs}
    assert by_id[gpu_job["id"]]["state"] == "queued"
    assert by_id[long_job["id"]]["state"] == "running"  # running jobs are left alone
    assert "nvidia-ctk" in agent.call("status")["gpu_error"]
    state["error"] = None
    agent.write_fake(state)
    release.touch()
    done = agent.wait_final([gpu_job["id"], long_job["id"]], timeout=20)
    assert all(j["state"] == "done" for j in done.values())


def test_retries_rerun_a_failing_job_and_keep_one_log(agent, tmp_path):
    counter = tmp_path / "count"
    cmd = f"n=$(cat {counter} 2>/dev/null || echo 0); echo $((n+1)) > {counter}; [ $n -ge 1 ]"
    (job,) = agent.submit([{"command": cmd, "gpus": 0, "retries": 2}])
    final = agent.wait_final([job["id"]])[job["id"]]
    assert (final["state"], final["attempt"], final["exit_code"]) == ("done", 2, 0)
    log = agent.log_of(job["id"])
    assert "attempt 1 started" in log and "attempt 2 started" in log and "failed, queued again" in log


def test_a_launch_that_never_happened_is_queued_again_and_a_reboot_pauses(agent):
    agent.call("submit", "--no-start", "--backend", agent.backend, stdin='{"jobs": [{"command": "true"}]}')
    q = Queue(str(agent.home / "dispatcher" / "queue.db"))
    (ghost,) = q.jobs()
    q.reserve(ghost["id"], ["GPU-x"], ["0"], "no-such-token", procs.boot_identity())
    q.set_meta("boot_id", procs.boot_identity())
    agent.call("status")  # no dispatcher: the agent reconciles by itself
    assert agent.job(ghost["id"])["state"] == "queued" and agent.job(ghost["id"])["attempt"] == 0
    # now pretend the job was running before a reboot
    q.reserve(ghost["id"], ["GPU-x"], ["0"], "tok", "old-boot/1")
    q.mark_running(ghost["id"], 1, 1, 1)
    q.set_meta("boot_id", "old-boot/1")
    (later,) = agent.submit([{"command": "true"}])
    status = agent.call("status")
    assert "rebooted" in status["paused"]
    assert agent.job(ghost["id"])["state"] == "lost"
    time.sleep(1.5)
    assert agent.job(later["id"])["state"] == "queued"  # nothing starts by surprise
    assert "queue paused" in agent.job(later["id"])["reason"]
    res = agent.call("resume", "--backend", agent.backend, "--mode", "setsid")
    assert "rebooted" in res["was_paused"]
    assert agent.wait_final([later["id"]])[later["id"]]["state"] == "done"


def test_twenty_jobs_on_four_gpus_never_overlap(agent, tmp_path):
    trace = tmp_path / "trace"
    cmd = (f'echo "$CUDA_VISIBLE_DEVICES start $(date +%s.%N)" >> {trace}; sleep 0.3; '
           f'echo "$CUDA_VISIBLE_DEVICES end $(date +%s.%N)" >> {trace}')
    jobs = agent.submit([{"command": cmd} for _ in range(20)])
    done = agent.wait_final([j["id"] for j in jobs], timeout=60)
    assert all(j["state"] == "done" for j in done.values())
    spans: dict[str, list] = {}
    open_at: dict[str, float] = {}
    for line in trace.read_text().splitlines():
        uuid, what, t = line.split()
        if what == "start":
            assert uuid not in open_at, f"{uuid} given to two jobs at once"
            open_at[uuid] = float(t)
        else:
            spans.setdefault(uuid, []).append((open_at.pop(uuid), float(t)))
    assert sum(len(s) for s in spans.values()) == 20 and len(spans) == 4


def test_a_job_that_cannot_be_prepared_fails_alone_and_the_dispatcher_goes_on(agent):
    stdin = '{"jobs": [{"command": "true", "gpus": 0}, {"command": "echo next", "gpus": 0}]}'
    first, second = agent.call("submit", "--no-start", "--backend", agent.backend, stdin=stdin)["jobs"]
    jobs_dir = agent.home / "dispatcher" / "jobs"
    jobs_dir.mkdir(parents=True, exist_ok=True)
    (jobs_dir / str(first["id"])).write_text("not a directory")
    agent.call("ensure", "--backend", agent.backend, "--mode", "setsid")
    done = agent.wait_final([first["id"], second["id"]])
    assert done[first["id"]]["state"] == "failed" and "could not create its directory" in done[first["id"]]["reason"]
    assert done[second["id"]]["state"] == "done" and agent.daemon_pid() is not None



def test_logs_follow_ends_when_the_dispatcher_was_killed(agent):
    """Issue 12.1: `logs -f` reconciles by itself when no dispatcher runs, and says so, instead of hanging."""
    (job,) = agent.submit([{"command": "echo begin; sleep 3; echo end", "gpus": 0, "name": "f1"}])
    agent.wait(lambda js: js[0]["state"] == "running")
    os.kill(agent.daemon_pid(), signal.SIGKILL)
    res = agent.run("logs", "f1", "--follow", timeout=30)  # hung forever before the fix
    assert res.returncode == 0, res.stderr
    assert "end\n" in res.stdout and f"job {job['id']} done: exit code 0 after" in res.stdout, res.stdout
    assert 'MIGRATE-WARN {"warning": "the dispatcher is not running"' in res.stderr
    assert agent.job(job["id"])["state"] == "done"


def test_logs_follow_of_a_job_that_cannot_start_ends_with_the_reason(agent):
    (job,) = agent.submit([{"command": "true", "gpus": 0}], "--no-start")
    res = agent.run("logs", str(job["id"]), "--follow", timeout=30)
    assert res.returncode == 4 and "MIGRATE-ERROR" in res.stderr and "will not start" in res.stderr, res.stderr
