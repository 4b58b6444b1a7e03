"""migrate/early.py: which command lines start the SSH login before the CLI's imports."""

from __future__ import annotations

import pytest

from migrate.early import guess_host


@pytest.fixture
def src(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "a.txt").write_text("a")
    return tmp_path


@pytest.mark.parametrize(("argv", "host"), [
    (["push-data", "data", "gpu1:/srv/data"], "gpu1"),
    (["push-data", "data/", "a.txt", "alice@gpu1:data", "--into"], "alice@gpu1"),
    (["push-data", "data", "gpu1:/srv", "--method", "rsync", "--exclude", "x:y", "--json", "-n"], "gpu1"),
    (["push-data", "--exclude=*.tmp", "data", "gpu1:/srv", "--bwlimit=20M"], "gpu1"),
    (["push-data", "--", "data", "gpu1:/srv"], "gpu1"),
    (["pull-data", "gpu1:runs/exp1", "./exp1"], "gpu1"),
    (["pull-data", "gpu1:runs", "new-dir", "--into", "--preserve-owner"], "gpu1"),
])
def test_a_plain_line_to_one_host_starts_its_login_early(src, argv, host):
    assert guess_host(argv) == host


@pytest.mark.parametrize("argv", [
    [],
    ["status", "gpu1"],
    ["-v", "push-data", "data", "gpu1:/srv"],            # -v prints the login's command line: the CLI's way
    ["push-data", "data", "gpu1:/srv", "-H", "gpu2"],    # several hosts: a relay plan first
    ["push-data", "data", "gpu1:/srv", "--port", "2222"],  # connection options: the CLI's way
    ["push-data", "data", "gpu1:/srv", "-i", "key"],
    ["push-data", "data", "gpu1:/srv", "--help"],
    ["push-data", "data", "gpu1:/srv", "--method"],      # a value missing: click says so
    ["push-data", "missing", "gpu1:/srv"],               # a missing source: no connection at all
    ["push-data", "data", "/srv/data"],                  # no host
    ["push-data", "data", "[::1]:/srv"],                 # an IPv6 literal: left to the CLI
    ["push-data", "data", "./gpu1:/srv"],                # a path with a colon
    ["push-data", "gpu1:/srv"],                          # no source
    ["pull-data", "gpu1:runs"],                          # no DEST
    ["push-data", "data", "gpu1:/srv", "--frobnicate"],  # unknown: the CLI says so
])
def test_anything_else_leaves_the_connection_to_the_cli(src, argv):
    assert guess_host(argv) is None


QUICK_EXIT = """
import atexit, sys, threading
from migrate.early import exit_now
atexit.register(lambda: print("atexit ran", flush=True))
print("buffered, not yet flushed", end="")
if sys.argv[1] == "thread":  # a non-daemon thread still working: the usual exit waits for it
    gate = threading.Event()
    threading.Thread(target=lambda: (gate.wait(), print(" thread done", end=""))).start()
    threading.Timer(0.05, gate.set).start()
exit_now({"int": 3, "none": None, "text": "bad thing", "thread": 4}[sys.argv[1]])
"""


@pytest.mark.parametrize(("how", "code", "err"), [("int", 3, ""), ("none", 0, ""), ("text", 1, "bad thing\n"),
                                                   ("thread", 4, "")])
def test_the_quick_exit_keeps_what_sys_exit_promises(how, code, err):
    """push-data and pull-data end without the interpreter's teardown: same status, atexit handlers
    run, buffered output flushed, and a thread still at work is waited for."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", QUICK_EXIT, how], capture_output=True, text=True, timeout=60)
    assert res.returncode == code, res.stderr
    assert res.stderr == err
    assert res.stdout.startswith("buffered, not yet flushed") and "atexit ran" in res.stdout
    assert ("thread done" in res.stdout) == (how == "thread")
