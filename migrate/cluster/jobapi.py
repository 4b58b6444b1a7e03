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


class JobApi:
    """A thin JSON client for one dashboard URL."""

    def __init__(self, base_url: str, *, timeout: float = 30) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, payload: dict | None = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace").strip()
            raise MigrateError(f"Ray's job API answered {exc.code} to {method} {path}: "
                               f"{text.splitlines()[-1] if text else exc.reason}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectError(f"Ray's job API on the head is not answering ({exc})",
                               hint="is the cluster up? `migrate cluster status NAME`") from None
        return json.loads(body) if body else None

    def submit(self, payload: dict) -> str:
        return self._call("POST", "/api/jobs/", payload)["submission_id"]

    def jobs(self) -> list[dict]:
        return self._call("GET", "/api/jobs/")

    def job(self, submission_id: str) -> dict:
        return self._call("GET", f"/api/jobs/{submission_id}")

    def logs(self, submission_id: str) -> str:
        return self._call("GET", f"/api/jobs/{submission_id}/logs").get("logs", "")

    def stop(self, submission_id: str) -> bool:
        return bool(self._call("POST", f"/api/jobs/{submission_id}/stop").get("stopped"))

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


def forward_argv(host: str, conn: ConnectOptions, local: int, remote: int) -> list[str]:
    """`ssh -N -L 127.0.0.1:LOCAL:127.0.0.1:REMOTE head` with migrate's SSH settings (pure but for resolve)."""
    target, configs = target_for(host, conn)
    extra = ["-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
             "-L", f"127.0.0.1:{local}:127.0.0.1:{remote}"]
    return openssh_argv(target, config_file=configs.openssh_file(), extra=extra)


@contextmanager
def job_api(record: ClusterRecord, conn: ConnectOptions, *, wait: float = 20) -> Iterator[JobApi]:
    """`with job_api(record, conn) as api:` the head's job API through our own `ssh -L` child."""
    local = free_local_port()
    argv = forward_argv(record.head.host, conn, local, record.ports.dashboard)
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
        yield JobApi(f"http://127.0.0.1:{local}")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        if proc.stderr:
            proc.stderr.close()
