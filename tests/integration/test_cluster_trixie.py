"""`migrate cluster` on Debian 13 hosts (python3 3.13, so Ray's cp313 wheels), the release new servers get,
installing Ray from a real package-index mirror set with `migrate mirror`.

Three `modern` sandbox hosts (Debian 13, the flavour test_modern_hosts.py uses). modern1 serves a PEP 503
index (tests/integration/pyindex.py: the cp313 wheels migrate caches for the offline path, under
`simple/`, `python3 -m http.server` as the host's user on its sandbox IP; removed at the end, nothing
else on modern1 is touched). modern2 and modern3 get it as their user's mirror with `migrate mirror
HOST URL` (modern3 has a pip.conf of its own, which is merged), then `cluster up` *without* `--offline`:
the preflight checks that each host reaches the mirror, and each installs `ray[default]` from it (its
output says `from the mirror URL`, and the index's access log shows each host fetching the ray wheel,
which is what proves it: sandbox hosts may reach pypi.org through Docker's NAT). Then a sweep through
the launcher, a 2-node job whose ranks get the torchrun variables, `down --purge`; at the end `mirror
--undo` (every config file as it was). The pushed-wheel path is tested on Debian 12 by
test_cluster.py. About two minutes.
"""

from __future__ import annotations

import contextlib
import json
import platform
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from migrate.cluster import install, plan
from migrate.remote.connection import connect
from tests.conftest import run_cli
from tests.integration import pyindex
from tests.integration.conftest import TEST_PREFIX
from tests.integration.test_modern_hosts import FLAVOUR

pytestmark = [pytest.mark.slow, pytest.mark.release("trixie")]

NAME = f"{TEST_PREFIX}tx13"


def sh(alias: str, command: str, stdin: str | None = None) -> str:
    with connect(alias) as r:
        return r.run(command, check=False, stdin=stdin, timeout=120).stdout


# The user's pip, uv and conda settings (and migrate's journal of them): `mirror --undo` puts this back.
CONFIGS = (".config/pip", ".config/pip/pip.conf", ".config/uv", ".config/uv/uv.toml", ".condarc", ".migrate/mirror")
OWN_PIP_CONF = "[global]\ntimeout = 30\n"
WRITE_OWN = f"mkdir -p ~/.config/pip && printf {OWN_PIP_CONF!r} > ~/.config/pip/pip.conf"
REMOVE_OWN = "rm -f ~/.config/pip/pip.conf && rmdir ~/.config/pip ~/.config 2>/dev/null || true"


def configs(alias: str, before: str = "true") -> str:
    return sh(alias, before + " && cd && for f in " + " ".join(CONFIGS) + "; do if [ -f $f ]; then echo \"== $f\"; "
                     "cat $f; elif [ -e $f ]; then echo \"== $f/\"; else echo \"-- $f\"; fi; done")


@pytest.fixture(scope="module")
def hosts(dedicated_sandbox):
    h1, h2, h3 = dedicated_sandbox("modern", 3, gpus=2, extra=FLAVOUR)   # 2 mock GPUs each
    env, aliases = h2["env"], [h2["alias"], h3["alias"]]
    run_cli("cluster", "down", NAME, env=env)
    before = {aliases[0]: configs(aliases[0]),   # modern3's user has a pip.conf of their own
              aliases[1]: configs(aliases[1], WRITE_OWN)}
    wheels = install.ensure_wheels("3.13", platform.machine())     # the offline path's cache, downloaded once
    with contextlib.ExitStack() as stack:
        stack.callback(sh, aliases[1], REMOVE_OWN)
        stack.callback(run_cli, "cluster", "down", NAME, "--purge", env=env, timeout=300)
        with ThreadPoolExecutor(1) as pool:     # the mirror is set while the index is copied and started
            mirror = pool.submit(run_cli, "mirror", *aliases, pyindex.url(h1), "--json", env=env)
            index = stack.enter_context(pyindex.serve(h1, wheels))
            res = mirror.result()
        assert res.code == 0, res.output
        changes = {r["host"]: {c["tool"]: c["change"] for c in r["changes"]} for r in json.loads(res.stdout)}
        assert changes == {aliases[0]: {"pip": "write", "uv": "write", "conda": "skipped"},
                           aliases[1]: {"pip": "merge", "uv": "write", "conda": "skipped"}}, changes
        yield aliases, env, index, [h2["ip"], h3["ip"]]
        undo = run_cli("mirror", *aliases, "--undo", env=env)
        assert undo.code == 0, undo.output
        assert {a: configs(a) for a in aliases} == before


def test_cluster_on_debian_13_installs_ray_from_a_mirror_and_runs_a_sweep_and_a_two_node_job(hosts):
    aliases, env, index, ips = hosts
    for a in aliases:
        assert sh(a, "cat /etc/debian_version").startswith("13") and sh(a, "python3 -V").startswith("Python 3.13")
    up = run_cli("cluster", "up", NAME, *aliases, "--json", env=env, timeout=900)     # not --offline
    assert up.code == 0, up.output
    mirror = index.url.rstrip("/")     # `migrate mirror` keeps the URL without its trailing slash
    assert up.stderr.count(f"from the mirror {mirror}\n") == 2, up.stderr
    assert json.loads(up.stdout)["action"] == "started"
    [ray_wheel] = index.projects["ray"]
    fetched = [line.split()[0] for line in index.log().splitlines() if f"GET /packages/{ray_wheel} " in line]
    assert sorted(fetched) == sorted(ips), index.log()     # each host took Ray from the mirror, once
    assert [n["gpus"] for n in json.loads(up.stdout)["nodes"]] == [["0", "1"]] * 2     # the mock GPUs, no flag
    for a in aliases:
        assert sh(a, f"~/{plan.venv_dir()}/bin/python -V").startswith("Python 3.13")
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

    # --purge here: once `down` has forgotten the cluster, the fixture's `down --purge` has no hosts to
    # purge, and a Ray left in ~/.migrate/ray would skip the install (and the mirror) on the next run
    down = run_cli("cluster", "down", NAME, "--purge", env=env, timeout=300)
    assert down.code == 0, down.output
    for a in aliases:
        assert sh(a, "ps -eo args | grep -F .migrate/ray/ | grep -v grep; test ! -e ~/.migrate/ray || "
                     "echo ~/.migrate/ray is left").strip() == ""
