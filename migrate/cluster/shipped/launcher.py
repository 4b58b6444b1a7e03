"""migrate's job launcher on a cluster's head (shipped to ~/.migrate/ray/bin/migrate-ray-launcher.py).

usage: <ray venv>/bin/python migrate-ray-launcher.py --socket PATH --dashboard D --state FILE
       python3 migrate-ray-launcher.py --check --socket PATH --dashboard D   (no Ray needed)

Why it exists: a Ray job starts a fresh Python process for its supervisor actor (`import ray` and the
job modules: about 1 s on a small host) before its command can start. The launcher is one long-lived
Ray job per cluster (started by `cluster up`); each migrate job is one Ray *task* of it, with the job's
resources (its GPUs, or one CPU), run by a worker process Ray keeps warm. So a job's command starts a
fraction of a second after `migrate run`, and Ray still decides where it runs and when.

It answers on a Unix socket in a 0700 directory of ours (migrate reaches it through its SSH forward;
no other user can connect to it, or stand in for it after a crash, as one could on a TCP port) with the JSON of
Ray's job REST API (POST /api/jobs/, GET /api/jobs/, GET /api/jobs/ID, GET /api/jobs/ID/logs,
POST /api/jobs/ID/stop), so migrate reads these jobs and Ray's own (gang jobs stay Ray jobs) alike.
A job's output goes to job-driver-ID.log in Ray's log directory on the node that ran it, as a Ray
job's does, and is read back through the dashboard's log API. The job table is kept in a private file
(0600) so that a restarted launcher still lists the jobs it ran. Its tasks end with it: Ray kills the
workers of a job whose driver is gone, and a watcher per job then kills the job's process group.
When the cluster runs with Ray's token authentication (RAY_AUTH_MODE=token, as `cluster up` starts
it), every request must carry the same token (`Authorization: Bearer`), as Ray's job API requires.
The token goes to the dashboard only over a connection whose listening end is proven to be this
user's (`owned_connection`), and `--check` tells migrate, before it sends the token, whether the
dashboard port and the socket are ours.
A failed job with --retries left is resubmitted at once, in the step that marks it failed (the agent's
retry rule, `raynode.next_attempt`, as the laptop's `migrate retry` uses it). Process groups, private
files and that rule are the agent's own code, imported from the agent zipapp shipped next to this file.
"""

import argparse
import hmac
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler
from socketserver import ThreadingUnixStreamServer

try:
    import ray
except ImportError:  # migrate's unit tests import the parts that need no Ray
    ray = None

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT_FILE = "migrate-agent.pyz"   # the agent zipapp `cluster up` ships next to this file, on every node


def agent_module(name: str):
    """A module of migrate's agent (procs, layout, raynode): from the zipapp next to this file, else from
    migrate's source tree (its unit tests), else (a Ray worker on another node, where the head's path may
    not exist) from the zipapp in this node's ~/.migrate/ray/bin."""
    import importlib

    here = os.path.join(HERE, AGENT_FILE)
    if not os.path.isfile(here):
        try:
            return importlib.import_module("migrate.agent." + name)
        except ImportError:
            here = os.path.join(os.path.expanduser("~"), ".migrate", "ray", "bin", AGENT_FILE)
    if here not in sys.path:
        sys.path.insert(0, here)
    return importlib.import_module("migrate_agent." + name)


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
STOP_WAIT_S = 3        # SIGTERM, then SIGKILL after this long (Ray's own job stop waits 3 s too)
WARM_PER_NODE = 2      # idle workers asked for on every node at start (Ray keeps up to its CPU count)


def stop_group(pgid: int, wait: float = STOP_WAIT_S) -> None:
    """SIGTERM the process group (the entrypoint shell and migrate's wrapper), SIGKILL it after `wait` (the
    agent's stop; also called in Ray tasks on any node)."""
    agent_module("procs").stop_group(pgid, wait)


# what Ray's own job supervisor strips from a driver's environment (ray_constants.RAY_INTERNAL_FLAGS)
RAY_INTERNAL_FLAGS = ("RAY_JOB_ID", "RAY_RAYLET_PID", "RAY_OVERRIDE_NODE_ID_FOR_TESTING")


def child_environment(base: dict, job_env: dict, gpu_ids: list, gcs_address: str) -> dict:
    """The command's environment: the worker's, less Ray's internal flags, plus the job's variables,
    the GPUs Ray gave this task (none: an empty CUDA_VISIBLE_DEVICES) and RAY_ADDRESS (pure)."""
    env = {k: v for k, v in base.items() if k not in RAY_INTERNAL_FLAGS}
    env.update(job_env)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpu_ids)
    env["RAY_ADDRESS"] = gcs_address
    env["PYTHONUNBUFFERED"] = "1"
    return env


WATCH_SH = ("while kill -0 {worker} 2>/dev/null && kill -0 -{group} 2>/dev/null; do sleep 1; done; "
            "kill -0 {worker} 2>/dev/null || kill -9 -{group} 2>/dev/null")


def fate_share(worker: int, group: int) -> None:
    """If the Ray worker running a job dies (`ray stop`, its node lost), SIGKILL the job's entrypoint
    group (as Ray's own job supervisor does); migrate's wrapper's guard then stops the command. The
    watcher ends by itself when the job's group is gone."""
    subprocess.Popen(["/bin/sh", "-c", WATCH_SH.format(worker=int(worker), group=int(group))],
                     start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)


def remote_functions():
    """The Ray tasks (defined once Ray is imported): run_job, stop_job, warm."""

    @ray.remote(num_returns="streaming", max_retries=0, max_calls=0)
    def run_job(submission_id: str, entrypoint: str, job_env: dict):
        """Run one job's entrypoint on this node: yields {"node_id", "pid", "start"} once it started, then
        {"exit", "end"}. Ray's cancel (KeyboardInterrupt here) stops the command's process group."""
        ctx = ray.get_runtime_context()
        logs_dir = ray._private.worker._global_node.get_logs_dir_path()
        gpus = ctx.get_accelerator_ids().get("GPU", [])
        env = child_environment(dict(os.environ), job_env, gpus, ctx.gcs_address)
        with open(os.path.join(logs_dir, f"job-driver-{submission_id}.log"), "ab") as log:
            proc = subprocess.Popen(entrypoint, shell=True, start_new_session=True, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env,
                                    preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []))
        fate_share(os.getpid(), proc.pid)
        yield {"node_id": ctx.get_node_id(), "pid": proc.pid, "start": time.time()}
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:
            stop_group(proc.pid)
            raise
        yield {"exit": code if code >= 0 else 128 - code, "end": time.time()}   # a signal N: 128+N, as sh says

    @ray.remote(num_cpus=0, max_calls=0)
    def stop_job(pgid: int, wait: float = STOP_WAIT_S) -> bool:
        """Stop a job's process group on this node (the stop path for a job that already started)."""
        stop_group(pgid, wait)
        return True

    @ray.remote(num_cpus=0, max_calls=0)
    def warm() -> str:
        return ray.get_runtime_context().get_node_id()

    return run_job, stop_job, warm


class Book:
    """The launcher's jobs, in Ray's job-API shape, kept in a private JSON file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.jobs: dict = {}
        self.running: dict = {}      # submission id -> the task's generator (to cancel it)
        self.stopping: set = set()
        self.load()

    def load(self) -> None:
        try:
            with open(self.path) as f:
                self.jobs = {j["submission_id"]: j for j in json.load(f)}
        except (OSError, ValueError, KeyError, TypeError):
            self.jobs = {}
        now = int(time.time() * 1000)
        for job in self.jobs.values():
            if job["status"] not in TERMINAL:   # ours died with the previous launcher
                job.update(status="FAILED", end_time=now, message="the launcher restarted while this job ran")

    def save(self) -> None:
        agent_module("layout").write_private(self.path, json.dumps(list(self.jobs.values())))

    def update(self, submission_id: str, **fields) -> None:
        with self.lock:
            self.jobs[submission_id].update(fields)
            self.save()

    def add(self, body: dict) -> dict:
        sid = body.get("submission_id") or f"launcher-{int(time.time() * 1000)}"
        with self.lock:
            if sid in self.jobs:
                raise ValueError(f"Job with submission_id {sid} already exists. Please use a different submission_id.")
            job = {"type": "SUBMISSION", "submission_id": sid, "job_id": None, "status": "PENDING",
                   "entrypoint": body["entrypoint"], "message": "queued until its resources are free",
                   "start_time": int(time.time() * 1000), "end_time": None, "metadata": body.get("metadata") or {},
                   "runtime_env": body.get("runtime_env") or {}, "driver_node_id": None, "driver_exit_code": None,
                   "entrypoint_num_gpus": body.get("entrypoint_num_gpus") or 0,
                   "entrypoint_num_cpus": body.get("entrypoint_num_cpus") or 0, "launcher": True}
            self.jobs[sid] = job
            self.save()
        return job


class Launcher:
    """Submits jobs as Ray tasks and follows them into the Book."""

    def __init__(self, book: Book) -> None:
        self.book = book
        self.run_job, self.stop_job, self.warm = remote_functions()

    def submit(self, body: dict) -> str:
        job = self.book.add(body)
        sid = job["submission_id"]
        env = dict((body.get("runtime_env") or {}).get("env_vars") or {})
        env.setdefault("RAY_SUBMISSION_ID", sid)
        gen = self.run_job.options(num_gpus=job["entrypoint_num_gpus"], num_cpus=job["entrypoint_num_cpus"],
                                   name=f"migrate-job-{sid}").remote(sid, body["entrypoint"], env)
        self.book.running[sid] = gen
        threading.Thread(target=self.follow, args=(sid, gen), daemon=True).start()
        return sid

    def follow(self, sid: str, gen) -> None:
        """Track one job's task until it ends (a thread per job)."""
        book = self.book
        try:
            started = ray.get(next(gen))
            book.update(sid, status="RUNNING", driver_node_id=started["node_id"], message="running",
                        pid=started["pid"], start_time=int(started["start"] * 1000))
            ended = ray.get(next(gen))
            code = ended["exit"]
            if sid in book.stopping:
                book.update(sid, status="STOPPED", driver_exit_code=code, end_time=int(ended["end"] * 1000),
                            message="stopped")
            elif code == 0:
                book.update(sid, status="SUCCEEDED", driver_exit_code=0, end_time=int(ended["end"] * 1000),
                            message="finished")
            else:
                self.fail(sid, f"the command exited with code {code}", driver_exit_code=code,
                          end_time=int(ended["end"] * 1000))
        except ray.exceptions.TaskCancelledError:
            book.update(sid, status="STOPPED", end_time=int(time.time() * 1000), message="stopped")
        except (ray.exceptions.RayError, StopIteration) as exc:
            lost = isinstance(exc, (ray.exceptions.NodeDiedError, ray.exceptions.WorkerCrashedError))
            if sid in book.stopping:
                book.update(sid, status="STOPPED", end_time=int(time.time() * 1000), message="stopped")
            else:
                self.fail(sid, "the node running it left the cluster (its Ray worker died)" if lost
                          else f"the job's task failed: {str(exc).strip().splitlines()[0][:300]}",
                          end_time=int(time.time() * 1000))
        finally:
            book.running.pop(sid, None)

    def fail(self, sid: str, message: str, **fields) -> None:
        """Mark a job failed; with --retries left, submit its next attempt in the same step, so nobody
        reading the table sees a failed job that is about to be retried."""
        with self.book.lock:
            job = self.book.jobs[sid]
            raynode = agent_module("raynode")
            retry = raynode.retries_left(job) > 0
            self.book.update(sid, status="FAILED", message=message + ("; retrying" if retry else ""), **fields)
            if retry:
                try:
                    self.submit(raynode.next_attempt(job, use_retry=True))
                except (ValueError, KeyError, ray.exceptions.RayError) as exc:
                    self.book.update(sid, message=f"{message}; the retry could not be submitted: {exc}")

    def stop(self, sid: str, grace: float = STOP_WAIT_S) -> bool:
        """Stop a job: a started one through a small task on its node (SIGTERM, SIGKILL after `grace`
        seconds), a queued one by cancelling its task. False when it had ended already."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        job = self.book.jobs[sid]
        if job["status"] in TERMINAL:
            return False
        self.book.stopping.add(sid)
        if job["status"] == "RUNNING" and job.get("pid") and job.get("driver_node_id"):
            strategy = NodeAffinitySchedulingStrategy(node_id=job["driver_node_id"], soft=False)
            try:
                ray.get(self.stop_job.options(scheduling_strategy=strategy).remote(job["pid"], grace),
                        timeout=grace + 30)
                return True
            except ray.exceptions.RayError:
                pass
        gen = self.book.running.get(sid)
        if gen is not None:
            ray.cancel(gen, force=False)
        return True

    def warm_up(self) -> None:
        """Ask every node for a few idle workers now, so the first jobs find one (best effort)."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        refs = []
        for node in ray.nodes():
            if node.get("Alive"):
                strategy = NodeAffinitySchedulingStrategy(node_id=node["NodeID"], soft=False)
                refs += [self.warm.options(scheduling_strategy=strategy).remote() for _ in range(WARM_PER_NODE)]
        try:
            ray.get(refs, timeout=60)
        except ray.exceptions.RayError:
            pass


def auth_token(env: dict) -> str:
    """Ray's token when the cluster runs with token authentication (RAY_AUTH_MODE=token), else ""."""
    if env.get("RAY_AUTH_MODE") != "token":
        return ""
    if env.get("RAY_AUTH_TOKEN"):
        return env["RAY_AUTH_TOKEN"].strip()
    with open(os.path.expanduser(env.get("RAY_AUTH_TOKEN_PATH") or "~/.ray/auth_token")) as f:
        return f.read().strip()


def authorized(header: str, token: str) -> bool:
    """Whether an Authorization header carries the token (always, when there is none to check)."""
    return not token or hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


LISTEN, ESTABLISHED = "0A", "01"


def _hex_endpoint(ip: str, port: int) -> str:
    """/proc/net/tcp's spelling of an IPv4 endpoint: address in host (little-endian) order, port big."""
    a, b, c, d = (int(x) for x in ip.split("."))
    return f"{d:02X}{c:02X}{b:02X}{a:02X}:{port:04X}"


def tcp_sockets(path: str = "/proc/net/tcp") -> list:
    """(local, remote, state, uid) of every IPv4 TCP socket in this network namespace."""
    out = []
    with open(path) as f:
        next(f, None)
        for line in f:
            cols = line.split()
            if len(cols) > 7:
                out.append((cols[1], cols[2], cols[3], int(cols[7])))
    return out


def listener_owner(port: int, sockets: "list | None" = None) -> str:  # a string: the node's Python may be < 3.10
    """Who listens on the head's 127.0.0.1:PORT (or 0.0.0.0:PORT): "ours", "other" or "none"."""
    wanted = {_hex_endpoint("127.0.0.1", port), _hex_endpoint("0.0.0.0", port)}
    uids = {uid for local, _, st, uid in (sockets if sockets is not None else tcp_sockets())
            if st == LISTEN and local in wanted}
    if not uids:
        return "none"
    return "ours" if uids == {os.getuid()} else "other"


def owned_connection(port: int, timeout: float = 30) -> http.client.HTTPConnection:
    """An HTTP connection to 127.0.0.1:PORT whose accepting end belongs to this user (the kernel gives
    an accepted socket its listener's owner): proven on this very connection, so a port another
    user bound after ours died never receives a request, nor the token in it. PermissionError if not."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    conn.connect()
    host, local_port = conn.sock.getsockname()[:2]
    server, client = _hex_endpoint("127.0.0.1", port), _hex_endpoint(host, local_port)
    owners = {uid for local, remote, _, uid in tcp_sockets() if local == server and remote == client}
    if owners != {os.getuid()}:
        conn.close()
        raise PermissionError(f"127.0.0.1:{port} is not served by this user (owner uid {sorted(owners)})")
    return conn


def read_log(dashboard: int, job: dict, token: str = "") -> str:
    """The job's output, read from its node through the dashboard's log API ("" before it has any)."""
    if not job.get("driver_node_id"):
        return ""
    query = urllib.parse.urlencode({"node_id": job["driver_node_id"], "lines": -1,
                                    "filename": f"job-driver-{job['submission_id']}.log"})
    try:
        conn = owned_connection(dashboard)
    except OSError:
        return ""
    try:
        conn.request("GET", f"/api/v0/logs/file?{query}",
                     headers={"Authorization": f"Bearer {token}"} if token else {})
        resp = conn.getresponse()
        body = resp.read()
        return body.decode(errors="replace") if resp.status == 200 else ""
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        conn.close()


def private_socket_dir(path: str) -> None:
    """Create the socket's directory 0700, and refuse one that is not ours or not private."""
    d = os.path.dirname(path)
    os.makedirs(d, mode=0o700, exist_ok=True)
    st = os.lstat(d)
    if st.st_uid != os.getuid() or (st.st_mode & 0o077) or not os.path.isdir(d) or os.path.islink(d):
        raise SystemExit(f"migrate launcher: {d} must be a directory of ours with mode 0700")


def check(socket_path: str, dashboard: int) -> dict:
    """What migrate asks before it sends the token: who holds the dashboard port, whether our socket
    is there, and where home is (the forward needs an absolute socket path)."""
    d = os.path.dirname(socket_path)
    try:
        st = os.lstat(d)
        private = st.st_uid == os.getuid() and not (st.st_mode & 0o077) and not os.path.islink(d)
    except OSError:
        private = False
    return {"home": os.path.expanduser("~"), "dashboard": listener_owner(dashboard),
            "launcher": private and os.path.exists(socket_path)}


def handler_for(book: Book, launcher, dashboard: int, token: str = ""):
    """The HTTP handler class; `launcher` has submit(body) -> id and stop(id) -> bool. With a token,
    every request must carry it (`Authorization: Bearer`), as Ray's own job API then requires."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt, *args):  # no access log in the job's output
            pass

        def address_string(self) -> str:    # a Unix socket's peer has no address
            return "local"

        def reply(self, code: int, data) -> None:
            body = json.dumps(data).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def job_or_404(self, sid: str):
            job = book.jobs.get(sid)
            if job is None:
                self.reply(404, {"error": f"Job {sid} does not exist"})
            return job

        def allowed(self) -> bool:
            if authorized(self.headers.get("Authorization", ""), token):
                return True
            self.reply(401, {"error": "Unauthorized: missing or wrong token"})
            return False

        def do_GET(self):
            if not self.allowed():
                return
            try:
                self.get()
            except Exception as exc:  # noqa: BLE001 - one bad request must not take the launcher down
                self.reply(500, {"error": f"{type(exc).__name__}: {exc}"})

        def do_POST(self):
            if not self.allowed():
                return
            try:
                self.post()
            except Exception as exc:  # noqa: BLE001
                self.reply(500, {"error": f"{type(exc).__name__}: {exc}"})

        def get(self):
            parts = [p for p in urllib.parse.urlparse(self.path).path.split("/") if p]
            if parts == ["api", "launcher"]:
                return self.reply(200, {"launcher": True, "pid": os.getpid(), "jobs": len(book.jobs)})
            if parts == ["api", "jobs"]:
                with book.lock:
                    return self.reply(200, [dict(j) for j in book.jobs.values()])
            if len(parts) in (3, 4) and parts[:2] == ["api", "jobs"]:
                job = self.job_or_404(parts[2])
                if job is None:
                    return None
                if len(parts) == 3:
                    return self.reply(200, dict(job))
                if parts[3] == "logs":
                    return self.reply(200, {"logs": read_log(dashboard, job, token)})
            return self.reply(404, {"error": "not found"})

        def post(self):
            parts = [p for p in urllib.parse.urlparse(self.path).path.split("/") if p]
            length = int(self.headers.get("Content-Length") or 0)
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return self.reply(400, {"error": "the body is not JSON"})
            if parts == ["api", "jobs"]:
                try:
                    return self.reply(200, {"submission_id": launcher.submit(body)})
                except (ValueError, KeyError) as exc:
                    return self.reply(400, {"error": str(exc)})
            if len(parts) == 4 and parts[:2] == ["api", "jobs"] and parts[3] == "stop":
                if self.job_or_404(parts[2]) is None:
                    return None
                grace = float(body.get("grace", STOP_WAIT_S)) if isinstance(body, dict) else STOP_WAIT_S
                return self.reply(200, {"stopped": launcher.stop(parts[2], max(0.0, min(grace, 3600.0)))})
            return self.reply(404, {"error": "not found"})

    return Handler


def main(argv: list) -> int:
    p = argparse.ArgumentParser(prog="migrate-ray-launcher")
    p.add_argument("--socket", required=True, help="the Unix socket to serve on (its directory: 0700, ours)")
    p.add_argument("--dashboard", type=int, required=True)
    p.add_argument("--state", help="the job table file (0600)")
    p.add_argument("--check", action="store_true",
                   help="print who holds the dashboard port and whether the socket is ours, then wait for EOF")
    a = p.parse_args(argv)
    socket_path = os.path.expanduser(a.socket)
    if a.check:
        print(json.dumps(check(socket_path, a.dashboard)), flush=True)
        sys.stdin.read()          # held open while migrate uses the SSH forward next to it
        return 0
    if not a.state:
        p.error("--state is required")
    ray.init(address="auto", log_to_driver=False)
    book = Book(os.path.expanduser(a.state))
    book.save()
    launcher = Launcher(book)
    token = auth_token(dict(os.environ))
    private_socket_dir(socket_path)
    try:
        os.unlink(socket_path)   # a socket left by a launcher that died (the directory is ours alone)
    except FileNotFoundError:
        pass
    old = os.umask(0o077)
    try:
        server = ThreadingUnixStreamServer(socket_path, handler_for(book, launcher, a.dashboard, token))
    finally:
        os.umask(old)
    server.daemon_threads = True
    threading.Thread(target=launcher.warm_up, daemon=True).start()
    print(f"migrate launcher: listening on {socket_path}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
