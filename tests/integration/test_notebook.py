"""`migrate notebook` with a real JupyterLab: pushed with push-env to a shared sandbox host that reaches
no package index (as carol: no sudo, no docker), started as a job, forwarded on a real OpenSSH
ControlMaster (`ssh -O forward`), and asked over HTTP through the forward; the master killed, it says
how to reattach. The wheels come from this machine's push-env cache after the
first run (~46 MiB, 91 wheels). Jupyter's own start is most of the time (its imports took 45 s on
the shared 2-core machine at load 35; the whole test 21 s at load 17)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid

import pytest

from migrate.remote.connection import connect
from tests.conftest import run_cli, wait_until


@pytest.fixture
def carol_nb(sandbox_hosts, tmp_path):
    host = "carol@" + sandbox_hosts[0]["alias"]
    name = "nb" + uuid.uuid4().hex[:6]
    req = tmp_path / "requirements.txt"
    req.write_text("jupyterlab\n")
    res = run_cli("push-env", host, "--name", name, str(req), "--json", timeout=600)
    assert res.code == 0, res.output
    with connect(host) as remote:
        yield host, name, remote
        remote.run(f"rm -rf ~/.migrate/envs/{name}")


def start(host: str, *args: str) -> tuple[subprocess.Popen, dict]:
    """`migrate notebook ... --json` in its own process; its one JSON line once Jupyter answers."""
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "notebook", host, "--json", "--timeout", "180s",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    line = proc.stdout.readline()  # written once the forward answers (or EOF when it failed)
    if not line:
        proc.wait(timeout=10)
        raise AssertionError(proc.stderr.read())
    return proc, json.loads(line)


def get(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except urllib.error.URLError:  # refused: nothing listens
        return -1


def stop(proc: subprocess.Popen, sig: int) -> str:
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    return err


def ssh_master_of(pid: int) -> int:
    """The OpenSSH ControlMaster (`ssh -M`) that the process `pid` started: its forwards live there."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if ppid == pid and b"-M" in argv:
            return int(entry)
    raise AssertionError(f"no ssh master under {pid}")


def test_notebook_starts_jupyter_as_a_job_forwards_it_reattaches_and_cancel_ends_it(carol_nb):
    host, name, remote = carol_nb
    proc, info = start(host, "--env", name, "--gpus-per-job", "0")
    jid = str(info["job"])
    try:
        token = info["url"].split("token=", 1)[1]
        base = f"http://127.0.0.1:{info['local_port']}"
        assert get(info["url"]) == 200  # the printed URL opens the lab
        assert get(f"{base}/api/status", token) == 200
        assert get(f"{base}/api/status") == 403  # the token is needed
        port = info["remote_port"]
        listening = remote.run("cat /proc/net/tcp /proc/net/tcp6").stdout
        local_only = f"0100007F:{port:04X} 00000000:0000 0A"  # 127.0.0.1:PORT LISTEN
        assert local_only in listening and listening.count(f":{port:04X} 00000000:0000 0A") == 1, listening
        err = stop(proc, signal.SIGINT)
        assert f"--attach {jid}" in err and f"migrate cancel {host} {jid}" in err and token not in err
        wait_until(lambda: get(f"{base}/api/status", token) != 200, timeout=10)  # the forward is gone

        proc, again = start(host, "--attach", jid)
        assert again["job"] == info["job"] and again["remote_port"] == port
        assert get(again["url"]) == 200
        stop(proc, signal.SIGTERM)

        proc, again = start(host, "--attach", jid)  # the master dies: one line with --attach, non-zero
        os.kill(ssh_master_of(proc.pid), signal.SIGKILL)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode != 0, err
        assert f"the connection to {host} ended" in err and f"migrate notebook {host} --attach {jid}" in err, err
        assert token not in err
    finally:
        if proc.poll() is None:
            proc.kill()
        res = run_cli("cancel", host, jid, "--grace", "2")
    assert res.code == 0, res.output
    wait_until(lambda: f":{port:04X} 00000000:0000 0A" not in remote.run("cat /proc/net/tcp").stdout, timeout=20)
    res = run_cli("status", host, "--all", "--json")
    assert {str(j["id"]): j["state"] for j in json.loads(res.stdout)["jobs"]}[jid] == "cancelled"
