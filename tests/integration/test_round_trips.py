"""Round trips per verb, counted for real (`MIGRATE_COUNT_ROUND_TRIPS`, migrate/remote/roundtrips.py).

Each verb runs against a shared sandbox host with counting on; the connections it opened and the
round trips it made (remote commands, SFTP batches) must not exceed the numbers documented in
docs/performance.md ("Round trips per verb"), so a change that adds one fails here. An unchanged
push-image is counted in test_push_image.py (its hosts have Docker), against `EXPECTED` below.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from migrate.remote.roundtrips import ENV, tally
from tests.conftest import run_cli, wait_until

# verb -> (SSH connections, round trips): the "after" column of docs/performance.md's table
EXPECTED = {
    "status": (1, 1),
    "logs": (1, 1),
    "push-data, nothing to send": (1, 1),
    "apply, unchanged (data + run)": (1, 2),
    "push-image, unchanged": (1, 1),
}


def counted(tmp_path: Path, *args: str, label: str, env: dict | None = None) -> dict[str, int]:
    """Run `migrate ARGS` with counting on and check the counts against `EXPECTED[label]`;
    returns {'connect': n, 'round trips': m}."""
    path = tmp_path / f"rt-{uuid.uuid4().hex[:8]}"
    res = run_cli(*args, env={**(env or {}), ENV: str(path)}, timeout=300)
    assert res.code == 0, res.output
    text = path.read_text() if path.exists() else ""
    kinds = tally(text)
    got = {"connect": kinds["connect"], "round trips": kinds["exec"] + kinds["sftp"]}
    want_connect, want_trips = EXPECTED[label]
    assert got["round trips"] >= 1, f"{label}: nothing counted, is counting broken?\n{text}"
    assert got["connect"] <= want_connect and got["round trips"] <= want_trips, \
        f"{label}: {got}, documented {EXPECTED[label]}; what ran:\n{text}"
    return got


@pytest.fixture(scope="module")
def applied(sandbox_hosts, tmp_path_factory) -> dict:
    """One apply (a small data set and one CPU job) on the second shared host: what the verbs read."""
    host = sandbox_hosts[1]["alias"]
    name = f"rt-{uuid.uuid4().hex[:8]}"
    work = tmp_path_factory.mktemp("roundtrips")
    (work / "d").mkdir()
    (work / "d" / "a.txt").write_text("a")
    (work / "d" / "b.txt").write_text("b")
    play = work / "p.yml"
    play.write_text(f"name: {name}\nhosts: [{host}]\ndata:\n  - {{src: ./d, dest: {name}/d}}\n"
                    f"run:\n  command: echo {name}\n  gpus_per_job: 0\n")
    res = run_cli("apply", str(play), "--json", timeout=300)
    assert res.code == 0, res.output

    def finished_job() -> str | None:
        res = run_cli("status", host, "--json", "--all")
        assert res.code == 0, res.output
        data = json.loads(res.stdout)
        jobs = [j for j in (data["jobs"] if isinstance(data, dict) else data) if name in str(j.get("command"))]
        return str(jobs[-1]["id"]) if jobs and jobs[-1]["state"] == "done" else None

    job = wait_until(finished_job, timeout=60, interval=0.5, what=f"the job {name} to finish")
    return {"host": host, "play": play, "data": work / "d", "dest": f"{name}/d", "job": job}


def test_status_and_logs_are_one_connection_and_one_round_trip(applied, tmp_path):
    counted(tmp_path, "status", applied["host"], label="status")
    counted(tmp_path, "logs", applied["host"], applied["job"], label="logs")


def test_push_data_with_nothing_to_send(applied, tmp_path):
    got = counted(tmp_path, "push-data", str(applied["data"]), f"{applied['host']}:{applied['dest']}",
                  label="push-data, nothing to send")
    # a push from here completed there (the apply): rsync's own exec checks DEST first, no probe
    assert got == {"connect": 1, "round trips": 1}


def test_unchanged_apply(applied, tmp_path):
    got = counted(tmp_path, "apply", str(applied["play"]), label="apply, unchanged (data + run)")
    # one connection for both stages: the run stage talks to the agent over the data stage's ssh
    assert got == {"connect": 1, "round trips": 2}  # rsync (checking DEST first), the agent's submit
