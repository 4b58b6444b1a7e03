"""apply's orchestration (stage order, --only, failures skip later stages) with stand-in stage runners.

The real stages are exercised end to end against the sandbox in tests/integration/test_apply.py.
"""

from pathlib import Path

import pytest

from migrate.playbook import apply as apply_mod
from migrate.playbook.apply import StageOutcome, apply_playbook
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
        def runner(pb, hosts, conn, dry_run, report, sessions=None):
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


# -- a dry run counts what it would change (issue 12, item 2) ------------------------------------
def test_dry_run_data_stage_counts_the_entries_that_would_send(monkeypatch):
    from migrate.data import plan, push
    from migrate.playbook.apply import ApplyReport

    sends = iter([2, 0])  # first entry: 2 files to send; second: nothing

    def fake_push_data(srcs, hosts, dest, conn, options, reach=None):
        assert options.dry_run
        n = next(sends)
        return [plan.DataPushResult(host=h, source=srcs[0], dest=dest, status="dry run", files_transferred=n)
                for h in hosts]

    monkeypatch.setattr(push, "push_data", fake_push_data)
    pb = parse_playbook("hosts: [h1]\ndata: [{src: /a, dest: /a}, {src: /b, dest: /b}]\n", Path("/p/exp.yml"))
    report = ApplyReport(hosts=["h1"], stages=["data"])
    apply_mod._data_stage(pb, ["h1"], ConnectOptions(), True, report)
    cell = report.cells[("h1", "data")]
    assert cell.text == "would send 2 file(s)" and cell.changed == 1 and report.changed == 1


def test_dry_run_data_stage_with_nothing_to_send_is_up_to_date(monkeypatch):
    from migrate.data import plan, push
    from migrate.playbook.apply import ApplyReport

    monkeypatch.setattr(push, "push_data", lambda srcs, hosts, dest, conn, options, reach=None: [
        plan.DataPushResult(host=h, source=srcs[0], dest=dest, status="dry run") for h in hosts])
    pb = parse_playbook("hosts: [h1]\ndata: [{src: /a, dest: /a}]\n", Path("/p/exp.yml"))
    report = ApplyReport(hosts=["h1"], stages=["data"])
    apply_mod._data_stage(pb, ["h1"], ConnectOptions(), True, report)
    assert report.cells[("h1", "data")].text == "up to date" and report.changed == 0


def test_dry_run_run_stage_counts_jobs_not_already_queued(monkeypatch):
    from migrate.playbook.apply import ApplyReport
    from migrate.playbook.jobs import plan_jobs

    pb = parse_playbook(PB, Path("/p/exp.yml"))
    keys = [j.key for j in plan_jobs(pb.name, pb.run, ["h1"])]
    monkeypatch.setattr(apply_mod, "existing_job_keys", lambda h, conn, remote=None: ({keys[0]}, None))
    report = ApplyReport(hosts=["h1"], stages=["run"])
    apply_mod._run_stage(pb, ["h1"], ConnectOptions(), True, report)
    cell = report.cells[("h1", "run")]
    assert cell.text == "would queue 1 job(s), 1 already there" and cell.changed == 1


def test_dry_run_run_stage_counts_every_job_when_the_queue_cannot_be_read(monkeypatch):
    from migrate.playbook.apply import ApplyReport

    pb = parse_playbook(PB, Path("/p/exp.yml"))
    monkeypatch.setattr(apply_mod, "existing_job_keys", lambda h, conn, remote=None: (set(), "no dispatcher agent"))
    report = ApplyReport(hosts=["h1"], stages=["run"])
    apply_mod._run_stage(pb, ["h1"], ConnectOptions(), True, report)
    cell = report.cells[("h1", "run")]
    assert cell.changed == 2 and cell.text == "would queue 2 job(s) (existing jobs not checked: no dispatcher agent)"


def test_dry_run_jobs_text():
    assert apply_mod.dry_run_jobs_text(0, 4, None) == "up to date, 4 already there"
    assert apply_mod.dry_run_jobs_text(3, 0, None) == "would queue 3 job(s)"


# -- hosts are parsed before any remote work (issue 12, item 10) ---------------------------------
def test_a_host_starting_with_a_dash_is_a_usage_error(tmp_path):
    from tests.conftest import run_cli
    play = tmp_path / "p.yml"
    play.write_text('hosts:\n  - ok-host\n  - "-oProxyCommand=touch /tmp/x"\nrun: {command: "echo hi"}\n')
    res = run_cli("apply", "--dry-run", str(play))
    assert res.code == 2, res.output
    assert "p.yml:3: hosts: host '-oProxyCommand=touch /tmp/x' starts with '-'" in res.stderr
    play.write_text("hosts: [ok-host]\nrun: {command: 'echo hi'}\n")
    res = run_cli("apply", "--dry-run", "--hosts=-oProxyCommand=x", str(play))
    assert res.code == 2 and "starts with '-'" in res.stderr, res.output
