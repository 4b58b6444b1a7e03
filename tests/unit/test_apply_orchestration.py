"""apply's orchestration (stage order, --only, failures skip later stages) with stand-in stage runners.

The real stages are exercised end to end against the sandbox in tests/integration/test_apply.py.
"""

from pathlib import Path

import pytest

from migrate.commands import apply as apply_mod
from migrate.commands.apply import StageOutcome, apply_playbook
from migrate.playbook.loader import parse_playbook
from migrate.remote.hosts import ConnectOptions

PB = """hosts: [h1, h2]
setup: {docker_source: distro}
images: [lab/x:1]
data: [{src: ./d, dest: /d}]
run: {command: "echo {n}", sweep: {n: [1, 2]}}
"""


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def fake(stage, fail_on=()):
        def runner(pb, hosts, conn, dry_run, report):
            seen.append((stage, tuple(hosts), dry_run))
            for h in hosts:
                if h in fail_on:
                    report.cells[(h, stage)] = StageOutcome("failed: boom", failed=True)
                else:
                    report.cells[(h, stage)] = StageOutcome("ok", changed=1)
        return runner

    monkeypatch.setattr(apply_mod, "RUNNERS", {"setup": fake("setup", fail_on=("h2",)), "images": fake("images"),
                                               "data": fake("data"), "run": fake("run")})
    return seen


def test_stages_run_in_order_and_a_failed_host_skips_the_rest(calls):
    pb = parse_playbook(PB, Path("/p/exp.yml"))
    report = apply_playbook(pb, pb.hosts, ConnectOptions(), only=[], dry_run=False)
    assert [c[0] for c in calls] == ["setup", "images", "data", "run"]
    assert calls[0][1] == ("h1", "h2") and all(c[1] == ("h1",) for c in calls[1:])
    assert report.cells[("h2", "images")].text.startswith("skipped")
    assert report.failed_hosts() == {"h2"} and report.changed == 4


def test_only_and_dry_run_are_passed_through(calls):
    pb = parse_playbook(PB, Path("/p/exp.yml"))
    report = apply_playbook(pb, ["h1"], ConnectOptions(), only=["data", "run"], dry_run=True)
    assert calls == [("data", ("h1",), True), ("run", ("h1",), True)]
    assert report.stages == ["data", "run"]


def test_invalid_playbook_exits_2_before_remote_work(tmp_path):
    from tests.conftest import run_cli
    (tmp_path / "bad.yml").write_text("hosts: [nosuchhost.invalid]\nrun:\n  comand: x\n")
    res = run_cli("apply", str(tmp_path / "bad.yml"))
    assert res.code == 2 and "bad.yml:3: unknown key 'run.comand'" in res.stderr
    assert "cannot resolve" not in res.stderr
