"""A second, independent sandbox: up is quick once the image exists, down leaves nothing behind."""

import json
import subprocess

from tests.conftest import run_cli
from tests.integration.conftest import sandbox_env

ENV = sandbox_env("sbtest")
NAME = ENV["MIGRATE_SANDBOX"]  # "sbtest", or with MIGRATE_TEST_PREFIX in front
HOST = NAME + "1"


def _docker_lines(*args):
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True).stdout.split()


def test_second_sandbox_up_gpus_then_down_leaves_nothing(sandbox_hosts, tmp_path):
    before = {
        "containers": set(_docker_lines("ps", "-aq")),
        "volumes": set(_docker_lines("volume", "ls", "-q")),
        "networks": set(_docker_lines("network", "ls", "-q")),
    }
    try:
        res = run_cli("sandbox", "up", "1", "--gpus", "2", "--json", env=ENV)
        assert res.code == 0, res.output
        hosts = json.loads(res.stdout)
        assert [h["alias"] for h in hosts] == [HOST] and hosts[0]["state"] == "running"
        # reachable by name with no flags, independent of the main sandbox
        res = run_cli("doctor", HOST, "--json", env=ENV)
        assert res.code == 0, res.output
        facts = json.loads(res.stdout)["facts"]
        assert len(facts["gpus"]) == 2 and facts["gpus"][0]["name"].endswith("(sandbox mock)")
        assert facts["gpus"][0]["uuid"] != facts["gpus"][1]["uuid"]
        # the dispatcher's view (real pynvml over the mock library) agrees with doctor's nvidia-smi
        taken = json.loads(run_cli("sandbox", "gpu", HOST, "--take", "1", "--mib", "1234", "--json",
                                   env=ENV).stdout)
        res = run_cli("gpus", HOST, "--json", env=ENV)
        assert res.code == 0, res.output
        view = json.loads(res.stdout)
        assert view["backend"] == "nvml" and view["driver"].endswith("-mock")
        assert [d["uuid"] for d in view["devices"]] == [g["uuid"] for g in facts["gpus"]]
        assert [(p["pid"], p["used_mib"], p["user"]) for p in view["devices"][1]["processes"]] == \
            [(taken["started_pid"], 1234, "bob")]
        # idempotent: a second up reuses the running host
        res = run_cli("sandbox", "up", "1", "--gpus", "2", env=ENV)
        assert res.code == 0, res.output
    finally:
        res = run_cli("sandbox", "down", env=ENV)
    assert res.code == 0, res.output
    assert not _docker_lines("ps", "-aq", "--filter", f"label=migrate.sandbox={NAME}")
    assert not _docker_lines("volume", "ls", "-q", "--filter", f"label=migrate.sandbox={NAME}")
    assert not _docker_lines("network", "ls", "-q", "--filter", f"label=migrate.sandbox={NAME}")
    assert set(_docker_lines("ps", "-aq")) == before["containers"]
    assert set(_docker_lines("volume", "ls", "-q")) == before["volumes"]
    assert set(_docker_lines("network", "ls", "-q")) == before["networks"]
    # the main sandbox is untouched
    assert run_cli("doctor", sandbox_hosts[0]["alias"], "--json").code == 0
    assert run_cli("doctor", HOST, env=ENV).code == 1
