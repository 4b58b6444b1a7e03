"""`migrate wait`, `--notify` and `status -H` against real sshd hosts (dedicated sandbox `runq`, 3 hosts).

The dispatcher tests (test_dispatcher.py) use runq1 and runq2; the wait and notify jobs here run on
runq3, and the last test stops runq3 to show `status -H runq1 -H runq2 -H runq3` with a host down.
Jobs are short CPU jobs (`--gpus-per-job 0`): everything is real (agent, dispatcher, processes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.sandbox_host import SandboxHost

FAKE = "/home/alice/.migrate/fake-gpus.json"
BACKEND = f"fake:{FAKE}"


class Host(SandboxHost):
    def run(self, *args: str) -> list[dict]:
        res = self.cli("run", self.alias, "--gpu-backend", BACKEND, "--gpus-per-job", "0", "--json", *args)
        assert res.code == 0, res.output
        return json.loads(res.stdout)["jobs"]

    def states(self) -> dict[str, str]:
        res = self.cli("status", self.alias, "--all", "--json")
        assert res.code == 0, res.output
        return {str(j["id"]): j["state"] for j in json.loads(res.stdout)["jobs"]}


@pytest.fixture(scope="module")
def runq(dedicated_sandbox):
    from migrate.agent.gpus import fake_state

    hosts = [Host(h) for h in dedicated_sandbox("runq", 3, gpus=4)]
    h3 = hosts[2]
    h3.sh("mkdir -p ~/.migrate && chmod 700 ~/.migrate")
    h3.remote.put_bytes(json.dumps(fake_state(4)).encode(), FAKE, mode=0o600)
    yield hosts
    for h in hosts:
        h.reset_connection()


@pytest.fixture
def h3(runq):
    return runq[2]


def test_wait_for_the_last_run_all_done_exits_0(h3):
    jobs = h3.run("--sweep", "s=0,1", "--", "sleep {s}; echo slept {s}")
    t0 = time.monotonic()
    res = h3.cli("wait", h3.alias, "--interval", "0.3")
    assert res.code == 0, res.output
    assert time.monotonic() - t0 < 20
    lines = [ln for ln in res.stdout.splitlines() if " job " in ln]  # a pipe: one line per finished job
    assert len(lines) == 2 and all(" done, exit 0" in ln for ln in lines), res.stdout
    assert {ln.split()[2] for ln in lines} == {str(j["id"]) for j in jobs}
    assert "all 2 job(s) done" in res.stderr


def test_wait_one_failed_exits_1_and_lists_it_with_its_last_log_lines(h3):
    jobs = h3.run("--sweep", "c=0,3", "--", "echo marker-{c}; exit {c}")
    failed = str(jobs[1]["id"])
    res = h3.cli("wait", h3.alias, "--interval", "0.3", "--json")
    assert res.code == 1, res.output
    data = json.loads(res.stdout)
    assert not data["ok"] and [f["id"] for f in data["failed"]] == [failed]
    assert data["failed"][0]["exit_code"] == 3 and "marker-3" in data["failed"][0]["log_tail"]
    assert "1 of 2 job(s) did not succeed" in res.stderr and "marker-3" in res.stderr


def test_wait_timeout_exits_124_and_ctrl_c_exits_130_and_neither_stops_the_job(h3):
    [job] = h3.run("--", "sleep 60")
    jid = str(job["id"])
    try:
        res = h3.cli("wait", h3.alias, jid, "--timeout", "1", "--interval", "0.3")
        assert res.code == 124, res.output
        assert "timed out" in res.stderr and "keep running" in res.stderr
        env = {**os.environ, **h3.env, "COLUMNS": "200"}
        proc = subprocess.Popen([sys.executable, "-m", "migrate", "wait", h3.alias, jid, "--interval", "0.3"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 20
        # the wait has read the job once its first line is out
        line = proc.stderr.readline()
        assert "waiting for 1 job(s)" in line and time.monotonic() < deadline
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130, err
        assert "the jobs keep running" in err
        assert h3.states()[jid] in ("queued", "starting", "running")
    finally:
        h3.cli("cancel", h3.alias, jid, "--grace", "1")


RECEIVER = r"""
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
        with open(sys.argv[2], "a") as fh:
            fh.write(json.dumps({"path": self.path, "title": self.headers.get("Title"), "body": body}) + "\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def poll(predicate, timeout: float = 30, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out")


def test_the_host_posts_when_a_job_ends_and_a_failed_post_never_fails_it(h3):
    token = "tok-9f8e7d"
    h3.remote.put_bytes(RECEIVER.encode(), "/tmp/receiver.py", mode=0o600)
    h3.sh("rm -f /tmp/received.jsonl; nohup setsid python3 /tmp/receiver.py 18555 /tmp/received.jsonl "
          ">/dev/null 2>&1 </dev/null &")
    poll(lambda: h3.sh("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 18555))' "
                       "&& echo up", check=False).strip() == "up")
    res = h3.cli("run", h3.alias, "--gpu-backend", BACKEND, "--gpus-per-job", "0",
                 "--notify", f"http://127.0.0.1:18555/{token}", "--", "echo hi")
    assert res.code == 0 and token not in res.output, res.output
    assert "posts to plain http://127.0.0.1:18555 when the job ends" in res.stderr
    [got] = [json.loads(ln) for ln in poll(lambda: h3.sh("cat /tmp/received.jsonl", check=False)).splitlines()]
    assert got["path"] == f"/{token}" and " done on " in got["title"]
    assert re.fullmatch(r"job \d+ \(job-\d+\) done: exit 0 after \d+s", got["body"]), got
    # an unreachable webhook: the job is still done, its log says so, the token is nowhere
    [job] = h3.run("--notify", f"http://127.0.0.1:1/{token}", "--", "echo hi")
    log = poll(lambda: (lambda t: t if "notification to" in t else "")(h3.cli("logs", h3.alias, str(job["id"])).stdout))
    assert "[migrate] notification to plain http://127.0.0.1:1 failed" in log and token not in log
    assert h3.states()[str(job["id"])] == "done"
    assert token not in h3.sh("cat ~/.migrate/dispatcher/agent.log")
    h3.sh("pkill -f /tmp/receiver.py", check=False)


def test_wait_notify_posts_a_sweep_summary_from_this_machine(h3):
    from tests.unit.test_notify import Receiver

    receiver = Receiver()
    try:
        h3.run("--sweep", "c=0,1", "--", "exit {c}")
        res = h3.cli("wait", h3.alias, "--interval", "0.3", "--notify", f"{receiver.url}/hook", "--notify-format",
                     "slack")
        assert res.code == 1, res.output
        [(path, headers, body)] = receiver.got
        text = json.loads(body)["text"]
        assert path == "/hook" and text.startswith(f"✘ migrate: 2 jobs ended on {h3.alias}: 1 done, 1 failed")
        assert "failed: exit 1" in text and f"notified slack {receiver.url}" in res.stderr
    finally:
        receiver.close()


def test_sync_back_every_brings_a_checkpoint_while_it_runs_and_the_results_after_a_dropped_connection(
        h3, tmp_path):
    local = tmp_path / "results"
    job_cmd = ("mkdir -p ~/sb/out && echo step1 > ~/sb/out/ckpt1 && "
               "while [ ! -e ~/sb/go ]; do sleep 0.2; done; echo final > ~/sb/out/result")
    h3.sh("rm -rf ~/sb")
    [job] = h3.run("--sync-back", f"sb/out:{local}", "--every", "1s", "--", job_cmd)
    env = {**os.environ, **h3.env, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "wait", h3.alias, "--interval", "0.3"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        poll(lambda: (local / "ckpt1").exists(), timeout=30)  # pulled while the job still runs
        assert h3.states()[str(job["id"])] == "running" and not (local / "result").exists()
        # drop every SSH connection of alice's on the host (the wait's own included), then let the job end
        h3.sh("rm -f /tmp/sb-dropped; nohup setsid sh -c 'sleep 0.3; sudo pkill -f \"sshd: alic[e]\"; "
              "touch /tmp/sb-dropped' >/dev/null 2>&1 </dev/null &")

        def dropped() -> bool:
            h3.reset_connection()
            try:
                return h3.sh("[ -e /tmp/sb-dropped ] && echo yes", check=False).strip() == "yes"
            except Exception:  # our own connection was one of those dropped
                return False

        poll(dropped)
        h3.sh("touch ~/sb/go")
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (local / "result").read_text() == "final\n" and (local / "ckpt1").read_text() == "step1\n"
    assert "(final)" in err  # after the drop (Fabric reopens a dropped connection; a poll in flight says so)
    assert not list(local.rglob(".migrate-partial"))


def test_status_over_three_hosts_with_one_stopped_is_one_view(runq, h3):
    """Last in this module: it stops runq3 (the session's `sandbox down` removes it)."""
    import subprocess as sp

    h1, h2, _ = runq
    hosts = ["-H", h1.alias, "-H", h2.alias, "-H", h3.alias]
    [job] = h3.run("--", "true")
    res = h3.cli("status", *hosts, "--all", "--json")
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert [h["host"] for h in data["hosts"]] == [h1.alias, h2.alias, h3.alias] and not data["unreachable"]
    assert (h3.alias, job["id"]) in {(j["host"], j["id"]) for j in data["jobs"]}
    h3.reset_connection()
    sp.run(["docker", "stop", "-t", "1", h3.container], check=True, capture_output=True)
    t0 = time.monotonic()
    res = h3.cli("status", *hosts, "--connect-timeout", "3")
    assert res.code == 0, res.output  # two hosts answered
    assert time.monotonic() - t0 < 15  # in parallel: one connect timeout at most, not one per host
    down = [ln for ln in res.stdout.splitlines() if h3.alias in ln]
    assert len(down) == 1 and "unreachable" in down[0], res.stdout
    assert f"{h3.alias} did not answer" in res.stderr
    res = h3.cli("status", *hosts, "--json", "--connect-timeout", "3")
    data = json.loads(res.stdout)
    assert data["unreachable"] == [h3.alias] and [h["ok"] for h in data["hosts"]] == [True, True, False]
    res = h3.cli("status", "-H", h3.alias, "-H", "no-such-host.invalid", "--connect-timeout", "3")
    assert res.code == 1 and "none of the 2 hosts answered" in res.stderr
