"""`status -f playbook.yaml`: the playbook's hosts (or its cluster) asked in parallel as one view."""

from __future__ import annotations

import json

import pytest

from migrate.errors import ConnectError
from migrate.jobs import multi, target
from tests.conftest import run_cli


@pytest.fixture
def asked(monkeypatch):
    """Every host status asks, and canned answers: `down` does not answer."""
    seen: list[str] = []

    def status_answer(self, *, show_all, states, last):  # a host's answer, as its job target reads it
        host = self.name
        seen.append(host)
        if host == "down":
            raise ConnectError("ssh to down failed: connection refused")
        return {"host": host, "dispatcher": None, "paused": "", "counts": {"running": 1}, "hidden_finished": 0,
                "jobs": [{"id": 1, "name": f"train-{host}", "state": "running", "gpus": 1, "command": "x"}]}

    monkeypatch.setattr(target.HostTarget, "status_answer", status_answer)
    return seen


def test_status_f_asks_every_playbook_host_and_an_unreachable_one_is_one_line(asked, tmp_path):
    pb = tmp_path / "migrate.yml"
    pb.write_text("hosts: [gpu1, down, gpu2]\n")
    res = run_cli("status", "-f", str(pb), "-H", "gpu2", "--json")
    assert res.code == 0, res.output
    assert sorted(asked) == ["down", "gpu1", "gpu2"]  # gpu2 once
    data = json.loads(res.stdout)
    assert sorted(j["host"] for j in data["jobs"]) == ["gpu1", "gpu2"] and list(data["unreachable"]) == ["down"]
    res = run_cli("status", "--playbook", str(pb))
    assert res.code == 0, res.output
    assert [ln for ln in res.stderr.splitlines() if "down" in ln] == \
        ["warning: down did not answer: ssh to down failed: connection refused"]
    assert "train-gpu1" in res.stdout and "train-gpu2" in res.stdout


def test_status_f_of_a_cluster_playbook_asks_the_cluster_and_a_bad_file_changes_nothing(asked, tmp_path):
    pb = tmp_path / "c.yml"
    pb.write_text("hosts: [n1, n2]\ncluster: lab\n")
    assert multi.playbook_targets(str(pb)) == ["lab"]
    bad = tmp_path / "bad.yml"
    bad.write_text("hosts: [n1]\nunknown_key: 1\n")
    res = run_cli("status", "-f", str(bad))
    assert res.code == 2 and "unknown_key" in res.stderr and asked == []
    none = tmp_path / "none.yml"
    none.write_text("hosts: []\n")
    res = run_cli("status", "-f", str(none))
    assert res.code == 2 and "must name at least one host" in res.stderr and asked == []
