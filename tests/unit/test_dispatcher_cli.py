"""The dispatcher verbs as a user types them: usage errors (exit 2, one line) and --dry-run (no connection)."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def usage_error(res, needle: str) -> None:
    assert res.code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert needle in lines[0] and "Traceback" not in res.output


@pytest.mark.parametrize("args,needle", [
    (["run", "h"], "no command to run"),
    (["run", "h", "--sweep", "lr", "--", "x"], "bad --sweep"),
    (["run", "h", "--sweep", "lr=1,2", "--", "python t.py"], "does not use {lr}"),
    (["run", "h", "--from-template", ".", "--", "x"], "go together"),
    (["run", "h", "--experiments", "a", "--", "x"], "go together"),
    (["run", "h", "--gpu-backend", "cuda", "--", "x"], "unknown GPU backend"),
    (["run", "h", "--min-free-mem", "lots", "--", "x"], "cannot read size"),
    (["run", "h", "--env", "=novalue", "--", "x"], "bad --env"),
    (["run", "h", "--jobs", "/nonexistent/jobs.yaml"], "cannot read jobs file"),
    (["run", "h", "--jobs", "/nonexistent/jobs.yaml", "--", "x"], "not both"),
    (["cancel", "h"], "which jobs?"),
    (["cancel", "h", "3", "--all"], "not both"),
    (["status", "h", "--state", "bogus"], "unknown state"),
    (["tunnel", "h", "99999"], "out of range"),
    (["tunnel", "h", "60x6"], "bad port"),
    (["tunnel", "h", "6006", "16006:6006", "6006:7000"], "given twice"),
    (["run", "alice@", "--", "x"], "malformed"),
    (["run", "h", "--image", "x;touch /tmp/pwned", "--", "true"], "bad image reference 'x;touch /tmp/pwned'"),
    (["run", "h", "--image", "MyLab/Train:v2", "--", "true"], "must be lowercase"),
    # issue 20.6: a remote OverflowError (logs) or "internal error" (exec, cancel, retry) before
    (["logs", "nosuch.invalid", "1" * 38], "job id " + "1" * 38 + " is out of range"),
    (["exec", "nosuch.invalid", "1" * 38, "--", "true"], "is out of range"),
    (["shell", "nosuch.invalid", "1" * 38, "--dry-run"], "is out of range"),
    (["cancel", "nosuch.invalid", "3", "1" * 38], "is out of range"),
    (["retry", "nosuch.invalid", "1" * 20], "is out of range"),
])
def test_usage_errors(args, needle):
    usage_error(run_cli(*args), needle)


def test_dry_run_expands_the_grid_without_connecting():
    res = run_cli("run", "nosuch.invalid", "--dry-run", "--sweep", "lr=1e-3,1e-4", "--sweep", "seed=0,1",
                  "--", "python train.py --lr {lr} --seed {seed}")
    assert res.code == 0, res.output
    assert "4 job(s) would be queued" in res.stdout and "python train.py --lr 1e-4 --seed 1" in res.stdout


def test_dry_run_json_and_argv_quoting():
    res = run_cli("run", "nosuch.invalid", "--dry-run", "--json", "--gpus-per-job", "0", "--key", "k",
                  "--", "python", "-c", "print('a b')")
    data = json.loads(res.stdout)
    (job,) = data["jobs"]
    assert job["command"] == "python -c 'print('\"'\"'a b'\"'\"')'" and job["gpus"] == 0 and job["key"] == "k"


def test_dry_run_template_lists_the_copies(tmp_path):
    (tmp_path / "train.py").write_text("x")
    res = run_cli("run", "nosuch.invalid", "--dry-run", "--from-template", str(tmp_path), "--experiments", "a,b",
                  "--", "python train.py --name {experiment}")
    assert res.code == 0, res.output
    assert f"~/.migrate/runs/{tmp_path.name}/a" in res.stderr and "python train.py --name b" in res.stdout


def test_tunnel_dry_run_uses_migrate_ssh_settings():
    res = run_cli("tunnel", "somehost", "6006", "16006:8888", "--dry-run")
    assert res.code == 0, res.output
    out = res.stdout
    assert out.startswith("ssh ") and "-N" in out and "ExitOnForwardFailure=yes" in out
    assert "-L 127.0.0.1:6006:localhost:6006" in out and "-L 127.0.0.1:16006:localhost:8888" in out
    assert "StrictHostKeyChecking=yes" in out


def test_tunnel_dry_run_prints_a_command_that_pastes_into_a_shell():
    """Issue 20: `UserKnownHostsFile=~/.ssh/known_hosts /etc/ssh/ssh_known_hosts` was printed unquoted."""
    import shlex

    from migrate.commands.tunnel import tunnel_argv
    from migrate.remote.hosts import ConnectOptions

    res = run_cli("tunnel", "somehost", "6006", "--dry-run")
    assert res.code == 0, res.output
    argv, _ = tunnel_argv("somehost", ConnectOptions(), ("6006",), "127.0.0.1")
    assert shlex.split(res.stdout) == argv
    assert any(a.startswith("UserKnownHostsFile=") and " " in a for a in argv)  # the case that broke


def test_reboot_warning_is_one_sentence_with_readable_job_ids(tmp_path, capsys):
    """Issue 12.7: after a reboot `status` said "queue paused" twice and printed `lost [9, 10, 11, 12]`."""
    from migrate.agent.db import Queue
    from migrate.agent.layout import Layout
    from migrate.agent.recovery import recover
    from migrate.commands.status import show_status

    layout = Layout(str(tmp_path / "home")).ensure()
    q = Queue(layout.db)
    running = q.submit([{"command": "sleep 600", "gpus": 0} for _ in range(4)])
    for j in running:
        q.reserve(j["id"], [], [], "tok", "old-boot/1")
        q.mark_running(j["id"], 999999, 999999, 1)
    q.set_meta("boot_id", "old-boot/1")
    q.submit([{"command": "true", "gpus": 0}])
    summary = recover(q, layout, lambda msg: None)  # the reboot is noticed (as by `status` with no dispatcher)
    data = {"daemon": {"running": False}, "paused": q.get_meta("paused"), "counts": q.counts(), "jobs": [],
            "recovered": summary}
    show_status(data, "gpu-box")
    err = capsys.readouterr().err
    assert err.count("paused") == 1 and "[" not in err, err
    assert "queue paused on gpu-box: the host rebooted while jobs 1-4 ran (marked lost); nothing starts until " \
           "`migrate resume gpu-box`" in err
    assert "recorded meanwhile: jobs 1-4 lost" in err


@pytest.mark.parametrize("ids,text", [([3], "job 3"), ([9, 10, 11, 12], "jobs 9-12"), ([1, 2], "jobs 1 and 2"),
                                      ([1, 3, 4, 5, 8], "jobs 1, 3-5 and 8"),
                                      (list(range(1, 40, 2)), "jobs 1, 3, 5, 7, 9, 11, 13, 15 and 12 more")])
def test_job_ids_are_readable(ids, text):
    from migrate.agent.recovery import job_ids_text

    assert job_ids_text(ids) == text
