"""Where the agent keeps its files on the host: everything under ~/.migrate, private to the user.

    ~/.migrate/agent/migrate-agent-<version>.pyz   the shipped agent (0600)
    ~/.migrate/dispatcher/                         0700
        queue.db (+ -wal, -shm)                    the job queue (SQLite, WAL, 0600)
        agent.lock / agent.pid                     one dispatcher per user (flock) and its identity
        agent.log                                  the dispatcher's own log (rotated at 5 MiB)
        jobs/<id>/output.log                       a job's stdout+stderr (0600)
        jobs/<id>/exit                             its exit code, written by the job wrapper

$MIGRATE_AGENT_HOME moves the whole tree (tests and benchmarks use a temporary directory).
"""

from __future__ import annotations

import json
import os

HOME_ENV = "MIGRATE_AGENT_HOME"


def agent_home() -> str:
    """$MIGRATE_AGENT_HOME, else ~/.migrate."""
    return os.path.abspath(os.path.expanduser(os.environ.get(HOME_ENV) or "~/.migrate"))


class Layout:
    """Paths of one agent installation (pure; `ensure()` creates the directories)."""

    def __init__(self, home: str | None = None) -> None:
        self.home = home or agent_home()
        self.agent_dir = os.path.join(self.home, "agent")
        self.state_dir = os.path.join(self.home, "dispatcher")
        self.db = os.path.join(self.state_dir, "queue.db")
        self.lock = os.path.join(self.state_dir, "agent.lock")
        self.pidfile = os.path.join(self.state_dir, "agent.pid")
        self.log = os.path.join(self.state_dir, "agent.log")
        self.jobs_dir = os.path.join(self.state_dir, "jobs")

    def job_dir(self, job_id: int) -> str:
        return os.path.join(self.jobs_dir, str(job_id))

    def job_log(self, job_id: int) -> str:
        return os.path.join(self.job_dir(job_id), "output.log")

    def job_exit(self, job_id: int) -> str:
        return os.path.join(self.job_dir(job_id), "exit")

    def ensure(self) -> Layout:
        """Create the private directories (0700) and set a private umask for this process."""
        os.umask(0o077)
        for d in (self.home, self.state_dir, self.jobs_dir):
            private_dir(d)
        return self


def private_dir(path: str) -> str:
    """mkdir -p PATH with mode 0700 (also tightening an existing directory we own)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o700)
    except OSError:
        pass
    return path


def write_private(path: str, text: str) -> None:
    """Write a 0600 file atomically (temp file + rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def read_json(path: str) -> dict | None:
    """A JSON object from a file, or None when it is missing or unreadable."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
