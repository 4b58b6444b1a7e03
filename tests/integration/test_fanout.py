"""Fan-out (issue 24): two hosts, one copy over this machine's link, the second host fed by the first.

Runs on test_push_image.py's two Docker hosts (`pimage`, a dedicated sandbox that stays up for the
session: the shared sandbox must stay without Docker, test_no_docker_on_the_host checks that), with
an image of its own, removed from the hosts afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from migrate.relay import plan
from migrate.remote.reap import machine
from tests.conftest import run_cli
from tests.integration.test_push_image import (  # noqa: F401 (docker_hosts: a fixture)
    cut_after_first_checkpoint,
    docker_hosts,
    in_host,
    remote_id,
)

IMAGE = "migrate-fanout-test/app:1"
BASE = "migrate-fanout-test/base:1"  # IMAGE's first layer alone
ALICE = "/home/alice"


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A local image of three random layers (4 + 8 + 8 MiB), the first also alone as BASE."""
    work = tmp_path_factory.mktemp("fanout")
    for name, mib in (("a.bin", 4), ("b.bin", 8), ("c.bin", 8)):
        (work / name).write_bytes(os.urandom(mib << 20))
    build = dict(check=True, capture_output=True, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    (work / "Dockerfile").write_text("FROM scratch\nCOPY a.bin /a.bin\n")
    subprocess.run(["docker", "build", "-q", "-t", BASE, str(work)], **build)
    (work / "Dockerfile").write_text(f"FROM {BASE}\nCOPY b.bin /b.bin\nCOPY c.bin /c.bin\n")
    subprocess.run(["docker", "build", "-q", "-t", IMAGE, str(work)], **build)
    local = subprocess.run(["docker", "image", "inspect", "--format", "{{.Id}} {{.Size}}", IMAGE], check=True,
                           capture_output=True, text=True).stdout.split()
    yield {"id": local[0], "size": int(local[1])}
    subprocess.run(["docker", "image", "rm", "-f", IMAGE, BASE], capture_output=True)


def push(hosts: list[dict], *extra: str) -> list[dict]:
    res = run_cli("push-image", IMAGE, *(a for h in hosts for a in ("-H", h["alias"])), "--json", *extra,
                  env=hosts[0]["env"], timeout=300)
    assert res.code == 0, res.output
    return json.loads(res.stdout)


def relay_traces(host: dict) -> str:
    """What of any relay is on the host: marked authorized_keys lines, transfer key directories."""
    return in_host(host, f"grep -h {plan.PREFIX} {ALICE}/.ssh/authorized_keys; ls {ALICE}/{plan.RELAY_DIR} "
                         "2>/dev/null; true").strip()


def test_the_second_host_is_fed_by_the_first_and_no_key_stays(docker_hosts, image):  # noqa: F811
    h1, h2 = docker_hosts
    for h in docker_hosts:
        in_host(h, f"docker image rm -f {IMAGE} {BASE} >/dev/null 2>&1; true")
    # a crashed run of this machine (its pid is gone) left its line on h2 and its key directory on h1
    dead = plan.Marker(machine(), 999_999_999, "deaddeaddeaddead", 2_000_000_000)
    in_host(h2, f"echo 'restrict,command=\"true\" ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDead {dead.text()}' "
                f">> {ALICE}/.ssh/authorized_keys; stat -c %a {ALICE}/.ssh/authorized_keys > /tmp/fanout-mode")
    in_host(h1, f"su alice -c 'mkdir -p {ALICE}/{dead.key_dir}'")
    assert dead.text() in relay_traces(h1) and dead.text() in relay_traces(h2)
    try:
        results = push(docker_hosts)
        r1, r2 = results
        assert (r1["host"], r1["status"], r1["fed_via"]) == (h1["alias"], "sent", plan.LAPTOP)
        assert (r2["host"], r2["status"], r2["fed_via"], r2["fed_why"]) == (h2["alias"], "sent", h1["alias"],
                                                                            "host to host")
        # one copy crossed this machine's link; the second came from h1: the archive h1 loaded, as it arrived
        assert image["size"] <= r1["bytes_sent"] < 1.1 * image["size"] and r2["bytes_sent"] == 0
        assert r2["relayed_bytes"] >= image["size"] and "as they arrived there" in r2["detail"]
        assert remote_id(h2, IMAGE) == image["id"] == remote_id(h1, IMAGE)
        assert relay_traces(h1) == "" and relay_traces(h2) == ""  # ours removed, the dead run's too
        assert in_host(h2, f"stat -c %a {ALICE}/.ssh/authorized_keys").strip() == \
            in_host(h2, "cat /tmp/fanout-mode").strip()

        for h in docker_hosts:
            in_host(h, f"docker image rm -f {IMAGE} >/dev/null")
        # resume points every 4 MiB: each layer is staged on h1 and goes on to h2 from the staging receiver
        staged = push(docker_hosts, "--checkpoint", "4M")
        assert [r["status"] for r in staged] == ["sent", "sent"] and "as they arrived there" in staged[1]["detail"]
        assert staged[1]["relayed_bytes"] >= image["size"] and staged[1]["bytes_sent"] == 0
        assert remote_id(h2, IMAGE) == image["id"] == remote_id(h1, IMAGE)
        assert in_host(h2, "docker image ls -q migrate-partial").strip() == ""  # its resume points removed
        assert relay_traces(h1) == "" and relay_traces(h2) == ""

        for h in docker_hosts:
            in_host(h, f"docker image rm -f {IMAGE} >/dev/null")
        # h2 has the first layer (BASE), h1 none: h2 cannot load h1's archive, so it gets docker save there
        res = run_cli("push-image", BASE, "-H", h2["alias"], env=h2["env"], timeout=300)
        assert res.code == 0, res.output
        other = push(docker_hosts)
        assert [(r["status"], r["fed_via"]) for r in other] == [("sent", plan.LAPTOP), ("sent", h1["alias"])]
        assert other[1]["detail"].endswith("(docker save there)") and other[1]["bytes_sent"] == 0
        assert remote_id(h2, IMAGE) == image["id"] == remote_id(h1, IMAGE)

        for h in docker_hosts:
            in_host(h, f"docker image rm -f {IMAGE} {BASE} >/dev/null 2>&1; true")
        direct = push(docker_hosts, "--no-relay")
        assert [(r["fed_via"], r["fed_why"]) for r in direct] == [(plan.LAPTOP, "--no-relay")] * 2
        assert all(r["bytes_sent"] >= image["size"] and r["relayed_bytes"] == 0 for r in direct)
        assert remote_id(h2, IMAGE) == image["id"]
    finally:
        for h in docker_hosts:
            in_host(h, f"docker image rm -f {IMAGE} {BASE} >/dev/null 2>&1; sed -i '/{plan.PREFIX}/d' "
                       f"{ALICE}/.ssh/authorized_keys; rm -rf {ALICE}/{plan.RELAY_DIR}; true")


def test_a_broken_seed_leaves_its_riders_resume_points_and_every_host_resumes(docker_hosts, image):  # noqa: F811
    """The link to the seed breaks after its first resume point: the rider committed the same one (it
    loads what the seed loads), so its push from here sends only the rest; the rerun resumes the seed."""
    h1, h2 = docker_hosts
    for h in docker_hosts:
        in_host(h, f"docker image rm -f {IMAGE} {BASE} >/dev/null 2>&1; "
                   "docker image ls -q migrate-partial | xargs -r docker image rm -f >/dev/null; true")
    argv = [sys.executable, "-m", "migrate", "push-image", IMAGE, "-H", h1["alias"], "-H", h2["alias"],
            "--checkpoint", "4M", "--bwlimit", "4M", "--compress", "none", "--json"]
    proc = subprocess.Popen(argv, env=dict(os.environ, **h1["env"]), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        killed = cut_after_first_checkpoint(proc, h1)
        out, err = proc.communicate(timeout=300)
        assert killed, f"never saw a resume point on {h1['alias']}: {out}{err}"
        r1, r2 = json.loads(out)
        assert r1["status"] == "failed" and "committed" in (r1["error"] or ""), r1
        # h2 had loaded h1's first step as it arrived: sent from here, only the layers after it
        assert (r2["status"], r2["fed_via"]) == ("sent", plan.LAPTOP) and "did not get" in r2["fed_why"], r2
        assert 0 < r2["bytes_sent"] < image["size"] - (3 << 20), (r2, image)
        assert remote_id(h2, IMAGE) == image["id"]
        again = push(docker_hosts)
        assert [r["status"] for r in again] == ["sent", "up to date"], again
        assert 0 < again[0]["bytes_sent"] < image["size"] - (3 << 20), again[0]  # resumed, not from zero
        assert remote_id(h1, IMAGE) == image["id"]
        assert relay_traces(h1) == "" and relay_traces(h2) == ""
        assert in_host(h1, "docker image ls -q migrate-partial").strip() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
        for h in docker_hosts:
            in_host(h, f"docker image rm -f {IMAGE} {BASE} >/dev/null 2>&1; true")


def test_push_data_feeds_the_second_host_from_the_first(sandbox_hosts, tmp_path):
    h1, h2 = sandbox_hosts[:2]
    src = tmp_path / "ds"
    (src / "sub").mkdir(parents=True)
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(os.urandom(1 << 20))
    (src / "sub" / "x.txt").write_text("x\n")
    (src / "skip.tmp").write_text("excluded\n")
    dest = f"fanout-test-{os.getpid()}"
    listing = f"cd {ALICE}/{dest} && find . -type f | sort | xargs sha256sum"
    try:
        res = run_cli("push-data", str(src), f"{h1['alias']}:{dest}", "-H", h2["alias"], "--exclude", "*.tmp",
                      "--json", timeout=300)
        assert res.code == 0, res.output
        r1, r2 = json.loads(res.stdout)
        assert (r1["fed_via"], r2["fed_via"], r2["fed_why"]) == (plan.LAPTOP, h1["alias"], "host to host")
        assert r1["bytes_sent"] >= 3 << 20 and r2["relayed_bytes"] >= 3 << 20
        assert r2["bytes_sent"] == 0 and r2["method"] == "relay+rsync"  # the rsync from here found it all there
        assert in_host(h2, listing) == in_host(h1, listing) and "skip.tmp" not in in_host(h2, listing)
        assert relay_traces(h1) == "" and relay_traces(h2) == ""

        res = run_cli("push-data", str(src), f"{h1['alias']}:{dest}", "-H", h2["alias"], "--exclude", "*.tmp",
                      "--json", timeout=300)  # a rerun: nothing moves, not even host to host
        assert res.code == 0, res.output
        again = json.loads(res.stdout)
        assert [(r["status"], r["relayed_bytes"]) for r in again] == [("up to date", 0)] * 2
        assert again[1]["fed_why"].startswith("DEST has files")

        in_host(h2, f"rm -rf {ALICE}/{dest}")
        res = run_cli("push-data", str(src), f"{h1['alias']}:{dest}", "-H", h2["alias"], "--no-relay", "--json",
                      timeout=300)
        assert res.code == 0, res.output
        r1, r2 = json.loads(res.stdout)
        assert (r2["fed_via"], r2["fed_why"], r2["relayed_bytes"]) == (plan.LAPTOP, "--no-relay", 0)
        assert r2["bytes_sent"] >= 3 << 20
    finally:
        for h in (h1, h2):
            in_host(h, f"rm -rf {ALICE}/{dest}")
