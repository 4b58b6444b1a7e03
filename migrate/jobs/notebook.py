"""`migrate notebook HOST`: JupyterLab as a dispatcher job, its URL read from the job's log, its port
forwarded to this machine over the host's SSH settings (issue 22).

The job is an ordinary job (GPU admission, `cancel`, `status`), so everything here is client side:

- host process (or `--env NAME`): the job picks a free port on the host's loopback when it starts
  (hours later, maybe, if it waits for GPUs) and Jupyter listens on 127.0.0.1 only;
- container (`--image`): this machine asks the host for a free port before queueing, and the
  container's 8888 is published on the host's 127.0.0.1 only.

The port and the token are read from the job's log (Jupyter prints `http://127.0.0.1:PORT/lab?token=...`
there); the token is never printed except in the one URL `notebook` prints, and never logged.
"""

from __future__ import annotations

import json
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migrate import ui
from migrate.agent.db import FINAL
from migrate.errors import MigrateError, UsageError
from migrate.jobs.client import AgentClient, agent_command, no_queue_error
from migrate.jobs.tunnel import Forward, check_local_ports
from migrate.remote.host import Host

CONTAINER_PORT = 8888
LOG_LINES = 400
FREE_PORT_PY = 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
# What Jupyter prints once it listens: `http://127.0.0.1:8888/lab?token=abc` (or localhost / the host name)
URL_RE = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+?:(\d+)(/[^\s?]*)?\?token=([0-9A-Za-z]+)")
PUBLISHED_RE = re.compile(rf"^127\.0\.0\.1:(\d+):{CONTAINER_PORT}$")


@dataclass(frozen=True)
class Server:
    """Where a notebook job's Jupyter listens on its host, and its token (a secret: never logged)."""

    port: int
    path: str
    token: str


def jupyter_command(container: bool) -> str:
    """The job's shell command (pure).

    On the host: a free loopback port picked when the job starts; Jupyter on 127.0.0.1 only (other
    users log in on a borrowed host). In a container: 0.0.0.0:8888 inside it, published on the
    host's 127.0.0.1 only (`publish_spec`).
    """
    common = "--no-browser --ServerApp.open_browser=False"
    if container:
        # run as the host user's uid (-u), which the image may not know: HOME is then `/`, not writable
        return (f'[ -w "${{HOME:-/}}" ] || export HOME=/tmp; '
                f"exec jupyter lab {common} --ip=0.0.0.0 --port={CONTAINER_PORT} --ServerApp.port_retries=0")
    return f'port=$({free_port_command()}) && exec jupyter lab {common} --ip=127.0.0.1 --port="$port"'


def publish_spec(host_port: int) -> str:
    """`127.0.0.1:PORT:8888`: the container's Jupyter on the host's loopback only (pure)."""
    return f"127.0.0.1:{host_port}:{CONTAINER_PORT}"


def free_port_command() -> str:
    """A remote command that prints a free TCP port on the host's loopback (pure)."""
    from migrate.remote.shell import quote

    return f"python3 -c {quote(FREE_PORT_PY)}"


def find_server(log: str, published: int | None = None) -> Server | None:
    """The last server URL in a job's log, None before Jupyter listens (pure).

    `published`: a container job's host port (the log names the container's own port).
    """
    found = None
    for m in URL_RE.finditer(log):
        found = m
    if found is None:
        return None
    port = published if published is not None else int(found.group(1))
    return Server(port=port, path=found.group(2) or "/lab", token=found.group(3))


def published_port(job: dict) -> int | None:
    """A container notebook job's host port from its `ports` field (pure)."""
    for p in job.get("ports") or []:
        m = PUBLISHED_RE.match(str(p))
        if m:
            return int(m.group(1))
    return None


def local_url(bind: str, port: int, server: Server) -> str:
    """The URL to open here (it carries the token: print it once, log it never) (pure)."""
    host = f"[{bind}]" if ":" in bind else bind
    return f"http://{host}:{port}{server.path}?token={server.token}"


def pick_local_port(bind: str) -> int:
    """A free port on this machine's `bind` address (the kernel's choice)."""
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


def host_free_port(client: AgentClient) -> int:
    """Ask the host for a free loopback port (for a container's published port)."""
    res = client.remote.run(free_port_command(), check=False, what="pick a free port")
    text = res.stdout.strip()
    if res.exit_code != 0 or not text.isdigit():
        raise MigrateError(f"could not pick a free port on {client.remote.name}: "
                           f"{(res.stderr.strip() or text or 'no answer')[:200]}",
                           hint="the host needs python3 (the dispatcher does too)")
    return int(text)


def read_job(client: AgentClient, job_id: str) -> tuple[dict | None, str]:
    """(the job as `status --json` shows it or None, the last lines of its log)."""
    data = client.call(["status", "--all"], what="read job status", need_queue=True)
    if data.get("no_queue"):
        raise no_queue_error(client.remote.name)
    job = next((j for j in data["jobs"] if str(j["id"]) == job_id or job_id in (j.get("name"), j.get("key"))),
               None)
    if job is None:
        return None, ""
    res = client.remote.run(agent_command(client.bundle, ["logs", str(job["id"]), "--tail", str(LOG_LINES)],
                                          need_queue=True), check=False, what="read the job's log")
    return job, res.stdout


def wait_for_server(read: Callable[[], tuple[dict | None, str]], *, host: str, job_ref: str, timeout: float,
                    interval: float = 0.5, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep,
                    on_wait: Callable[[dict], None] | None = None) -> tuple[dict, Server]:
    """Poll the job until its log shows the server URL; a job that ends first, or the deadline, is an error."""
    deadline = clock() + timeout
    while True:
        job, log = read()
        if job is None:
            raise UsageError(f"no job {job_ref!r} on {host}", hint=f"see the ids in `migrate status {host}`")
        jid = job["id"]
        server = find_server(log, published_port(job)) if job.get("state") == "running" else None
        if server is not None:
            return job, server
        if job.get("state") in FINAL:
            code = job.get("exit_code")
            raise MigrateError(f"notebook job {jid} on {host} {job.get('state')}"
                               + (f" (exit {code})" if code is not None else "") + " before Jupyter listened",
                               hint=f"see why: migrate logs {host} {jid} (is jupyterlab installed in the env "
                                    "or image?)")
        if on_wait:
            on_wait(job)
        if clock() >= deadline:
            where = "is still queued" if job.get("state") == "queued" else "does not listen yet"
            raise MigrateError(f"notebook job {jid} on {host} {where} after {timeout:g}s",
                               hint=f"it keeps going: `migrate notebook {host} --attach {jid}` later, "
                                    f"or end it with `migrate cancel {host} {jid}`")
        sleep(interval)


def await_answer(host: Host, local: int, bind: str, server: Server, *, timeout: float = 30,
                 answer: Callable[[str, int, Server], int | str] | None = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
    """Return once Jupyter answers through the forward (GET /api/status with the token); the host's
    connection dying first, or the deadline, is an error."""
    answer = answer or api_status
    deadline = clock() + timeout
    last = ""
    while clock() < deadline:
        if not host.forwards_alive():
            raise MigrateError(f"the connection to {host.name} holding the forward ended",
                               hint="is AllowTcpForwarding on for this host? -vv shows more")
        status = answer(bind, local, server)
        if status == 200:
            return
        last = str(status)
        sleep(0.2)
    raise MigrateError(f"Jupyter did not answer through the forward within {timeout:g}s (last: {last})",
                       hint="try again with --attach JOB")


def api_status(bind: str, local: int, server: Server) -> int | str:
    """GET /api/status through the forward (the token in a header, not the URL): the HTTP code or why not."""
    host = f"[{bind}]" if ":" in bind else bind
    base = server.path.rsplit("/lab", 1)[0] if server.path.endswith("/lab") else ""
    req = urllib.request.Request(f"http://{host}:{local}{base}/api/status",
                                 headers={"Authorization": f"token {server.token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError) as exc:
        return type(exc).__name__


def info_json(host: str, job: dict, url: str, local: int, server: Server, bind: str) -> str:
    """The one line `--json` prints once the forward works (compact: a script reads one line)."""
    data: dict[str, Any] = {"host": host, "job": job["id"], "name": job.get("name"), "url": url, "bind": bind,
                            "local_port": local, "remote_port": server.port}
    return json.dumps(data)


def describe_wait(job: dict) -> str:
    """`job 7 queued: waiting for 1 free GPU` (pure): shown once per state while waiting."""
    why = f": {job['reason']}" if job.get("reason") else ""
    return f"job {job['id']} {job.get('state')}{why}"


def notebook_spec(spec: Any, *, host_port: int | None = None) -> Any:
    """The notebook job: Jupyter's command, a container's published port, a default name (pure)."""
    from dataclasses import replace

    container = bool(spec.image)
    ports = [publish_spec(host_port if host_port is not None else CONTAINER_PORT)] if container else []
    return replace(spec, command=jupyter_command(container), name=spec.name or "notebook", ports=ports)


def show_dry_run(host: str, spec: Any, options: Any, *, local: int | None, bind: str, as_json: bool) -> None:
    """What `notebook --dry-run` prints: the job and the forward; nothing is contacted."""
    from migrate.jobs.submit import redacted

    job = redacted(notebook_spec(spec, host_port=0 if spec.image else None).payload(options))
    if spec.image:
        job["ports"] = [publish_spec(0).replace(":0:", ":<free port>:")]
    forward = f"{bind}:{local or '<free port>'} -> {host}:localhost:<Jupyter's port, from the job's log>"
    if as_json:
        ui.print_json({"host": host, "dry_run": True, "job": job, "forward": forward})
        return
    ui.step(f"would queue on {host}: {job['command']}" + (f" in {spec.image}" if spec.image else "")
            + (f" (env {spec.python_env})" if spec.python_env else "") + f", {spec.gpus} GPU(s)")
    if spec.image:
        ui.step(f"the container's {CONTAINER_PORT} published on {host}'s 127.0.0.1 only, at a free port")
    ui.step(f"would wait for Jupyter's URL in the job's log, then forward {forward}")


def run_notebook(host: str, conn: Any, spec: Any, options: Any, *, attach: str | None,
                 local: int | None, bind: str, timeout: float, open_browser: bool, as_json: bool) -> int:
    """Queue the notebook job (or find `attach`), wait for Jupyter, forward it here until Ctrl-C."""
    from migrate.jobs.client import report_dispatcher, submit_with
    from migrate.remote.connection import connect

    with connect(host, conn) as remote:
        client = AgentClient(remote)
        if attach is None:
            host_port = host_free_port(client) if spec.image else None
            data = submit_with(client, [notebook_spec(spec, host_port=host_port)], options)
            if data.get("dispatcher"):
                report_dispatcher(data["dispatcher"], remote.name)
            job_ref = str(data["jobs"][0]["id"])
            ui.step(f"queued notebook job {job_ref} on {remote.name}; waiting for Jupyter to listen")
        else:
            job_ref = attach
        said: set[str] = set()

        def on_wait(job: dict) -> None:
            line = describe_wait(job)
            if job.get("state") != "running" and line not in said:
                said.add(line)
                ui.info(line)

        job, server = wait_for_server(lambda: read_job(client, job_ref), host=remote.name, job_ref=job_ref,
                                      timeout=timeout, on_wait=on_wait)
        port = local or pick_local_port(bind)
        return serve(remote, host, job, server, local=port, bind=bind, open_browser=open_browser, as_json=as_json)


def serve(remote: Host, host: str, job: dict, server: Server, *, local: int, bind: str, open_browser: bool,
          as_json: bool, answer: Callable[[str, int, Server], int | str] | None = None,
          sleep: Callable[[float], None] = time.sleep, interval: float = 1.0) -> int:
    """Forward `local` here to Jupyter on the host (a forward on the host's OpenSSH ControlMaster), print
    the URL once Jupyter answers through it, and hold it until Ctrl-C/SIGTERM (0) or until the host's
    connection dies (MigrateError saying how to reconnect)."""
    import signal
    import webbrowser

    jid = job["id"]
    check_local_ports([Forward(local, server.port)], bind)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with remote.forward(local, server.port, bind=bind):
            await_answer(remote, local, bind, server, answer=answer, sleep=sleep)
            url = local_url(bind, local, server)
            if as_json:
                sys.stdout.write(info_json(host, job, url, local, server, bind) + "\n")
                sys.stdout.flush()
            else:
                ui.step(f"JupyterLab (job {jid}) on {host}: {bind}:{local} -> {host}:localhost:{server.port}")
                sys.stdout.write(url + "\n")  # whole, never wrapped: it is copied into a browser
                sys.stdout.flush()
                ui.info(f"Ctrl-C stops the forward, not Jupyter: `migrate notebook {host} --attach {jid}` "
                        f"reconnects, `migrate cancel {host} {jid}` ends it")
            if open_browser:
                webbrowser.open(url)
            while remote.forwards_alive():
                sleep(interval)
    except KeyboardInterrupt:
        ui.info(f"forward closed; notebook job {jid} keeps running on {host}: "
                f"`migrate notebook {host} --attach {jid}` (or `migrate tunnel {host} {local}:{server.port}`) "
                f"reconnects, `migrate cancel {host} {jid}` ends it")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    raise MigrateError(f"the connection to {host} ended and the forward with it; notebook job {jid} may still run: "
                       f"`migrate notebook {host} --attach {jid}` reconnects",
                       hint=f"end it: migrate cancel {host} {jid}")
