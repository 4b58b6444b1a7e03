"""The agent must run on the host's python3 >= 3.8: syntax, library calls, and a real run under 3.8."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from migrate.jobs.bundle import AGENT_DIR, build_agent

AGENT_FILES = sorted(AGENT_DIR.glob("*.py"))
# Library features newer than 3.8 that would only fail at run time on the host.
NEWER_THAN_38 = {"removeprefix", "removesuffix", "waitstatus_to_exitcode", "zoneinfo", "graphlib", "to_thread",
                 "pidfd_open", "is_relative_to", "cache", "topological_sort", "bit_count", "pairwise", "kw_only"}


def _python38() -> str | None:
    for candidate in (shutil.which("python3.8"), os.path.expanduser("~/.pyenv/versions/3.8.18/bin/python3.8")):
        if candidate and os.path.exists(candidate):
            try:
                out = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                     capture_output=True, text=True, timeout=20)
            except OSError:
                continue
            if out.returncode == 0 and "(3, 8)" in out.stdout:
                return candidate
    return None


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: p.name)
def test_agent_source_parses_as_python38(path):
    tree = ast.parse(path.read_text(), feature_version=(3, 8))
    used = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    used |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    assert not used & NEWER_THAN_38, used & NEWER_THAN_38


@pytest.mark.parametrize("path", AGENT_FILES, ids=lambda p: p.name)
def test_agent_imports_nothing_from_the_rest_of_migrate(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            assert not node.module.startswith("migrate"), node.module
        if isinstance(node, ast.Import):
            assert not any(a.name.startswith("migrate") for a in node.names)
    if path.name != "__main__.py":  # annotations like list[str] must stay unevaluated on 3.8
        assert "from __future__ import annotations" in path.read_text()


def test_zipapp_runs_a_job_under_python38(tmp_path):
    py38 = _python38()
    if py38 is None:
        pytest.skip("python3.8 not available here")
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(build_agent().data)
    env = dict(os.environ, MIGRATE_AGENT_HOME=str(tmp_path / "home"), HOME=str(tmp_path))
    env.pop("PYTHONPATH", None)

    def agent(*args, stdin=None):
        res = subprocess.run([py38, str(pyz), *args], input=stdin, capture_output=True, text=True, env=env,
                             timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr
        return json.loads(res.stdout)

    try:
        assert agent("version")["python"].startswith("3.8")
        fake = tmp_path / "fake.json"
        agent("fake-gpus", str(fake), "--count", "1")
        jobs = agent("submit", "--backend", f"fake:{fake}", "--mode", "setsid",
                     stdin=json.dumps({"jobs": [{"command": "echo on $CUDA_VISIBLE_DEVICES"},
                                                {"command": "exit 2", "gpus": 0}]}))["jobs"]
        deadline = time.time() + 30
        while time.time() < deadline:
            status = agent("status")
            if all(j["state"] in ("done", "failed") for j in status["jobs"]):
                break
            time.sleep(0.3)
        states = {j["id"]: (j["state"], j["exit_code"]) for j in status["jobs"]}
        assert states == {jobs[0]["id"]: ("done", 0), jobs[1]["id"]: ("failed", 2)}
        assert status["daemon"]["python"].startswith("3.8")
        gpus = agent("gpus")
        assert gpus["fake"] and gpus["devices"][0]["verdict"] == "free"
        nvml = agent("gpus", "--backend", "nvml")  # pynvml from the zip imports under 3.8
        assert ("NVML" in nvml["error"]) if nvml.get("error") else nvml["devices"]
        log = (Path(env["MIGRATE_AGENT_HOME"]) / "dispatcher/jobs/1/output.log").read_text()
        assert "on GPU-" in log
    finally:
        subprocess.run([py38, str(pyz), "stop"], env=env, capture_output=True, timeout=30)
