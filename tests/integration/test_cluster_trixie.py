"""`migrate cluster` on Debian 13 hosts (python3 3.13, so Ray's cp313 wheels), the release new servers get.

Two of the `modern` sandbox hosts (Debian 13, the flavour test_modern_hosts.py uses; this module leaves
modern1 alone and purges what it installed): `cluster up` from pushed cp313 wheels, a sweep through
the launcher, a 2-node job whose ranks get the torchrun variables, and `down --purge`. About a minute.
"""

from __future__ import annotations

import json
import time

import pytest

from migrate.remote.connection import connect
from tests.conftest import run_cli
from tests.integration.conftest import TEST_PREFIX
from tests.integration.test_modern_hosts import FLAVOUR

pytestmark = [pytest.mark.slow, pytest.mark.release("trixie")]

NAME = f"{TEST_PREFIX}tx13"


def sh(alias: str, command: str, stdin: str | None = None) -> str:
    with connect(alias) as r:
        return r.run(command, check=False, stdin=stdin, timeout=120).stdout


@pytest.fixture(scope="module")
def hosts(dedicated_sandbox):
    _, h2, h3 = dedicated_sandbox("modern", 3, gpus=2, extra=FLAVOUR)   # 2 mock GPUs each
    env, aliases = h2["env"], [h2["alias"], h3["alias"]]
    run_cli("cluster", "down", NAME, env=env)
    yield aliases, env
    run_cli("cluster", "down", NAME, "--purge", env=env, timeout=300)


def test_cluster_on_debian_13_from_cp313_wheels_runs_a_sweep_and_a_two_node_job(hosts):
    aliases, env = hosts
    for a in aliases:
        assert sh(a, "cat /etc/debian_version").startswith("13") and sh(a, "python3 -V").startswith("Python 3.13")
    up = run_cli("cluster", "up", NAME, *aliases, "--offline", "--json", env=env, timeout=900)
    assert up.code == 0, up.output
    assert "from pushed wheels" in up.stderr and json.loads(up.stdout)["action"] == "started"
    assert [n["gpus"] for n in json.loads(up.stdout)["nodes"]] == [["0", "1"]] * 2     # the mock GPUs, no flag
    for a in aliases:
        assert sh(a, "~/.migrate/ray/2.55.1/bin/python -V").startswith("Python 3.13")
    st = json.loads(run_cli("cluster", "status", NAME, "--json", env=env).stdout)
    assert st["launcher"] is True and [n["state"] for n in st["nodes"]] == ["alive", "alive"]

    res = run_cli("run", NAME, "--json", "--sweep", "i=1,2,3,4", "--",
                  'echo "job {i} python3.$(python3 -c "import sys; print(sys.version_info[1])")"', env=env)
    assert res.code == 0, res.output
    ids = [j["id"] for j in json.loads(res.stdout)["jobs"]]
    deadline = time.monotonic() + 120
    while True:
        jobs = {j["id"]: j for j in json.loads(run_cli("status", NAME, "--json", "--all", env=env).stdout)["jobs"]}
        if all(jobs.get(i, {}).get("state") in ("done", "failed") for i in ids):
            break
        assert time.monotonic() < deadline, jobs
        time.sleep(1)
    assert [jobs[i]["state"] for i in ids] == ["done"] * 4, jobs
    assert "job 1 python3.13" in run_cli("logs", NAME, ids[0], env=env).stdout

    gang = run_cli("run", NAME, "--nodes", "2", "--gpus-per-node", "1", "-f", "--",
                   'echo "rank $NODE_RANK of $WORLD_SIZE nnodes $NNODES master $MASTER_ADDR:$MASTER_PORT"',
                   env=env, timeout=300)
    assert gang.code == 0, gang.output
    assert "rank 0 of 2 nnodes 2" in gang.stdout and "rank 1 of 2 nnodes 2" in gang.stdout, gang.stdout

    down = run_cli("cluster", "down", NAME, env=env, timeout=300)
    assert down.code == 0, down.output
    for a in aliases:
        assert sh(a, "ps -eo args | grep -F .migrate/ray/ | grep -v grep || true").strip() == ""
