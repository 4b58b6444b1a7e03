"""One CLI grammar, finished (issue 23.6): -n everywhere something changes, -H wherever hosts are given,
--offline a flag, sizes in the size grammar, binary units in progress bars, shell completion."""

from __future__ import annotations

import contextlib
import json
from types import SimpleNamespace

import click
import pytest

from migrate.cli import VERBS, cli
from migrate.cluster import plan, state
from migrate.cluster.state import ClusterRecord, Node
from tests.conftest import run_cli

# every verb that changes something, here or on a host: `-n/--dry-run` shows it and changes nothing
CHANGES = ["run", "cancel", "retry", "resume", "push-image", "push-data", "pull-data", "push-env", "host-setup",
           "cluster up", "cluster down", "apply", "mirror", "init", "tunnel", "shell", "exec", "notebook", "sync"]
# what changes only this machine's rehearsal containers, or nothing at all (docs/cli.md says so)
NO_DRY_RUN = {"sandbox build", "sandbox up", "sandbox down", "sandbox gpu", "completion"}


def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    out = {}
    for name in VERBS:
        cmd = cli.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            out.update({f"{name} {s}": cmd.get_command(ctx, s) for s in cmd.list_commands(ctx)})
        else:
            out[name] = cmd
    return out


def _opts(cmd: click.Command) -> list[list[str]]:
    return [p.opts for p in cmd.params if isinstance(p, click.Option) and not p.hidden]


def test_every_verb_that_changes_something_takes_n_and_dry_run():
    commands = _commands()
    for path in CHANGES:
        assert ["-n", "--dry-run"] in _opts(commands[path]), path
    for path, cmd in commands.items():  # a verb with --dry-run has -n too, and the lists above are complete
        if any("--dry-run" in o for o in _opts(cmd)):
            assert path in CHANGES, path
        elif path in CHANGES or path in NO_DRY_RUN:
            continue
        else:
            assert not any(o in ("--force", "--purge", "--undo") for opts in _opts(cmd) for o in opts), path


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                             nodes=[Node("nohost.invalid", "10.0.0.1", ["0"], 8, head=True),
                                    Node("nohost2.invalid", "10.0.0.2", ["0"], 8)]))
    return {"MIGRATE_STATE_DIR": str(tmp_path)}


def test_cluster_up_takes_h_and_a_size_for_the_object_store(monkeypatch):
    from migrate.cluster import ops

    seen = []
    monkeypatch.setattr(ops, "up", lambda opts, conn, as_json: seen.append(opts) or {})
    res = run_cli("cluster", "up", "lab", "-H", "gpu1", "--host", "gpu2", "--object-store", "1G")
    assert res.code == 0, res.output
    assert seen[0].hosts == ["gpu1", "gpu2"] and seen[0].object_store_mib == 1024
    res = run_cli("cluster", "up", "lab", "gpu1", "--object-store", "300")  # a plain number is MiB, as before
    assert res.code == 0 and seen[1].hosts == ["gpu1"] and seen[1].object_store_mib == 300
    bad = run_cli("cluster", "up", "lab", "gpu1", "--object-store", "1Q")
    assert bad.code == 2 and "cannot read size '1Q'" in bad.stderr and len(seen) == 2
    small = run_cli("cluster", "up", "lab", "gpu1", "--object-store", "64M")
    assert small.code == 2 and "out of range" in small.stderr
    none = run_cli("cluster", "up", "lab")
    assert none.code == 2 and "name the cluster's hosts" in none.stderr and len(seen) == 2


def test_cluster_down_dry_run_connects_to_nothing_and_keeps_the_record(lab):
    res = run_cli("cluster", "down", "lab", "-n", "--json", env=lab)
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert data["dry_run"] and data["hosts"] == ["nohost.invalid", "nohost2.invalid"]
    assert any("ray stop" in c for c in data["commands"])
    assert state.exists("lab")


def test_init_takes_h_and_a_dry_run_writes_nothing(tmp_path):
    res = run_cli("init", "lab.yml", "-H", "bob@gpu9", "-n", cwd=str(tmp_path))
    assert res.code == 0, res.output
    assert "bob@gpu9" in res.stdout and not (tmp_path / "lab.yml").exists()
    res = run_cli("init", "lab.yml", "--host", "bob@gpu9", cwd=str(tmp_path))  # the old spelling still works
    assert res.code == 0 and "bob@gpu9" in (tmp_path / "lab.yml").read_text()


def test_host_setup_offline_dir_and_the_old_offline_dir_spelling(tmp_path, monkeypatch):
    from migrate.commands import host_setup

    seen = []
    monkeypatch.setattr(host_setup, "setup_hosts", lambda hosts, conn, options, **kw: seen.append(options) or [])
    debs = tmp_path / "debs"
    debs.mkdir()
    (debs / "a.deb").write_bytes(b"x")
    res = run_cli("host-setup", "h1", "--offline-dir", str(debs))
    assert res.code == 0 and seen[-1].offline == str(debs) and "deprecated" not in res.stderr, res.output
    old = run_cli("host-setup", "h1", "--offline", str(debs))
    assert old.code == 0 and seen[-1].offline == str(debs)
    assert "deprecated: host-setup --offline" in old.stderr and f"--offline-dir {debs}" in old.stderr


class _FakeClient:
    def __init__(self, answer: dict) -> None:
        self.calls: list[tuple[list[str], dict]] = []
        self.answer = answer
        self.remote = SimpleNamespace(name="h", target=SimpleNamespace(display="h"))

    def call(self, args: list[str], **kw) -> dict:
        self.calls.append((args, kw))
        return self.answer


def test_resume_dry_run_reads_only(monkeypatch):
    from migrate.commands import resume

    client = _FakeClient({"ok": True, "paused": "rebooted", "daemon": {"running": False}})
    monkeypatch.setattr(resume, "agent_session", lambda host, conn: contextlib.nullcontext(client))
    res = run_cli("resume", "h", "-n")
    assert res.code == 0, res.output
    assert client.calls == [(["status", "--limit", "0"], {"what": "read the queue", "need_queue": True,
                                                          "install": False})]
    assert "would resume it" in res.stderr and "would start it" in res.stderr
    res = run_cli("resume", "h", "-n", "--json")
    assert json.loads(res.stdout)["would_resume"] is True


def test_progress_bars_count_in_binary_units():
    from rich.progress import Progress

    from migrate import ui

    progress = Progress()
    task = progress.add_task("x", total=4 * 1024 ** 3)
    progress.update(task, completed=1536 * 1024 ** 2)
    assert ui.BinaryBytesColumn().render(progress.tasks[0]).plain == "1.5 GiB/4.0 GiB"
    assert ui.BinaryRateColumn().render(progress.tasks[0]).plain == "?"
    columns = [type(c).__name__ for c in ui.transfer_progress().columns]
    assert "DownloadColumn" not in columns and "TransferSpeedColumn" not in columns


# -- completion -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shell,marker", [("bash", "complete -o nosort -F _migrate_completion migrate"),
                                          ("zsh", "#compdef migrate"),
                                          ("fish", "complete --no-files --command migrate")])
def test_completion_prints_a_script_for_each_shell(shell, marker):
    res = run_cli("completion", shell)
    assert res.code == 0 and marker in res.stdout and "_MIGRATE_COMPLETE" in res.stdout, res.output


def test_completion_refuses_an_unknown_shell():
    res = run_cli("completion", "tcsh")
    assert res.code == 2 and "tcsh" in res.stderr


def _complete(words: str, env: dict) -> list[str]:
    cword = len(words.split()) - (0 if words.endswith(" ") else 1)
    res = run_cli(env={**env, "_MIGRATE_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(cword)})
    assert res.code == 0, res.output
    return [ln.split(",", 1)[1] for ln in res.stdout.splitlines() if ln.strip()]


@pytest.fixture
def home(tmp_path):
    ssh = tmp_path / ".ssh"
    (ssh / "conf.d").mkdir(parents=True)
    (ssh / "config").write_text("Host gpu1 gpu2 *.lab !bad\n  HostName 10.0.0.1\n"
                                "Include conf.d/*.conf\n# Host commented\nHost=bigbox\n")
    (ssh / "conf.d" / "team.conf").write_text("Host gpu-shared\n  User alice\nInclude ~/.ssh/config\n")
    return {"HOME": str(tmp_path), "MIGRATE_STATE_DIR": str(tmp_path / "state"), "MIGRATE_SSH_CONFIG": ""}


def test_completion_offers_host_aliases_from_the_ssh_config_and_its_includes(home):
    assert _complete("migrate doctor ", home) == ["gpu1", "gpu2", "gpu-shared", "bigbox"]
    assert _complete("migrate doctor gpu", home) == ["gpu1", "gpu2", "gpu-shared"]
    assert _complete("migrate host-setup -H alice@big", home) == ["alice@bigbox"]


def test_completion_offers_clusters_and_the_job_ids_status_saw(home, monkeypatch):
    from migrate.jobs import idcache

    monkeypatch.setenv("MIGRATE_STATE_DIR", home["MIGRATE_STATE_DIR"])
    state.save(ClusterRecord(name="lab", ray_version=plan.RAY_VERSION, ports=plan.Ports(),
                             nodes=[Node("gpu1", "10.0.0.1", ["0"], 8, head=True)]))
    idcache.remember("gpu1", [{"id": 3, "name": "train-a"}, {"id": 12, "name": "train-b"}])
    assert oct(idcache.cache_path().stat().st_mode & 0o777) == "0o600"
    assert oct(idcache.cache_path().parent.stat().st_mode & 0o777) == "0o700"
    assert _complete("migrate status ", home)[:1] == ["lab"]
    assert _complete("migrate cluster down ", home) == ["lab"]
    assert _complete("migrate logs gpu1 ", home) == ["12", "3"]
    assert _complete("migrate cancel gpu1 1", home) == ["12"]
    assert _complete("migrate logs gpu2 ", home) == []


def test_every_host_option_and_argument_completes_host_aliases(monkeypatch):
    from migrate import completion

    monkeypatch.setattr(completion, "host_names", lambda: ["zz-alias"])
    checked = 0
    for path, cmd in _commands().items():
        for p in cmd.params:
            if (set(getattr(p, "opts", [])) | {p.name or ""}) & {"-H", "host", "hosts", "first", "target"}:
                values = [i.value for i in p.shell_complete(click.Context(cmd), "zz")]
                assert values == ["zz-alias"], (path, p.name, values)
                checked += 1
    assert checked >= 20
