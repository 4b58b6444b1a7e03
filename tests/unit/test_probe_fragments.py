"""The shared probe fragments (migrate/remote/probe_fragments.py), each run under `sh` and parsed."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from migrate.data.remote import DEST_PROBE, parse_dest_probe
from migrate.image.remote import FACTS_SCRIPT, parse_facts
from migrate.remote.probe import PROBE_SCRIPT, parse_probe
from migrate.remote.probe_fragments import (
    ARCH,
    DOCKER_ACCESS,
    DOCKERD,
    FREE_SPACE,
    KV,
    SUDO,
    as_is,
    assign,
    key_value_lines,
    yes,
)
from migrate.setup.facts import SETUP_PROBE


def run_sh(script: str, *args: str, path: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if path is not None:
        env["PATH"] = path
    out = subprocess.run(["/bin/sh", "-c", script, "sh", *args], capture_output=True, text=True, env=env,
                         timeout=30, check=True).stdout
    return dict(key_value_lines(out))


def fake_bin(tmp_path: Path, scripts: dict[str, str], tools: tuple[str, ...] = ()) -> str:
    """A PATH holding only these fake commands and links to the named real tools."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in scripts.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bin_dir / name).chmod(0o755)
    for tool in tools:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def fake_id(uid: int, groups: str = "alice") -> str:
    return f'case "$1" in -u) echo {uid} ;; -un) echo alice ;; -nG) echo {groups} ;; esac'


@pytest.mark.parametrize(("uid", "sudo", "want"), [
    (0, None, "root"), (1000, None, "none"), (1000, "exit 0", "nopasswd"), (1000, "exit 1", "password")])
def test_sudo_mode(tmp_path, uid, sudo, want):
    scripts = {"id": fake_id(uid), **({"sudo": sudo} if sudo else {})}
    assert run_sh(KV + SUDO + 'kv sudo "$(sudo_mode)"', path=fake_bin(tmp_path, scripts))["sudo"] == want


def test_arch():
    assert run_sh(KV + ARCH)["arch"] == platform.machine()


def test_free_space_of_a_path_that_does_not_exist_yet(tmp_path):
    out = run_sh(KV + FREE_SPACE + 'kv near "$(nearest "$1")"; kv df "$(free_space "$1" \'$4 " " $2 " " $6\')"',
                 str(tmp_path / "not" / "yet"))
    assert out["near"] == str(tmp_path)
    free, total, mount = out["df"].split()
    usage = shutil.disk_usage(tmp_path)
    assert 0 < int(free) <= int(total) and abs(int(total) * 1024 - usage.total) < 1 << 20
    assert Path(mount).is_dir()


@pytest.mark.parametrize(("groups", "scripts", "want"), [
    ("alice docker", {"sg": "exit 0"}, "group"),
    ("alice", {"sudo": "exit 0"}, "sudo"),
    ("alice", {"sudo": "exit 1"}, "sudo-password"),
    ("alice docker", {"sg": "exit 1"}, "denied"),
])
def test_docker_access_when_the_socket_says_permission_denied(tmp_path, groups, scripts, want):
    path = fake_bin(tmp_path, {"id": fake_id(1000, groups), **scripts}, tools=("tr", "grep"))
    assert run_sh(KV + DOCKER_ACCESS + 'kv mode "$(docker_denied_mode)"', path=path)["mode"] == want


def test_dockerd_path(tmp_path):
    path = fake_bin(tmp_path, {"dockerd": "exit 0"})
    assert run_sh(KV + DOCKERD + 'kv d "$(dockerd_path)"', path=path)["d"] == f"{path}/dockerd"


@dataclass
class _Inner:
    flag: bool = False


@dataclass
class _Facts:
    name: str = ""
    count: int = -1
    inner: _Inner = field(default_factory=_Inner)


def test_assign_fills_a_dataclass_from_a_table_and_returns_the_rest():
    f = _Facts()
    rest = assign(f, "name= a \ncount=x\ninner.flag=yes\nnoise\nother=1\n",
                  {"name": ("name", as_is), "count": ("count", int), "inner.flag": ("inner.flag", yes)}, strip=True)
    assert f == _Facts(name="a", count=-1, inner=_Inner(flag=True))
    assert rest == [("other", "1")]


def test_the_four_probes_are_built_from_the_fragments():
    for script in (PROBE_SCRIPT, DEST_PROBE, FACTS_SCRIPT):
        assert script.startswith(KV)
    assert "sudo_mode()" in PROBE_SCRIPT and "sudo_mode()" in DEST_PROBE and "docker_denied_mode()" in FACTS_SCRIPT
    assert "dockerd_path()" in PROBE_SCRIPT and "dockerd_path()" in SETUP_PROBE
    assert "free_space()" in PROBE_SCRIPT and "free_space()" in DEST_PROBE and "free_space()" in FACTS_SCRIPT


def test_the_probes_run_here_and_parse(tmp_path):
    """Each probe runs under sh on this machine; what the fragments print reaches its parser."""
    facts = parse_probe(subprocess.run(["/bin/sh", "-c", PROBE_SCRIPT], capture_output=True, text=True,
                                       timeout=60).stdout)
    assert facts.arch == platform.machine() and facts.sudo in ("root", "none", "nopasswd", "password")
    assert facts.disks["home"].free_kib > 0 and facts.disks["tmp"].mount
    dest = parse_dest_probe(subprocess.run(["/bin/sh", "-c", DEST_PROBE, "sh", str(tmp_path / "new" / "dir"), "sudo"],
                                           capture_output=True, text=True, timeout=30).stdout)
    assert dest.existing == str(tmp_path) and dest.free_bytes and dest.sudo == facts.sudo
    docker = parse_facts(subprocess.run(["/bin/sh", "-c", FACTS_SCRIPT], capture_output=True, text=True, timeout=60,
                                        env={**os.environ, "PATH": fake_bin(tmp_path, {}, tools=(
                                            "uname", "grep", "id", "df", "awk", "dirname"))}).stdout)
    assert docker.arch == facts.arch and docker.access == "none" and docker.disks["home"][0] > 0


def test_the_destination_probe_tries_sudo_only_when_asked(tmp_path):
    """`sudo -n true` where sudo wants a password is a failed attempt in the host's auth log: push-data
    asks only for --sudo and --install-rsync."""
    tried = tmp_path / "sudo-was-run"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sudo").write_text(f"#!/bin/sh\ntouch {tried}\nexit 1\n")  # wants a password
    (bin_dir / "id").write_text("#!/bin/sh\necho 1000\n")  # a user, even where the tests run as root
    for tool in ("sudo", "id"):
        (bin_dir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def probe(*extra: str):
        out = subprocess.run(["/bin/sh", "-c", DEST_PROBE, "sh", str(tmp_path), *extra], capture_output=True,
                             text=True, timeout=30, env=env).stdout
        return parse_dest_probe(out)

    assert probe().sudo == "unasked" and not tried.exists()
    assert probe("sudo").sudo == "password" and tried.exists()
