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
def fake_agent(monkeypatch, tmp_path):
    from migrate.jobs import target

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path / "state"))  # status keeps job ids for completion there

    client = _FakeClient()

    @contextlib.contextmanager
    def session(host, conn, lazy=False):
        yield client

    monkeypatch.setattr(target, "agent_session", session)  # a host's status and logs talk to the agent there
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


# -- hosts: -H/--host HOST, repeatable, in every verb that takes several ---------------------------
@pytest.fixture
def setup_hosts_seen(monkeypatch):
    from migrate.commands import host_setup

    seen: list[list[str]] = []
    monkeypatch.setattr(host_setup, "setup_hosts", lambda hosts, conn, options, **kw: seen.append(hosts) or [])
    monkeypatch.setattr(host_setup, "undo_hosts", lambda hosts, conn, **kw: seen.append(hosts) or [])
    return seen


@pytest.mark.parametrize("args,hosts", [
    (["-H", "gpu1", "-H", "gpu2", "--dry-run"], ["gpu1", "gpu2"]),
    (["--host", "alice@gpu1", "--dry-run"], ["alice@gpu1"]),
    (["gpu1", "gpu2", "--dry-run"], ["gpu1", "gpu2"]),          # positional, as before
    (["gpu1", "-H", "gpu2", "--undo"], ["gpu1", "gpu2"]),
])
def test_host_setup_takes_hosts_with_h(setup_hosts_seen, capsys, args, hosts):
    from migrate.commands import host_setup

    assert _invoke(host_setup.command, args) == 0
    assert setup_hosts_seen == [hosts] and "deprecated" not in capsys.readouterr().err


def test_host_setup_download_offline_refuses_h_too(setup_hosts_seen):
    from migrate.commands import host_setup
    from migrate.errors import UsageError

    with pytest.raises(UsageError, match="give no HOST"):
        _invoke(host_setup.command, ["-H", "gpu1", "--download-offline", "/tmp/x", "--for", "ubuntu:22.04"])


@pytest.fixture
def apply_hosts_seen(monkeypatch, tmp_path):
    from migrate.commands import apply
    from migrate.playbook.apply import ApplyReport

    seen: list[list[str]] = []

    def fake_apply(pb, hosts, conn, *, only, dry_run):
        seen.append(hosts)
        return ApplyReport(hosts=hosts, stages=[])

    monkeypatch.setattr(apply, "apply_playbook", fake_apply)
    (tmp_path / "pb.yml").write_text("hosts: [pbhost]\n")
    return seen, str(tmp_path / "pb.yml")


@pytest.mark.parametrize("args,hosts,deprecation", [
    ([], ["pbhost"], None),
    (["-H", "gpu1"], ["gpu1"], None),
    (["-H", "gpu1", "--host", "gpu2"], ["gpu1", "gpu2"], None),
    (["--hosts", "sandbox1"], ["sandbox1"], None),                 # the old flag with one host: as before
    (["--hosts", "gpu1,gpu2"], ["gpu1", "gpu2"],
     "deprecated: apply --hosts gpu1,gpu2 still works for this release only; write apply -H gpu1 -H gpu2"),
    (["--hosts", "gpu1, gpu2,", "-H", "gpu0"], ["gpu0", "gpu1", "gpu2"], "write apply -H gpu1 -H gpu2"),
])
def test_apply_takes_hosts_with_h_and_the_old_comma_list(apply_hosts_seen, capsys, args, hosts, deprecation):
    from migrate.commands import apply

    seen, pb = apply_hosts_seen
    assert _invoke(apply.command, [pb, "--dry-run", *args]) == 0
    assert seen == [hosts]
    err = [ln for ln in capsys.readouterr().err.splitlines() if "deprecated" in ln]
    if deprecation:
        assert len(err) == 1 and deprecation in err[0], err
    else:
        assert err == []


@pytest.fixture
def push_data_seen(monkeypatch):
    from migrate.commands import push_data

    seen: list[tuple[list[str], str, object]] = []
    monkeypatch.setattr(push_data, "push_data", lambda sources, hosts, dest, conn, options: seen.append(
        (hosts, dest, options)) or [])
    return seen


@pytest.mark.parametrize("args,hosts,dest,deprecation", [
    (["a", "gpu1:/d"], ["gpu1"], "/d", None),
    (["a", "gpu1:/d", "-H", "gpu2", "-H", "gpu3"], ["gpu1", "gpu2", "gpu3"], "/d", None),
    (["a", "/d", "-H", "gpu2"], ["gpu2"], "/d", None),                 # DEST a bare path when hosts come with -H
    (["a", "gpu1:/d", "--hosts", "gpu2"], ["gpu1", "gpu2"], "/d", None),
    (["a", "gpu1:/d", "--hosts", "gpu2,gpu3"], ["gpu1", "gpu2", "gpu3"], "/d", "write push-data -H gpu2 -H gpu3"),
])
def test_push_data_takes_hosts_with_h_and_the_old_comma_list(push_data_seen, capsys, args, hosts, dest, deprecation):
    from migrate.commands import push_data

    assert _invoke(push_data.push_command, args) == 0
    assert [(h, d) for h, d, _ in push_data_seen] == [(hosts, dest)]
    err = [ln for ln in capsys.readouterr().err.splitlines() if "deprecated" in ln]
    assert (len(err) == 1 and deprecation in err[0]) if deprecation else err == [], err


def test_push_and_pull_data_bwlimit_follow_the_one_rate_grammar():
    from migrate.data.plan import PushDataOptions, bwlimit_kib, normalize_bwlimit
    from migrate.errors import UsageError

    assert bwlimit_kib("500") == 500 and bwlimit_kib("10M") == 10240 and bwlimit_kib("100mbit") == 12207
    options = PushDataOptions(bwlimit="100mbit")
    normalize_bwlimit(options)
    assert options.bwlimit == "12207"  # rsync gets a plain KiB/s number: it reads no bit rates
    for bad in ("0", "0.5k", "fast"):
        with pytest.raises(UsageError):
            bwlimit_kib(bad)


# -- --json on every verb that reports -------------------------------------------------------------
NO_REPORT = {"logs": "streams the job's own output", "tunnel": "forwards ports until Ctrl-C",
             "shell": "a terminal session", "exec": "streams the command's own output",
             "sandbox ssh-config": "prints an ssh_config block, itself the data",
             "completion": "prints a shell script, itself the data"}


def test_every_verb_that_reports_has_json():
    import click

    from migrate.cli import VERBS, cli

    ctx = click.Context(cli)
    missing = []
    for name in VERBS:
        cmd = cli.get_command(ctx, name)
        subs = [(f"{name} {s}", cmd.get_command(ctx, s)) for s in cmd.list_commands(ctx)] \
            if isinstance(cmd, click.Group) else [(name, cmd)]
        for path, sub in subs:
            if path not in NO_REPORT and not any("--json" in getattr(p, "opts", []) for p in sub.params):
                missing.append(path)
    assert missing == []


def test_sandbox_down_json(monkeypatch, capsys):
    import json

    from migrate.commands import sandbox

    class FakeSandbox:
        s = SimpleNamespace(name="dtest")

        def down(self, purge: bool) -> list[str]:
            return ["container dtest1", "network dtest"]

    monkeypatch.setattr(sandbox, "Sandbox", FakeSandbox)
    assert _invoke(sandbox.group, ["down", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"sandbox": "dtest", "removed": ["container dtest1", "network dtest"]}


def test_init_json(tmp_path, capsys):
    import json

    from migrate.commands import init

    target = tmp_path / "m.yml"
    assert _invoke(init.command, [str(target), "--host", "gpu1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"path": str(target), "host": "gpu1"} and target.exists()


def test_docs_cli_lists_every_old_spelling_and_readme_links_it():
    """Each hidden option (an old spelling kept for one release) has its row in docs/cli.md's table."""
    from pathlib import Path

    import click

    from migrate.cli import VERBS, cli

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs/cli.md").read_text()
    rows = [ln for ln in doc.split("## Changed spellings")[1].splitlines() if ln.startswith("| `")]
    ctx = click.Context(cli)
    for name in VERBS:
        cmd = cli.get_command(ctx, name)
        for p in getattr(cmd, "params", []):
            if getattr(p, "hidden", False):
                assert any(f"| `{name}` | `{p.opts[0]}" in r for r in rows), (name, p.opts)
    assert "(docs/cli.md)" in (root / "README.md").read_text()
