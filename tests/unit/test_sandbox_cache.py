"""`sandbox down` removes the cached `ssh -F` copies that name its hosts, and only those."""

from __future__ import annotations

from pathlib import Path

import pytest

from migrate.remote.hosts import SshConfigSet, remove_cached_configs
from migrate.sandbox.manager import Sandbox, SandboxSettings, config_marker


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    cache, state = tmp_path / "cache", tmp_path / "state"
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(cache))
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(state))
    return cache, state


def _sandbox_config(state: Path, name: str) -> Path:
    """What `sandbox up` leaves for sandbox `name`: its state dir and ssh_config (header first)."""
    d = state / "sandbox" / name
    d.mkdir(parents=True)
    cfg = d / "ssh_config"
    cfg.write_text(f"{config_marker(name)} written by `migrate sandbox up`; removed by `down`\n"
                   f"Host {name}1\n  HostName 127.0.0.1\n  Port 2400\n")
    return cfg


def test_down_removes_the_cached_configs_naming_its_hosts_and_only_those(dirs, tmp_path):
    cache, state = dirs
    mine, other, other2 = (_sandbox_config(state, n) for n in ("zcache", "zcachex", "zother"))
    user = tmp_path / "user_config"
    user.write_text("Host *\n  ServerAliveInterval 30\n")
    # what migrate commands cached while the sandboxes were up: alone, together, without ours
    with_mine = SshConfigSet(user, [mine]).openssh_file()
    with_both = SshConfigSet(user, [mine, other2]).openssh_file()
    without = SshConfigSet(user, [other, other2]).openssh_file()  # 'zcachex' must not match 'zcache'
    user_only = SshConfigSet(user, []).openssh_file()
    unrelated = cache / "ssh_config-notes"
    unrelated.write_text("something else\n")
    assert len({with_mine, with_both, without, user_only}) == 4 and all(
        p.exists() for p in (with_mine, with_both, without, user_only))

    removed = Sandbox(SandboxSettings(name="zcache")).down()

    assert not with_mine.exists() and not with_both.exists()
    assert without.exists() and user_only.exists() and unrelated.exists()
    assert "2 cached ssh_config file(s)" in removed
    assert not (state / "sandbox" / "zcache").exists() and (state / "sandbox" / "zother").exists()


def test_a_removed_cached_config_is_written_again_when_next_needed(dirs, tmp_path):
    cache, state = dirs
    cfg = _sandbox_config(state, "zcache")
    configs = SshConfigSet(tmp_path / "none", [cfg])
    path = configs.openssh_file()
    path.unlink()  # a `sandbox down` of another sandbox named in the same text
    assert configs.openssh_file() == path and path.read_text() == configs.text


def test_image_streams_make_sure_the_config_file_is_there_before_each_ssh():
    from migrate.remote.openssh import ControlMaster

    calls = []
    master = ControlMaster(["ssh", "-F", "/x", "h"], alias="h", display="h", before_spawn=lambda: calls.append(1))
    assert master.argv("true")[-2:] == ["h", "true"] and master.argv("true") and len(calls) == 2


HOLDER = """
import sys
from pathlib import Path
from migrate.remote.hosts import SshConfigSet
print(SshConfigSet(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]).openssh_file(), flush=True)
sys.stdin.readline()  # a running command between two `ssh -F` starts (rsync -e, a benchmark)
"""


def test_down_leaves_a_cached_config_that_a_running_command_still_uses(dirs, tmp_path):
    """Issue 20.10: `sandbox down` of one sandbox removed the `ssh -F` file a push-data on another was
    using (`Can't open user config file`); a file in use stays until its last user has exited."""
    import subprocess
    import sys

    cache, state = dirs
    mine, other = _sandbox_config(state, "zcache"), _sandbox_config(state, "zother")
    user = tmp_path / "user_config"
    user.write_text("Host *\n  ServerAliveInterval 30\n")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(user), str(other), str(mine)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        in_use = Path(holder.stdout.readline().strip())
        assert in_use.parent == cache and in_use.exists()
        unused = SshConfigSet(user, [mine]).openssh_file()  # this process's own: no command runs with it
        assert Sandbox(SandboxSettings(name="zcache")).down() and not unused.exists()
        assert in_use.exists()
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert remove_cached_configs(config_marker("zcache")) == [in_use]  # unused now: the next `down` takes it


def test_up_says_it_waits_for_another_sandboxs_image_build(tmp_path, monkeypatch):
    """Issue 20: `sandbox up` waited silently (65 s) on the build lock another sandbox held."""
    import threading
    import time

    from migrate.sandbox import manager

    said: list[str] = []
    monkeypatch.setattr(manager.ui, "info", said.append)
    lock = tmp_path / "build.lock"
    entered, release, done = threading.Event(), threading.Event(), threading.Event()

    def other_build() -> None:
        with manager._build_lock(lock, "sandbox 'other' (pid 4242)"):
            entered.set()
            release.wait(30)

    def our_build() -> None:
        with manager._build_lock(lock, "sandbox 'ours' (pid 1)"):
            done.set()

    threads = [threading.Thread(target=other_build), threading.Thread(target=our_build)]
    threads[0].start()
    assert entered.wait(30)
    threads[1].start()
    deadline = time.monotonic() + 30
    while not said and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not done.is_set()
    release.set()
    for t in threads:
        t.join(30)
    assert done.is_set()
    assert said == [f"waiting for sandbox 'other' (pid 4242) to finish building the sandbox image (lock {lock})"]
    with manager._build_lock(lock, "sandbox 'third' (pid 2)"):  # free: no line
        pass
    assert len(said) == 1 and lock.read_text() == "sandbox 'third' (pid 2)"
