"""`migrate shell HOST [JOB]` and `migrate exec HOST JOB -- CMD`: a terminal or one command on the host,
or inside one of its jobs.

The host side lives in the agent (`migrate/agent/enter.py`): it resolves the job and replaces
itself with `docker exec` (container jobs) or a login shell in the job's directory and
environment (process jobs). This side only builds the `ssh` command line (pure functions below) and
runs the system `ssh` with the one resolved OpenSSH argv, through a ControlMaster opened first, so
that a connection problem is reported as such (with the paramiko diagnosis every verb gives) and
never mistaken for the exit code of the shell or command, which is passed through as it is.

Before a job session, one `enter --check` call over the same master reports a queued, finished or
unknown job as a one-line error (and installs the agent if this migrate's version is missing).

Cluster jobs (`migrate shell/exec CLUSTER JOB`) are in migrate/cluster/shell.py: they reuse
`session_argv`, `check_terminal` and `run_ssh`, with a stdlib enter script instead of the agent.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field

from migrate import ui
from migrate.env import plan as env_plan
from migrate.errors import MigrateError
from migrate.jobs.bundle import AgentBundle, build_agent
from migrate.jobs.client import AgentClient, no_queue_error
from migrate.jobs.submit import command_text
from migrate.remote import shell
from migrate.remote.connection import connect
from migrate.remote.hosts import ConnectOptions, openssh_argv
from migrate.remote.openssh import OpenSshSession

NEEDS_TTY = "migrate shell needs a terminal"


# -- pure builders -------------------------------------------------------------------------------
def enter_args(job: str, *, tty: bool, check: bool = False, words: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The agent's `enter` arguments: options first, then `--`, the job and CMD (so neither a job
    name nor CMD can ever be read as an option of the agent)."""
    args = ["enter"]
    if tty:
        args.append("--tty")
    if check:
        args.append("--check")
    return [*args, "--", job, *words]


def agent_exec_command(agent_relpath: str, args: list[str]) -> str:
    """The remote command line that runs the agent with `args` (every argument quoted): `exec` so that
    the shell, docker exec or CMD the agent becomes is what sshd waits for, exit code included."""
    return f"exec python3 -I -S {shell.home_path(agent_relpath)} {shell.join(args)}"


def session_argv(client_argv: list[str], *, tty: bool, remote_command: str | None = None) -> list[str]:
    """`ssh [options] -t|-T alias [COMMAND]` from `ssh [options] alias` (pure).

    -t gives the remote side a pseudo-terminal that follows the local terminal's size; -T none, so
    stdout and stderr stay apart and binary output is not changed.
    """
    *options, alias = client_argv
    # LogLevel=ERROR: no "Shared connection to ... closed." after the shell's own output (the master
    # was opened, and its problems reported, before this runs)
    argv = [*options, "-o", "LogLevel=ERROR", "-t" if tty else "-T", alias]
    if remote_command is not None:
        argv.append(remote_command)
    return argv


def job_session_argv(client_argv: list[str], agent_relpath: str, job: str, *, tty: bool,
                     words: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The whole `ssh` command of a session inside JOB on the host `client_argv` reaches (pure; the
    seam for cluster jobs: the same call with the job's host and its id there)."""
    command = agent_exec_command(agent_relpath, enter_args(job, tty=tty, words=words))
    return session_argv(client_argv, tty=tty, remote_command=command)


def exit_status(returncode: int) -> int:
    """A child's return code as a shell reports it: a signal N becomes 128+N."""
    return 128 - returncode if returncode < 0 else returncode


# -- running -------------------------------------------------------------------------------------
@dataclass
class SessionRequest:
    """One `migrate shell` / `migrate exec`: where, inside what, and how."""

    host: str
    job: str | None = None
    words: tuple[str, ...] = ()
    tty: bool = True
    conn: ConnectOptions = field(default_factory=ConnectOptions)
    python_env: str | None = None   # `--env NAME` (no JOB): the shell or CMD runs with ~/.migrate/envs/NAME active


def host_command(request: SessionRequest) -> str | None:
    """The remote command of a session on the host itself (no JOB): none for a plain login shell, the
    env's activation (then CMD or an interactive shell) with `--env NAME` (pure)."""
    if request.python_env is None:
        return None
    return env_plan.session_command(request.python_env, command_text(request.words) or None)


class _Client(AgentClient):
    """AgentClient over the session's OpenSSH master; installing (SFTP, rare) opens a paramiko connection."""

    def __init__(self, session: OpenSshSession, request: SessionRequest, bundle: AgentBundle) -> None:
        super().__init__(session, bundle)  # type: ignore[arg-type]  # `run` and `name` are all `call` uses
        self.request = request

    def install(self) -> None:
        with connect(self.request.host, self.request.conn) as remote:
            AgentClient(remote, self.bundle).install()
        self.installed_now = True


def dry_run_argv(request: SessionRequest) -> list[str]:
    """The ssh command a session would run, without connecting (--dry-run)."""
    session = OpenSshSession(request.host, request.conn)
    base = openssh_argv(session.target, config_file=session.configs.openssh_file())
    if request.job is None:
        return session_argv(base, tty=request.tty, remote_command=host_command(request))
    return job_session_argv(base, build_agent().remote_relpath, request.job, tty=request.tty, words=request.words)


def check_terminal(tty: bool) -> None:
    """`migrate shell` refuses to start without a terminal on stdin (it would hang or garble)."""
    if tty and not sys.stdin.isatty():
        raise MigrateError(f"{NEEDS_TTY} (stdin is not a terminal)",
                           hint="run one command without a terminal with `migrate exec HOST JOB -- CMD`, "
                                "or `ssh HOST CMD`")


def open_session(request: SessionRequest) -> int:
    """Run the session; return the exit code of the remote shell or command."""
    check_terminal(request.tty)
    with OpenSshSession(request.host, request.conn) as session:
        session.open()  # connection problems end here, diagnosed, before any exit code can be confused
        if request.job is None:
            argv = session_argv(session.openssh_argv(), tty=request.tty, remote_command=host_command(request))
        else:
            client = _Client(session, request, build_agent())
            data = client.call(enter_args(request.job, tty=request.tty, check=True, words=request.words),
                               what="find the job", need_queue=True, timeout=60)
            if data.get("no_queue"):
                raise no_queue_error(session.name)
            job, plan = data["job"], data["plan"]
            ui.debug(f"job {job['id']} ({job['name']}): {plan['kind']} job, {plan['target']}")
            argv = job_session_argv(session.openssh_argv(), client.bundle.remote_relpath, request.job,
                                    tty=request.tty, words=request.words)
        return run_ssh(argv)


def run_ssh(argv: list[str]) -> int:
    """Run `ssh` in the foreground with our stdin/stdout/stderr; its exit status.

    Ctrl-C reaches ssh (and through a terminal session the remote side) as it would reach a plain
    `ssh`; this process only waits for it.
    """
    ui.debug("$ " + " ".join(argv), level=2)
    try:
        proc = subprocess.Popen(argv)
    except FileNotFoundError as exc:
        raise MigrateError("the OpenSSH client (ssh) is not installed here",
                           hint="apt-get install openssh-client") from exc
    prev = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return exit_status(proc.wait())
    finally:
        signal.signal(signal.SIGINT, prev)
