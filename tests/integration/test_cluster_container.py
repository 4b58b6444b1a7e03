"""Container jobs on a cluster (issue 14): a 2-host cluster of its own whose hosts get Docker (docker.io
from Debian, installed in the background while the cluster comes up), a tiny local image (busybox,
`docker import`), pushed by `migrate run CLUSTER --image` to both hosts; CPU-only container jobs finish
`done` with their env; a cancelled one leaves no container on any host. Ray is started before alice
joins the docker group, so the jobs reach Docker through `sg docker` (the group path).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import run_cli
from tests.integration.conftest import TEST_PREFIX
from tests.integration.test_cluster import RAY, sandbox_gpu, sh
from tests.integration.test_dispatcher import DOCKER_INSTALL

pytestmark = pytest.mark.slow

NAME = f"{TEST_PREFIX}ctrlab"
IMAGE = f"migrate-{TEST_PREFIX}cbusybox:test"


def local_image() -> None:
    """A few-MB image from this machine's busybox (no registry is reachable)."""
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "bin").mkdir()
        (root / "tmp").mkdir()
        (root / "bin" / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
        (root / "bin" / "busybox").chmod(0o755)
        for a in ("sh", "id", "cat", "sleep", "echo", "env", "hostname"):
            (root / "bin" / a).symlink_to("busybox")
        tar = subprocess.run(["tar", "-C", d, "-c", "."], capture_output=True, check=True).stdout
        subprocess.run(["docker", "import", "-", IMAGE], input=tar, capture_output=True, check=True, timeout=120)


@pytest.fixture(scope="module")
def ccluster(dedicated_sandbox):
    hosts = dedicated_sandbox("ccluster", 2, gpus=2)
    env = hosts[0]["env"]
    aliases = [h["alias"] for h in hosts]
    run_cli("cluster", "down", NAME, env=env)
    for a in aliases:
        sh(a, f"[ -x {RAY} ] && {RAY} stop --force >/dev/null 2>&1; "
              "[ -e /tmp/docker-ready ] || { " + DOCKER_INSTALL + " }")
        sandbox_gpu(env, a, "--reset")          # 2 idle mock GPUs
    local_image()
    t0 = time.monotonic()
    res = run_cli("cluster", "up", NAME, *aliases, env=env, timeout=600)
    assert res.code == 0, res.output
    print(f"cluster up: {time.monotonic() - t0:.1f} s")
    deadline = time.monotonic() + 300
    for a in aliases:
        while "ready" not in sh(a, "[ -e /tmp/docker-ready ] && echo ready || true"):
            assert time.monotonic() < deadline, sh(a, "tail -5 /tmp/docker-install.log")
            time.sleep(2)
    print(f"cluster up and Docker on both hosts: {time.monotonic() - t0:.1f} s")
    yield aliases, env
    run_cli("cluster", "down", NAME, env=env)
    subprocess.run(["docker", "rmi", IMAGE], capture_output=True)


def jobs_by_id(env: dict) -> dict[str, dict]:
    res = run_cli("status", NAME, "--json", "--all", env=env)
    assert res.code == 0, res.output
    return {j["id"]: j for j in json.loads(res.stdout)["jobs"]}


def wait_states(env: dict, ids: list[str], states: tuple[str, ...], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = jobs_by_id(env)
        if all(jobs.get(i, {}).get("state") in states for i in ids):
            return jobs
        if time.monotonic() > deadline:
            logs = {i: run_cli("logs", NAME, i, env=env).output[-800:] for i in ids}
            pytest.fail(f"jobs not {states} after {timeout} s: {[(i, jobs.get(i, {}).get('state')) for i in ids]} "
                        f"{logs}")
        time.sleep(2)


def containers(aliases: list[str]) -> str:
    return "".join(sh(a, f"docker ps -a --filter label=migrate.cluster={NAME} --format '{{{{.Names}}}}'")
                   for a in aliases).strip()


def test_container_jobs_are_pushed_placed_and_cancelled(ccluster):
    aliases, env = ccluster
    dry = run_cli("run", NAME, "--dry-run", "--image", IMAGE, "--gpus-per-job", "0", "--", "true", env=env)
    assert dry.code == 0 and f"would push {IMAGE} to the 2 hosts of cluster {NAME}" in dry.output, dry.output
    for a in aliases:
        assert sh(a, f"docker image inspect {IMAGE} >/dev/null 2>&1 && echo there || echo absent").strip() == "absent"
    t0 = time.monotonic()
    res = run_cli("run", NAME, "--json", "--image", IMAGE, "--gpus-per-job", "0", "-e", "SECRET=s3cr3t",
                  "--sweep", "i=1,2,3,4", "--cwd", "/tmp", "--", "echo job={i} uid=$(id -u) secret=$SECRET "
                  "id=$MIGRATE_JOB_ID cluster=$MIGRATE_CLUSTER pwd=$(pwd); sleep 3", env=env, timeout=300)
    assert res.code == 0, res.output
    assert f"pushing {IMAGE} to the 2 hosts" in res.stderr
    ids = [j["id"] for j in json.loads(res.stdout)["jobs"]]
    for a in aliases:
        assert sh(a, f"docker image inspect {IMAGE} >/dev/null 2>&1 && echo there || echo absent").strip() == "there"
    jobs = wait_states(env, ids, ("done", "failed"), timeout=180)
    print(f"push + 4 container jobs done: {time.monotonic() - t0:.1f} s")
    for n, i in enumerate(ids, start=1):
        log = run_cli("logs", NAME, i, env=env).stdout
        assert jobs[i]["state"] == "done", log
        assert f"job={n} uid=1000 secret=s3cr3t id={i} cluster={NAME} pwd=/tmp" in log, log
        assert "via group" in log  # Ray started before alice joined the docker group: sg docker
    assert containers(aliases) == ""  # --rm: the finished jobs left no container
    again = run_cli("run", NAME, "--json", "--image", IMAGE, "--gpus-per-job", "0", "--", "true", env=env,
                    timeout=300)
    assert again.code == 0 and "up to date" in again.stderr, again.output  # nothing sent twice
    wait_states(env, [j["id"] for j in json.loads(again.stdout)["jobs"]], ("done",), timeout=60)
    assert containers(aliases) == ""

    (cid,) = [j["id"] for j in json.loads(run_cli("run", NAME, "--json", "--image", IMAGE, "--gpus-per-job", "0",
                                                  "--", "sleep 600", env=env, timeout=300).stdout)["jobs"]]
    deadline = time.monotonic() + 60
    while f"migrate-{NAME}-{cid}-1" not in containers(aliases):
        assert time.monotonic() < deadline, run_cli("logs", NAME, cid, env=env).output
        time.sleep(1)
    t1 = time.monotonic()
    assert run_cli("cancel", NAME, cid, env=env).code == 0
    while containers(aliases):
        assert time.monotonic() < t1 + 40, containers(aliases)
        time.sleep(1)
    print(f"container gone {time.monotonic() - t1:.1f} s after cancel")
    assert wait_states(env, [cid], ("cancelled",), timeout=30)[cid]["state"] == "cancelled"


def test_down_leaves_no_container_of_a_running_job(ccluster):
    aliases, env = ccluster
    res = run_cli("run", NAME, "--json", "--image", IMAGE, "--gpus-per-job", "0", "--", "sleep 600", env=env,
                  timeout=300)
    (cid,) = [j["id"] for j in json.loads(res.stdout)["jobs"]]
    deadline = time.monotonic() + 60
    while f"migrate-{NAME}-{cid}-1" not in containers(aliases):
        assert time.monotonic() < deadline, run_cli("logs", NAME, cid, env=env).output
        time.sleep(1)
    down = run_cli("cluster", "down", NAME, env=env, timeout=300)
    assert down.code == 0, down.output
    assert containers(aliases) == ""
