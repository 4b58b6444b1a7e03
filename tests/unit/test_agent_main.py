"""The agent's input checks (bad input: refused with a clear message, nothing queued) and log tails."""

from __future__ import annotations

import pytest

from migrate.agent.main import AgentError, _tail_offset, validate_spec


@pytest.mark.parametrize("spec,needle", [
    ({"command": ""}, "empty command"),
    ({"command": "x", "gpus": -1}, "gpus must be an integer from 0 to 64"),
    ({"command": "x", "gpus": True}, "gpus must be an integer"),
    ({"command": "x", "allow_shared": True}, "--allow-shared needs --min-free-mem"),
    ({"command": "x", "env": {"CUDA_VISIBLE_DEVICES": "0"}}, "set by the dispatcher"),
    ({"command": "x", "env": {"1BAD": "v"}}, "invalid environment variable name"),
    ({"command": "x", "cwd": "/nonexistent/dir"}, "does not exist on this host"),
    ({"command": "x", "mounts": ["/data:/data"]}, "mounts need a container image"),
    ({"command": "x", "image": "i", "mounts": ["/nonexistent/src:/d"]}, "does not exist on this host"),
    ({"command": "x", "image": "i", "mounts": ["rel:/d"]}, "must be an absolute path"),
    ({"command": "x", "image": "i", "shm_size": "lots"}, "bad shm size"),
    ({"command": "x", "image": "i", "ports": ["http"]}, "bad port mapping"),
    ({"command": "x", "image": "i", "cwd": "work"}, "must be absolute"),
    ({"command": "x", "image": "-it"}, "bad image"),
    ({"command": "x", "image": "x;touch /tmp/p"}, "bad image reference 'x;touch /tmp/p'"),
    ({"command": "x", "image": "Ubuntu"}, "must be lowercase"),
    ({"command": "x", "gpu": 1}, "unknown field(s) gpu"),
])
def test_bad_specs_are_refused(spec, needle):
    with pytest.raises(AgentError) as exc:
        validate_spec(spec, 0)
    assert needle in exc.value.message


def test_good_spec_is_normalised(tmp_path):
    out = validate_spec({"command": "x", "cwd": str(tmp_path), "env": {"A": "1"}, "image": None}, 0)
    assert out["cwd"] == str(tmp_path) and out["gpus"] == 1 and out["retries"] == 0 and out["mounts"] == []


def test_tail_offset(tmp_path):
    f = tmp_path / "log"
    f.write_bytes(b"".join(b"line %d\n" % i for i in range(100000)))
    with open(f, "rb") as fh:
        fh.seek(_tail_offset(str(f), 3))
        assert fh.read() == b"line 99997\nline 99998\nline 99999\n"
    assert _tail_offset(str(f), 10 ** 6) == 0


STALE = "waiting for a CPU slot (4 CPU jobs running, limit 4)"


@pytest.mark.parametrize("running,paused,expected", [
    (False, "", "not starting: the dispatcher is not running (`migrate resume` starts it)"),
    (True, "the host rebooted while job 9 ran (marked lost)",
     "queue paused: the host rebooted while job 9 ran (marked lost)"),
    (False, "the host rebooted", "queue paused: the host rebooted"),
    (True, "", STALE),  # a running dispatcher's own reason is current
])
def test_a_queued_job_shows_the_real_reason_it_waits(running, paused, expected):
    """Issue 12.5: with no dispatcher or a paused queue, the last admission reason is stale."""
    from migrate.agent.main import _job_view

    job = {"id": 3, "state": "queued", "reason": STALE, "started_at": None, "ended_at": None}
    assert _job_view(job, 0.0, running, paused)["reason"] == expected
    done = dict(job, state="done", reason="")
    assert _job_view(done, 0.0, running, paused)["reason"] == ""


def test_status_without_a_dispatcher_does_not_repeat_a_stale_cpu_slot_reason(tmp_path):
    import json
    import subprocess
    import sys

    from migrate.agent.db import Queue

    env = {"MIGRATE_AGENT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    root = str(__import__("pathlib").Path(__file__).resolve().parents[2])

    def agent(*args, stdin=None):
        res = subprocess.run([sys.executable, "-m", "migrate.agent", *args], input=stdin, capture_output=True,
                             text=True, env=dict(env, PYTHONPATH=root), timeout=60)
        return json.loads(res.stdout.strip().splitlines()[-1])

    (job,) = agent("submit", "--no-start", stdin='{"jobs": [{"command": "true", "gpus": 0}]}')["jobs"]
    Queue(str(tmp_path / "dispatcher" / "queue.db")).set_reasons({job["id"]: STALE})  # the dead dispatcher's
    (shown,) = agent("status")["jobs"]
    assert "CPU slot" not in shown["reason"] and "the dispatcher is not running" in shown["reason"]
