"""The Ray Job REST API, reached through an SSH local forward to the head's 127.0.0.1 dashboard port.

Only the stdlib (urllib) here: the laptop needs no Ray, and no version of Ray's Python client has to
match the cluster's. Endpoints (Ray's jobs REST API, stable since 2.0): POST /api/jobs/, GET
/api/jobs/, GET /api/jobs/{id}, GET /api/jobs/{id}/logs, POST /api/jobs/{id}/stop, and the state API's
GET /api/v0/nodes for node ids -> IPs.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from migrate import ui
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

    def _either(self, method: str, path: str) -> Any:
        """Ask the launcher first; a job it does not know (404) is a Ray job."""
        if self.launcher:
            try:
                return self._call(method, path, base=self.launcher)
            except JobApiError as exc:
                if exc.status != 404:
                    raise
        return self._call(method, path)

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

    def stop(self, submission_id: str) -> bool:
        return bool(self._either("POST", f"/api/jobs/{submission_id}/stop").get("stopped"))

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
                 more: tuple[tuple[int, int], ...] = ()) -> list[str]:
    """`ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:REMOTE [-L ...] head` with migrate's SSH settings (pure but
    for resolve)."""
    target, configs = target_for(host, conn)
    extra = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes"]
    for lport, rport in ((local, remote), *more):
        extra += ["-L", f"127.0.0.1:{lport}:127.0.0.1:{rport}"]
    return openssh_argv(target, config_file=configs.openssh_file(), extra=extra)


@contextmanager
def job_api(record: ClusterRecord, conn: ConnectOptions, *, wait: float = 20,
            use_launcher: bool = True) -> Iterator[JobApi]:
    """`with job_api(record, conn) as api:` the head's job API (and the launcher's) through our own
    `ssh -L` child."""
    local, launcher = free_local_port(), free_local_port()
    argv = forward_argv(record.head.host, conn, local, record.ports.dashboard,
                        more=((launcher, record.ports.launcher),))
    ui.debug("$ " + " ".join(argv), level=2)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + wait
        while True:
            if proc.poll() is not None:
                err = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace").strip()
                raise ConnectError(f"cannot forward to the head {record.head.host}: "
                                   f"{err.splitlines()[-1] if err else 'ssh exit ' + str(proc.returncode)}")
            try:
                with socket.create_connection(("127.0.0.1", local), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise ConnectError(f"timed out forwarding to the head {record.head.host}") from None
                time.sleep(0.05)
        api = JobApi(f"http://127.0.0.1:{local}", launcher_url=f"http://127.0.0.1:{launcher}",
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
        if proc.stderr:
            proc.stderr.close()
