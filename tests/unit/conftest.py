"""Unit tests never write this machine's records: the last run (`migrate wait`'s default jobs) and the
destinations pushed to and the tools seen there (data/known.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_state_records(tmp_path_factory, monkeypatch):
    from migrate.data import known
    from migrate.jobs import lastrun

    state = tmp_path_factory.mktemp("state")
    monkeypatch.setattr(lastrun, "record_path", lambda: state / "last-run.json")
    monkeypatch.setattr(known, "record_path", lambda: state / "pushed-destinations.json")
    monkeypatch.setattr(known, "hosts_path", lambda: state / "host-tools.json")
