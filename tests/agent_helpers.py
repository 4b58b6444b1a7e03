"""Run the dispatcher agent on THIS machine in a private directory (real processes, real SQLite).

Used by the local agent tests, the GPU tests (on a machine with a GPU the agent runs locally with
the NVML backend) and the benchmark. `LocalAgent.call("status")` runs `python -m migrate.agent
status` with MIGRATE_AGENT_HOME pointing at a temporary directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from migrate.agent import procs
from migrate.agent.gpus import fake_state

ROOT = Path(__file__).resolve().parent.parent
FINAL = ("done", "failed", "cancelled", "lost")


class LocalAgent:
    def __init__(self, home: Path, backend: str | None = None, python: str = sys.executable) -> None:
        self.home = home
        self.python = python
        self.fake_path = home / "fake-gpus.json"
        self.backend = backend or f"fake:{self.fake_path}"
        # HOME is the private directory too: jobs' login shells do not read this machine's profile
        self.env = dict(os.environ, MIGRATE_AGENT_HOME=str(home), PYTHONPATH=str(ROOT), HOME=str(home))

    # -- fake GPUs (test double) -----------------------------------------------------------------
    def write_fake(self, state: dict) -> None:
        tmp = self.fake_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.fake_path)

    def fake_gpus(self, count: int) -> dict:
        state = fake_state(count)
        self.write_fake(state)
        return state

    # -- calls -----------------------------------------------------------------------------------
    def run(self, *args: str, stdin: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([self.python, "-m", "migrate.agent", *args], input=stdin, capture_output=True,
                              text=True, env=self.env, timeout=timeout, cwd=str(ROOT))

    def call(self, *args: str, stdin: str | None = None, ok: bool = True) -> dict:
        res = self.run(*args, stdin=stdin)
        data = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
        if ok:
            assert res.returncode == 0 and data.get("ok"), (res.stdout, res.stderr)
        return data

    def submit(self, jobs: list[dict], *extra: str) -> list[dict]:
        data = self.call("submit", "--backend", self.backend, "--mode", "setsid", *extra,
                         stdin=json.dumps({"jobs": jobs}))
        return data["jobs"]

    def jobs(self) -> list[dict]:
        return self.call("status", "--all")["jobs"]

    def job(self, job_id: int) -> dict:
        return next(j for j in self.jobs() if j["id"] == job_id)

    def wait(self, predicate, timeout: float = 30.0, interval: float = 0.2):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = self.jobs()
            if predicate(last):
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out; jobs: {[(j['id'], j['state'], j['reason']) for j in last or []]}")

    def wait_final(self, ids: list[int], timeout: float = 30.0) -> dict:
        jobs = self.wait(lambda js: all(j["state"] in FINAL for j in js if j["id"] in ids), timeout)
        return {j["id"]: j for j in jobs if j["id"] in ids}

    def daemon_pid(self) -> int | None:
        try:
            info = json.loads((self.home / "dispatcher" / "agent.pid").read_text())
        except (OSError, ValueError):
            return None
        return info.get("pid") if procs.is_running(info.get("pid") or 0, info.get("start_ticks")) else None

    def log_of(self, job_id: int) -> str:
        return (self.home / "dispatcher" / "jobs" / str(job_id) / "output.log").read_text()

    def cleanup(self) -> None:
        """Stop the dispatcher and kill whatever jobs are left (by their recorded process groups)."""
        self.run("stop")
        try:
            jobs = self.jobs()
        except Exception:
            jobs = []
        for j in jobs:
            if j.get("pgid") and j["state"] in ("running", "starting"):
                try:
                    os.killpg(j["pgid"], signal.SIGKILL)
                except OSError:
                    pass
