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




def test_an_upload_leaves_no_temp_file_to_remove_after_its_rename_and_a_failed_one_removes_it():
    import pytest

    from migrate.remote.host import put_atomically
    from tests.fakehost import FakeHost

    host = FakeHost().reply(r'printf %s "\$HOME"', "/home/alice")
    put_atomically(host, lambda tmp: None, "/home/alice/x", mode=0o600, sudo=False)
    cmds = host.commands()
    assert [c.split()[0] for c in cmds] == ["printf", "mkdir", "mv"], cmds  # no `rm -f` after the rename

    def broken_write(tmp: str) -> None:
        raise OSError("the connection broke")

    host.log.clear()
    with pytest.raises(OSError):
        put_atomically(host, broken_write, "/home/alice/x", mode=0o600, sudo=False)
    assert host.commands()[-1].startswith("rm -f /home/alice/.migrate/tmp/upload-")


def test_both_carriers_read_home_once_per_session():
    """The agent's install reads $HOME, and so does its upload: one command for both."""
    from migrate.remote.connection import Remote
    from migrate.remote.host import RunResult
    from migrate.remote.openssh import OpenSshSession

    for carrier in (Remote, OpenSshSession):
        session = carrier.__new__(carrier)
        session._home = None
        ran: list[str] = []

        def run(command: str, ran: list[str] = ran, **_: object) -> RunResult:
            ran.append(command)
            return RunResult(command=command, exit_code=0, stdout="/home/alice", stderr="")

        session.run = run  # type: ignore[method-assign]
        assert session.home() == session.home() == "/home/alice" and len(ran) == 1, carrier
