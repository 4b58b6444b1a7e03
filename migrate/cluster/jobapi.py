"""The Ray Job REST API, reached through an SSH local forward to the head's 127.0.0.1 dashboard port,
and migrate's launcher, reached through a forward to its Unix socket in a 0700 directory of ours.

The cluster's token is a credential: it is sent only after the same SSH session proved, on the head,
that the dashboard port is held by this user's process (`plan.head_check_command`); the launcher's
socket cannot be held by anyone else. A port another user bound after our dashboard died gets
nothing.

Only the stdlib (urllib) here: the laptop needs no Ray, and no version of Ray's Python client has to
match the cluster's. Endpoints (Ray's jobs REST API, stable since 2.0): POST /api/jobs/, GET
/api/jobs/, GET /api/jobs/{id}, GET /api/jobs/{id}/logs, POST /api/jobs/{id}/stop, and the state API's
GET /api/v0/nodes for node ids -> IPs.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from migrate import ui
from migrate.cluster import plan
from migrate.cluster.state import ClusterRecord
from migrate.errors import ConnectError, MigrateError
from migrate.remote.connection import target_for
from migrate.remote.hosts import ConnectOptions, openssh_argv


class JobApiError(MigrateError):
    """An HTTP error answer from the job API (`status` is its code)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class JobApi:
    """A thin JSON client for the head's job API: Ray's (the dashboard), and migrate's launcher
    (shipped/launcher.py) when it answers. Single-node jobs are submitted to the launcher, which runs
    each as a task of one long-lived Ray job on a warm worker; gang jobs (`migrate_nodes` > 0) and
    everything on a cluster without a launcher are Ray jobs. Both answer in the same JSON shape."""

    def __init__(self, base_url: str, *, launcher_url: str | None = None, token: str = "",
                 timeout: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if token:   # Ray's token authentication; the launcher asks for the same token
            self.headers["Authorization"] = f"Bearer {token}"
        self.launcher_url = launcher_url.rstrip("/") if launcher_url else None
        self.launcher: str | None = None      # set by probe_launcher() once the launcher answered
        self.timeout = timeout

    def _call(self, method: str, path: str, payload: dict | None = None, *, base: str | None = None,
              timeout: float | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        url = (base or self.base) + path
        req = urllib.request.Request(url, data=data, method=method, headers=self.headers)
        who = "migrate's launcher" if base and base == self.launcher_url else "Ray's job API"
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace").strip()
            raise JobApiError(f"{who} answered {exc.code} to {method} {path}: "
                              f"{text.splitlines()[-1] if text else exc.reason}", exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectError(f"{who} on the head is not answering ({exc})",
                               hint="is the cluster up? `migrate cluster status NAME`") from None
        return json.loads(body) if body else None

    def _either(self, method: str, path: str, payload: dict | None = None, *, timeout: float | None = None) -> Any:
        """Ask the launcher first; a job it does not know (404) is a Ray job."""
        if self.launcher:
            try:
                return self._call(method, path, payload, base=self.launcher, timeout=timeout)
            except JobApiError as exc:
                if exc.status != 404:
                    raise
        return self._call(method, path, timeout=timeout)   # Ray's own stop takes no grace: its fixed 3 s

    def probe_launcher(self) -> bool:
        """Whether the launcher answers (a cluster from an older migrate, or one whose launcher died,
        has none: then every job is a Ray job)."""
        if not self.launcher_url:
            return False
        try:
            answer = self._call("GET", "/api/launcher", base=self.launcher_url, timeout=5) or {}
            ok = bool(answer.get("launcher"))
        except MigrateError:
            ok = False
        self.launcher = self.launcher_url if ok else None
        return ok

    def submit(self, payload: dict) -> str:
        gang = int((payload.get("metadata") or {}).get("migrate_nodes", "0") or 0)
        base = self.launcher if self.launcher and not gang else None
        return self._call("POST", "/api/jobs/", payload, base=base)["submission_id"]

    def ray_jobs(self) -> list[dict]:
        """Ray's own jobs only (the launcher itself is one of them)."""
        return self._call("GET", "/api/jobs/")

    def jobs(self) -> list[dict]:
        """Every job: the launcher's and Ray's (the launcher's own Ray job left out)."""
        ray = [j for j in self.ray_jobs() if (j.get("metadata") or {}).get("migrate_role") != "launcher"]
        return (self._call("GET", "/api/jobs/", base=self.launcher) if self.launcher else []) + ray

    def job(self, submission_id: str) -> dict:
        return self._either("GET", f"/api/jobs/{submission_id}")

    def logs(self, submission_id: str) -> str:
        return self._either("GET", f"/api/jobs/{submission_id}/logs").get("logs", "")

    def stop(self, submission_id: str, grace: float | None = None) -> bool:
        """Stop a job; the launcher waits `grace` seconds between SIGTERM and SIGKILL (Ray's own jobs:
        Ray's fixed 3 s)."""
        body = None if grace is None else {"grace": grace}
        wait = None if grace is None else grace + self.timeout
        return bool(self._either("POST", f"/api/jobs/{submission_id}/stop", body, timeout=wait).get("stopped"))

    def submit_ray_job(self, payload: dict) -> str:
        """Submit to Ray's job API whatever the payload (the launcher's own job)."""
        return self._call("POST", "/api/jobs/", payload)["submission_id"]

    def nodes(self) -> list[dict]:
        """Every node Ray knows (alive and dead): node_id, node_ip, state, resources_total."""
        data = self._call("GET", "/api/v0/nodes?limit=1000&detail=false")
        return data["data"]["result"]["result"]

    def version(self) -> dict:
        return self._call("GET", "/api/version")


def free_local_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def forward_argv(host: str, conn: ConnectOptions, local: int, remote: int,
                 sockets: tuple[tuple[int, str], ...] = (), command: str = "") -> list[str]:
    """`ssh -L 127.0.0.1:LOCAL:127.0.0.1:REMOTE [-L 127.0.0.1:PORT:/SOCKET ...] head [COMMAND]` with
    migrate's SSH settings (pure but for resolve); without COMMAND, `-N`."""
    target, configs = target_for(host, conn)
    extra = ["-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes"] + ([] if command else ["-N"])
    extra += ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote}"]
    for lport, path in sockets:
        extra += ["-L", f"127.0.0.1:{lport}:{path}"]
    return openssh_argv(target, config_file=configs.openssh_file(), extra=extra) + ([command] if command else [])


class NotOurs(ConnectError):
    """The head's job API port is not held by our Ray: the token is not sent."""


def check_verdict(record: ClusterRecord, answer: dict) -> None:
    """Raise unless the head check says the dashboard port is ours (pure)."""
    where = f"{record.head.host}'s 127.0.0.1:{record.ports.dashboard}"
    owner = answer.get("dashboard")
    if owner == "ours":
        return
    if owner == "other":
        raise NotOurs(f"{where} (Ray's job API) is held by another user's process, not cluster "
                      f"{record.name}'s Ray: its token was not sent",
                      hint=f"Ray's dashboard on the head is gone; `migrate cluster up {record.name} "
                           f"{' '.join(record.hosts)} --restart` starts the cluster again")
    raise NotOurs(f"nothing listens on {where}: Ray's job API of cluster {record.name} is not running",
                  hint=f"`migrate cluster status {record.name}`; `migrate cluster up {record.name} "
                       f"{' '.join(record.hosts)} --restart` starts it again")


def _read_check(proc: subprocess.Popen, record: ClusterRecord, wait: float) -> dict:
    """The head check's one JSON line, read from the SSH session that also holds the forwards."""
    assert proc.stdout is not None
    deadline = time.monotonic() + wait
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            line = proc.stdout.readline()
            break
        if proc.poll() is not None:
            break
    if not line:
        if proc.poll() is None:
            raise ConnectError(f"timed out reaching the head {record.head.host}")
        err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
        raise ConnectError(f"cannot forward to the head {record.head.host}: "
                           f"{err.splitlines()[-1] if err else 'ssh exit ' + str(proc.returncode)}",
                           hint=f"is the cluster up? `migrate cluster status {record.name}`")
    try:
        return json.loads(line)
    except ValueError:
        raise ConnectError(f"the head {record.head.host} answered the check with {line[:80]!r}",
                           hint="is migrate's launcher script in ~/.migrate/ray/bin there? "
                                f"`migrate cluster up {record.name} ...` ships it") from None


@contextmanager
def job_api(record: ClusterRecord, conn: ConnectOptions, *, wait: float = 20,
            use_launcher: bool = True) -> Iterator[JobApi]:
    """`with job_api(record, conn) as api:` the head's job API (and the launcher's) through our own
    SSH child, which first proves the dashboard port is ours (else NotOurs, and no token is sent)."""
    local, launcher = free_local_port(), free_local_port()
    socket_path = f"{record.head_home}/{plan.launcher_socket(record.name)}" if record.head_home else ""
    argv = forward_argv(record.head.host, conn, local, record.ports.dashboard,
                        sockets=((launcher, socket_path),) if socket_path else (),
                        command=plan.head_check_command(record.name, record.ports))
    ui.debug("$ " + " ".join(argv), level=2)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        answer = _read_check(proc, record, wait)
        check_verdict(record, answer)
        if not record.head_home and answer.get("home"):
            record.head_home = str(answer["home"])     # older records: the launcher is used next time
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                raise ConnectError(f"the forward to the head {record.head.host} ended (ssh exit {proc.returncode})")
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise ConnectError(f"timed out forwarding to the head {record.head.host}") from None
                time.sleep(0.05)
        api = JobApi(f"http://127.0.0.1:{local}",
                     launcher_url=f"http://127.0.0.1:{launcher}" if socket_path and answer.get("launcher") else None,
                     token=record.auth_token)
        if use_launcher:
            api.probe_launcher()
        yield api
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f:
                f.close()
