"""One resolution (real `ssh -G`) for the Fabric path and the OpenSSH path, and one ControlMaster manager."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest

from migrate.errors import ConnectError
from migrate.remote.connection import Remote, _fabric_connection, target_for
from migrate.remote.hosts import ConnectOptions, parse_ssh_g
from migrate.remote.openssh import OpenSshSession, control_dir


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path / "state"))  # no sandbox blocks
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))


def _what_ssh_reaches(argv: list[str]) -> tuple[str, int, str]:
    """Ask the real OpenSSH client where an `ssh ... alias` argv would go."""
    out = subprocess.run([*argv[:-1], "-G", argv[-1]], capture_output=True, text=True, check=True).stdout
    v = parse_ssh_g(out)
    return v["hostname"][0], int(v["port"][0]), v["user"][0]


def _every_path(alias: str, options: ConnectOptions) -> dict[str, tuple[str, int, str]]:
    target, configs = target_for(alias, options)
    fab = _fabric_connection(target, configs, options)
    remote = Remote(target, configs, options)
    with OpenSshSession(alias, options) as session:
        return {
            "fabric (doctor, run, host-setup)": (fab.host, fab.port, fab.user),
            "ssh from Remote (push-image, tunnel)": _what_ssh_reaches(remote.openssh_argv()),
            "OpenSshSession (push-data)": _what_ssh_reaches(session.openssh_argv()),
        }


def test_an_included_host_resolves_the_same_on_every_path(tmp_path):
    inc = tmp_path / "lab.conf"
    inc.write_text("Host gpu\n  HostName 10.7.7.7\n  Port 2222\n  User carol\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {inc}\nHost *\n  ServerAliveInterval 30\n")
    paths = _every_path("gpu", ConnectOptions(ssh_config_path=str(cfg)))
    assert set(paths.values()) == {("10.7.7.7", 2222, "carol")}, paths


def test_a_match_block_resolves_the_same_on_every_path(tmp_path):
    # OpenSSH evaluates `Match user` with the user known at that line (the local one here); paramiko
    # used the User set further down and sent Fabric to port 2300 while ssh went to 22.
    cfg = tmp_path / "config"
    cfg.write_text("Match user carol\n  Port 2300\nHost gpu\n  HostName 10.8.8.8\n  User carol\n")
    paths = _every_path("gpu", ConnectOptions(ssh_config_path=str(cfg)))
    assert set(paths.values()) == {("10.8.8.8", 22, "carol")}, paths


def test_accept_new_in_ssh_config_reaches_both_paths(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text("Host lab\n  HostName 10.9.9.9\n  StrictHostKeyChecking accept-new\n")
    options = ConnectOptions(ssh_config_path=str(cfg))
    target, _ = target_for("lab", options)
    assert target.accept_new_host_key
    with OpenSshSession("lab", options) as session:
        joined = " ".join(session.openssh_argv())
    assert "StrictHostKeyChecking=accept-new" in joined and "StrictHostKeyChecking=yes" not in joined
    cfg.write_text("Host lab\n  HostName 10.9.9.9\n")
    with OpenSshSession("lab", options) as session:
        assert "StrictHostKeyChecking=yes" in " ".join(session.openssh_argv())


def test_push_image_and_push_data_share_one_control_socket_dir(tmp_path):
    from migrate.image.push import Pusher

    cfg = tmp_path / "config"
    cfg.write_text("Host gpu\n  HostName 10.7.7.7\n")
    options = ConnectOptions(ssh_config_path=str(cfg))
    target, configs = target_for("gpu", options)
    session = SimpleNamespace(remote=Remote(target, configs, options), facts=SimpleNamespace(aes=False))
    image_master = Pusher._master(None, session)  # what push-image opens (not started here)
    with OpenSshSession("gpu", options) as data_session:
        data_master = data_session.master
    assert type(image_master) is type(data_master)
    assert Path(image_master.socket).parent == Path(data_master.socket).parent == control_dir()
    assert image_master.socket != data_master.socket
    assert "ControlMaster=no" in data_session.openssh_argv()


def test_an_include_after_the_sandbox_blocks_applies_to_every_host(tmp_path):
    # the sandbox's blocks are read first; the user's top-level Include must not become part of them
    sandbox = tmp_path / "state" / "sandbox" / "sb"
    sandbox.mkdir(parents=True)
    (sandbox / "ssh_config").write_text("Host sb1\n  HostName 127.0.0.1\n  Port 2400\n")
    inc = tmp_path / "lab.conf"
    inc.write_text("Host gpu\n  HostName 10.7.7.7\n  Port 2222\n  User carol\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {inc}\n")
    paths = _every_path("gpu", ConnectOptions(ssh_config_path=str(cfg)))
    assert set(paths.values()) == {("10.7.7.7", 2222, "carol")}, paths
    assert _every_path("sb1", ConnectOptions(ssh_config_path=str(cfg)))["OpenSshSession (push-data)"][:2] == (
        "127.0.0.1", 2400)


def test_host_key_alias_is_where_the_fabric_path_looks_and_records(tmp_path):
    import paramiko

    from migrate.remote.connection import VerifyingHostKeyPolicy

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "hk")], check=True)
    key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "hk"))
    kh = tmp_path / "known_hosts"
    kh.write_text(f"gpu-alias ssh-ed25519 {key.get_base64()}\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Host gpu\n  HostName 10.9.9.9\n  Port 2200\n  HostKeyAlias gpu-alias\n  UserKnownHostsFile {kh}\n")
    options = ConnectOptions(ssh_config_path=str(cfg))
    target, configs = target_for("gpu", options)
    assert target.known_hosts_name == "gpu-alias"
    client = _fabric_connection(target, configs, options).client
    assert client.get_host_keys().lookup("[10.9.9.9]:2200")["ssh-ed25519"] == key  # what paramiko checks
    kh.write_text("")
    target.accept_new_host_key = True
    VerifyingHostKeyPolicy(target).missing_host_key(paramiko.SSHClient(), "[10.9.9.9]:2200", key)
    assert kh.read_text() == f"gpu-alias ssh-ed25519 {key.get_base64()}\n"  # as OpenSSH records it


def test_a_cache_dir_too_deep_for_a_socket_moves_the_sockets_to_a_short_private_dir(tmp_path, monkeypatch):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(deep))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    cm = control_dir()
    assert cm == tmp_path / "t" / f"migrate-{os.getuid()}" / "cm"
    assert oct(cm.parent.stat().st_mode & 0o777) == "0o700" and oct(cm.stat().st_mode & 0o777) == "0o700"
    short = Path(tempfile.mkdtemp(prefix="m", dir="/tmp"))
    try:
        monkeypatch.setenv("MIGRATE_CACHE_DIR", str(short))
        assert control_dir() == short / "cm"  # a short cache path keeps its own
    finally:
        shutil.rmtree(short)


def test_a_short_socket_dir_someone_else_planted_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / ("d" * 120)))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "t" / f"migrate-{os.getuid()}").symlink_to(tmp_path / "elsewhere")  # a link is not ours
    with pytest.raises(ConnectError, match="not a directory of yours"):
        control_dir()
