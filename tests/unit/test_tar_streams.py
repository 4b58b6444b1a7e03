"""Parallel tar streams (push-data's first copy of many small files) against a real GNU tar receiver.

The "ssh" here is `sh -c`, so the receiving command runs on this machine: the same `mkdir -p DEST &&
tar -C DEST -xpf -` push-data runs on a host, two of them at once."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from migrate.data import filelist
from migrate.data.remote import make_dirs_words, tar_extract_command
from migrate.data.transfer import TransferError, run_tar_streams
from migrate.errors import MigrateError

pytestmark = pytest.mark.skipif(shutil.which("tar") is None, reason="needs tar")


def _tree(root: Path) -> None:
    for i in range(400):
        d = root / f"d{i // 40:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:04d}.txt").write_text(f"file {i}\n")
    ro = root / "readonly"
    ro.mkdir()
    (ro / "inside.txt").write_text("kept\n")
    os.symlink("d00/f0000.txt", root / "first")
    ro.chmod(0o555)
    os.utime(root / "d03", (1_600_000_000, 1_600_000_000))


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            mtime = int(st.st_mtime) if stat.S_ISDIR(st.st_mode) else 0
            out[str(p.relative_to(root))] = (stat.S_IMODE(st.st_mode), mtime)
    return out


def test_parallel_streams_never_race_on_directories_and_keep_their_modes_and_times(tmp_path):
    """Two tars extracting at once used to fail now and then ("Cannot open: No such file or directory",
    5 in 200 runs here) when one met a file whose directory the other was creating; CI hit it."""
    src = tmp_path / "src"
    _tree(src)
    entries = filelist.list_source(str(src), [], []).entries
    want = _listing(src)
    try:
        for n in range(25):
            dest = tmp_path / f"dest{n}"
            run_tar_streams(str(src), entries, ["sh", "-c"], tar_extract_command(str(dest), decompress=None),
                            streams=2)
            assert _listing(dest) == want, n
            (dest / "readonly").chmod(0o755)   # so that tmp_path can be cleaned up
    finally:
        (src / "readonly").chmod(0o755)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd (scripts/bootstrap installs it)")
def test_streams_through_zstd_arrive_whole_and_count_the_compressed_bytes(tmp_path):
    """A far link: the streams of files go through `zstd -1` (the directory streams stay plain)."""
    src = tmp_path / "src"
    _tree(src)
    entries = filelist.list_source(str(src), [], []).entries
    want = _listing(src)
    dest = tmp_path / "dest"
    try:
        plain = tar_extract_command(str(dest), decompress=None)
        out = run_tar_streams(str(src), entries, ["sh", "-c"], plain, streams=2, compress=True,
                              files_command=tar_extract_command(str(dest), decompress="zstd"))
        assert _listing(dest) == want
        # 400 tiny files: tar's 512-byte headers and padding are most of the archive; zstd removes them
        assert 0 < out.stats.sent_bytes < out.stats.transferred_size // 4
    finally:
        (src / "readonly").chmod(0o755)
        if (dest / "readonly").exists():
            (dest / "readonly").chmod(0o755)


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd (scripts/bootstrap installs it)")
def test_a_receiver_that_cannot_decompress_fails_the_stream_with_its_own_words(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(50):
        (src / "d" / f"f{i}").write_text("x")
    entries = filelist.list_source(str(src), [], []).entries
    dest = tmp_path / "dest"
    broken = f"mkdir -p {dest} && nosuchzstd -dc | tar -C {dest} -xpf -"
    with pytest.raises(TransferError, match="nosuchzstd"):
        run_tar_streams(str(src), entries, ["sh", "-c"], tar_extract_command(str(dest), decompress=None),
                        streams=1, files_command=broken, compress=True)


def test_an_early_listing_is_the_same_listing_and_stops_when_no_host_needs_it(tmp_path):
    src = tmp_path / "src"
    _tree(src)
    try:
        early = filelist.EarlyListing(str(src), ["d01"], [], users=2)
        assert early.result() == filelist.list_source(str(src), ["d01"], [])
        assert all(not e.path.startswith("d01") for e in early.result().entries)
        unwanted = filelist.EarlyListing(str(src), [], [], users=2)
        unwanted.not_needed()
        assert unwanted.users == 1 and not unwanted.wanted
        unwanted.not_needed()  # the last host: stopped (or already done), never left running
        unwanted.thread.join(timeout=10)
        assert unwanted.proc.poll() is not None
    finally:
        (src / "readonly").chmod(0o755)


def test_an_early_listing_that_failed_reports_the_real_error(tmp_path):
    early = filelist.EarlyListing(str(tmp_path / "gone"), [], [])
    with pytest.raises(MigrateError, match="list source files failed"):
        early.result()


def test_streams_that_make_the_directories_themselves_need_no_stream_of_directories_first(tmp_path):
    """One round trip less on a far link: each stream's `mkdir -p` makes every directory (race-free), and
    their modes and times still come last."""
    src = tmp_path / "src"
    _tree(src)
    entries = filelist.list_source(str(src), [], []).entries
    want = _listing(src)
    log = tmp_path / "execs"
    ssh = ["sh", "-c", f'echo "$1" >> {log}; eval "$1"', "sh"]
    dest = tmp_path / "dest"
    try:
        words = make_dirs_words(str(dest), [e.path for e in entries if e.kind == "d"])
        assert words and str(dest) + "/readonly" in words and str(dest) + "/." not in words
        run_tar_streams(str(src), entries, ssh, tar_extract_command(str(dest), decompress=None), streams=2,
                        files_command=tar_extract_command(str(dest), decompress=None, make_dirs=words),
                        files_make_dirs=True)
        assert _listing(dest) == want
        execs = log.read_text().splitlines()
        assert len(execs) == 3 and sum("readonly" in e for e in execs) == 2  # 2 streams of files, then dirs
    finally:
        (src / "readonly").chmod(0o755)
        if (dest / "readonly").exists():
            (dest / "readonly").chmod(0o755)


def test_too_many_directories_for_one_command_line_travel_in_their_own_stream():
    assert make_dirs_words("/d", [f"dir{i:06d}" for i in range(100)]) is not None
    assert make_dirs_words("/d", [f"dir{i:06d}" for i in range(10_000)]) is None  # > 64 KiB of words
