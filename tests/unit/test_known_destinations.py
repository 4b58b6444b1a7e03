"""This machine's record of the destinations it pushed to (data/known.py): 0600, bounded, and a
corrupt or missing file only means "not pushed before"."""

from __future__ import annotations

import stat

from migrate.data import known


def test_a_destination_is_remembered_and_forgotten():
    k = known.key("alice", "gpu1", 22, "/data/cifar")
    assert not known.pushed_before(k)
    known.remember(k)
    assert known.pushed_before(k) and not known.pushed_before(known.key("alice", "gpu1", 2222, "/data/cifar"))
    assert stat.S_IMODE(known.record_path().stat().st_mode) == 0o600
    assert stat.S_IMODE(known.record_path().parent.stat().st_mode) == 0o700
    known.forget(k)
    assert not known.pushed_before(k)


def test_the_record_keeps_the_newest_destinations_only(monkeypatch):
    monkeypatch.setattr(known, "KEEP", 3)
    for i in range(5):
        known.remember(known.key("alice", "gpu1", 22, f"/d{i}"))
    assert [known.pushed_before(known.key("alice", "gpu1", 22, f"/d{i}")) for i in range(5)] == \
        [False, False, True, True, True]


def test_a_corrupt_record_counts_as_nothing_pushed_and_is_replaced():
    known.record_path().parent.mkdir(parents=True, exist_ok=True)
    known.record_path().write_bytes(b"\xff{not json")
    k = known.key("alice", "gpu1", 22, "/data")
    assert not known.pushed_before(k)
    known.remember(k)
    assert known.pushed_before(k)
