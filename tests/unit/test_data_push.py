"""push-data / pull-data decisions behind issue 12: stream races, failure hints, kept partials, ownership."""

from __future__ import annotations

from migrate.commands.push_data import choose_method, destination_dirs
from migrate.data.mapping import resolve_mapping
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
    for method in ("parallel", "tar"):
        assert destination_dirs([(d, method)], mkpath=True) == ["/tmp/new/a/b/"]
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

