"""`migrate notebook`: the job it queues, reading Jupyter's URL from the log, the wait, --dry-run."""

from __future__ import annotations

import json

import pytest

from migrate.errors import MigrateError, UsageError
from migrate.jobs import notebook as nb
from migrate.jobs.spec import JobSpec
from tests.conftest import run_cli

LOG = """[migrate] 2026-01-01 attempt 1 started
[I 2026-01-01 ServerApp] Jupyter Server 2.14.2 is running at:
[I 2026-01-01 ServerApp] http://127.0.0.1:43121/lab?token=0a1b2c3d4e5f
[I 2026-01-01 ServerApp]     http://127.0.0.1:43121/lab?token=0a1b2c3d4e5f
    Or copy and paste one of these URLs:
        http://localhost:43121/lab?token=0a1b2c3d4e5f
"""


def test_find_server_reads_port_path_and_token_and_takes_the_last_attempt():
    assert nb.find_server("starting...\n") is None
    assert nb.find_server(LOG) == nb.Server(port=43121, path="/lab", token="0a1b2c3d4e5f")
    again = LOG + "[migrate] attempt 2 started\n  http://127.0.0.1:40000/lab?token=ffff\n"
    assert nb.find_server(again) == nb.Server(port=40000, path="/lab", token="ffff")
    # a container: the log names the container's 8888, the host port is the published one
    inside = "  http://0f3c2a1b9d8e:8888/lab?token=abc\n"
    assert nb.find_server(inside, published=41234) == nb.Server(port=41234, path="/lab", token="abc")


def test_the_job_binds_loopback_only_and_a_container_publishes_on_loopback_only():
    host_cmd = nb.jupyter_command(container=False)
    assert "--ip=127.0.0.1" in host_cmd and '--port="$port"' in host_cmd and "0.0.0.0" not in host_cmd
    assert host_cmd.startswith("port=$(python3 -c ") and "exec jupyter lab --no-browser" in host_cmd
    spec = nb.notebook_spec(JobSpec(command="jupyter", image="lab/torch:2", gpus=2), host_port=41234)
    assert spec.ports == ["127.0.0.1:41234:8888"] and "--port=8888" in spec.command
    assert spec.command.startswith('[ -w "${HOME:-/}" ] || export HOME=/tmp; exec jupyter lab')
    assert (spec.name, spec.gpus) == ("notebook", 2)
    assert nb.published_port({"ports": spec.ports}) == 41234
    assert nb.published_port({"ports": ["8888"]}) is None
    plain = nb.notebook_spec(JobSpec(command="jupyter", name="mine", python_env="nb"))
    assert (plain.ports, plain.name, plain.python_env) == ([], "mine", "nb")


def test_local_url_carries_the_token_and_brackets_ipv6():
    server = nb.Server(port=1, path="/lab", token="t0k")
    assert nb.local_url("127.0.0.1", 18888, server) == "http://127.0.0.1:18888/lab?token=t0k"
    assert nb.local_url("::1", 18888, server) == "http://[::1]:18888/lab?token=t0k"


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def reader(answers: list[tuple[dict | None, str]]):
    it = iter(answers)
    return lambda: next(it)


def test_wait_for_server_waits_through_queued_and_starting_until_the_url_shows():
    clock = Clock()
    seen: list[str] = []
    job, server = nb.wait_for_server(
        reader([({"id": 7, "state": "queued", "reason": "waiting for 1 free GPU"}, ""),
                ({"id": 7, "state": "running"}, "[migrate] started\n"),
                ({"id": 7, "state": "running"}, LOG)]),
        host="h", job_ref="7", timeout=60, clock=clock, sleep=clock.sleep,
        on_wait=lambda j: seen.append(nb.describe_wait(j)))
    assert job["id"] == 7 and server.port == 43121
    assert seen[0] == "job 7 queued: waiting for 1 free GPU"


def test_wait_for_server_a_job_that_ends_first_or_the_deadline_is_an_error_with_what_to_do():
    clock = Clock()
    with pytest.raises(MigrateError) as exc:
        nb.wait_for_server(reader([({"id": 7, "state": "failed", "exit_code": 127}, "jupyter: not found")]),
                           host="h", job_ref="7", timeout=60, clock=clock, sleep=clock.sleep)
    assert "failed (exit 127) before Jupyter listened" in str(exc.value) and "migrate logs h 7" in exc.value.hint
    queued = ({"id": 7, "state": "queued"}, "")
    with pytest.raises(MigrateError) as exc:
        nb.wait_for_server(reader([queued] * 10), host="h", job_ref="7", timeout=1, clock=clock,
                           sleep=clock.sleep)
    assert "is still queued after 1s" in str(exc.value)
    assert "--attach 7" in exc.value.hint and "migrate cancel h 7" in exc.value.hint
    with pytest.raises(UsageError, match="no job '9' on h"):
        nb.wait_for_server(reader([(None, "")]), host="h", job_ref="9", timeout=1, clock=clock, sleep=clock.sleep)


def test_dry_run_shows_the_job_and_the_forward_and_connects_to_nothing():
    res = run_cli("notebook", "nohost.invalid", "--env", "nb", "--gpus-per-job", "0", "--dry-run")
    assert res.code == 0, res.output
    assert "would queue on nohost.invalid: port=$(python3 -c" in res.stderr and "(env nb), 0 GPU(s)" in res.stderr
    assert "forward 127.0.0.1:<free port> -> nohost.invalid:localhost:" in res.stderr
    res = run_cli("notebook", "nohost.invalid", "--image", "lab/torch:2", "--local-port", "18888", "--dry-run",
                  "--json")
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert data["job"]["ports"] == ["127.0.0.1:<free port>:8888"] and data["job"]["image"] == "lab/torch:2"
    assert data["job"]["gpus"] == 1 and data["forward"].startswith("127.0.0.1:18888 -> ")


def usage_error(res, needle: str) -> None:
    """A usage mistake: exit 2, one `error:` line with a hint, no traceback."""
    assert res.code == 2 and "Traceback" not in res.output, res.output
    [line] = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert needle in line


def test_bad_input_is_one_line_before_connecting():
    usage_error(run_cli("notebook", "nohost.invalid", "--attach", "7", "--dry-run"), "--dry-run")
    usage_error(run_cli("notebook", "nohost.invalid", "--local-port", "99999"), "out of range")
    usage_error(run_cli("notebook", "nohost.invalid", "--env", "a", "--python-env", "b"), "two environments")
    usage_error(run_cli("notebook", "nohost.invalid", "--image", "BAD IMAGE"), "image")
    res = run_cli("notebook", "h", "--sync-back", "a:b")
    assert res.code == 2 and "No such option" in res.stderr


def test_a_cluster_name_is_refused_with_its_hosts(tmp_path, monkeypatch):
    from migrate.cluster import state
    from tests.unit.test_cluster import record

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record("lab"))
    res = run_cli("notebook", "lab", "--env", "nb", env={"MIGRATE_STATE_DIR": str(tmp_path)})
    usage_error(res, "lab is a cluster")
    assert "gpu1, gpu2" in res.stderr


# -- the forward: one on the host's ControlMaster (Host.forward), held until Ctrl-C or the master dies --

SERVER = nb.Server(port=41234, path="/lab", token="sekrit")
JOB = {"id": 7, "name": "notebook", "state": "running"}


def answers(*codes):
    """An `api_status` stand-in answering these codes in turn (then 200), recording each call."""
    calls = []
    it = iter(codes)

    def answer(bind, local, server):
        calls.append((bind, local, server.token))
        return next(it, 200)
    answer.calls = calls  # type: ignore[attr-defined]
    return answer


def interrupt_after(n):
    """A `sleep` that raises KeyboardInterrupt (Ctrl-C) on its n-th call."""
    left = [n]

    def sleep(_s):
        left[0] -= 1
        if left[0] <= 0:
            raise KeyboardInterrupt
    return sleep


def test_serve_forwards_on_the_host_prints_the_url_once_jupyter_answers_and_ctrl_c_returns_0(capsys):
    from tests.fakehost import FakeHost

    host = FakeHost()
    local = nb.pick_local_port("127.0.0.1")
    answer = answers("ConnectionRefusedError", 503)
    code = nb.serve(host, "box", JOB, SERVER, local=local, bind="127.0.0.1", open_browser=False, as_json=False,
                    answer=answer, sleep=interrupt_after(4))
    assert code == 0
    assert host.forwards() == [f"127.0.0.1:{local}:127.0.0.1:41234"]
    assert len(answer.calls) == 3  # refused, 503, then 200
    out, err = capsys.readouterr()
    assert out.count("token=sekrit") == 1 and out.strip() == f"http://127.0.0.1:{local}/lab?token=sekrit"
    assert "sekrit" not in err
    assert "forward closed; notebook job 7 keeps running on box" in err
    assert "migrate notebook box --attach 7" in err
    assert host.commands() == []  # no ssh of its own, nothing run on the host


def test_serve_json_prints_one_line():
    import io
    import sys

    from tests.fakehost import FakeHost

    local = nb.pick_local_port("127.0.0.1")
    buf, real = io.StringIO(), sys.stdout
    sys.stdout = buf
    try:
        nb.serve(FakeHost(), "box", JOB, SERVER, local=local, bind="127.0.0.1", open_browser=False, as_json=True,
                 answer=answers(), sleep=interrupt_after(1))
    finally:
        sys.stdout = real
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["job"] == 7 and data["local_port"] == local and data["remote_port"] == 41234


def test_serve_a_master_that_dies_is_one_line_with_the_attach_command():
    from tests.fakehost import FakeHost

    host = FakeHost(forwards_alive_for=3)  # one check while waiting for Jupyter, two while holding
    local = nb.pick_local_port("127.0.0.1")
    slept = []
    with pytest.raises(MigrateError) as exc:
        nb.serve(host, "box", JOB, SERVER, local=local, bind="127.0.0.1", open_browser=False, as_json=False,
                 answer=answers(), sleep=slept.append)
    msg = str(exc.value)
    assert "\n" not in msg and "the connection to box ended" in msg
    assert "`migrate notebook box --attach 7`" in msg
    assert len(slept) == 2
    assert host.forwards() == [f"127.0.0.1:{local}:127.0.0.1:41234"]


def test_serve_a_master_that_dies_before_jupyter_answers_is_an_error_not_a_url(capsys):
    from tests.fakehost import FakeHost

    host = FakeHost(forwards_alive_for=1)
    local = nb.pick_local_port("127.0.0.1")
    with pytest.raises(MigrateError, match="holding the forward ended"):
        nb.serve(host, "box", JOB, SERVER, local=local, bind="127.0.0.1", open_browser=False, as_json=False,
                 answer=answers(503), sleep=lambda s: None)
    assert "token=" not in capsys.readouterr().out


def test_serve_refuses_a_busy_local_port_before_forwarding():
    import socket

    from tests.fakehost import FakeHost

    host = FakeHost()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        busy = s.getsockname()[1]
        with pytest.raises(UsageError):
            nb.serve(host, "box", JOB, SERVER, local=busy, bind="127.0.0.1", open_browser=False, as_json=False,
                     answer=answers(), sleep=lambda s: None)
    assert host.forwards() == []
