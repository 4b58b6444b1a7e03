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
from migrate.data.remote import tar_extract_command
from migrate.data.transfer import run_tar_streams

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
