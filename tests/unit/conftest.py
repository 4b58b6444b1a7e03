"""Unit tests never write this machine's record of the last run (`migrate wait`'s default jobs)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_last_run_record(tmp_path_factory, monkeypatch):
    from migrate.jobs import lastrun

    path = tmp_path_factory.mktemp("state") / "last-run.json"
    monkeypatch.setattr(lastrun, "record_path", lambda: path)
