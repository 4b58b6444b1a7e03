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
