"""Integration tests run against the local sandbox (`migrate sandbox up 2`).

scripts/test brings it up and sets MIGRATE_REQUIRE_SANDBOX=1, so a missing sandbox fails the run
instead of silently skipping every integration test.
"""

from __future__ import annotations

import os

import pytest

from migrate.remote.connection import connect
from migrate.sandbox.manager import Sandbox


def pytest_collection_modifyitems(items):
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def sandbox_hosts() -> list[dict]:
    try:
        hosts = [h for h in Sandbox().describe() if h["state"] == "running"]
    except Exception as exc:  # docker missing etc.
        hosts = []
        reason = f"sandbox unavailable: {exc}"
    else:
        reason = "sandbox not up: run `migrate sandbox up 2` (scripts/test does)"
    if len(hosts) < 2:
        if os.environ.get("MIGRATE_REQUIRE_SANDBOX") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return hosts


@pytest.fixture
def remote1(sandbox_hosts):
    with connect(sandbox_hosts[0]["alias"]) as r:
        yield r
