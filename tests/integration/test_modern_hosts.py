"""Debian 13 hosts with Debian's newest engine (docker.io 28.5 from sid) on the containerd image store.

One dedicated host, `modern1`: `sandbox up --release trixie --docker-from sid --image-store
containerd`, so daemon.json asks for the containerd store before any Docker is installed (as fresh
Docker 29 installs do). The tests run in order: doctor on the bare host, host-setup from scratch
(the engine, the separate docker-cli, the daemon.json key kept), the CLI removed behind our back
(named by doctor, repaired by host-setup, never blamed on the group), then --undo.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.release("trixie")
FLAVOUR = ("--release", "trixie", "--docker-from", "sid", "--image-store", "containerd")


@pytest.fixture(scope="module")
def host(dedicated_sandbox) -> dict:
    [h] = dedicated_sandbox("modern", 1, extra=FLAVOUR)
    return h


def root_sh(host: dict, script: str) -> str:
    """A root shell inside the sandbox host (fixtures and inspection only)."""
    proc = subprocess.run(["docker", "exec", host["container"], "sh", "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def doctor(host: dict) -> dict:
    res = run_cli("doctor", host["alias"], "--json", env=host["env"])
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    data["by_name"] = {c["name"]: c for c in data["checks"]}
    return data


def setup(host: dict, *args: str) -> tuple[int, dict]:
    res = run_cli("host-setup", host["alias"], "--docker-source", "distro", "--no-nvidia", *args, "--json",
                  env=host["env"], timeout=900)
    reports = json.loads(res.stdout) if res.stdout.strip() else []
    assert reports, res.output
    return res.code, {s["name"]: s for s in reports[0]["steps"]}


def installed(host: dict, package: str) -> bool:
    out = root_sh(host, f"dpkg-query -W -f='${{db:Status-Abbrev}}' {package} 2>/dev/null || true")
    return out.startswith("ii")


def test_doctor_on_a_bare_trixie_host(host):
    d = doctor(host)
    assert d["facts"]["os_version_id"] == "13" and d["facts"]["systemd_version"] >= 257
    assert d["by_name"]["docker"]["verdict"] == "missing"
    assert "systemd" in d["by_name"]["cgroup"]["detail"]


def test_host_setup_installs_the_engine_with_its_cli_and_keeps_the_store_setting(host):
    code, steps = setup(host)
    assert code == 0, steps
    assert steps["docker-engine"]["status"] == "changed" and steps["verify"]["status"] == "ok"
    assert installed(host, "docker.io") and installed(host, "docker-cli")
    cfg = json.loads(root_sh(host, "cat /etc/docker/daemon.json"))
    assert cfg["features"]["containerd-snapshotter"] is True
    docker = doctor(host)["facts"]["docker"]
    assert docker["image_store"] == "containerd" and docker["engine_version"].startswith("28.")
    assert doctor(host)["by_name"]["docker"]["verdict"] == "ok"


def test_a_missing_cli_is_named_by_doctor_and_repaired_by_host_setup(host):
    root_sh(host, "DEBIAN_FRONTEND=noninteractive apt-get -q -y purge docker-cli >/dev/null")
    check = doctor(host)["by_name"]["docker"]
    assert check["verdict"] == "warn" and "`docker` command is missing" in check["detail"]
    assert "docker-cli" in check["hint"]
    code, steps = setup(host)
    assert code == 0, steps
    assert steps["docker-engine"]["status"] == "changed" and "docker-cli" in steps["docker-engine"]["detail"]
    assert steps["docker-group"]["status"] == "ok" and steps["verify"]["status"] == "ok"
    assert installed(host, "docker-cli")
    code, steps = setup(host)  # and a rerun changes nothing
    assert code == 0 and all(s["status"] in ("ok", "skipped") for s in steps.values()), steps


def test_undo_removes_what_host_setup_installed(host):
    res = run_cli("host-setup", host["alias"], "--undo", env=host["env"], timeout=900)
    assert res.code == 0, res.output
    assert not installed(host, "docker-cli") and not installed(host, "docker.io")
