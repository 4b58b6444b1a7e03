"""Shared test helpers: run the real CLI (in-process, or as a subprocess like a user would) and
wait for a condition with a deadline instead of sleeping a fixed time."""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

T = TypeVar("T")
CLI_COLUMNS = "200"  # pinned: a developer's COLUMNS=80 must not change what tests see (issue 23)
# True: `run_cli` calls migrate.cli.main in this process (unit tests, milliseconds a call), except for
# integration tests (and their fixtures): there the CLI runs in its own process, as a user runs it.
CLI_IN_PROCESS = True
INTEGRATION_TESTS = "tests/integration/"
CLI_CALLS = {"in-process": 0, "subprocess": 0}  # shown at the end of a run: subprocesses are the slow ones

# Ctrl-C tests send SIGINT to `migrate` processes. A suite started in the background of a script (`cmd &`
# without job control) inherits SIGINT ignored, every child would too, and Python then installs no
# KeyboardInterrupt handler: those tests would fail for how the suite was started. A handler here
# (reset to the default in every child by exec) keeps them about migrate.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _cli_env(env: dict | None) -> dict[str, str]:
    full_env = dict(os.environ)
    full_env.pop("MIGRATE_SUDO_PASSWORD", None)
    full_env["COLUMNS"] = CLI_COLUMNS
    full_env.update(env or {})
    return full_env


def run_cli(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 300,
            cwd: str | None = None, own_process: bool = False) -> CliResult:
    """Run `migrate ARGS` and capture exit code and output: in-process unless `own_process` is
    set (a test that needs a process boundary: a tty, signals, a separate process to watch), or
    an integration test (or one of its fixtures, session-scoped ones too) is running."""
    integration = os.environ.get("PYTEST_CURRENT_TEST", "").startswith(INTEGRATION_TESTS)
    if own_process or integration or not CLI_IN_PROCESS:
        return run_cli_subprocess(*args, env=env, input=input, timeout=timeout, cwd=cwd)
    return run_cli_in_process(*args, env=env, input=input, cwd=cwd)


def run_cli_subprocess(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 300,
                       cwd: str | None = None) -> CliResult:
    """Run `python -m migrate ARGS` in its own process."""
    CLI_CALLS["subprocess"] += 1
    proc = subprocess.run([sys.executable, "-m", "migrate", *args], capture_output=True, text=True,
                          env=_cli_env(env), input=input, timeout=timeout, cwd=cwd)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@contextlib.contextmanager
def _redirected_fd(fd: int, path: str, mode: str) -> Iterator[None]:
    """Point file descriptor `fd` at `path` (so child processes write there too), then back."""
    saved = os.dup(fd)
    target = os.open(path, os.O_RDONLY if mode == "r" else os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        os.dup2(target, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(target)


def run_cli_in_process(*args: str, env: dict | None = None, input: str | None = None,
                       cwd: str | None = None) -> CliResult:
    """Call `migrate.cli.main(ARGS)` here, as `python -m migrate ARGS` would run: the environment,
    working directory, stdin and stdout/stderr (file descriptors too, for child processes) are
    swapped for the call and restored after; `migrate.ui` starts fresh (consoles, verbosity)."""
    from migrate import cli, ui

    CLI_CALLS["in-process"] += 1
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams = (sys.stdin, sys.stdout, sys.stderr)
    saved_ui = (ui.out, ui.err, ui.verbosity())
    with tempfile.TemporaryDirectory(prefix="migrate-cli-") as tmp:
        paths = {name: os.path.join(tmp, name) for name in ("stdin", "stdout", "stderr")}
        Path(paths["stdin"]).write_text(input or "")
        code: int = 0
        with contextlib.ExitStack() as stack:
            for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
                stack.enter_context(_redirected_fd(fd, paths[name], mode))
            try:
                os.environ.clear()
                os.environ.update(_cli_env(env))
                if cwd is not None:
                    os.chdir(cwd)
                sys.stdin = stack.enter_context(open(0, closefd=False))
                sys.stdout = stack.enter_context(open(1, "w", closefd=False))
                sys.stderr = stack.enter_context(open(2, "w", closefd=False))
                importlib.reload(ui)  # consoles built for this environment and these streams
                try:
                    cli.main(list(args))
                except SystemExit as exc:
                    if exc.code is None or isinstance(exc.code, int):
                        code = exc.code or 0
                    else:
                        print(exc.code, file=sys.stderr)
                        code = 1
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
            finally:
                sys.stdin, sys.stdout, sys.stderr = saved_streams
                ui.out, ui.err = saved_ui[:2]
                ui.set_verbosity(saved_ui[2])
                os.chdir(saved_cwd)
                os.environ.clear()
                os.environ.update(saved_env)
        return CliResult(code, Path(paths["stdout"]).read_text(), Path(paths["stderr"]).read_text())


def wait_until(condition: Callable[[], T], timeout: float = 30, interval: float = 0.05,
               what: str = "the condition") -> T:
    """Poll `condition` until it returns something true and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def pytest_terminal_summary(terminalreporter) -> None:
    if any(CLI_CALLS.values()):
        terminalreporter.write_line("migrate CLI calls: " + ", ".join(f"{n} {k}" for k, n in CLI_CALLS.items()))


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
        wait_until(sock.exists, timeout=5, interval=0.1, what=f"ssh-agent's socket {sock}")
        subprocess.run(["ssh-add", "-q", key_path], env={"SSH_AUTH_SOCK": str(sock)}, check=True,
                       capture_output=True)
        yield sock
    finally:
        agent.terminate()
        agent.wait(timeout=10)
