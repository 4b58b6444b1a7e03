"""The no-root path as the sandbox's plain user `carol` (no sudo, no docker group), on a host that
reaches no package index: push-env (wheels streamed from here), unchanged and changed pushes,
`run --env`, push-data, and --delete. Small pure-python wheels only (six, idna), so it stays quick."""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import pytest

from migrate.remote.connection import connect
from tests.conftest import run_cli

CLEAN = ("rm -rf ~/.migrate/envs ~/.migrate/wheels ~/.migrate/.incoming ~/pe-data ~/.migrate/mirror ~/.config/pip "
         "~/.config/uv ~/.condarc")


@pytest.fixture
def carol(sandbox_hosts, tmp_path):
    host = "carol@" + sandbox_hosts[0]["alias"]
    with connect(host) as remote:
        assert "sudo" not in remote.run("id -nG").stdout.split()
        remote.run(CLEAN)
        yield host, remote
        remote.run(CLEAN)


def push(*args: str, cwd=None) -> list[dict]:
    res = run_cli("push-env", *args, "--json", cwd=cwd, timeout=300)
    assert res.code == 0, res.output
    return json.loads(res.stdout)


def test_push_env_offline_then_unchanged_then_one_changed_pin_then_run(carol, tmp_path):
    host, remote = carol
    name = "t" + uuid.uuid4().hex[:6]
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\nidna==3.10\n")
    dry = push(host, str(req), "--name", name, "--dry-run")[0]
    assert dry["status"] == "would-install" and sorted(dry["wheels_missing"]) == ["idna==3.10", "six==1.16.0"]
    assert remote.run("ls ~/.migrate/envs 2>/dev/null | wc -l").stdout.strip() == "0"  # dry run changed nothing

    first = push(host, str(req), "--name", name)[0]
    assert (first["status"], first["source"], first["wheels_sent"], first["packages"]) == \
        ("installed", "pushed wheels", 2, 2)
    assert remote.run(f"~/.migrate/envs/{name}/bin/python -c 'import six, idna; print(six.__version__)'"
                      ).stdout.strip() == "1.16.0"
    assert remote.run("stat -c %a ~/.migrate/wheels ~/.migrate/envs").stdout.split() == ["700", "700"]

    again = push(host, str(req), "--name", name)[0]
    assert (again["status"], again["wheels_sent"], again["bytes_sent"]) == ("unchanged", 0, 0)

    req.write_text("six==1.17.0\nidna==3.10\n")
    changed = push(host, str(req), "--name", name)[0]
    assert (changed["status"], changed["wheels_sent"], changed["wheels_missing"]) == ("updated", 1, ["six==1.17.0"])

    res = run_cli("run", host, "--gpu-backend", "fake:/home/carol/.migrate/fake-gpus.json", "--gpus-per-job", "0",
                  "--env", name, "-f", "--", "python -c 'import six, sys; print(six.__version__, sys.prefix)'",
                  timeout=120)
    assert res.code == 0, res.output
    assert f"1.17.0 /home/carol/.migrate/envs/{name}" in res.stdout
    res = run_cli("exec", host, "--env", name, "--", "python -c 'import six, sys; print(six.__version__, sys.prefix)'")
    assert res.code == 0 and res.stdout.strip() == f"1.17.0 /home/carol/.migrate/envs/{name}", res.output

    bad = run_cli("push-env", host, "--name", name, "--delete")  # not a terminal: needs --yes
    assert bad.code == 2 and "--yes" in bad.output
    gone = push(host, "--name", name, "--delete", "--yes")[0]
    assert gone["status"] == "deleted"
    assert remote.run(f"test -e ~/.migrate/envs/{name}", check=False).exit_code == 1


def test_host_python_that_does_not_fit_is_one_line(carol, tmp_path):
    host, _ = carol
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\nversion = "0"\nrequires-python = ">=3.13"\n'
                                             'dependencies = ["six"]\n')
    res = run_cli("push-env", host, str(tmp_path))
    assert res.code == 1
    assert "Python 3.11" in res.stderr and "--python" in res.stderr and "Traceback" not in res.output
    missing = run_cli("push-env", host, str(tmp_path), "--python", "python3.99")
    assert missing.code == 1 and "has no python3.99" in missing.stderr


def test_push_data_as_a_plain_user(carol, tmp_path):
    host, remote = carol
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("hello\n")
    res = run_cli("push-data", str(tmp_path / "d"), f"{host}:pe-data")
    assert res.code == 0, res.output
    assert remote.run("cat ~/pe-data/a.txt").stdout == "hello\n"


def test_doctor_tells_a_plain_user_what_works(carol):
    host, _ = carol
    res = run_cli("doctor", host, "--json")
    assert res.code == 0, res.output
    checks = {c["name"]: c for c in json.loads(res.stdout)["checks"]}
    assert checks["sudo"]["verdict"] == "warn" and "probably no sudo" in checks["sudo"]["detail"]
    assert "push-env" in checks["plain user"]["detail"] and "run --env" in checks["plain user"]["detail"]


def test_a_conda_environment_is_packed_unpacked_relocated_and_runs_jobs(carol, tmp_path):
    """A conda-layout environment (tests/env_helpers.py: no conda package can be reached here) with a
    4 MiB incompressible package that stays the same: the changed env's second push is an rsync delta
    against the pack kept on the host from the first."""
    pytest.importorskip("conda_pack")
    from tests.env_helpers import make_conda_env

    host, remote = carol
    name = "c" + uuid.uuid4().hex[:6]
    big = 4 << 20
    env = make_conda_env(tmp_path / "cenv", big_bytes=big)
    first = push(host, str(env), "--name", name)[0]
    assert (first["status"], first["source"], first["transfer"]) == ("installed", "conda-pack", "stream")
    assert first["bytes_sent"] == first["pack_bytes"] > big
    dest = f"/home/carol/.migrate/envs/{name}"
    assert remote.run(f"grep PREFIX {dest}/lib/python3.11/site-packages/tinypkg/__init__.py").stdout.strip() == \
        f'PREFIX = "{dest}"'
    kept = f"~/.migrate/envs/.packs/{name}.tar"
    assert remote.run(f"stat -c '%a %s' ~/.migrate/envs/.packs {kept}").stdout.split("\n")[1] == \
        f"600 {first['pack_bytes']}"
    again = push(host, str(env), "--name", name)[0]
    assert (again["status"], again["bytes_sent"]) == ("unchanged", 0)
    make_conda_env(env, tinypkg_version="1.1", big_bytes=big)
    changed = push(host, str(env), "--name", name)[0]
    assert (changed["status"], changed["transfer"]) == ("updated", "rsync")
    assert 0 < changed["bytes_sent"] < changed["pack_bytes"] // 4, changed  # the delta, not the 4 MiB again
    assert remote.run(f"stat -c %a ~/.migrate/envs/.packs {kept}; ls -A ~/.migrate/envs/.packs").stdout.split() == \
        ["700", "600", f"{name}.tar"]
    res = run_cli("run", host, "--gpu-backend", "fake:/home/carol/.migrate/fake-gpus.json", "--gpus-per-job", "0",
                  "--env", name, "-f", "--", "echo $CONDA_PREFIX; tinypkg", timeout=120)
    assert res.code == 0, res.output
    assert f"{dest}\ntinypkg 1.1 {dest}" in res.stdout
    assert push(host, "--name", name, "--delete", "--yes")[0]["status"] == "deleted"
    assert remote.run("ls -A ~/.migrate/envs ~/.migrate/envs/.packs").stdout.split() == \
        ["/home/carol/.migrate/envs:", ".packs", "/home/carol/.migrate/envs/.packs:"]


def test_a_uv_locked_project_and_the_active_venv(carol, tmp_path):
    """pyproject.toml + uv.lock: exactly the locked pins; --from-current: the active venv's packages."""
    from migrate.env.resolve import local_uv

    host, remote = carol
    uv = str(local_uv())
    proj = tmp_path / "projx"
    proj.mkdir()
    (proj / "pyproject.toml").write_text('[project]\nname = "projx"\nversion = "0.1"\nrequires-python = ">=3.9"\n'
                                         'dependencies = ["six"]\n')
    subprocess.run([uv, "lock", "-q", "--project", str(proj)], check=True, env={**os.environ, "UV_NO_CONFIG": "1"})
    locked = re.search(r'name = "six"\nversion = "([^"]+)"', (proj / "uv.lock").read_text()).group(1)
    [r] = push(host, str(proj))
    assert (r["name"], r["status"], r["packages"]) == ("projx", "installed", 1)
    assert remote.run("~/.migrate/envs/projx/bin/python -c 'import six; print(six.__version__)'"
                      ).stdout.strip() == locked
    venv = tmp_path / "exp" / ".venv"
    subprocess.run([uv, "venv", "-q", str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "six==1.16.0"], check=True)
    res = run_cli("push-env", host, "--from-current", "--json", env={"VIRTUAL_ENV": str(venv)}, timeout=300)
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert (r["name"], r["status"], r["packages"]) == ("exp", "installed", 1)


def test_a_user_level_mirror_is_used_by_push_env_and_undone(carol, tmp_path):
    host, remote = carol
    remote.run("rm -rf ~/.config/pip ~/.config/uv ~/.condarc ~/.migrate/mirror")
    res = run_cli("mirror", host, "tuna", "--json")
    assert res.code == 0, res.output
    assert {c["tool"]: c["change"] for c in json.loads(res.stdout)[0]["changes"]} == \
        {"pip": "write", "uv": "write", "conda": "write"}
    assert "pypi.tuna.tsinghua.edu.cn" in remote.run("cat ~/.config/pip/pip.conf").stdout
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    online = push(host, str(req), "--name", "m1", "--online", "--dry-run")[0]
    assert online["source"] == "mirror https://pypi.tuna.tsinghua.edu.cn/simple"
    offline = push(host, str(req), "--name", "m1")[0]  # the sandbox reaches no mirror: wheels are pushed
    assert (offline["status"], offline["source"]) == ("installed", "pushed wheels")
    undo = run_cli("mirror", host, "--undo")
    assert undo.code == 0, undo.output
    assert remote.run("ls -a ~/.config ~ | grep -c -e '^pip$' -e '^uv$' -e '^.condarc$'", check=False
                      ).stdout.strip() == "0"
