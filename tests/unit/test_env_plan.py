"""push-env's pure pieces: sources, requires-python, locks, wheel names, platforms, remote commands."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from migrate.env import plan
from migrate.env.push import tar_members
from migrate.env.source import check_name, current_source, default_name, python_fits, read_source
from migrate.errors import UsageError


def test_read_source_kinds(tmp_path: Path) -> None:
    req = tmp_path / "proj" / "requirements.txt"
    req.parent.mkdir()
    req.write_text("six==1.16.0\n")
    assert read_source(str(req)).kind == "requirements"
    assert default_name(read_source(str(req))) == "proj"
    (tmp_path / "proj" / "pyproject.toml").write_text('[project]\nname = "p"\nrequires-python = ">=3.10"\n')
    src = read_source(str(tmp_path / "proj"))
    assert (src.kind, src.requires_python) == ("pyproject", ">=3.10")
    (tmp_path / "proj" / "uv.lock").write_text("version = 1\n")
    assert read_source(str(tmp_path / "proj" / "pyproject.toml")).kind == "uv.lock"
    with pytest.raises(UsageError, match="does not exist"):
        read_source(str(tmp_path / "nope.txt"))


def test_current_source(tmp_path: Path) -> None:
    venv = tmp_path / "exp" / ".venv"
    venv.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    src = current_source({"VIRTUAL_ENV": str(venv)})
    assert src.kind == "venv" and default_name(src) == "exp"
    with pytest.raises(UsageError, match="no environment is active"):
        current_source({})


@pytest.mark.parametrize("name,ok", [("torch", True), ("a.b-c_1", True), ("../x", False), ("", False),
                                     ("a b", False), ("-x", False)])
def test_names(name: str, ok: bool) -> None:
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(UsageError):
            check_name(name)


@pytest.mark.parametrize("version,spec,fits", [
    ("3.11", ">=3.10", True), ("3.9", ">=3.10", False), ("3.11", ">=3.8,<3.11", False),
    ("3.10", ">=3.8,<3.11", True), ("3.12", "~=3.10", True), ("3.11", "==3.11.*", True),
    ("3.12", "==3.11.*", False), ("3.11", "!=3.11.*", False), ("3.11", "", True)])
def test_python_fits(version: str, spec: str, fits: bool) -> None:
    assert python_fits(version, spec) is fits


def test_lock_and_wheel_names() -> None:
    assert plan.parse_lock("Six==1.16.0\n# c\nscikit-learn==1.5.2\n") == [("six", "1.16.0"), ("scikit_learn", "1.5.2")]
    with pytest.raises(ValueError):
        plan.parse_lock("-e ./local\n")
    assert plan.wheel_key("scikit_learn-1.5.2-cp311-cp311-manylinux_2_17_x86_64.whl") == ("scikit_learn", "1.5.2")
    assert plan.lock_sha("a") != plan.lock_sha("b")


@pytest.mark.parametrize("glibc,want", [("2.36", "x86_64-manylinux_2_36"), ("2.41", "x86_64-manylinux_2_40"),
                                        ("2.30", "x86_64-manylinux_2_28"), ("2.12", "x86_64-manylinux_2_17"),
                                        ("", "x86_64-manylinux_2_17")])
def test_platform(glibc: str, want: str) -> None:
    assert plan.uv_platform("x86_64", glibc) == want
    assert plan.pip_platform("x86_64", glibc) == want.split("-", 1)[1] + "_x86_64"
    tags = plan.pip_platforms("x86_64", glibc)
    assert tags[0] == plan.pip_platform("x86_64", glibc)
    assert "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags and "manylinux1_x86_64" in tags


def test_commands_quote_and_stay_in_home() -> None:
    cmd = plan.install_command("my env", "/usr/bin/python3", "3.11", offline=True)
    assert "'.migrate/envs/my env'" in cmd and "--no-index" in cmd and "sys.version_info[:2] != (3, 11)" in cmd
    assert cmd.startswith("umask 077 && cd &&") and "sudo" not in cmd and "UV_PYTHON_DOWNLOADS=never" in cmd
    assert "--no-index" not in plan.install_command("e", "/usr/bin/python3", "3.11", offline=False)
    assert 'rm -rf "$HOME"/.migrate/envs/x ' in plan.delete_command("x")
    assert "exit 127" in plan.probe_command("x", "0.1", "python3.12")


def test_unpack_moves_only_whole_files(tmp_path: Path) -> None:
    """The unpack command, run here with HOME=tmp: wheels land in ~/.migrate/wheels, a broken tar adds none."""
    whl = tmp_path / "a-1.0-py3-none-any.whl"
    whl.write_bytes(b"x" * 1000)
    src = tmp_path / "src"
    (src / "wheels").mkdir(parents=True)
    (src / "wheels" / whl.name).write_bytes(whl.read_bytes())
    data = subprocess.run(["tar", "-cf", "-", "-C", str(src), "wheels"], capture_output=True, check=True).stdout
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    broken = subprocess.run(["sh", "-c", plan.unpack_command()], input=data[:1500], env=env, capture_output=True)
    assert broken.returncode != 0 and not list((home / ".migrate").glob("wheels/*.whl"))
    subprocess.run(["sh", "-c", plan.unpack_command()], input=data, env=env, check=True)
    assert [p.name for p in (home / ".migrate" / "wheels").iterdir()] == [whl.name]
    assert not (home / ".migrate" / ".incoming").exists()


def test_tar_members(tmp_path: Path) -> None:
    uv = tmp_path / "uv"
    w = tmp_path / "six-1.16.0-py2.py3-none-any.whl"
    names = [n for n, _ in tar_members([w], uv)]
    assert names == ["bin/uv", "bin/uv.version", "wheels/" + w.name]
    assert [n for n, _ in tar_members([], None)] == []


# -- jobs in a pushed environment (run --env NAME, python_env in jobs.yaml and playbooks) ----------------
def test_run_env_name_and_variables_split() -> None:
    from migrate.jobs.submit import parse_env, split_env

    assert split_env(("A=1", "torch")) == ({"A": "1"}, "torch")
    with pytest.raises(UsageError, match="two environments"):
        split_env(("a", "b"))
    with pytest.raises(UsageError):
        parse_env(("torch",))  # compose jobs: variables only


def test_python_env_travels_in_the_job_env(tmp_path: Path) -> None:
    from migrate.jobs.spec import JobSpec, check_specs, load_jobs_file

    assert JobSpec("python x.py", python_env="torch").payload()["env"] == {"MIGRATE_ENV": "torch"}
    assert "MIGRATE_ENV" not in JobSpec("python x.py").payload()["env"]
    f = tmp_path / "jobs.yaml"
    f.write_text("defaults: {python_env: torch}\njobs:\n  - python a.py\n")
    assert load_jobs_file(f)[0].python_env == "torch"
    with pytest.raises(UsageError, match="process jobs"):
        check_specs([JobSpec("x", image="ubuntu:22.04", python_env="torch")])
    with pytest.raises(UsageError, match="bad environment name"):
        check_specs([JobSpec("x", python_env="../etc")])


def test_agent_activates_the_environment(tmp_path: Path) -> None:
    from migrate.agent.launch import activate, plan_launch

    (tmp_path / ".migrate" / "envs" / "torch" / "bin").mkdir(parents=True)
    cmd = activate("python t.py", {"MIGRATE_ENV": "torch"}, str(tmp_path))
    assert cmd.startswith(f"VIRTUAL_ENV={tmp_path}/.migrate/envs/torch; export VIRTUAL_ENV; PATH=")
    assert cmd.endswith("python t.py")
    (tmp_path / ".migrate" / "envs" / "torch" / "conda-meta").mkdir()
    assert "CONDA_PREFIX=" in activate("x", {"MIGRATE_ENV": "torch"}, str(tmp_path))
    assert "exit 127" in activate("x", {"MIGRATE_ENV": "gone"}, str(tmp_path))
    assert activate("x", {}, str(tmp_path)) == "x"
    (tmp_path / ".migrate" / "envs" / "torch" / "conda-meta").rmdir()
    job = {"id": 1, "command": "python t.py", "env": {"MIGRATE_ENV": "torch"}}
    p = plan_launch(job, job_dir="/d", log_path="/l", gpu_uuids=[], token="t", base_env={}, home=str(tmp_path),
                    user="u", uid=1, gid=1, bash="/bin/bash")
    out = subprocess.run(p.argv[-3:-1] + [p.argv[-1].replace("python t.py", "echo $VIRTUAL_ENV")],
                         capture_output=True, text=True)
    assert out.stdout.splitlines()[0] == f"{tmp_path}/.migrate/envs/torch"


# -- conda environments (a directory laid out as conda lays one out: tests/env_helpers.py) -----------------
def test_conda_identity_machine_and_source(tmp_path: Path) -> None:
    from migrate.env import conda
    from tests.env_helpers import make_conda_env

    env = make_conda_env(tmp_path / "envs" / "cenv")
    assert read_source(str(env)).kind == "conda" and default_name(read_source(str(env))) == "cenv"
    assert current_source({"CONDA_PREFIX": str(env)}).kind == "conda"
    (tmp_path / "environment.yml").write_text("name: x\n")
    assert read_source(str(tmp_path / "environment.yml")).kind == "environment.yml"
    first = conda.identity(env)
    assert conda.machine(env) == "x86_64" and len(first.splitlines()) == 2
    make_conda_env(env, tinypkg_version="1.1")
    assert conda.identity(env) != first


def test_conda_pack_and_install_command_relocate_the_env(tmp_path: Path, monkeypatch) -> None:
    """conda-pack here, then the host's install command run here with HOME=tmp: conda-unpack rewrites the prefix."""
    pytest.importorskip("conda_pack")
    from migrate.env import conda
    from tests.env_helpers import make_conda_env

    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    env = make_conda_env(tmp_path / "build" / "cenv")
    lock = conda.identity(env)
    packed = conda.pack(env, lock)
    assert conda.pack(env, lock) == packed  # cached by identity
    home = tmp_path / "home"
    (home / ".migrate" / "envs").mkdir(parents=True)
    (home / ".migrate" / "envs" / ".c1.lock").write_text(lock)
    res = subprocess.run(["sh", "-c", plan.conda_install_command("c1")], stdin=packed.open("rb"),
                         env={"HOME": str(home), "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    dest = home / ".migrate" / "envs" / "c1"
    assert (dest / plan.LOCK_FILE).read_text() == lock
    module = dest / "lib" / "python3.11" / "site-packages" / "tinypkg" / "__init__.py"
    assert f'PREFIX = "{dest}"' in module.read_text()
    assert not (home / ".migrate" / "envs" / "c1.new").exists()


def test_python_env_is_accepted_on_a_cluster_playbook() -> None:
    from migrate.playbook.loader import parse_playbook

    pb = parse_playbook("hosts: [a, b]\ncluster: c1\nrun:\n  command: python t.py\n  python_env: torch\n",
                        Path("/p/x.yml"))
    assert pb.cluster == "c1"


def test_run_dry_run_names_the_env_and_refuses_it_with_an_image() -> None:
    from tests.conftest import run_cli

    ok = run_cli("run", "somehost", "--env", "torch", "--dry-run", "--", "python x.py")
    assert ok.code == 0 and "env torch" in ok.output
    bad = run_cli("run", "somehost", "--env", "torch", "--image", "ubuntu:22.04", "--dry-run", "--", "python x.py")
    assert bad.code == 2 and "process jobs" in bad.output


# -- package-index mirrors for one user (migrate mirror) --------------------------------------------------
def _mirror(home: Path, action: str, url: str = "", conda: str = "", dry: bool = False) -> dict:
    import json

    from migrate.env import mirror

    res = subprocess.run(["sh", "-c", mirror.command(action, url, conda, dry_run=dry)], capture_output=True,
                         text=True, env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    return {c["tool"] or c["path"]: c["change"] for c in json.loads(res.stdout)["changes"]}


def test_mirror_merges_journals_and_undoes(tmp_path: Path) -> None:
    from migrate.env import mirror

    url, conda = mirror.resolve("tuna")
    assert url.startswith("https://pypi.tuna") and mirror.resolve("https://x.example/simple/") == \
        ("https://x.example/simple", "")
    with pytest.raises(UsageError):
        mirror.resolve("nowhere")
    home = tmp_path / "home"
    pip_conf = home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True)
    pip_conf.write_text("[global]\ntimeout = 60\n")
    (home / ".condarc").write_text("channels: [conda-forge]\n")  # the user's own: kept
    assert _mirror(home, "set", url, conda, dry=True) == {"pip": "merge", "uv": "write", "conda": "skipped"}
    assert pip_conf.read_text() == "[global]\ntimeout = 60\n" and not (home / ".migrate").exists()
    assert _mirror(home, "set", url, conda) == {"pip": "merge", "uv": "write", "conda": "skipped"}
    assert "timeout = 60" in pip_conf.read_text() and f"index-url = {url}" in pip_conf.read_text()
    assert f'url = "{url}"' in (home / ".config" / "uv" / "uv.toml").read_text()
    assert _mirror(home, "set", url, conda) == {"pip": "unchanged", "uv": "unchanged", "conda": "skipped"}
    probe = subprocess.run(["sh", "-c", plan.probe_command("x", "0")], capture_output=True, text=True,
                           env={"HOME": str(home), "PATH": "/usr/bin:/bin"})
    assert plan.HostFacts.parse("h", probe.stdout).mirror == url
    _mirror(home, "set", "https://other.example/simple")  # a second mirror: undo still goes back to the first state
    _mirror(home, "undo")
    assert pip_conf.read_text() == "[global]\ntimeout = 60\n" and (home / ".condarc").read_text() == \
        "channels: [conda-forge]\n"
    assert not (home / ".config" / "uv").exists() and not (home / ".migrate" / "mirror").exists()


def test_a_plain_http_mirror_is_a_trusted_host_for_pip(tmp_path: Path) -> None:
    """pip ignores an http index whose host is not trusted ("not a trusted or secure host and is being
    ignored"): an http mirror (a lab's devpi, the test index of test_cluster_trixie) adds its host to
    [global] trusted-host, next to the user's own; undo puts their pip.conf back."""
    home = tmp_path / "home"
    pip_conf = home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True)
    pip_conf.write_text("[global]\ntrusted-host = own.example\n")
    assert _mirror(home, "set", "http://10.0.0.5:8613/simple")["pip"] == "merge"
    assert "trusted-host = own.example 10.0.0.5\n" in pip_conf.read_text()
    assert _mirror(home, "set", "http://10.0.0.5:8613/simple")["pip"] == "unchanged"
    _mirror(home, "undo")
    assert pip_conf.read_text() == "[global]\ntrusted-host = own.example\n"
    _mirror(home, "set", "https://m.example/simple")     # https: nothing to trust
    assert "trusted-host = own.example\n" in pip_conf.read_text()


def test_push_env_installs_from_the_mirror() -> None:
    cmd = plan.install_command("e", "/usr/bin/python3", "3.11", offline=False, index_url="https://m.example/simple")
    assert "--index-url https://m.example/simple " in cmd
    assert "https://m.example/simple" in plan.index_command("https://m.example/simple")
    assert plan.PUBLIC_INDEX in plan.index_command("")


# -- SIF jobs: a process job that runs `apptainer exec --nv` (migrate/jobs/sif.py) --------------------------
def test_a_sif_job_is_a_process_job_running_apptainer(tmp_path: Path) -> None:
    """The command the dispatcher runs, run here by sh with a stand-in `apptainer` that prints its argv
    (a logic test of the command line; no real apptainer runs it yet: docs/push-env.md, what is left)."""
    from migrate.jobs.spec import JobSpec, check_specs

    job = JobSpec("echo hi; echo $CUDA_VISIBLE_DEVICES", image="torch_1.sif", mounts=["/data:/data:ro"],
                  cwd="/work", gpus=1)
    check_specs([job])  # not a Docker reference, and that is fine
    payload = job.payload()
    assert "image" not in payload and "mounts" not in payload and "cwd" not in payload
    home = tmp_path / "home"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "apptainer"
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "[%s]" "$a"; done; echo\n')
    fake.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin"}
    missing = subprocess.run(["sh", "-c", payload["command"]], env=env, capture_output=True, text=True)
    assert missing.returncode == 127 and "no SIF image" in missing.stderr
    (home / ".migrate" / "images").mkdir(parents=True)
    (home / ".migrate" / "images" / "torch_1.sif").write_bytes(b"sif")
    out = subprocess.run(["sh", "-c", payload["command"]], env=env, capture_output=True, text=True).stdout
    assert out.strip() == (f"[exec][--nv][-B][/data:/data:ro][--pwd][/work][{home}/.migrate/images/torch_1.sif]"
                           "[sh][-c][echo hi; echo $CUDA_VISIBLE_DEVICES]")
    assert JobSpec("x", image="/abs/x.sif").payload()["command"].startswith("sif=/abs/x.sif;")
    with pytest.raises(UsageError, match="SIF job"):
        check_specs([JobSpec("x", image="a.sif", ports=["6006"])])


def test_the_conda_pack_cache_keeps_only_the_most_recently_used_packs(tmp_path: Path) -> None:
    """Every packed environment state is a whole env (GBs): the cache must not grow for ever."""
    from migrate.env import conda
    for n, age in enumerate([500, 400, 300, 200, 100]):
        p = tmp_path / f"pack{n}.tar"
        p.write_bytes(b"x")
        os.utime(p, (time.time() - age, time.time() - age))
    (tmp_path / "busy.part").write_bytes(b"x")              # another run still packing
    os.utime(tmp_path / "pack0.tar")                        # the oldest was just used again
    gone = conda.prune(tmp_path, keep=3)
    assert sorted(p.name for p in gone) == ["pack1.tar", "pack2.tar"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.part", "pack0.tar", "pack3.tar", "pack4.tar"]
