"""`migrate shell` / `migrate exec` on this side: the ssh command lines (pure), the CLI grammar, no-TTY refusal."""

from __future__ import annotations

import shlex

import pytest

from migrate.jobs import shell as js
from tests.conftest import assert_one_line_error, run_cli

BASE = ["ssh", "-F", "/cfg", "-o", "BatchMode=yes", "-S", "/sock", "-o", "ControlMaster=no", "gpu1"]
AGENT = ".migrate/agent/migrate-agent-1.pyz"


def remote_words(argv: list[str]) -> list[str]:
    """What the remote shell sees: the last ssh argument split as sh would."""
    return shlex.split(argv[-1])


def test_a_host_shell_is_ssh_with_a_terminal_and_nothing_else():
    assert js.session_argv(BASE, tty=True) == [*BASE[:-1], "-o", "LogLevel=ERROR", "-t", "gpu1"]


@pytest.mark.parametrize("job,words", [
    ("7", ()),
    ("-weird name", ("echo", "$(touch /tmp/pwned)", "a'b")),  # a job name that looks like an option
    ("train[lr=1e-3]", ("nvidia-smi; exit 3",)),
    ("x", ("--check", "--tty")),                                # CMD words are never the agent's options
])
def test_job_sessions_quote_the_job_and_cmd_and_keep_them_away_from_the_agents_options(job, words):
    for tty in (True, False):
        argv = js.job_session_argv(BASE, AGENT, job, tty=tty, words=words)
        assert argv[:-2] == [*BASE[:-1], "-o", "LogLevel=ERROR", "-t" if tty else "-T"] and argv[-2] == "gpu1"
        remote = remote_words(argv)
        assert remote[:4] == ["exec", "python3", "-I", "-S"] and remote[4] == "$HOME/" + AGENT
        assert remote[5] == "enter"
        opts, rest = remote[6:remote.index("--")], remote[remote.index("--") + 1:]
        assert opts == (["--tty"] if tty else []) and rest == [job, *words]
        assert argv[-1].count('"$HOME"') == 1  # $HOME expands, nothing else does


def test_check_call_args_and_exit_status():
    assert js.enter_args("7", tty=False, check=True) == ["enter", "--check", "--", "7"]
    assert js.exit_status(3) == 3 and js.exit_status(-15) == 143 and js.exit_status(0) == 0


def test_dry_run_prints_the_ssh_command_and_connects_to_nothing():
    res = run_cli("exec", "nohost.invalid", "7", "--dry-run", "--", "echo", "a b")
    assert res.code == 0, res.output
    argv = shlex.split(res.stdout)
    assert argv[0] == "ssh" and "-T" in argv and argv[-2] == "nohost.invalid"
    assert shlex.split(argv[-1])[-4:] == ["--", "7", "echo", "a b"]
    res = run_cli("shell", "nohost.invalid", "--dry-run")
    assert res.code == 0 and shlex.split(res.stdout)[-2:] == ["-t", "nohost.invalid"], res.output


def test_shell_without_a_terminal_is_refused_in_one_line():
    res = run_cli("shell", "nohost.invalid", "7", input="")
    assert_one_line_error(res, "migrate shell needs a terminal", "migrate exec")


def test_exec_needs_a_cmd_and_help_explains_both_verbs():
    res = run_cli("exec", "h", "7", input="")
    assert res.code == 2 and "give CMD after --" in res.stderr, res.output
    assert "docker exec" in run_cli("exec", "-h").stdout and "window size" in run_cli("shell", "-h").stdout
