"""File streams (push-data's first copy over a far link) against the real receivers.

The "ssh" here is `sh -c`, so FILE_STREAM runs on this machine under the same /bin/sh, GNU head and
coreutils a Debian host has, and agent/receive.py under this machine's python3: what lands, with which
modes and times, and what an interrupted stream leaves for the rerun's rsync. Every test that a
receiver decides runs against both (`py`): they take the same records and must leave the same."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from migrate.data import filelist
from migrate.data.remote import (
    FILE_STREAM,
    file_stream_command,
    held_probe_command,
    parse_dest_probe,
    python_receiver,
)
from migrate.data.transfer import (
    HeldProbe,
    StreamItem,
    TransferError,
    run_file_stream,
    stream_header,
    stream_items,
)
from migrate.errors import MigrateError

NS = 1_000_000_000


@pytest.fixture(params=[False, True], ids=["sh", "python3"])
def py(request) -> bool:
    """Which receiver: FILE_STREAM (sh, GNU head) or agent/receive.py (python3)."""
    return request.param


def _tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.bin").write_bytes(os.urandom(3 << 20))
    (root / "sub" / "b c.bin").write_bytes(b"spaces\n\n")           # trailing newlines are data
    (root / "sub" / "deeper" / "line\nbreak").write_bytes(b"x" * 70000)
    (root / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")    # not UTF-8
    (root / "empty.bin").write_bytes(b"")
    (root / "sub" / "b c.bin").chmod(0o600)
    (root / "sub" / "deeper").chmod(0o750)
    os.utime(root / "a.bin", ns=(1_700_000_000 * NS + 123_456_789,) * 2)
    os.utime(root / "sub", ns=(1_600_000_000 * NS + 5,) * 2)


def _state(root: Path) -> dict[str, tuple[int, int, bytes | None]]:
    """Every entry's mode, mtime to the nanosecond and (files) bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, *(["."] if Path(dirpath) == root else [])]:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else None
            out[os.path.relpath(p, root)] = (stat.S_IMODE(st.st_mode), st.st_mtime_ns, data)
    return out


def test_a_tree_lands_whole_with_its_modes_times_and_odd_names(tmp_path, py):
    src = tmp_path / "src"
    _tree(src)
    dest = tmp_path / "dest" / "new"
    seen: list[tuple[int, int]] = []
    out = run_file_stream(stream_items(str(src), filelist.list_source(str(src), [], []).entries), ["sh", "-c"],
                          file_stream_command(str(dest), python=py), on_progress=lambda d, t: seen.append((d, t)))
    assert _state(dest) == _state(src)
    assert not list(dest.rglob(".migrate-partial"))
    total = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
    assert out.stats.regular_files_transferred == 5 and out.stats.transferred_size == total
    assert out.stats.sent_bytes > total and seen[-1] == (total, total)


def test_one_file_lands_under_the_name_it_is_given(tmp_path, py):
    src = tmp_path / "ckpt.pt"
    src.write_bytes(os.urandom(100_000))
    run_file_stream([StreamItem(str(src), "model.pt")], ["sh", "-c"],
                    file_stream_command(str(tmp_path / "d"), python=py))
    assert (tmp_path / "d" / "model.pt").read_bytes() == src.read_bytes()
    assert sorted(os.listdir(tmp_path / "d")) == ["model.pt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _receive(records: bytes, dest: Path, py: bool) -> subprocess.CompletedProcess:
    argv = ["python3", "-I", "-S", "-c", python_receiver(), str(dest)] if py else \
        ["sh", "-c", FILE_STREAM, "sh", str(dest)]
    return subprocess.run(argv, input=records, capture_output=True)


def _record(name: str, data: bytes, path: Path) -> bytes:
    path.write_bytes(data)
    return stream_header("f", len(data), path.stat(), name) + data


def test_a_file_cut_short_waits_in_the_partial_dir_and_never_under_its_name(tmp_path, py):
    whole = _record("one.bin", b"1" * 5000, tmp_path / "one") + _record("two.bin", b"2" * 9000, tmp_path / "two")
    res = _receive(whole[:-4000], tmp_path / "d", py)
    assert res.returncode != 0
    assert b"broke after 5000 of 9000 bytes of two.bin" in res.stderr
    assert (tmp_path / "d" / "one.bin").read_bytes() == b"1" * 5000
    assert not (tmp_path / "d" / "two.bin").exists()
    assert (tmp_path / "d" / ".migrate-partial" / "two.bin").read_bytes() == b"2" * 5000  # rsync resumes it
    # nobody else reads it meanwhile (the source may be 0600): like rsync's temporary files
    assert stat.S_IMODE((tmp_path / "d" / ".migrate-partial").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "d" / ".migrate-partial" / "two.bin").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o777 & ~_umask()  # DEST itself: as usual


def test_a_stream_cut_between_files_fails_too(tmp_path, py):
    records = _record("one.bin", b"1" * 10, tmp_path / "one")
    res = _receive(records, tmp_path / "d", py)                 # no end record: the sender did not finish
    assert res.returncode != 0 and b"ended after 1 files" in res.stderr
    assert _receive(records + b"e 2\n", tmp_path / "e", py).returncode != 0  # it said 2 files, 1 came
    assert _receive(records + b"e 1\n", tmp_path / "f", py).returncode == 0
    assert not list((tmp_path / "f").rglob(".migrate-partial"))


@pytest.mark.parametrize("name", ["../escape", "a/../../escape"])
def test_a_name_that_climbs_out_of_dest_is_refused(tmp_path, name, py):
    res = _receive(_record(name, b"x", tmp_path / "x") + b"e 1\n", tmp_path / "d" / "e", py)
    assert res.returncode != 0 and b"refusing the name" in res.stderr
    assert not (tmp_path / "d" / "escape").exists() and not (tmp_path / "escape").exists()


def test_the_receivers_complaint_is_the_error(tmp_path, py):
    (tmp_path / "file").write_text("not a directory")
    src = tmp_path / "s.bin"
    src.write_bytes(b"x" * 100)
    with pytest.raises(TransferError, match="file stream over ssh failed: .*File exists") as err:
        run_file_stream([StreamItem(str(src), "s.bin")], ["sh", "-c"],
                        file_stream_command(str(tmp_path / "file"), python=py))
    assert "rerun the same command" in (err.value.hint or "")


def test_a_file_that_shrinks_while_it_is_sent_stops_the_stream(tmp_path, monkeypatch):
    src = tmp_path / "s.bin"
    src.write_bytes(b"x" * 100)
    real = os.stat(src)
    listed = SimpleNamespace(st_size=200, st_mode=real.st_mode, st_mtime_ns=real.st_mtime_ns)  # as listed
    monkeypatch.setattr(os, "stat", lambda p, *a, _stat=os.stat, **k: listed if str(p) == str(src) else _stat(p))
    with pytest.raises(TransferError, match="shrank while it was being sent"):
        run_file_stream([StreamItem(str(src), "s.bin")], ["sh", "-c"], file_stream_command(str(tmp_path / "d")))
    assert not (tmp_path / "d" / "s.bin").exists()


def test_the_held_probe_answers_a_ping_then_becomes_the_stream(tmp_path, py):
    """push-data's probe exec, held open: facts, a timed round trip, then the stream on the same exec."""
    src = tmp_path / "src"
    _tree(src)
    dest = tmp_path / "dest"
    held = HeldProbe(["sh", "-c"], held_probe_command(str(dest)))
    facts = parse_dest_probe(held.text)
    assert facts.kind == "none" and facts.writable and facts.gnu_head and facts.python3
    assert 0 < held.round_trip() < 5 and 0 < held.round_trip() < 5   # answered each time
    out = held.stream(str(dest), stream_items(str(src), filelist.list_source(str(src), [], []).entries), python=py)
    held.reap()
    assert _state(dest) == _state(src) and out.stats.regular_files_transferred == 5
    assert held.proc.returncode == 0


def test_a_held_probe_nothing_streams_into_ends_and_changes_nothing(tmp_path):
    held = HeldProbe(["sh", "-c"], held_probe_command(str(tmp_path / "dest")))
    held.close()
    held.reap()
    assert held.proc.returncode == 0 and not (tmp_path / "dest").exists()
    assert held.proc.stdout.closed and held.proc.stderr.closed  # nothing left open here either
    assert held.round_trip() == 0.0  # the session is gone: no answer, and no hang


def test_a_probe_that_fails_says_so(tmp_path):
    with pytest.raises(MigrateError, match="could not inspect the destination: ssh: no route"):
        HeldProbe(["sh", "-c"], "echo 'ssh: no route' >&2; exit 255")


def test_the_python3_receiver_never_writes_through_a_link_in_the_partial_dir(tmp_path):
    """Another user who can write in DEST (a world-writable one) may plant a link where a file waits:
    the receiver refuses to follow it, and the link's target is untouched."""
    target = tmp_path / "precious"
    target.write_bytes(b"keep")
    part = tmp_path / "d" / ".migrate-partial"
    part.mkdir(parents=True)
    (part / "one.bin").symlink_to(target)
    res = _receive(_record("one.bin", b"1" * 10, tmp_path / "one") + b"e 1\n", tmp_path / "d", True)
    assert res.returncode == 3 and b"migrate stream:" in res.stderr
    assert target.read_bytes() == b"keep" and not (tmp_path / "d" / "one.bin").exists()
