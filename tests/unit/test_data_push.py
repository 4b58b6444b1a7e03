"""push-data / pull-data decisions behind issue 12: stream races, failure hints, kept partials, ownership."""

from __future__ import annotations

import subprocess

from migrate.data.mapping import resolve_mapping
from migrate.data.plan import (
    choose_method,
    destination_dirs,
    resume_in_place,
    space_refusal,
)
from migrate.data.pull import local_owner
from migrate.data.remote import parse_partial_probe, partial_probe_command
from migrate.data.rsync import RsyncOptions, explain_exit, failure_hint, parse_stats, rsync_argv
from migrate.data.transfer import shard_options

MKDIR_RACE = ('rsync: [Receiver] mkdir "/tmp/new/a/b/" failed: File exists (17)\n'
              "rsync error: error in file IO (code 11) at main.c(791) [Receiver=3.2.7]\n")
DISK_FULL = ('rsync: [receiver] write failed on "/mnt/small/d/big.bin": No space left on device (28)\n'
             "rsync error: error in file IO (code 11) at receiver.c(380) [receiver=3.2.7]\n")


# -- item 0: parallel streams and a new destination ---------------------------------------------
def test_parallel_streams_never_create_the_destination_themselves():
    opts = RsyncOptions(mkpath=True, delete=True)
    shard = shard_options(opts, "/tmp/list0")
    assert shard.mkpath is False and shard.delete is False and shard.files_from == "/tmp/list0"
    argv = rsync_argv(["./src/"], "gpu:/tmp/new/a/b/", "ssh", shard)
    assert "--mkpath" not in argv and "--files-from=/tmp/list0" in argv
    assert opts.mkpath is True  # the final ordinary pass keeps it


def test_the_destination_of_streams_is_created_once_before_they_start():
    [d] = resolve_mapping([("./ds", True, "ds")], "/tmp/new/a/b", into=False, dest_is_dir=False)
    [f] = resolve_mapping([("a.bin", False, "a.bin")], "/tmp/new/x/a.bin", into=False, dest_is_dir=False)
    assert destination_dirs([(d, "parallel")], mkpath=True) == ["/tmp/new/a/b/"]
    # tar streams make their own (`mkdir -p DEST && tar ...`), directories first: one exec fewer
    assert destination_dirs([(d, "tar")], mkpath=True) == destination_dirs([(d, "tar")], mkpath=False) == []
    assert destination_dirs([(d, "rsync"), (f, "rsync")], mkpath=True) == []  # one rsync: --mkpath is enough
    assert destination_dirs([(d, "rsync"), (f, "rsync")], mkpath=False) == ["/tmp/new/a/b/", "/tmp/new/x"]


def test_a_lost_mkdir_race_is_not_called_a_full_disk():
    sentence, details = explain_exit(11, MKDIR_RACE)
    assert "disk full" not in sentence and "space" not in sentence
    assert "at the same time" in sentence and "File exists" in details[0]
    assert "rerun" in failure_hint(11, MKDIR_RACE)
    assert "disk full" not in explain_exit(11, "rsync: [Receiver] chmod failed: Operation not permitted (1)")[0]
    assert "read-only" in explain_exit(11, 'rsync: mkstemp "/ro/x" failed: Read-only file system (30)')[0]


# -- item 3: wire bytes of a pull ----------------------------------------------------------------
def test_stats_keep_the_bytes_received():
    s = parse_stats("Total bytes sent: 38,255\nTotal bytes received: 198,988,511\n")
    assert (s.sent_bytes, s.received_bytes) == (38255, 198988511)


# -- item 4: a disk-full interruption and its kept partial ----------------------------------------
def test_partial_probe_finds_kept_partials_and_sizes_them(tmp_path):
    tree = tmp_path / "ds"
    (tree / "sub" / ".migrate-partial").mkdir(parents=True)
    (tree / "sub" / ".migrate-partial" / "big.bin").write_bytes(b"x" * 300_000)
    (tree / ".migrate-partial").mkdir()
    (tree / ".migrate-partial" / "a").write_bytes(b"y" * 10_000)
    single = tmp_path / "files"
    (single / ".migrate-partial").mkdir(parents=True)
    (single / ".migrate-partial" / "f.bin").write_bytes(b"z" * 50_000)
    out = subprocess.run(["sh", "-c", partial_probe_command([str(tree), str(tmp_path / "missing")],
                                                            [str(single), str(tmp_path / "gone")])],
                         capture_output=True, text=True, check=True).stdout
    found = dict(parse_partial_probe(out))
    assert set(found) == {str(tree / "sub" / ".migrate-partial"), str(tree / ".migrate-partial"),
                          str(single / ".migrate-partial")}
    assert found[str(tree / "sub" / ".migrate-partial")] >= 300_000
    assert parse_partial_probe("") == [] and parse_partial_probe("garbage\n") == []


def test_resumed_partials_grow_in_place_only_with_rsync_3_2_on_both_sides():
    assert resume_in_place((3, 2, 7), (3, 2, 0))
    assert not resume_in_place((3, 2, 7), (3, 1, 3))  # e.g. Ubuntu 20.04 on the host
    assert not resume_in_place((3, 1, 3), (3, 2, 7))


def test_space_refusal_names_the_partial_and_the_way_out():
    mib = 1 << 20
    partials = [("/mnt/small/d/.migrate-partial", 30 * mib)]
    rm = "ssh gpu rm -rf -- /mnt/small/d/.migrate-partial"
    # old rsync: the resume copies the partial, so deleting it is the way out
    message, hint = space_refusal("gpu:/mnt/small/d", 40 * mib, 2 * mib, 34 * mib, partials, alias="gpu",
                                  in_place=False)
    assert "/mnt/small/d/.migrate-partial" in message and "30.0 MiB" in message and "interrupted" in message
    assert "nothing was sent" in message and "3.2.0" in message
    assert "--drop-partial" in hint and rm in hint and "free 8.0 MiB more" in hint
    message, hint = space_refusal("gpu:/mnt/small/d", 90 * mib, 2 * mib, 34 * mib, partials, alias="gpu",
                                  in_place=False)
    assert ".migrate-partial" in message and hint.startswith("free space there")
    # in place: the partial already counts, and the message says so (still naming it and how to drop it)
    message, hint = space_refusal("gpu:/mnt/small/d", 90 * mib, 2 * mib, 34 * mib, partials, alias="gpu")
    assert "30.0 MiB of unfinished files" in message and "counted as already there" in message
    assert hint.startswith("free space there") and "--drop-partial" in hint and rm in hint
    # no partial: the old message
    message, hint = space_refusal("gpu:/data", 100 * mib, 2 * mib, 64 * mib, [], alias="gpu")
    assert message == "not enough space on gpu:/data: need 100.0 MiB (+2.0 MiB margin), 64.0 MiB free; nothing was sent"


# -- item 9: hints ---------------------------------------------------------------------------------
def test_disk_full_has_a_hint_and_a_broken_connection_says_rerun_once():
    hint = failure_hint(11, DISK_FULL)
    assert hint and "free space" in hint and ".migrate-partial" in hint
    for code in (12, 255):
        sentence, _ = explain_exit(code, "")
        assert (sentence + " " + failure_hint(code, "")).count("rerun") == 1, sentence
    assert failure_hint(23, "some error") is None


def test_tar_reason_counts_the_streams_that_really_run():
    kw = dict(remote_rsync=True, dest_empty=True, files=5000, avg_size=4096, delete=False, checksum=False,
              is_dir=True)
    method, reason = choose_method("auto", **kw, tar_streams=2)
    assert method == "tar" and "2 tar streams" in reason and "one tar stream" not in reason
    assert "one tar stream" in choose_method("auto", **kw, tar_streams=1)[1]
    assert "2 tar streams" in choose_method("auto", **{**kw, "remote_rsync": False}, tar_streams=2)[1]


# -- item 14: pulled files as root belong to the invoking user -------------------------------------
def test_pull_as_root_maps_ownership_to_the_invoking_user():
    assert local_owner(0, {"SUDO_UID": "1000", "SUDO_GID": "1001"}, preserve=False) == (1000, 1001)
    assert local_owner(0, {}, preserve=False) == (0, 0)
    assert local_owner(0, {"SUDO_UID": "x"}, preserve=False) == (0, 0)
    assert local_owner(0, {"SUDO_UID": "1000", "SUDO_GID": "1001"}, preserve=True) is None
    assert local_owner(1000, {}, preserve=False) is None  # not root: rsync cannot keep others' ids anyway
    argv = rsync_argv(["gpu:/runs/"], "./runs/", "ssh", RsyncOptions(chown="1000:1001"))
    assert "--chown=1000:1001" in argv and "--chown" not in " ".join(rsync_argv(["a"], "b", None, RsyncOptions()))
