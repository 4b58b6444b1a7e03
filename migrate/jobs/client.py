"""Talking to the agent on a host: install it, start the dispatcher, call its subcommands.

Every call is one SSH command: `python3 ~/.migrate/agent/migrate-agent-<v>.pyz SUBCOMMAND ...`
(JSON in on stdin, JSON out on stdout). If that file is missing (first use, or a new migrate
version) the call says so with a distinct exit code, and the client uploads the zipapp over SFTP
(atomically, 0600) and calls again: no pip, no root, nothing outside ~/.migrate.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from migrate import ui
from migrate.agent.db import job_ref_problem
from migrate.errors import ConnectError, MigrateError, RemoteCommandError, UsageError
from migrate.jobs.bundle import AgentBundle, build_agent
from migrate.jobs.spec import DispatcherOptions, JobSpec, SubmittedJob, check_specs
from migrate.remote import shell
from migrate.remote.connection import Remote, connect, target_for
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions

EXIT_NO_QUEUE = 96
EXIT_NO_PYTHON = 97
EXIT_NO_AGENT = 98
QUEUE_RELPATH = ".migrate/dispatcher/queue.db"
BACKEND_ENV = "MIGRATE_GPU_BACKEND"
AGENT_ERROR_MARK = "MIGRATE-ERROR "
AGENT_WARN_MARK = "MIGRATE-WARN "


def agent_command(bundle: AgentBundle, args: list[str], *, need_queue: bool = False, has_stdin: bool = False) -> str:
    """The remote command line that runs the agent (pure): checks python3 and the file first.

    `need_queue`: for read-only verbs on a host where nothing was ever queued, exit early (and
    install nothing) instead of running the agent. `has_stdin`: the call sends data on stdin, which
    an early exit drains first (invoke fails if the remote end closes while it is writing).
    """
    path = shell.home_path(bundle.remote_relpath)
    drain = "cat >/dev/null; " if has_stdin else ""
    queue_check = (f"[ -e {shell.home_path(QUEUE_RELPATH)} ] || {{ {drain}exit {EXIT_NO_QUEUE}; }}; "
                   if need_queue else "")
    return (queue_check + f"command -v python3 >/dev/null 2>&1 || {{ {drain}exit {EXIT_NO_PYTHON}; }}; "
            f"[ -f {path} ] || {{ {drain}exit {EXIT_NO_AGENT}; }}; "
            f"exec python3 -I -S {path} {shell.join(args)}")


# Runs the agent zipapp sent on stdin (base64) from memory: nothing is written on the host. For
# read-only verbs on a host without the agent. memfd_create needs python3 >= 3.8 on Linux.
IN_MEMORY_BOOT = """import base64, os, runpy, sys
data = base64.b64decode(sys.stdin.buffer.read())
fd = os.memfd_create("migrate-agent")
os.write(fd, data)
path = "/proc/self/fd/%d" % fd
sys.argv[0] = path
sys.path.insert(0, path)
runpy.run_path(path, run_name="__main__")
"""


def in_memory_command(args: list[str]) -> str:
    """The remote command line that runs the agent from stdin, installing nothing (pure)."""
    return (f"command -v python3 >/dev/null 2>&1 || {{ cat >/dev/null; exit {EXIT_NO_PYTHON}; }}; "
            f"exec python3 -I -S -c {shell.quote(IN_MEMORY_BOOT)} {shell.join(args)}")


def install_commands(bundle: AgentBundle) -> list[str]:
    """Directories the agent needs before the upload (pure)."""
    return [shell.mkdir_private(".migrate"), shell.mkdir_private(".migrate/agent")]


class AgentClient:
    """The agent on one open connection."""

    def __init__(self, remote: Host, bundle: AgentBundle | None = None) -> None:
        self.remote = remote
        self.bundle = bundle or build_agent()
        self.installed_now = False

    def install(self) -> None:
        """Upload the zipapp to ~/.migrate/agent/ (atomic rename, 0600)."""
        ui.step(f"installing the dispatcher agent {self.bundle.version} on {self.remote.name} "
                f"({ui.human_bytes(len(self.bundle.data))}, ~/{self.bundle.remote_relpath})")
        self.remote.run("cd && " + " && ".join(install_commands(self.bundle)), what="create ~/.migrate/agent")
        home = self.remote.home()
        self.remote.put_bytes(self.bundle.data, f"{home}/{self.bundle.remote_relpath}", mode=0o600)
        self.installed_now = True

    def call(self, args: list[str], payload: dict | None = None, *, what: str, timeout: float | None = 120,
             need_queue: bool = False, install: bool = True) -> dict:
        """Run a subcommand and return its JSON answer; agent errors become MigrateError.

        With `need_queue`, a host without a queue answers {"ok": true, "no_queue": true}. Without
        `install` (read-only verbs), a host without this agent runs it from memory instead.
        """
        stdin = json.dumps(payload) if payload is not None else None
        for attempt in (1, 2):
            command = agent_command(self.bundle, args, need_queue=need_queue, has_stdin=stdin is not None)
            res = self.remote.run(command, stdin=stdin, check=False, what=what, timeout=timeout)
            if res.exit_code == EXIT_NO_QUEUE:
                return {"ok": True, "no_queue": True}
            if res.exit_code == EXIT_NO_PYTHON:
                raise MigrateError(f"python3 is not installed on {self.remote.name}",
                                   hint="the dispatcher needs python3 >= 3.8 (apt-get install python3)")
            if res.exit_code == EXIT_NO_AGENT and attempt == 1:
                if not install and payload is None:
                    return self._call_in_memory(args, what=what, timeout=timeout)
                self.install()
                continue
            return self._parse(res.stdout, res.stderr, res.exit_code, what)
        raise MigrateError(f"the agent is still missing on {self.remote.name} after installing it")

    def _call_in_memory(self, args: list[str], *, what: str, timeout: float | None) -> dict:
        """The agent sent on stdin and run from memory: the host keeps no file of it."""
        import base64

        res = self.remote.run(in_memory_command(args), stdin=base64.b64encode(self.bundle.data).decode(),
                              check=False, what=what, timeout=timeout)
        if res.exit_code == EXIT_NO_PYTHON:
            raise MigrateError(f"python3 is not installed on {self.remote.name}",
                               hint="the dispatcher needs python3 >= 3.8 (apt-get install python3)")
        if "memfd_create" in res.stderr:
            raise MigrateError(f"{self.remote.name}'s python3 cannot run the agent without installing it",
                               hint=f"`migrate run {self.remote.name} ...` installs it (~/.migrate/agent/)")
        return self._parse(res.stdout, res.stderr, res.exit_code, what)

    def _parse(self, stdout: str, stderr: str, code: int, what: str) -> dict:
        line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
        try:
            data = json.loads(line)
        except ValueError:
            detail = (stderr.strip() or stdout.strip() or f"exit code {code}").splitlines()[-1]
            raise RemoteCommandError(f"{what} failed on {self.remote.name}: {detail}", command="migrate-agent",
                                     exit_code=code, stderr=stderr,
                                     hint="see ~/.migrate/dispatcher/agent.log on the host") from None
        if not data.get("ok"):
            raise MigrateError(f"{self.remote.name}: {data.get('error', 'agent error')}", hint=data.get("hint") or None)
        return data

    # -- streams (logs -f) ---------------------------------------------------------------------
    def stream(self, args: list[str]) -> int:
        """Run a subcommand through OpenSSH with its stdout passed straight to ours (logs, -f).

        The agent's warnings (MIGRATE-WARN lines on stderr) are shown as they come; a
        MIGRATE-ERROR line becomes a one-line error.
        """
        for attempt in (1, 2):
            rest: list[str] = []
            returncode = self.remote.follow(agent_command(self.bundle, args, need_queue=True), sys.stdout.buffer,
                                            functools.partial(self._on_stderr, rest=rest), what=" ".join(args))
            text = "".join(rest)
            if returncode == EXIT_NO_QUEUE:
                raise no_queue_error(self.remote.name)
            if returncode == EXIT_NO_AGENT and attempt == 1:
                self.install()
                continue
            for ln in text.splitlines():
                if ln.startswith(AGENT_ERROR_MARK):
                    info = json.loads(ln[len(AGENT_ERROR_MARK):])
                    hint = resume_hint(self.remote.name) if info.get("resume") else info.get("hint")
                    raise MigrateError(f"{self.remote.name}: {info.get('error')}", hint=hint or None)
            if returncode == 255:
                self.remote.run("true", check=False, what="connect")  # ssh says only 255: the paramiko layer says why
                raise ConnectError(f"ssh to {self.remote.name} failed: {text.strip().splitlines()[-1:] or '?'}")
            if text.strip():
                sys.stderr.write(text)
            return returncode
        return 1

    def _on_stderr(self, ln: str, rest: list[str]) -> None:
        """Show the agent's warnings at once; keep every other stderr line for after the exit."""
        if ln.startswith(AGENT_WARN_MARK):
            try:
                info = json.loads(ln[len(AGENT_WARN_MARK):])
            except ValueError:
                return
            text = f"{info.get('warning')} on {self.remote.name}"
            ui.warn(f"{text}: {resume_hint(self.remote.name)}" if info.get("resume") else text)
        else:
            rest.append(ln)


def resume_hint(host: str) -> str:
    """What to do when the dispatcher is not running or the queue is paused."""
    return f"queued jobs start after `migrate resume {host}` (see `migrate status {host}`)"


def no_queue_error(host: str) -> MigrateError:
    return MigrateError(f"no jobs on {host} yet", hint=f"queue one with `migrate run {host} -- CMD`")


def start_args(options: DispatcherOptions) -> list[str]:
    """Agent arguments that choose how the dispatcher runs (pure)."""
    args = ["--mode", options.mode]
    if options.gpu_backend:
        args += ["--backend", options.gpu_backend]
    if options.cpu_slots:
        args += ["--cpu-slots", str(options.cpu_slots)]
    return args


LINGER_SCRIPT = ('u=$(id -un); if [ -e "/var/lib/systemd/linger/$u" ]; then echo already; '
                 'elif loginctl enable-linger "$u" >/dev/null 2>&1; then echo enabled; else echo need-sudo; fi')


def enable_linger(remote: Host) -> str:
    """Let the user's services outlive logout (`loginctl enable-linger`); 'ok' or 'changed'."""
    out = remote.run(shell.sh_c(LINGER_SCRIPT), what="check linger").stdout.strip()
    if out == "already":
        return "ok"
    if out == "enabled":
        return "changed"
    user = remote.run("id -un", what="read user name").stdout.strip()
    remote.run(shell.join(["loginctl", "enable-linger", user]), sudo=True, what="loginctl enable-linger")
    return "changed"


def report_dispatcher(result: dict, host: str) -> None:
    """One status line about what happened to the dispatcher, plus its warnings."""
    d = result.get("daemon") or {}
    action = result.get("action")
    mode = str(d.get("mode") or "?")
    if action == "started":
        ui.step(f"dispatcher started on {host} (pid {d.get('pid')}, {mode}, GPU backend {d.get('backend')})")
    elif action == "restarted":
        ui.step(f"dispatcher restarted on {host} ({result.get('reason')}); running jobs were adopted")
    else:
        ui.debug(f"dispatcher already running on {host} (pid {d.get('pid')}, {mode})")
    if str(d.get("backend") or "").startswith("fake:"):
        ui.warn(f"{host} uses the FAKE GPU backend ({d.get('backend')}): a test double, not real GPUs")
    for w in result.get("warnings") or []:
        ui.warn(w)


def submit_with(client: AgentClient, jobs: list[JobSpec], options: DispatcherOptions) -> dict:
    """Queue jobs on an open connection and make sure the dispatcher runs; the agent's answer.

    A backend not chosen in `options` may come from $MIGRATE_GPU_BACKEND (as with --gpu-backend),
    so `migrate apply` can rehearse on GPU-less sandbox hosts with the FAKE backend.
    """
    check_specs(jobs)
    if options.gpu_backend is None and os.environ.get(BACKEND_ENV):
        options = dataclasses.replace(options, gpu_backend=check_backend(os.environ[BACKEND_ENV]))
    if options.enable_linger:
        verdict = enable_linger(client.remote)
        if verdict == "changed":
            ui.step(f"changed: enabled lingering for your user on {client.remote.name} "
                    "(loginctl enable-linger): your dispatcher survives logout")
    payload = {"jobs": [j.payload(options) for j in jobs]}
    return client.call(["submit", *start_args(options)], payload, what="submit jobs")


def submit_jobs(host: str, conn: ConnectOptions, jobs: list[JobSpec], options: DispatcherOptions, *,
                remote: Host | None = None) -> list[SubmittedJob]:
    """Queue `jobs` on HOST's dispatcher (installing/starting it as needed). Idempotent per key.
    `remote`: a connection the caller holds open (apply's), else a new one."""
    if not jobs:
        return []
    check_specs(jobs)  # before connecting: a bad image is the caller's mistake, not the host's
    with nullcontext(remote) if remote is not None else connect(host, conn) as r:
        client = AgentClient(r)
        data = submit_with(client, jobs, options)
        if data.get("dispatcher"):
            report_dispatcher(data["dispatcher"], r.name)
    return [SubmittedJob(id=j["id"], key=j.get("key"), name=j["name"], status=j["status"]) for j in data["jobs"]]


def job_statuses(host: str, conn: ConnectOptions) -> list[dict[str, Any]]:
    """Every job on HOST's dispatcher, as `migrate status --json` prints them ([] on a fresh host)."""
    with connect(host, conn) as remote:
        data = AgentClient(remote).call(["status", "--all"], what="read job status", need_queue=True)
    return data.get("jobs", [])


@contextmanager
def agent_session(host: str, conn: ConnectOptions, *, lazy: bool = False) -> Iterator[AgentClient]:
    """`with agent_session(host, conn) as client:` an AgentClient on a fresh connection.

    `lazy`: connect only when a command needs the paramiko connection; `stream()` (logs) runs over
    its own `ssh` and never does unless the agent is missing, which saves one SSH handshake."""
    if lazy:
        target, configs = target_for(host, conn)
        with Remote(target, configs, conn) as remote:
            yield AgentClient(remote)
        return
    with connect(host, conn) as remote:
        yield AgentClient(remote)


def call_agent(host: str, conn: ConnectOptions, args: list[str], *, what: str,
               timeout: float | None = 120, need_queue: bool = True, install: bool = True) -> tuple[dict, str]:
    """One agent subcommand on a fresh connection: (its answer, the host's name for messages).

    With `need_queue` (the default: cancel, retry), a host where nothing was ever queued is an
    error, and nothing is installed there. Without `install`, a missing agent runs from memory.
    """
    with agent_session(host, conn) as client:
        data = client.call(args, what=what, timeout=timeout, need_queue=need_queue, install=install)
        if data.get("no_queue"):
            raise no_queue_error(client.remote.name)
        return data, client.remote.name


def check_job_refs(refs: Iterable[str | None]) -> None:
    """Refuse a JOB argument that can name no job (a 38-digit id) before connecting: one usage line."""
    for ref in refs:
        problem = job_ref_problem(ref) if ref is not None else None
        if problem:
            raise UsageError(problem, hint="give a job's id, name or key as `migrate status HOST` lists it")


def print_answer(host_name: str, data: dict) -> None:
    """An agent answer as the verb's --json output."""
    ui.print_json({"host": host_name, **{k: v for k, v in data.items() if k != "ok"}})


def check_backend(spec: str | None) -> str | None:
    """Validate --gpu-backend: 'nvml' or 'fake:PATH' (the test double)."""
    if spec is None or spec == "":
        return None
    if spec == "nvml" or (spec.startswith("fake:") and len(spec) > 5):
        return spec
    raise UsageError(f"unknown GPU backend {spec!r}", hint="use nvml, or fake:PATH for the FAKE test double")
