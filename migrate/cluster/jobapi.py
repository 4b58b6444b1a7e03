"""The Ray Job REST API, reached through an SSH local forward to the head's 127.0.0.1 dashboard port,
and migrate's launcher, reached through a forward to its Unix socket in a 0700 directory of ours.

The cluster's token is a credential: it is sent only after the SSH connection that holds the forwards
(one OpenSSH master, `Host.forward`) proved, on the head, that the dashboard port is held by this
user's process (`plan.head_check_command`); the launcher's
socket cannot be held by anyone else. A port another user bound after our dashboard died gets
nothing.

Only the stdlib (urllib) here: the laptop needs no Ray, and no version of Ray's Python client has to
match the cluster's. Endpoints (Ray's jobs REST API, stable since 2.0): POST /api/jobs/, GET
/api/jobs/, GET /api/jobs/{id}, GET /api/jobs/{id}/logs, POST /api/jobs/{id}/stop, and the state API's
GET /api/v0/nodes for node ids -> IPs.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from migrate.cluster import plan
from migrate.cluster.state import ClusterRecord
from migrate.errors import ConnectError, MigrateError, RemoteCommandError
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions
from migrate.remote.openssh import OpenSshSession


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
        # job_api sets this: forward the launcher's socket if it has appeared since the connection opened
        self.attach_launcher: Callable[[], bool] = lambda: bool(self.launcher_url)
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


def head_check(head: Host, record: ClusterRecord, wait: float) -> dict:
    """Run the head check on `head` (the connection the forwards will use) and read its one JSON line."""
    try:
        res = head.run(plan.head_check_command(record.name, record.ports), stdin="", timeout=wait, check=False,
                       what="the head check")
    except RemoteCommandError as exc:   # the timeout
        raise ConnectError(f"timed out reaching the head {record.head.host}") from exc
    line = res.stdout.strip().splitlines()[0] if res.stdout.strip() else ""
    if not line:
        err = res.stderr.strip()
        raise ConnectError(f"cannot check the head {record.head.host}: "
                           f"{err.splitlines()[-1] if err else 'exit ' + str(res.exit_code)}",
                           hint=f"is the cluster up? `migrate cluster status {record.name}`")
    try:
        return json.loads(line)
    except ValueError:
        raise ConnectError(f"the head {record.head.host} answered the check with {line[:80]!r}",
                           hint="is migrate's launcher script in ~/.migrate/ray/bin there? "
                                f"`migrate cluster up {record.name} ...` ships it") from None


def open_head(record: ClusterRecord, conn: ConnectOptions) -> Host:
    """The head, reached over OpenSSH only (no paramiko: `status` and `logs` stay quick); a failure
    says that it is the head of this cluster that cannot be reached, and why."""
    try:
        return OpenSshSession(record.head.host, conn).open()
    except ConnectError as exc:
        exc.message = f"cannot reach the head {record.head.host} of cluster {record.name}: {exc.message}"
        exc.hint = exc.hint or f"is the cluster up? `migrate cluster status {record.name}`"
        raise


@contextmanager
def job_api(record: ClusterRecord, conn: ConnectOptions, *, wait: float = 20, use_launcher: bool = True,
            connect: Callable[[ClusterRecord, ConnectOptions], Host] = open_head) -> Iterator[JobApi]:
    """`with job_api(record, conn) as api:` the head's job API (and the launcher's) through forwards on
    one SSH connection to the head, which first proves the dashboard port is ours (else NotOurs, and
    no forward is opened, so no token is sent)."""
    local, launcher = free_local_port(), free_local_port()
    known_home = bool(record.head_home)
    with ExitStack() as stack:
        head = stack.enter_context(connect(record, conn))
        answer = head_check(head, record, wait)
        check_verdict(record, answer)
        if not record.head_home and answer.get("home"):
            record.head_home = str(answer["home"])     # older records: the launcher is used next time
        stack.enter_context(head.forward(local, record.ports.dashboard))
        api = JobApi(f"http://127.0.0.1:{local}", token=record.auth_token)

        def attach_launcher(check: dict | None = None) -> bool:
            """Forward the launcher's socket (in our 0700 directory) once the head check finds it there:
            at once when it runs already, later for a launcher that `cluster up` has just started."""
            if api.launcher_url:
                return True
            if not record.head_home or not (check if check is not None else head_check(head, record, wait)) \
                    .get("launcher"):
                return False
            stack.enter_context(head.forward(launcher, f"{record.head_home}/{plan.launcher_socket(record.name)}"))
            api.launcher_url = f"http://127.0.0.1:{launcher}"
            return True

        api.attach_launcher = attach_launcher
        if known_home:
            attach_launcher(answer)
        if use_launcher:
            api.probe_launcher()
        yield api
