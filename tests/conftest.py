"""Shared test helpers: run the real CLI as a subprocess, like a user would."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 300,
            cwd: str | None = None) -> CliResult:
    """Run `python -m migrate ARGS` and capture exit code and output."""
    full_env = dict(os.environ)
    full_env.pop("MIGRATE_SUDO_PASSWORD", None)
    full_env.update(env or {})
    full_env.setdefault("COLUMNS", "200")
    proc = subprocess.run([sys.executable, "-m", "migrate", *args], capture_output=True, text=True,
                          env=full_env, input=input, timeout=timeout, cwd=cwd)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli():
    return run_cli


def assert_one_line_error(res: CliResult, *needles: str) -> None:
    """A user mistake: exit 1, exactly one stderr line starting 'error:' (status lines such as the printed
    mapping may precede it), no traceback, and every needle in that line."""
    assert res.code == 1, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    assert "Traceback" not in res.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


@contextlib.contextmanager
def ssh_agent_holding(key_path: str, sock: Path) -> Iterator[Path]:
    """A real `ssh-agent` listening at `sock` (not $SSH_AUTH_SOCK) and holding `key_path`; stopped afterwards."""
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if sock.exists():
                break
            time.sleep(0.1)
        subprocess.run(["ssh-add", "-q", key_path], env={"SSH_AUTH_SOCK": str(sock)}, check=True,
                       capture_output=True)
        yield sock
    finally:
        agent.terminate()
        agent.wait(timeout=10)
