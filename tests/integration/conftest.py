"""Integration tests run against local sandbox hosts (real sshd, real Docker, real rsync).

Two kinds of sandbox:
- the shared one (`sandbox_hosts`): whatever `MIGRATE_SANDBOX` names, brought up by scripts/test
  (`citest1`, `citest2`); tests must leave it as they found it (no Docker installed, ...).
- dedicated ones (`dedicated_sandbox(name, count)`): for tests that change a host for good
  (install Docker, break daemon.json, kill sshd). Each name has its own subnet and ports (SLOTS),
  is brought up on first use and brought down at the end of the session.

scripts/test sets MIGRATE_REQUIRE_SANDBOX=1, so a missing sandbox fails the run instead of silently
skipping every integration test.
"""

from __future__ import annotations

import os

import pytest

from migrate.remote.connection import connect
from migrate.sandbox.manager import Sandbox, SandboxSettings
from tests.conftest import run_cli

# name -> slot; slot N uses subnet 172.31.(200+N).0/24 and ports 2400+20*N ... (max 20 hosts)
SLOTS = {"sbtest": 1, "hsetup": 2, "pimage": 3, "pdata": 4, "runq": 5, "apply": 6, "hsetupb": 7, "pimageb": 8,
         "modern": 9, "cluster": 10, "registry": 11, "shell": 12, "ccluster": 13}
# (slot 13 lands on the next base's slot 0, which no name uses)


# Several test runs can share one machine (a developer's and CI's, say): MIGRATE_TEST_PREFIX
# (letters) renames every dedicated sandbox and MIGRATE_TEST_SLOT_BASE (0, 14, 28 or 42) moves its
# subnets and ports, so two runs never bring up, change or tear down each other's hosts.
TEST_PREFIX = os.environ.get("MIGRATE_TEST_PREFIX", "")
SLOT_BASE = int(os.environ.get("MIGRATE_TEST_SLOT_BASE", "0"))


def sandbox_env(name: str) -> dict[str, str]:
    """Environment that selects the dedicated sandbox `name` for a `migrate` subprocess."""
    slot = SLOT_BASE + SLOTS[name]
    return {"MIGRATE_SANDBOX": TEST_PREFIX + name, "MIGRATE_SANDBOX_SUBNET": f"172.31.{200 + slot}.0/24",
            "MIGRATE_SANDBOX_PORT": str(2400 + 20 * slot)}


# Which Debian releases' sandbox hosts this run exercises: `MIGRATE_TEST_RELEASES=trixie` runs only the
# tests marked `@pytest.mark.release("trixie")`; unmarked integration tests run on bookworm hosts.
def _wanted_releases() -> set[str] | None:
    value = os.environ.get("MIGRATE_TEST_RELEASES", "").strip()
    return {r.strip() for r in value.split(",") if r.strip()} or None


def pytest_collection_modifyitems(config, items):
    wanted = _wanted_releases()
    keep, drop = [], []
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            marker = item.get_closest_marker("release")
            release = marker.args[0] if marker else "bookworm"
            if wanted is not None and release not in wanted:
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _unavailable(reason: str):
    if os.environ.get("MIGRATE_REQUIRE_SANDBOX") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def sandbox_hosts() -> list[dict]:
    """The shared sandbox's running hosts (at least two)."""
    try:
        hosts = [h for h in Sandbox().describe() if h["state"] == "running"]
    except Exception as exc:  # docker missing etc.
        _unavailable(f"sandbox unavailable: {exc}")
    if len(hosts) < 2:
        _unavailable("sandbox not up: run `migrate sandbox up 2` (scripts/test does)")
    return hosts


@pytest.fixture
def remote1(sandbox_hosts):
    with connect(sandbox_hosts[0]["alias"]) as r:
        yield r


@pytest.fixture(scope="session")
def dedicated_sandbox(sandbox_hosts):
    """Factory: `dedicated_sandbox("hsetup", 2, gpus=1)` -> list of host dicts (each with 'env')."""
    started: list[str] = []

    def make(name: str, count: int = 1, *, gpus: int = 0, extra: tuple[str, ...] = ()) -> list[dict]:
        env = sandbox_env(name)
        res = run_cli("sandbox", "up", str(count), "--gpus", str(gpus), *extra, env=env, timeout=600)
        if res.code != 0:
            pytest.fail(f"sandbox {name} up failed: {res.output}")
        if name not in started:
            started.append(name)
        settings = SandboxSettings(name=env["MIGRATE_SANDBOX"], subnet=env["MIGRATE_SANDBOX_SUBNET"],
                                   base_port=int(env["MIGRATE_SANDBOX_PORT"]))
        hosts = [h for h in Sandbox(settings).describe() if h["state"] == "running"]
        for h in hosts:
            h["env"] = env
        return hosts[:count]

    yield make
    for name in started:
        run_cli("sandbox", "down", env=sandbox_env(name))
