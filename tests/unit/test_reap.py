"""What a dead run left (remote/reap.py): its spools and ssh master sockets go; a live run's stay."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

from migrate.remote import reap


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not reap.pid_alive(proc.pid)
    return proc.pid


def test_spools_of_dead_runs_go_and_live_or_foreign_ones_stay(tmp_path):
    me = reap.machine()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f"spool-{me}-{dead_pid()}-abc123"
        alive = tmp_path / f"spool-{me}-{live.pid}-def456"
        mine = tmp_path / f"{reap.spool_prefix()}ghi789"
        other_machine = tmp_path / f"spool-elsewhere-{dead_pid()}-jkl012"
        legacy_old, legacy_new = tmp_path / "spool-oldname1", tmp_path / "spool-newname2"
        for d in (dead, alive, mine, other_machine, legacy_old, legacy_new):
            (d / "save").mkdir(parents=True)
            (d / "save" / "layer.tar").write_bytes(b"x" * 1000)
        old = time.time() - reap.LEGACY_AGE - 60
        os.utime(legacy_old, (old, old))
        assert sorted(reap.reap_spools(tmp_path)) == sorted([dead, legacy_old])
        assert not dead.exists() and not legacy_old.exists()
        assert alive.exists() and mine.exists() and other_machine.exists() and legacy_new.exists()
    finally:
        live.kill()
        live.wait()


def test_sockets_of_dead_runs_go_and_a_live_runs_stay(tmp_path):
    dead = tmp_path / f"{dead_pid()}-0123abcd"
    alive = tmp_path / f"{os.getppid()}-4567cdef"
    other = tmp_path / "not-a-master"
    for path in (dead, alive, other):
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))  # a stale socket: nobody answers `ssh -O exit` on it
        s.close()
    assert reap.reap_masters(tmp_path) == [dead]
    assert not dead.exists() and alive.exists() and other.exists()


def test_spool_names_carry_the_machine_and_the_process():
    assert reap.spool_prefix() == f"spool-{reap.machine()}-{os.getpid()}-"
    assert reap._SPOOL.fullmatch(reap.spool_prefix() + "x1y2z3")
