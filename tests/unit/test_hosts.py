from pathlib import Path

import pytest

from migrate.errors import UsageError
from migrate.remote.hosts import ConnectOptions, HostSpec, SshConfigSet, openssh_argv, resolve


@pytest.mark.parametrize("text,user,host", [
    ("gpu-box", None, "gpu-box"),
    ("alice@gpu-box", "alice", "gpu-box"),
    ("alice@10.0.0.5", "alice", "10.0.0.5"),
    ("a.b_c@host.example.org", "a.b_c", "host.example.org"),
    ("bob@[::1]", "bob", "::1"),
    ("bob@fe80::1", "bob", "fe80::1"),
    ("sandbox1", None, "sandbox1"),
])
def test_parse_valid(text, user, host):
    spec = HostSpec.parse(text)
    assert (spec.user, spec.host) == (user, host)


@pytest.mark.parametrize("text,hint", [
    ("", "[user@]host"),
    ("alice@", "[user@]host"),
    ("@host", "[user@]host"),
    ("-oProxyCommand=x", "dash"),
    ("alice@host:2222", "--port 2222"),
    ("host:/data", "push-data"),
    ("a b", "[user@]host"),
    ("al ice@host", "[user@]host"),
    ("host/x", "[user@]host"),
])
def test_parse_invalid_gives_usage_error_with_hint(text, hint):
    with pytest.raises(UsageError) as exc:
        HostSpec.parse(text)
    assert hint in (exc.value.hint or "")
    assert exc.value.exit_code == 2


def _configs(tmp_path: Path, text: str, extra: str | None = None) -> SshConfigSet:
    user = tmp_path / "config"
    user.write_text(text)
    extras = []
    if extra is not None:
        e = tmp_path / "sandbox_config"
        e.write_text(extra)
        extras.append(e)
    return SshConfigSet(user, extras)


def test_resolve_honours_alias_port_user_identity_jump_and_known_hosts(tmp_path):
    cfg = _configs(tmp_path, """
Host gpu
  HostName 10.1.2.3
  Port 2200
  User carol
  IdentityFile ~/.ssh/lab_key
  IdentitiesOnly yes
  ProxyJump bastion
  UserKnownHostsFile /tmp/kh1 /tmp/kh2
Host *
  User default-user
  ConnectTimeout 7
""")
    t = resolve(HostSpec.parse("gpu"), ConnectOptions(), cfg)
    assert (t.hostname, t.port, t.user) == ("10.1.2.3", 2200, "carol")
    assert t.identity_files == [str(Path("~/.ssh/lab_key").expanduser())]
    assert t.identities_only
    assert t.proxy_jump == ["bastion"]
    assert t.known_hosts_files[:2] == ["/tmp/kh1", "/tmp/kh2"]
    assert t.connect_timeout == 7
    assert not t.accept_new_host_key
    assert t.known_hosts_name == "[10.1.2.3]:2200"


def test_command_line_beats_ssh_config(tmp_path):
    key = tmp_path / "k"
    key.write_text("x")
    cfg = _configs(tmp_path, "Host gpu\n  Port 2200\n  User carol\n")
    t = resolve(HostSpec.parse("dave@gpu"), ConnectOptions(port=2201, identity_files=[str(key)],
                                                           accept_new_host_key=True), cfg)
    assert (t.port, t.user, t.identity_files[0], t.accept_new_host_key) == (2201, "dave", str(key), True)


def test_missing_identity_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        resolve(HostSpec.parse("h"), ConnectOptions(identity_files=[str(tmp_path / "nope")]),
                _configs(tmp_path, ""))


def test_sandbox_blocks_come_first_but_user_defaults_still_apply(tmp_path):
    cfg = _configs(tmp_path, "Host *\n  User someone\n  ConnectTimeout 9\n",
                   extra="Host sandbox1\n  HostName 127.0.0.1\n  Port 2222\n  User alice\n")
    t = resolve(HostSpec.parse("sandbox1"), ConnectOptions(), cfg)
    assert (t.hostname, t.port, t.user, t.connect_timeout) == ("127.0.0.1", 2222, "alice", 9)
    other = resolve(HostSpec.parse("elsewhere"), ConnectOptions(), cfg)
    assert (other.hostname, other.port, other.user) == ("elsewhere", 22, "someone")


def test_strict_host_key_checking_accept_new_in_config(tmp_path):
    cfg = _configs(tmp_path, "Host lab\n  StrictHostKeyChecking accept-new\n")
    assert resolve(HostSpec.parse("lab"), ConnectOptions(), cfg).accept_new_host_key


def test_default_known_hosts_is_users_file(tmp_path):
    t = resolve(HostSpec.parse("h"), ConnectOptions(), _configs(tmp_path, ""))
    assert t.known_hosts_files[0] == str(Path("~/.ssh/known_hosts").expanduser())
    assert t.writable_known_hosts == t.known_hosts_files[0]


def test_openssh_argv_reproduces_settings_and_never_disables_checks(tmp_path):
    cfg = _configs(tmp_path, "Host gpu\n  HostName 10.1.2.3\n  Port 2200\n  User carol\n  ProxyJump jump1,jump2\n")
    t = resolve(HostSpec.parse("gpu"), ConnectOptions(), cfg)
    argv = openssh_argv(t, config_file=tmp_path / "cfg")
    joined = " ".join(argv)
    assert argv[0] == "ssh" and argv[-1] == "gpu"
    assert "-F " + str(tmp_path / "cfg") in joined
    assert "StrictHostKeyChecking=yes" in joined
    assert "-p 2200" in joined and "-l carol" in joined and "HostName=10.1.2.3" in joined
    assert "-J jump1,jump2" in joined
    assert "BatchMode=yes" in joined
    t.accept_new_host_key = True
    assert "StrictHostKeyChecking=accept-new" in " ".join(openssh_argv(t))
    assert "StrictHostKeyChecking=no" not in " ".join(openssh_argv(t))


def test_openssh_file_is_only_needed_for_non_default_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    cfg = _configs(tmp_path, "Host a\n  Port 1\n", extra="Host b\n  Port 2\n")
    path = cfg.openssh_file()
    assert path is not None and path.read_text() == cfg.text
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_stale_ssh_config_copies_are_pruned_and_used_ones_kept(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    first = _configs(tmp_path, "Host a\n  Port 1\n", extra="Host b\n  Port 2\n").openssh_file()
    stale = first.parent / "ssh_config-0000000000000000"
    stale.write_text("old")
    os.utime(stale, (1, 1))
    os.utime(first, (1, 1))
    assert _configs(tmp_path, "Host a\n  Port 1\n", extra="Host b\n  Port 2\n").openssh_file() == first
    assert first.stat().st_mtime > 1 and stale.exists()  # reuse touches; nothing new written, no pruning
    other = _configs(tmp_path, "Host a\n  Port 1\n", extra="Host c\n  Port 3\n").openssh_file()
    assert other.exists() and first.exists() and not stale.exists()


def test_bad_port_in_config_is_reported(tmp_path):
    with pytest.raises(UsageError, match="bad Port"):
        resolve(HostSpec.parse("x"), ConnectOptions(), _configs(tmp_path, "Host x\n  Port abc\n"))
