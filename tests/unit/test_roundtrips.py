"""The round-trip counter: off without the variable, one line per note with it."""

from __future__ import annotations

import stat

from migrate.remote import roundtrips


def test_nothing_is_written_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(roundtrips.ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    roundtrips.note("exec", "h", "true")
    assert list(tmp_path.iterdir()) == []


def test_each_note_is_one_private_line_and_tally_counts_them_by_kind(tmp_path, monkeypatch):
    path = tmp_path / "rt"
    monkeypatch.setenv(roundtrips.ENV, str(path))
    roundtrips.note("connect", "gpu1", "paramiko")
    roundtrips.note("exec", "gpu1", "read\njob status\twith tabs")
    roundtrips.note("exec", "gpu1", "")
    roundtrips.note("sftp", "gpu1", "write x")
    lines = path.read_text().splitlines()
    assert lines[1] == "exec\tgpu1\tread job status with tabs"
    assert roundtrips.tally(path.read_text()) == {"connect": 1, "exec": 2, "sftp": 1}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

