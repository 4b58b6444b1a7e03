"""The agent zipapp: deterministic, versioned by content, self-contained."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from migrate.jobs.bundle import build_agent
from migrate.jobs.client import agent_command, start_args
from migrate.jobs.spec import DispatcherOptions


def test_bundle_contents_and_version():
    b = build_agent()
    names = zipfile.ZipFile(io.BytesIO(b.data)).namelist()
    assert "__main__.py" in names and "migrate_agent/_build.py" in names
    assert "migrate_agent/_vendor/pynvml.py" in names and "pynvml.py" not in names
    assert "migrate_agent/daemon.py" in names and "migrate_agent/__main__.py" not in names
    assert b.filename == f"migrate-agent-{b.version}.pyz" and b.remote_relpath.startswith(".migrate/agent/")
    build_agent.cache_clear()
    assert build_agent().data == b.data  # deterministic: same sources, same bytes, same version


def _installed_pynvml_path() -> Path:
    import importlib.metadata

    dist = importlib.metadata.distribution("nvidia-ml-py")
    (f,) = [f for f in dist.files if str(f) == "pynvml.py"]
    return Path(str(dist.locate_file(f)))


def test_nvidia_ml_py_is_pinned_exactly_and_installed_at_the_pin():
    """Issue 23.7: the agent ships the installed pynvml, so the pin must be exact and the same everywhere."""
    import importlib.metadata
    import re

    from migrate.agent._vendor import PYNVML_VERSION

    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    (pin,) = re.findall(r'"nvidia-ml-py\s*([=<>!~]=?)\s*([^",;\s]+)', pyproject)
    assert pin == ("==", PYNVML_VERSION)
    assert importlib.metadata.version("nvidia-ml-py") == PYNVML_VERSION
    assert not (Path(__file__).resolve().parents[2] / "migrate/agent/_vendor/pynvml.py").exists()  # not vendored


def test_the_bundle_ships_the_installed_pynvml_and_the_agent_imports_it():
    from migrate.agent._vendor import pynvml

    shipped = zipfile.ZipFile(io.BytesIO(build_agent().data)).read("migrate_agent/_vendor/pynvml.py")
    assert shipped == _installed_pynvml_path().read_bytes()
    assert Path(pynvml.__file__).resolve() == _installed_pynvml_path().resolve()  # laptop: the same module


def test_a_wrong_nvidia_ml_py_version_refuses_to_build(monkeypatch):
    import importlib.metadata

    import pytest

    from migrate.errors import MigrateError
    from migrate.jobs import bundle

    real = importlib.metadata.distribution("nvidia-ml-py")

    class Other:  # the same files under another version number
        version = "12.535.161"
        files = real.files
        locate_file = staticmethod(real.locate_file)

    monkeypatch.setattr(bundle.importlib.metadata, "distribution", lambda name: Other())
    with pytest.raises(MigrateError, match="12.535.161 is installed but migrate pins"):
        bundle.installed_pynvml()


def test_two_laptops_with_another_pynvml_first_on_sys_path_ship_the_same_agent(tmp_path, monkeypatch):
    """Issue 12.16: the agent must not depend on whatever `pynvml` comes first on the laptop's
    sys.path, or two laptops replace each other's dispatcher on a shared host. Laptop B has another
    pynvml first on sys.path; the bundle takes the nvidia-ml-py distribution's file."""
    import importlib
    import sys as _sys

    from migrate.agent._vendor import PYNVML_VERSION

    build_agent.cache_clear()
    laptop_a = build_agent()
    other = tmp_path / "site-packages"
    other.mkdir()
    (other / "pynvml.py").write_text("# nvidia-ml-py 12.535.161 (another laptop's)\nNVML_SUCCESS = 0\n")
    monkeypatch.syspath_prepend(str(other))
    monkeypatch.delitem(_sys.modules, "pynvml", raising=False)
    importlib.invalidate_caches()
    assert "another laptop" in Path(importlib.util.find_spec("pynvml").origin).read_text()
    build_agent.cache_clear()
    try:
        laptop_b = build_agent()
    finally:
        build_agent.cache_clear()
    assert (laptop_b.version, laptop_b.data) == (laptop_a.version, laptop_a.data)
    shipped = zipfile.ZipFile(io.BytesIO(laptop_b.data)).read("migrate_agent/_vendor/pynvml.py")
    assert shipped == _installed_pynvml_path().read_bytes() and b"another laptop" not in shipped
    assert PYNVML_VERSION.split(".")[0] == "13"


def test_the_zipapp_imports_its_own_pynvml_not_the_hosts(tmp_path):
    """On the host the agent runs `python3 -I -S`: the zip's pynvml, never a site-packages one."""
    b = build_agent()
    pyz = tmp_path / b.filename
    pyz.write_bytes(b.data)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from migrate_agent._vendor import pynvml; "
            "print(pynvml.__file__)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(pyz)], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{pyz}/migrate_agent/_vendor/pynvml.py"


def test_zipapp_reports_its_version(tmp_path):
    b = build_agent()
    pyz = tmp_path / b.filename
    pyz.write_bytes(b.data)
    env = dict(os.environ, MIGRATE_AGENT_HOME=str(tmp_path / "h"))
    out = subprocess.run([sys.executable, str(pyz), "version"], capture_output=True, text=True, env=env, timeout=30)
    assert json.loads(out.stdout)["version"] == b.version


def test_agent_command_checks_python_and_file_and_quotes_args():
    cmd = agent_command(build_agent(), ["logs", "my job; rm -rf ~"])
    assert cmd.startswith("command -v python3")
    assert "'my job; rm -rf ~'" in cmd and "exit 98" in cmd and "python3 -I -S" in cmd
    assert "cat" not in cmd  # nothing to drain: a `cat` would wait forever for an EOF that never comes
    with_input = agent_command(build_agent(), ["submit"], need_queue=True, has_stdin=True)
    assert with_input.startswith("[ -e \"$HOME\"/.migrate/dispatcher/queue.db ] || { cat >/dev/null; exit 96; }")


def test_agent_command_runs_as_sh(tmp_path):
    """The command line is valid sh and takes the early exits it should."""
    import subprocess as sp

    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    for kwargs, code in (({"need_queue": True}, 96), ({}, 98)):
        res = sp.run(["sh", "-c", agent_command(build_agent(), ["status"], **kwargs)], env=env, timeout=10)
        assert res.returncode == code


def test_start_args():
    assert start_args(DispatcherOptions()) == ["--mode", "auto"]
    assert start_args(DispatcherOptions(gpu_backend="fake:/x", cpu_slots=3)) == [
        "--mode", "auto", "--backend", "fake:/x", "--cpu-slots", "3"]


def test_submit_takes_the_backend_from_the_environment(monkeypatch):
    from migrate.jobs import client as client_mod

    sent = {}

    class FakeAgentClient:  # records the call instead of talking SSH (unit test of the argument plumbing)
        remote = None

        def call(self, args, payload, *, what):
            sent["args"] = args
            return {"ok": True, "jobs": []}

    monkeypatch.setenv("MIGRATE_GPU_BACKEND", "fake:/tmp/x.json")
    client_mod.submit_with(FakeAgentClient(), [], DispatcherOptions())
    assert sent["args"][-2:] == ["--backend", "fake:/tmp/x.json"]
    client_mod.submit_with(FakeAgentClient(), [], DispatcherOptions(gpu_backend="nvml"))
    assert sent["args"][-2:] == ["--backend", "nvml"]  # an explicit choice wins


def test_docs_give_the_agents_size():
    """Issue 20: docs/run.md said "about 95 KiB"; the agent is about 105 KiB."""
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "run.md").read_text()
    (said,) = re.findall(r"about (\d+) KiB\)", text)
    assert abs(int(said) - len(build_agent().data) / 1024) <= 5, (said, len(build_agent().data) / 1024)  # "about"
