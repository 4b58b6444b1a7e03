"""`migrate shell` / `migrate exec` against a real sshd host (dedicated sandbox `shell`).

Process jobs run with the FAKE GPU backend; the container job runs in real Docker, installed on the
host by the fixture in the background while the process-job tests run (as test_dispatcher.py does).
The terminal tests drive `migrate shell` through a pseudo-terminal (`pty.fork`), as a person would.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import struct
import sys
import termios
import time
from pathlib import Path

import pytest

from migrate.jobs.client import AgentClient
from tests.conftest import assert_one_line_error
from tests.integration.sandbox_host import DOCKER_INSTALL, SandboxHost

FAKE = "/home/alice/.migrate/fake-gpus.json"
BACKEND = f"fake:{FAKE}"
IMAGE = "migrate-shell-busybox:test"


class Host(SandboxHost):
    cli_input = ""  # shell/exec read stdin: give them an empty one unless a test pipes something

    def run_job(self, *args: str) -> dict:
        res = self.cli("run", self.alias, "--gpu-backend", BACKEND, "--json", *args)
        assert res.code == 0, res.output
        (job,) = json.loads(res.stdout)["jobs"]
        return job

    def job(self, job_id: int) -> dict:
        jobs = AgentClient(self.remote).call(["status", "--all"], what="status")["jobs"]
        return next(j for j in jobs if j["id"] == job_id)

    def wait_state(self, job_id: int, state: str, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["state"] == state:
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.5)


def drive_pty(argv: list[str], env: dict, lines: list[bytes], *, size: tuple[int, int] = (33, 111),
              resize_to: tuple[int, int] | None = None, timeout: float = 60) -> tuple[int, str]:
    """Run argv on a new pseudo-terminal; after the first output, type `lines` one by one (after each
    but the first, once more output came), resizing the terminal before the last one; (exit code, output)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: migrate on the terminal
        try:
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    out, todo = b"", list(lines)
    deadline = time.monotonic() + timeout
    last_len, quiet_since = 0, time.monotonic()
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
            quiet_since = time.monotonic()
        if todo and len(out) > last_len and time.monotonic() - quiet_since > 0.5:
            if len(todo) == 1 and resize_to:
                fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", resize_to[0], resize_to[1], 0, 0))
                time.sleep(0.3)  # SIGWINCH reaches ssh, ssh tells the host
            os.write(fd, todo.pop(0))
            last_len = len(out)
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    return code, out.decode(errors="replace").replace("\r", "")


@pytest.fixture(scope="module")
def host(dedicated_sandbox):
    (info,) = dedicated_sandbox("shell", 1)
    h = Host(info)
    h.sh("rm -f /tmp/docker-ready; command -v docker >/dev/null && touch /tmp/docker-ready || " + DOCKER_INSTALL)
    from migrate.agent.gpus import fake_state

    h.sh("mkdir -p ~/.migrate && chmod 700 ~/.migrate && mkdir -p '/home/alice/work dir'")
    h.remote.put_bytes(json.dumps(fake_state(4)).encode(), FAKE, mode=0o600)
    yield h
    h.cli("cancel", h.alias, "--all", "--grace", "1")
    h.reset_connection()


@pytest.fixture(scope="module")
def process_job(host):
    job = host.run_job("--cwd", "~/work dir", "-e", "MYVAR=x y", "--name", "pj", "--", "sleep 900")
    return host.wait_state(job["id"], "running")


def pty_env(host: Host) -> dict:
    env = dict(os.environ, COLUMNS="200", **host.env)
    env.pop("MIGRATE_SUDO_PASSWORD", None)
    return env


def test_exec_passes_the_exit_code_and_keeps_stdout_and_stderr_apart(host, process_job):
    t0 = time.monotonic()
    res = host.cli("exec", host.alias, str(process_job["id"]), "--", "echo out; echo err >&2; exit 3")
    took = time.monotonic() - t0
    assert res.code == 3, res.output
    assert res.stdout == "out\n" and res.stderr.strip().splitlines()[-1] == "err"
    assert took < 15, took
    assert host.cli("exec", host.alias, "pj", "--", "true").code == 0
    piped = host.cli("exec", host.alias, "pj", "--", "wc", "-c", input="x" * 100_000)
    assert piped.code == 0 and piped.stdout.strip() == "100000", piped.output  # stdin is passed on


def test_exec_runs_with_the_process_jobs_dir_and_environment(host, process_job):
    res = host.cli("exec", host.alias, "pj", "--",
                   'echo "cwd=$PWD gpus=$CUDA_VISIBLE_DEVICES my=$MYVAR id=$MIGRATE_JOB_ID tok=$MIGRATE_JOB_TOKEN"')
    assert res.code == 0, res.output
    gpus = ",".join(process_job["gpu_uuids"])
    assert gpus.startswith("GPU-")
    assert res.stdout.strip() == f"cwd=/home/alice/work dir gpus={gpus} my=x y id={process_job['id']} tok="
    words = host.cli("exec", host.alias, "pj", "--", "printf", "[%s]", "a b", "$HOME", "*")
    assert words.code == 0 and words.stdout == "[a b][$HOME][*]", words.output  # several words: quoted


def test_shell_on_the_host_and_in_a_process_job_through_a_terminal(host, process_job):
    base = [sys.executable, "-m", "migrate", "shell", host.alias]
    code, out = drive_pty(base, pty_env(host), [b"echo where=$PWD; exit 7\n"])
    assert code == 7 and "where=/home/alice\n" in out, out
    code, out = drive_pty([*base, str(process_job["id"])], pty_env(host),
                          [b"stty size; echo where=$PWD gpu=$CUDA_VISIBLE_DEVICES\n", b"stty size; exit 7\n"],
                          size=(33, 111), resize_to=(44, 122))
    assert code == 7, out
    assert f"where=/home/alice/work dir gpu={','.join(process_job['gpu_uuids'])}\n" in out, out
    assert "33 111\n" in out and "44 122\n" in out, out  # the remote terminal follows the local window
    assert "Shared connection" not in out and "Traceback" not in out


def test_clear_errors_no_terminal_unknown_queued_and_finished_jobs(host):
    assert_one_line_error(host.cli("shell", host.alias), "migrate shell needs a terminal", "migrate exec")
    assert_one_line_error(host.cli("exec", host.alias, "999", "--", "true"), "no job '999'", "migrate status")
    blocker = host.run_job("--gpus-per-job", "1", "--name", "blocker", "--", "sleep 120")
    host.wait_state(blocker["id"], "running")
    queued = host.run_job("--gpus-per-job", "4", "--name", "toobig", "--", "true")   # 4 FAKE GPUs, 1 taken
    assert_one_line_error(host.cli("exec", host.alias, str(queued["id"]), "--", "true"),
                          f"job {queued['id']} (toobig) is queued, not running yet", "migrate logs")
    host.cli("cancel", host.alias, str(queued["id"]), str(blocker["id"]))
    done = host.run_job("--gpus-per-job", "0", "--name", "quick", "--", "exit 0")
    host.wait_state(done["id"], "done")
    res = host.cli("exec", host.alias, str(done["id"]), "--", "true")
    assert_one_line_error(res, f"job {done['id']} (quick) finished (exit 0) at ", "its processes are gone",
                          f"migrate logs HOST {done['id']}")


def _docker_ready(host: Host) -> None:
    deadline = time.monotonic() + 420
    while "ready" not in host.sh("[ -e /tmp/docker-ready ] && echo ready || true"):
        assert time.monotonic() < deadline, host.sh("tail -5 /tmp/docker-install.log")
        time.sleep(2)
    host.reset_connection()  # a new session has the docker group
    if IMAGE not in host.sh("docker images --format '{{.Repository}}:{{.Tag}}'"):
        host.remote.put_bytes(Path("/bin/busybox").read_bytes(), "/home/alice/busybox", mode=0o755)
        host.sh("set -e; rm -rf /tmp/bb; mkdir -p /tmp/bb/bin /tmp/bb/tmp; cp ~/busybox /tmp/bb/bin/; "
                "for a in sh id cat sleep echo env pwd stty printf; do ln -sf busybox /tmp/bb/bin/$a; done; "
                f"tar -C /tmp/bb -c . | docker import - {IMAGE} >/dev/null")


def test_exec_and_shell_inside_a_running_container_job(host):
    _docker_ready(host)
    # no GPU: the sandbox host has no NVIDIA runtime for `docker run --gpus`
    job = host.run_job("--image", IMAGE, "--gpus-per-job", "0", "--cwd", "/tmp", "-e", "MYVAR=in box",
                       "--name", "ctr", "--", "sleep 900")
    running = host.wait_state(job["id"], "running", timeout=120)
    assert running["container"] == f"migrate-alice-{job['id']}"
    res = host.cli("exec", host.alias, "ctr", "--",
                   'echo "id=$MIGRATE_JOB_ID uid=$(id -u) cwd=$(pwd) my=$MYVAR"; echo err >&2; exit 3')
    assert res.code == 3, res.output
    uid = host.sh("id -u").strip()
    assert res.stdout.strip() == f"id={job['id']} uid={uid} cwd=/tmp my=in box"
    assert res.stderr.strip().splitlines()[-1] == "err"
    code, out = drive_pty([sys.executable, "-m", "migrate", "shell", host.alias, str(job["id"])], pty_env(host),
                          [b"echo inside=$MIGRATE_JOB_ID at=$(pwd); exit 7\n"])
    assert code == 7 and f"inside={job['id']} at=/tmp\n" in out, out
    # an account outside the docker group reaches the container through (passwordless) sudo
    host.sh("sudo gpasswd -d alice docker >/dev/null")
    try:
        host.reset_connection()
        assert "permission denied" in host.remote.run("docker ps", check=False).stderr.lower()
        via_sudo = host.cli("-vv", "exec", host.alias, "ctr", "--", "echo uid=$(id -u)")
        assert via_sudo.code == 0 and via_sudo.stdout == f"uid={uid}\n", via_sudo.output
        assert "docker access: sudo" in via_sudo.stderr
    finally:
        host.sh("sudo gpasswd -a alice docker >/dev/null")
        host.reset_connection()
    assert host.cli("cancel", host.alias, "ctr", "--grace", "1").code == 0
    host.wait_state(job["id"], "cancelled")
    assert_one_line_error(host.cli("exec", host.alias, "ctr", "--", "true"), "was cancelled",
                          "its container is gone", "migrate logs")
