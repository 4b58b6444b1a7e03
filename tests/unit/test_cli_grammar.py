"""One CLI grammar (docs/cli.md): -n, hosts, --json, and the old spellings that still work for one release."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest


def _invoke(command, args: list[str]) -> int:
    """Run a click command in-process; its exit code."""
    try:
        command.main(args, standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


class _FakeClient:
    """What status/logs need of an AgentClient; records the agent arguments."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.remote = SimpleNamespace(name="h", target=SimpleNamespace(display="h"))

    def call(self, args: list[str], **kw) -> dict:
        self.calls.append(args)
        return {"no_queue": True}

    def stream(self, args: list[str]) -> int:
        self.calls.append(args)
        return 0


@pytest.fixture
def fake_agent(monkeypatch):
    from migrate.commands import logs, status

    client = _FakeClient()

    @contextlib.contextmanager
    def session(host, conn):
        yield client

    monkeypatch.setattr(status, "agent_session", session)
    monkeypatch.setattr(logs, "agent_session", session)
    return client


# -- -n means --dry-run or nothing -----------------------------------------------------------------
@pytest.mark.parametrize("args,agent_args", [
    (["h", "--last", "5"], ["status", "--limit", "5"]),
    (["h"], ["status", "--limit", "20"]),
])
def test_status_last(fake_agent, capsys, args, agent_args):
    from migrate.commands import status

    assert _invoke(status.command, args) == 0
    assert fake_agent.calls == [agent_args] and "deprecated" not in capsys.readouterr().err


def test_status_n_still_works_with_one_deprecation_line(fake_agent, capsys):
    from migrate.commands import status

    assert _invoke(status.command, ["h", "-n", "5"]) == 0
    assert fake_agent.calls == [["status", "--limit", "5"]]
    err = [ln for ln in capsys.readouterr().err.splitlines() if "deprecated" in ln]
    assert len(err) == 1 and err[0].startswith("deprecated: status -n 5 still works") and "--last 5" in err[0]


@pytest.mark.parametrize("args,agent_args", [
    (["h", "3", "--tail", "7"], ["logs", "3", "--tail", "7"]),
    (["h", "3", "-f"], ["logs", "3", "--follow"]),
])
def test_logs_tail(fake_agent, capsys, args, agent_args):
    from migrate.commands import logs

    assert _invoke(logs.command, args) == 0
    assert fake_agent.calls == [agent_args] and "deprecated" not in capsys.readouterr().err


def test_logs_n_still_works_with_one_deprecation_line(fake_agent, capsys):
    from migrate.commands import logs

    assert _invoke(logs.command, ["h", "3", "-n", "7"]) == 0
    assert fake_agent.calls == [["logs", "3", "--tail", "7"]]
    err = [ln for ln in capsys.readouterr().err.splitlines() if "deprecated" in ln]
    assert len(err) == 1 and err[0].startswith("deprecated: logs -n 7 still works") and "--tail 7" in err[0]


def test_help_shows_n_only_as_dry_run():
    """`-n` in --help is --dry-run or absent (the old status/logs -n are hidden)."""
    import click

    from migrate.cli import VERBS, cli

    ctx = click.Context(cli)
    for name in VERBS:
        cmd = cli.get_command(ctx, name)
        for sub in ([cmd.get_command(ctx, s) for s in cmd.list_commands(ctx)] if isinstance(cmd, click.Group)
                    else [cmd]):
            for p in sub.params:
                if "-n" in getattr(p, "opts", []) and not getattr(p, "hidden", False):
                    assert "--dry-run" in p.opts, (name, p.opts)
