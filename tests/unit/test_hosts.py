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


LATIN1_CONFIG = b"# caf\xe9: a Latin-1 comment, as OpenSSH takes it\nHost gpu\n  HostName 10.1.2.3\n  Port 2200\n"


def test_a_non_utf8_byte_in_ssh_config_is_read_as_openssh_does(tmp_path, monkeypatch):
    """Issue 20.5: one Latin-1 byte crashed every verb with UnicodeDecodeError; `ssh -G` takes the file."""
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    user = tmp_path / "config"
    user.write_bytes(LATIN1_CONFIG)
    cfg = SshConfigSet(user, [])
    t = resolve(HostSpec.parse("gpu"), ConnectOptions(), cfg)
    assert (t.hostname, t.port) == ("10.1.2.3", 2200)
    assert cfg.openssh_file().read_bytes() == LATIN1_CONFIG  # `ssh -F` gets the bytes untouched
    assert cfg.config.lookup("gpu")["hostname"] == "10.1.2.3"  # paramiko's reading (push-image) too


@pytest.mark.parametrize("line,key", [(b"  HostName 10.1.2.\xe9\n", "HostName"), (b"  User al\xe9ice\n", "User")])
def test_a_non_utf8_hostname_or_user_is_one_usage_line(tmp_path, line, key):
    user = tmp_path / "config"
    user.write_bytes(b"Host gpu\n" + line)
    with pytest.raises(UsageError, match=f"gives gpu a {key} that is not UTF-8 text: .*\\\\xe9"):
        resolve(HostSpec.parse("gpu"), ConnectOptions(), SshConfigSet(user, []))


def test_every_verb_reads_a_non_utf8_ssh_config_and_refuses_a_missing_one(tmp_path):
    import shlex

    from tests.conftest import run_cli

    env = {"MIGRATE_CACHE_DIR": str(tmp_path / "cache"), "MIGRATE_STATE_DIR": str(tmp_path / "state")}
    user = tmp_path / "config"
    user.write_bytes(LATIN1_CONFIG)
    res = run_cli("tunnel", "gpu", "6006", "--dry-run", "--ssh-config", str(user), env=env)
    assert res.code == 0, res.output
    argv = shlex.split(res.stdout)
    assert "HostName=10.1.2.3" in argv and "2200" in argv
    assert Path(argv[argv.index("-F") + 1]).read_bytes() == LATIN1_CONFIG
    for args, named in [(("--ssh-config", str(tmp_path / "nope")), "--ssh-config"), ((), "$MIGRATE_SSH_CONFIG")]:
        res = run_cli("tunnel", "gpu", "6006", "--dry-run", *args,
                      env={**env, "MIGRATE_SSH_CONFIG": str(tmp_path / "nope")})
        assert res.code == 2 and res.stdout == "", res.output
        assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
        assert f"ssh config {tmp_path / 'nope'} ({named}) does not exist" in res.stderr


def test_many_threads_writing_the_same_cached_config_never_collide(tmp_path, monkeypatch):
    """Issue 20.11: the temporary file was named after the pid, so two threads writing the same cached
    `ssh -F` file renamed each other's file away (FileNotFoundError in a first `cluster up` on 2 hosts)."""
    import threading

    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    user = tmp_path / "config"
    errors, paths = [], []
    for round_ in range(5):  # each round a text never seen: every thread finds no file and writes it
        user.write_text(f"Host gpu{round_}\n  Port 2200\n")
        start = threading.Barrier(32)

        def write(configs: SshConfigSet, start: threading.Barrier) -> None:
            start.wait()
            try:
                paths.append(configs.openssh_file())
            except Exception as exc:  # noqa: BLE001 - any exception is the failure we look for
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(SshConfigSet(user, []), start)) for _ in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert len(paths) == 160 and len(set(paths)) == 5 and all(p.read_text().startswith("Host gpu") for p in paths)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted({p.name for p in paths})  # no leftovers


@pytest.mark.parametrize("name,problem", [
    ("a" * 64 + ".example", "a part longer than 63 characters"),
    ("a..example", "an empty part between dots"),
    (("a" * 60 + ".") * 4 + "a" * 60, "longer than 253 characters"),
])
def test_a_name_no_resolver_takes_is_one_usage_line(tmp_path, name, problem):
    """Issue 20.6: `doctor <64-character label>.example` was an IDNA UnicodeError traceback."""
    with pytest.raises(UsageError, match=f"malformed host .*: {problem}"):
        resolve(HostSpec.parse(name), ConnectOptions(), _configs(tmp_path, ""))
    assert resolve(HostSpec.parse("a" * 63 + ".example"), ConnectOptions(), _configs(tmp_path, ""))


def test_doctor_of_a_name_with_a_64_character_label_is_one_line():
    from tests.conftest import run_cli

    res = run_cli("doctor", "a" * 64 + ".example")
    assert res.code == 2 and "Traceback" not in res.output, res.output
    assert res.stderr.startswith("error: malformed host") and res.stderr.count("\n") == 1, res.stderr
