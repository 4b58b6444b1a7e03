"""migrate apply against the sandbox: the demo playbook for real, every example as a dry run."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from migrate.playbook.loader import load_playbook
from tests.conftest import run_cli

ROOT = Path(__file__).resolve().parents[2]
PLAYBOOKS = ROOT / "playbooks"


def _wait_for_jobs(host: str, env: dict, count: int, timeout: float = 300) -> list[dict]:
    deadline = time.time() + timeout
    jobs: list[dict] = []
    while time.time() < deadline:
        res = run_cli("status", host, "--json", "--all", env=env)
        assert res.code == 0, res.output
        data = json.loads(res.stdout)
        jobs = data["jobs"] if isinstance(data, dict) else data
        if len(jobs) >= count and all(j["state"] in ("done", "failed", "cancelled", "lost") for j in jobs):
            return jobs
        time.sleep(2)
    pytest.fail(f"jobs did not finish in {timeout}s: {jobs}")


@pytest.fixture(scope="module")
def apply_host(dedicated_sandbox):
    # one mock GPU (the sandbox's mock libnvidia-ml and nvidia-smi) so the GPU examples can plan the NVIDIA steps
    [h] = dedicated_sandbox("apply", 1, gpus=1)
    return h


def test_sandbox_demo_end_to_end_then_reapply_changes_nothing(apply_host):
    host, env = apply_host["alias"], apply_host["env"]
    t0 = time.monotonic()
    res = run_cli("apply", str(PLAYBOOKS / "sandbox-demo.yml"), "--hosts", host, "--json", env=env, timeout=900)
    assert res.code == 0, res.output
    first = json.loads(res.stdout)
    cells = first["results"][host]
    assert set(cells) == {"setup", "images", "data", "run"}
    assert not any(c["failed"] for c in cells.values()), cells
    assert cells["run"]["text"].startswith("4 queued"), cells
    took = time.monotonic() - t0
    jobs = _wait_for_jobs(host, env, 4)
    assert [j["state"] for j in jobs] == ["done"] * 4, jobs
    logs = run_cli("logs", host, str(jobs[0]["id"]), env=env)
    assert logs.code == 0 and "result {" in logs.stdout, logs.output
    # a dry run now says what the second apply will: nothing (issue 20: `would push 1 image(s)` for the
    # image with `build:`, which the real apply rebuilds from cache and finds up to date)
    res = run_cli("apply", str(PLAYBOOKS / "sandbox-demo.yml"), "--hosts", host, "--dry-run", "--json", env=env,
                  timeout=600)
    assert res.code == 0, res.output
    dry = json.loads(res.stdout)
    assert dry["changed"] == 0 and dry["results"][host]["images"]["text"] == "up to date", dry
    # second apply: every stage says nothing to do, and no job is queued twice
    res = run_cli("apply", str(PLAYBOOKS / "sandbox-demo.yml"), "--hosts", host, "--json", env=env, timeout=600)
    assert res.code == 0, res.output
    second = json.loads(res.stdout)
    assert second["changed"] == 0, second
    assert "0 queued, 4 already there" in second["results"][host]["run"]["text"]
    assert len(_wait_for_jobs(host, env, 4)) == 4
    print(f"first apply {took:.0f}s")


def test_dry_run_counts_what_it_would_change_then_nothing_after_apply(apply_host, tmp_path):
    """A dry run's "changed" is what a real apply would change, so a script can decide on it."""
    host, env = apply_host["alias"], apply_host["env"]
    name = f"dry-{uuid.uuid4().hex[:8]}"  # fresh job keys and a fresh destination on every run
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "b.txt").write_text("b")
    play = tmp_path / "p.yml"
    play.write_text(f"name: {name}\nhosts: [{host}]\ndata:\n  - {{src: ./d, dest: {name}/d}}\n"
                    "run:\n  command: echo {n}\n  gpus_per_job: 0\n  sweep: {n: [1, 2]}\n")
    res = run_cli("apply", str(play), "--dry-run", "--json", env=env, timeout=300)
    assert res.code == 0, res.output
    before = json.loads(res.stdout)
    cells = before["results"][host]
    assert cells["data"]["text"] == "would send 2 file(s)" and cells["data"]["changed"] == 1, cells
    assert cells["run"]["text"].startswith("would queue 2 job(s)") and cells["run"]["changed"] == 2, cells
    assert before["changed"] == 3, before
    res = run_cli("apply", str(play), "--dry-run", env=env, timeout=300)
    assert res.code == 0 and "3 change(s) would be made" in res.stderr, res.output
    # the dry runs changed nothing: the real apply makes exactly the changes they announced
    res = run_cli("apply", str(play), "--json", env=env, timeout=300)
    assert res.code == 0, res.output
    applied = json.loads(res.stdout)
    assert applied["changed"] == 3, applied
    assert applied["results"][host]["run"]["text"] == "2 queued", applied
    # and now a dry run has nothing left to announce
    res = run_cli("apply", str(play), "--dry-run", "--json", env=env, timeout=300)
    assert res.code == 0, res.output
    after = json.loads(res.stdout)
    assert after["changed"] == 0, after
    assert after["results"][host]["run"]["text"] == "up to date, 2 already there", after
    assert after["results"][host]["data"]["text"] == "up to date", after


@pytest.fixture(scope="module")
def stand_in_tags():
    """Image names the examples use, tagged locally for the test and untagged afterwards."""
    created: list[str] = []
    yield created
    for tag in created:
        subprocess.run(["docker", "image", "rm", tag], capture_output=True)


def _stand_ins(tmp: Path, created: list[str]) -> Path:
    """A copy of playbooks/ with small stand-ins for the datasets and images the examples name."""
    copy = tmp / "playbooks"
    shutil.copytree(PLAYBOOKS, copy)
    for pb_path in copy.glob("*.yml"):
        pb = load_playbook(pb_path)
        for d in pb.data:
            p = Path(d.src)
            if not p.exists():
                p.mkdir(parents=True)
                (p / "part-0000.bin").write_bytes(b"x" * 1000)
        for img in pb.images:
            if img.build:
                continue
            if subprocess.run(["docker", "image", "inspect", img.name], capture_output=True).returncode != 0:
                subprocess.run(["docker", "tag", "migrate-sandbox:bookworm", img.name], check=True)
                created.append(img.name)
    # The offline example needs a package bundle. Only Debian's mirror is reachable here, so the bundle
    # holds the distro's Docker packages and the copy asks for no NVIDIA toolkit (NVIDIA's repo is
    # out of reach); host-setup's own tests cover the toolkit from a local signed repository.
    offline = copy / "offline-host.yml"
    offline.write_text(offline.read_text().replace("  nvidia: true\n  offline:", "  nvidia: false\n  offline:"))
    res = run_cli("host-setup", "--download-offline", str(copy / "offline"), "--for", "debian:12",
                  "--docker-source", "distro", "--no-nvidia", timeout=600)
    assert res.code == 0, res.output
    return copy


@pytest.mark.parametrize("example", sorted(p.name for p in PLAYBOOKS.glob("*.yml") if p.name != "sandbox-demo.yml"))
def test_every_example_dry_runs_against_the_sandbox(apply_host, stand_in_tags, tmp_path, example):
    host, env = apply_host["alias"], apply_host["env"]
    copy = _stand_ins(tmp_path, stand_in_tags)
    res = run_cli("apply", str(copy / example), "--hosts", host, "--dry-run", "--json", env=env, timeout=600)
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert data["results"][host] and not any(c["failed"] for c in data["results"][host].values()), data


def test_typo_fails_before_remote_work_with_line_number(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text("hosts: [sandbox1]\nimages: [x]\nrun:\n  command: echo hi\n  gpus_per_job: two\n")
    res = run_cli("apply", str(bad))
    assert res.code == 2 and "bad.yml:5: 'run.gpus_per_job' must be an integer" in res.stderr


def test_missing_dataset_fails_before_remote_work_with_line_number(tmp_path):
    play = tmp_path / "play.yml"
    play.write_text("hosts: [no-such-host.invalid]\nsetup: {docker_source: distro}\n"
                    "data:\n  - {src: ./cifar10, dest: data/cifar10}\n")
    res = run_cli("apply", str(play), "--dry-run")
    assert res.code == 2, res.output
    assert f"play.yml:4: data[0].src: {tmp_path / 'cifar10'} not found" in res.stderr
    assert "no-such-host" not in res.stderr  # no host was contacted
    assert run_cli("apply", str(play), "--only", "setup", "--dry-run").code != 2  # setup needs no local path
