"""migrate's job launcher on a cluster (shipped/launcher.py) and how the laptop's JobApi routes to it.

The launcher's Ray side (tasks on warm workers) is exercised by tests/integration/test_cluster.py and
benchmarks/cluster.py; here: its job table, its HTTP answers (real HTTP, a fake task runner) and the
routing between it and Ray's own job API (a fake Ray answering like the dashboard).
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from migrate.cluster import plan, state
from migrate.cluster.jobapi import JobApi, JobApiError, NotOurs, check_verdict, job_api
from migrate.cluster.state import ClusterRecord, Node
from migrate.errors import ConnectError
from migrate.remote.hosts import ConnectOptions
from migrate.remote.openssh import ControlMaster, forward_spec
from tests.conftest import wait_until
from tests.fakehost import FakeHost

SHIPPED = Path(plan.__file__).parent / "shipped"


def load_launcher():
    spec = importlib.util.spec_from_file_location("migrate_ray_launcher", SHIPPED / "launcher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


launcher = load_launcher()


class FakeRunner:
    """Stands in for Launcher: records submissions, 'starts' them at once, stops on request."""

    def __init__(self, book) -> None:
        self.book = book
        self.submitted: list[dict] = []

    def submit(self, body: dict) -> str:
        if body.get("entrypoint") == "boom":
            raise RuntimeError("the task could not be submitted")
        job = self.book.add(body)
        self.submitted.append(body)
        self.book.update(job["submission_id"], status="RUNNING", driver_node_id="n1", pid=4242)
        return job["submission_id"]

    def stop(self, sid: str, grace: float = launcher.STOP_WAIT_S) -> bool:
        self.graces = [*getattr(self, "graces", []), grace]
        self.book.update(sid, status="STOPPED", message="stopped")
        return True


class FakeRay(BaseHTTPRequestHandler):
    """The dashboard's job API, with one gang job and the launcher's own Ray job."""

    jobs = [{"submission_id": "lab-9", "status": "RUNNING", "metadata": {"migrate_id": "9", "migrate_nodes": "2"}},
            {"submission_id": "lab-launcher-1", "status": "RUNNING", "metadata": {"migrate_role": "launcher"}}]
    posted: list[dict] = []

    def log_message(self, *args):
        pass

    def reply(self, code: int, data) -> None:
        body = json.dumps(data).encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/api/jobs/":
            return self.reply(200, self.jobs)
        if self.path == "/api/jobs/lab-9":
            return self.reply(200, self.jobs[0])
        if self.path == "/api/jobs/lab-9/logs":
            return self.reply(200, {"logs": "rank 0\n"})
        return self.reply(404, {"error": "no such job"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        FakeRay.posted.append(body)
        if self.path == "/api/jobs/lab-9/stop":
            return self.reply(200, {"stopped": True})
        return self.reply(200, {"submission_id": body["submission_id"]})


@pytest.fixture
def servers(tmp_path):
    """(api, runner, book): a real launcher HTTP server over a FakeRunner, and a fake Ray dashboard."""
    book = launcher.Book(str(tmp_path / "launcher-lab.json"))
    runner = FakeRunner(book)
    lsrv = ThreadingHTTPServer(("127.0.0.1", 0), launcher.handler_for(book, runner, dashboard=1))
    rsrv = ThreadingHTTPServer(("127.0.0.1", 0), FakeRay)
    FakeRay.posted = []
    for srv in (lsrv, rsrv):
        threading.Thread(target=srv.serve_forever, daemon=True).start()
    api = JobApi(f"http://127.0.0.1:{rsrv.server_address[1]}",
                 launcher_url=f"http://127.0.0.1:{lsrv.server_address[1]}", timeout=5)
    yield api, runner, book
    for srv in (lsrv, rsrv):
        srv.shutdown()
        srv.server_close()


def body(sid: str, nodes: int = 0, gpus: int = 1) -> dict:
    return {"entrypoint": f"run {sid}", "submission_id": sid, "entrypoint_num_gpus": gpus, "entrypoint_num_cpus": 0,
            "runtime_env": {"env_vars": {"MIGRATE_JOB_ID": sid}},
            "metadata": {"migrate_id": sid.split("-")[-1], "migrate_nodes": str(nodes)}}


def test_single_node_jobs_go_to_the_launcher_and_gang_jobs_to_ray(servers):
    api, runner, book = servers
    assert api.probe_launcher() and api.launcher == api.launcher_url
    assert api.submit(body("lab-1")) == "lab-1"
    assert [b["submission_id"] for b in runner.submitted] == ["lab-1"] and FakeRay.posted == []
    assert api.submit(body("lab-2", nodes=2)) == "lab-2"
    assert [b["submission_id"] for b in FakeRay.posted] == ["lab-2"] and len(runner.submitted) == 1


def test_jobs_lists_both_sides_in_one_shape_without_the_launchers_own_ray_job(servers):
    api, runner, book = servers
    api.probe_launcher()
    api.submit(body("lab-1"))
    jobs = {j["submission_id"]: j for j in api.jobs()}
    assert set(jobs) == {"lab-1", "lab-9"}
    mine = jobs["lab-1"]
    assert mine["status"] == "RUNNING" and mine["driver_node_id"] == "n1"
    assert mine["entrypoint"] == "run lab-1" and mine["runtime_env"]["env_vars"] == {"MIGRATE_JOB_ID": "lab-1"}
    assert mine["metadata"]["migrate_id"] == "1" and mine["entrypoint_num_gpus"] == 1
    assert mine["start_time"] > 0 and mine["end_time"] is None and mine["driver_exit_code"] is None


def test_job_logs_and_stop_ask_the_launcher_first_and_fall_back_to_ray_on_404(servers):
    api, runner, book = servers
    api.probe_launcher()
    api.submit(body("lab-1"))
    assert api.job("lab-1")["status"] == "RUNNING"
    assert api.job("lab-9")["metadata"]["migrate_nodes"] == "2"          # a Ray (gang) job
    assert api.logs("lab-9") == "rank 0\n"
    assert api.stop("lab-1", grace=25) is True and api.job("lab-1")["status"] == "STOPPED"
    assert runner.graces == [25.0]                                     # --grace reaches the launcher
    assert api.stop("lab-9", grace=25) is True and FakeRay.posted[-1] == {}   # Ray's own stop takes none
    with pytest.raises(JobApiError) as err:
        api.job("lab-404")
    assert err.value.status == 404 and "Ray's job API answered 404" in err.value.message


def test_a_duplicate_id_is_refused_and_a_failing_submit_is_a_500_not_a_dropped_connection(servers):
    api, runner, book = servers
    api.probe_launcher()
    api.submit(body("lab-1"))
    with pytest.raises(JobApiError) as dup:
        api.submit(body("lab-1"))
    assert dup.value.status == 400 and "already exists" in dup.value.message
    with pytest.raises(JobApiError) as boom:
        api.submit({**body("lab-3"), "entrypoint": "boom"})
    assert boom.value.status == 500 and "RuntimeError: the task could not be submitted" in boom.value.message
    assert api.probe_launcher()          # still serving


def test_without_a_launcher_every_job_is_a_ray_job(servers):
    api, runner, book = servers
    plain = JobApi(api.base, launcher_url="http://127.0.0.1:9", timeout=5)    # nothing listens there
    assert plain.probe_launcher() is False and plain.launcher is None
    plain.submit(body("lab-5"))
    assert [b["submission_id"] for b in FakeRay.posted] == ["lab-5"] and runner.submitted == []
    assert [j["submission_id"] for j in plain.jobs()] == ["lab-9"]
    with pytest.raises(ConnectError, match="migrate's launcher on the head is not answering"):
        plain._call("GET", "/api/launcher", base=plain.launcher_url)


def test_the_book_is_private_and_a_restarted_launcher_marks_unfinished_jobs_failed(tmp_path):
    path = tmp_path / "launcher-lab.json"
    book = launcher.Book(str(path))
    book.add(body("lab-1"))
    book.add(body("lab-2"))
    book.update("lab-2", status="SUCCEEDED", driver_exit_code=0)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = launcher.Book(str(path))
    assert again.jobs["lab-1"]["status"] == "FAILED" and "restarted" in again.jobs["lab-1"]["message"]
    assert again.jobs["lab-2"]["status"] == "SUCCEEDED"
    path.write_text("{not json")
    assert launcher.Book(str(path)).jobs == {}


def test_the_commands_environment_has_the_jobs_variables_its_gpus_and_the_gcs_address():
    env = launcher.child_environment({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1,2,3", "RAY_RAYLET_PID": "9"},
                                     {"MIGRATE_JOB_ID": "7", "MYVAR": "x y"}, ["2"], "10.0.0.1:26379")
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["MIGRATE_JOB_ID"] == "7" and env["MYVAR"] == "x y"
    assert env["RAY_ADDRESS"] == "10.0.0.1:26379" and env["PATH"] == "/bin" and "RAY_RAYLET_PID" not in env
    cpu = launcher.child_environment({"CUDA_VISIBLE_DEVICES": "0,1"}, {}, [], "h:1")
    assert cpu["CUDA_VISIBLE_DEVICES"] == ""      # a CPU job sees no GPU


def test_the_launcher_runs_as_a_ray_job_on_the_head_with_quoted_arguments():
    ports = plan.ports_from(30000)
    p = plan.launcher_payload("lab", ports, stamp=5)
    assert p["submission_id"] == "lab-launcher-5" and p["metadata"]["migrate_role"] == "launcher"
    assert "entrypoint_num_gpus" not in p and "entrypoint_num_cpus" not in p     # Ray keeps it on the head
    assert p["entrypoint"] == (f'"$HOME"/.migrate/ray/{plan.RAY_VERSION}/bin/python '
                               '"$HOME"/.migrate/ray/bin/migrate-ray-launcher.py '
                               '--socket "$HOME"/.migrate/ray/sock/lab.sock '
                               f"--dashboard {ports.dashboard} "
                               '--state "$HOME"/.migrate/ray/launcher-lab.json')


def _head_record(home: str = "/home/u") -> ClusterRecord:
    return ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                         nodes=[Node(host="user@10.0.0.5", ip="10.0.0.5", head=True)], head_home=home)


def test_the_forwards_reach_the_launcher_socket_only_after_the_head_check_on_the_same_host():
    head = FakeHost().reply(r"--check", json.dumps({"dashboard": "ours", "launcher": True, "home": "/home/u"}))
    record = _head_record()
    with job_api(record, ConnectOptions(), use_launcher=False, connect=lambda rec, conn: head) as api:
        assert api.base.startswith("http://127.0.0.1:") and api.launcher_url
    kinds = [(r.kind, r.command) for r in head.log]
    assert kinds[0][0] == "run" and kinds[0][1] == plan.head_check_command("lab", plan.Ports())
    dash, sock = head.forwards()
    assert dash == f"127.0.0.1:{api.base.rsplit(':', 1)[1]}:127.0.0.1:{plan.Ports().dashboard}"
    assert sock == f"127.0.0.1:{api.launcher_url.rsplit(':', 1)[1]}:/home/u/.migrate/ray/sock/lab.sock"
    assert [r.kind for r in head.log] == ["run", "forward", "forward"] and head.closed


class HeadWhoseLauncherComesUp(FakeHost):
    """The head check finds no launcher socket until `up` is set (a launcher `cluster up` just started)."""

    up = False

    def _answer(self, command: str):
        if "--check" in command:
            self.reply("--check", json.dumps({"dashboard": "ours", "launcher": self.up, "home": "/home/u"}))
            self.replies.insert(0, self.replies.pop())
        return super()._answer(command)


def test_a_launcher_that_starts_after_the_connection_opened_is_forwarded_once_it_is_there():
    """cluster up submits the launcher on an open job API: it must not wait out its deadline because
    the socket was missing when the connection opened (it used to: 90 s lost on every `cluster up`)."""
    head = HeadWhoseLauncherComesUp()
    with job_api(_head_record(), ConnectOptions(), use_launcher=False, connect=lambda rec, conn: head) as api:
        assert api.launcher_url is None and not api.attach_launcher()
        assert len(head.forwards()) == 1                     # the dashboard only
        head.up = True
        assert api.attach_launcher() and api.attach_launcher()   # forwarded once, then kept
        assert api.launcher_url and api.launcher_url.startswith("http://127.0.0.1:")
    assert head.forwards()[1].endswith(":/home/u/.migrate/ray/sock/lab.sock") and len(head.forwards()) == 2
    assert sum("--check" in c for c in head.commands()) == 3  # the first check, one miss, one find


@pytest.mark.parametrize("answer", [{"dashboard": "other", "launcher": True}, {"dashboard": "none"}])
def test_no_forward_is_opened_when_the_dashboard_port_is_not_ours(answer):
    head = FakeHost().reply(r"--check", json.dumps(answer))
    with pytest.raises(NotOurs), job_api(_head_record(), ConnectOptions(), connect=lambda rec, conn: head):
        pytest.fail("the job API was handed out")
    assert head.forwards() == [] and head.closed


def test_a_head_that_cannot_run_the_check_is_a_connect_error_with_its_reason():
    head = FakeHost().reply(r"--check", "", exit_code=2, stderr="python3: can't open file\n")
    with pytest.raises(ConnectError, match="cannot check the head user@10.0.0.5: python3: can't open file"), \
            job_api(_head_record(), ConnectOptions(), connect=lambda rec, conn: head):
        pass
    assert head.forwards() == []


def test_a_forward_is_ssh_s_L_value_on_the_master_for_a_port_or_a_unix_socket():
    assert forward_spec(41000, 28265) == "127.0.0.1:41000:127.0.0.1:28265"
    assert forward_spec(41001, "/home/u/s.sock") == "127.0.0.1:41001:/home/u/s.sock"
    assert forward_spec(8080, 80, bind="0.0.0.0", remote_host="web") == "0.0.0.0:8080:web:80"
    with pytest.raises(ValueError):
        forward_spec(1, "relative.sock")
    master = ControlMaster(["ssh", "-o", "BatchMode=yes", "gpu"], alias="gpu", display="u@gpu")
    argv = master.control_argv("forward", "127.0.0.1:1:/s")
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"] and argv[-5:] == ["-O", "forward", "-L", "127.0.0.1:1:/s", "gpu"]
    assert argv[argv.index("-S") + 1] == master.socket


def test_records_from_before_the_unix_socket_launcher_still_load():
    rec = ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.ports_from(30000),
                        nodes=[Node(host="h", ip="10.0.0.5", head=True)])
    old = rec.to_dict()
    old["ports"]["launcher"] = rec.ports.dashboard + 1       # a record from the TCP launcher's days
    del old["ports"]["autoscaler_metrics"]                   # ... and before the metrics ports were pinned
    back = state.ClusterRecord.from_dict(old)
    assert back.ports == rec.ports and back.ports.autoscaler_metrics == 30000 + 8


def test_metrics_ports_are_pinned_on_the_head_and_checked_at_preflight():
    ports = plan.ports_from(30000)
    env = plan.start_env([], head=True, auth_token_path="/t", ports=ports)
    assert env["AUTOSCALER_METRIC_PORT"] == str(ports.autoscaler_metrics) == "30008"
    assert env["DASHBOARD_METRIC_PORT"] == "30009"
    assert {ports.autoscaler_metrics, ports.dashboard_metrics} <= set(ports.head_ports())
    assert "AUTOSCALER_METRIC_PORT" in plan.head_start_command(ports, "10.0.0.1", [], 1)


def test_listener_owner_reads_the_listening_sockets_uid():
    me, other = os.getuid(), os.getuid() + 1
    port = 28265
    loop, anyaddr = launcher._hex_endpoint("127.0.0.1", port), launcher._hex_endpoint("0.0.0.0", port)
    assert loop == "0100007F:6E69"
    assert launcher.listener_owner(port, [(loop, "00000000:0000", "0A", me)]) == "ours"
    assert launcher.listener_owner(port, [(loop, "00000000:0000", "0A", other)]) == "other"
    assert launcher.listener_owner(port, [(anyaddr, "00000000:0000", "0A", other)]) == "other"
    assert launcher.listener_owner(port, [(loop, "0100007F:9C40", "01", other)]) == "none"   # not listening
    assert launcher.listener_owner(port, []) == "none"


def test_owned_connection_proves_the_accepting_end_on_the_connection_itself():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), FakeRay)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        conn = launcher.owned_connection(srv.server_address[1], timeout=5)   # our own listener: accepted
        conn.request("GET", "/api/version")
        assert conn.getresponse().status in (200, 404)
        conn.close()
        assert launcher.check("/nonexistent/dir/x.sock", srv.server_address[1])["dashboard"] == "ours"
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_token_is_refused_to_a_dashboard_port_that_is_not_ours():
    rec = ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                        nodes=[Node(host="h1", ip="10.0.0.5", head=True)], auth_token="secret")
    check_verdict(rec, {"dashboard": "ours"})
    for owner, words in (("other", "another user's process"), ("none", "nothing listens")):
        with pytest.raises(NotOurs) as exc:
            check_verdict(rec, {"dashboard": owner})
        assert words in exc.value.message and "secret" not in exc.value.message
        assert "--restart" in (exc.value.hint or "")


def test_the_launcher_serves_on_a_private_unix_socket(tmp_path):
    import http.client
    import socket as socketlib
    from socketserver import ThreadingUnixStreamServer

    book = launcher.Book(str(tmp_path / "book.json"))
    path = str(tmp_path / "sock" / "lab.sock")
    launcher.private_socket_dir(path)
    assert (os.stat(tmp_path / "sock").st_mode & 0o777) == 0o700
    srv = ThreadingUnixStreamServer(path, launcher.handler_for(book, None, dashboard=1, token="tok"))
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    class UnixConnection(http.client.HTTPConnection):
        def connect(self):
            self.sock = socketlib.socket(socketlib.AF_UNIX)
            self.sock.connect(path)
    try:
        for header, code in (({}, 401), ({"Authorization": "Bearer tok"}, 200)):
            c = UnixConnection("localhost")
            c.request("GET", "/api/launcher", headers=header)
            assert c.getresponse().status == code
            c.close()
        assert launcher.check(path, 1)["launcher"] is True
    finally:
        srv.shutdown()
        srv.server_close()
    os.chmod(tmp_path / "sock", 0o755)                 # a directory others can reach is not trusted
    assert launcher.check(path, 1)["launcher"] is False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pid: int, seconds: float) -> bool:
    wait_until(lambda: not _alive(pid), timeout=seconds, interval=0.1, what=f"pid {pid} to end")
    return True


def test_a_dead_worker_takes_its_jobs_group_with_it_and_a_finished_job_leaves_no_watcher():
    worker = subprocess.Popen(["sleep", "60"])
    job = subprocess.Popen(["sh", "-c", "sleep 60 & wait"], start_new_session=True)
    launcher.fate_share(worker.pid, job.pid)
    time.sleep(1.5)
    assert _alive(job.pid)                       # the worker lives: the job is left alone
    worker.kill()
    worker.wait()
    assert _wait_gone(job.pid, 5)                # ... and goes with it (SIGKILL to the whole group)
    job.wait()
    assert job.returncode == -9
    other_worker = subprocess.Popen(["sleep", "60"])
    short = subprocess.Popen(["sh", "-c", "sleep 1"], start_new_session=True)
    launcher.fate_share(other_worker.pid, short.pid)
    short.wait()

    def no_watcher() -> bool:
        pgrep = subprocess.run(["pgrep", "-f", f"kill -0 {other_worker.pid} "], capture_output=True, text=True)
        return pgrep.stdout.strip() == ""
    wait_until(no_watcher, timeout=10, what="the watcher to end with the job's group")
    assert _alive(other_worker.pid)
    other_worker.kill()
    other_worker.wait()


@pytest.mark.parametrize("gpus", [0, 2])
def test_one_next_attempt_rule_for_the_launcher_and_the_laptops_retry(gpus, monkeypatch):
    """The rule exists once, in the agent (raynode.next_attempt): the launcher retries with it, and the
    laptop's `retry` (and its resubmission of plain Ray jobs) build the same body."""
    from migrate.agent import raynode
    from migrate.cluster import jobs
    from migrate.jobs.spec import JobSpec

    rec = ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                        nodes=[Node(host="h", ip="10.0.0.5", gpus=["0", "1"], head=True)])
    first = jobs.payload(rec, JobSpec(command="train", gpus=gpus, retries=2, env={"A": "b c"}), "5")
    assert raynode.retries_left(first) == 2
    second = raynode.next_attempt(first, use_retry=True)
    assert second == jobs.again(first, use_retry=True)
    assert (second["entrypoint_num_gpus"], second["entrypoint_num_cpus"]) == (
        first["entrypoint_num_gpus"], first["entrypoint_num_cpus"])
    assert second["submission_id"] == "lab-5.2" and second["runtime_env"]["env_vars"]["MIGRATE_JOB_ATTEMPT"] == "2"
    assert raynode.retries_left(second) == 1 and raynode.retries_left(jobs.again(first)) == 2  # `retry`: no use
    assert raynode.next_attempt(second, use_retry=True)["submission_id"] == "lab-5.3"
    assert raynode.retries_left({"metadata": {"migrate_retries": "3"}}) == 0      # not a migrate job
    book = launcher.Book(str(Path(launcher.__file__).parent / "unused.json"))   # the launcher uses that rule
    submitted = []
    fake = type("L", (), {"book": book, "submit": lambda self, body: submitted.append(body)})()
    monkeypatch.setattr(book, "save", lambda: None)
    book.jobs[first["submission_id"]] = dict(first, status="RUNNING")
    launcher.Launcher.fail(fake, first["submission_id"], "the command exited with code 1")
    assert submitted == [second] and book.jobs["lab-5"]["message"].endswith("; retrying")


# -- Ray's token authentication -------------------------------------------------------------------------
def test_ray_starts_with_token_auth_from_a_file_and_the_token_is_in_no_command_line():
    path = "/home/alice/.migrate/ray/auth-token"
    head = plan.head_start_command(plan.Ports(), "10.0.0.1", ["0"], 4, auth_token_path=path)
    worker = plan.worker_start_command(plan.Ports(), "10.0.0.1", "10.0.0.2", [], 4, auth_token_path=path)
    for cmd in (head, worker):
        assert "RAY_AUTH_MODE=token" in cmd and f"RAY_AUTH_TOKEN_PATH={path}" in cmd
        assert "RAY_AUTH_TOKEN=" not in cmd
    assert "RAY_AUTH_MODE" not in plan.head_start_command(plan.Ports(), "10.0.0.1", [], 4)   # old records


def test_the_token_is_kept_only_in_the_private_record_file_never_printed(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    rec = ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                        nodes=[Node(host="h", ip="10.0.0.5", head=True)], auth_token="s3cr3t-token")
    assert "auth_token" not in rec.to_dict() and "s3cr3t" not in json.dumps(rec.to_dict()) + repr(rec)
    path = state.save(rec)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and "s3cr3t-token" in path.read_text()
    assert state.load("lab").auth_token == "s3cr3t-token"


def test_with_a_token_the_launcher_refuses_requests_without_it(tmp_path):
    book = launcher.Book(str(tmp_path / "launcher-lab.json"))
    runner = FakeRunner(book)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), launcher.handler_for(book, runner, dashboard=1, token="tok"))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        good = JobApi("http://127.0.0.1:9", launcher_url=url, token="tok", timeout=5)
        assert good.probe_launcher() and good.submit(body("lab-1")) == "lab-1"
        for bad in (JobApi("http://127.0.0.1:9", launcher_url=url, timeout=5),
                    JobApi("http://127.0.0.1:9", launcher_url=url, token="other", timeout=5)):
            assert bad.probe_launcher() is False
            with pytest.raises(JobApiError) as err:
                bad._call("POST", "/api/jobs/", body("lab-2"), base=url)
            assert err.value.status == 401
        assert [b["submission_id"] for b in runner.submitted] == ["lab-1"]
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_launcher_reads_rays_token_as_ray_does(tmp_path):
    f = tmp_path / "auth-token"
    f.write_text("from-file\n")
    assert launcher.auth_token({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(f)}) == "from-file"
    both = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "env", "RAY_AUTH_TOKEN_PATH": str(f)}
    assert launcher.auth_token(both) == "env"
    assert launcher.auth_token({"RAY_AUTH_TOKEN_PATH": str(f)}) == ""          # auth not enabled
    assert launcher.authorized("Bearer x", "x") and not launcher.authorized("Bearer y", "x")
    assert launcher.authorized("", "")


def test_no_ray_process_writes_or_posts_event_reports():
    """Ray's dashboard agent posts event-file lines, token attached, to whatever holds the dashboard's
    port: every node starts with no event files and no rescans of their directory."""
    ports = plan.ports_from(30000)
    for head in (True, False):
        env = plan.start_env([], head=head, auth_token_path="/t", ports=ports)
        assert env["RAY_event_log_reporter_enabled"] == "0"
        assert int(env["SCAN_EVENT_DIR_INTERVAL_SECONDS"]) >= 365 * 24 * 3600
    assert "RAY_event_log_reporter_enabled=0" in plan.head_start_command(ports, "10.0.0.1", [], 1)
    assert "RAY_event_log_reporter_enabled=0" in plan.worker_start_command(ports, "10.0.0.1", "10.0.0.2", [], 1)
