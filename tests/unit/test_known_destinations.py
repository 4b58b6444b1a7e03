"""This machine's record of the destinations it pushed to (data/known.py): 0600, bounded, and a
corrupt or missing file only means "not pushed before"."""

from __future__ import annotations

import stat
import time

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


# -- the hosts' tools --------------------------------------------------------------------------------
def _facts(**kw):
    from migrate.data.remote import DestFacts

    return DestFacts(**{"rsync_version": (3, 2, 7), "xxh128": True, "zstd": False, "tar": True, "gnu_head": True,
                        "cpus": 4, "kind": "dir", "existing": "/secret/path", "free_bytes": 5, **kw})


def test_a_hosts_tools_are_kept_without_its_paths_and_trusted_for_a_day(monkeypatch):
    k = known.host_key("alice", "gpu1", 22)
    assert known.host_tools(k) is None
    known.note_host_tools(k, _facts())
    assert known.host_tools(k) == {"rsync_version": (3, 2, 7), "xxh128": True, "zstd": False, "tar": True,
                                   "gnu_head": True, "python3": False, "cpus": 4}
    text = known.hosts_path().read_text()
    assert "/secret/path" not in text and "free" not in text  # DEST's facts are not the host's
    assert stat.S_IMODE(known.hosts_path().stat().st_mode) == 0o600
    assert known.host_tools(k, now=time.time() + known.HOST_TOOLS_TTL_S + 1) is None
    assert known.host_tools(known.host_key("alice", "gpu1", 2222)) is None
    known.note_host_tools(k, _facts(zstd=True))  # what the last probe saw counts
    assert known.host_tools(k)["zstd"] is True


def test_a_hosts_record_that_does_not_read_as_one_is_nothing_known():
    k = known.host_key("alice", "gpu1", 22)
    known.hosts_path().parent.mkdir(parents=True, exist_ok=True)
    for text in (b"\xff{not json", b"[]", b'{"alice@gpu1:22": 5}',
                 b'{"alice@gpu1:22": {"at": 9e99, "rsync_version": "3.2.7", "xxh128": true, "zstd": false, '
                 b'"tar": true, "gnu_head": true, "cpus": 4}}'):
        known.hosts_path().write_bytes(text)
        assert known.host_tools(k) is None, text
    known.note_host_tools(k, _facts())
    assert known.host_tools(k) is not None


def test_the_hosts_record_keeps_the_newest_hosts_only(monkeypatch):
    monkeypatch.setattr(known, "KEEP_HOSTS", 2)
    for i in range(4):
        known.note_host_tools(known.host_key("alice", f"gpu{i}", 22), _facts())
    assert [known.host_tools(known.host_key("alice", f"gpu{i}", 22)) is not None for i in range(4)] == \
        [False, False, True, True]
