from migrate.remote.hosts import ConnectOptions, parse_ssh_g, target_from_ssh_g
from migrate.remote.openssh import AES_GCM_FIRST, OpenSshSession, preferred_ciphers
from tests.conftest import ssh_agent_holding


def test_parse_ssh_g():
    text = "user carol\nhostname 10.1.2.3\nport 2200\nidentityfile ~/.ssh/id_rsa\nidentityfile ~/.ssh/id_ed25519\n"
    r = target_from_ssh_g("gpu", parse_ssh_g(text), ConnectOptions())
    assert (r.alias, r.hostname, r.port, r.user, r.display) == ("gpu", "10.1.2.3", 2200, "carol", "carol@gpu")


def test_session_resolves_like_openssh_and_keeps_every_check(tmp_path, monkeypatch):
    cfg = tmp_path / "config"
    cfg.write_text("Host gpu\n  HostName 10.1.2.3\n  Port 2200\n  User carol\n")
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    s = OpenSshSession("gpu", ConnectOptions(ssh_config_path=str(cfg), port=2201))
    try:
        assert (s.target.hostname, s.target.port, s.target.user) == ("10.1.2.3", 2201, "carol")
        argv = s.openssh_argv()
        joined = " ".join(argv)
        assert argv[0] == "ssh" and argv[-1] == "gpu" and "-F" in argv
        assert "StrictHostKeyChecking=yes" in joined and "BatchMode=yes" in joined
        assert "ControlMaster=no" in joined and f"-S {s.master.socket}" in joined and "-p 2201" in joined
        assert "StrictHostKeyChecking=no" not in joined
    finally:
        s.close()
    s2 = OpenSshSession("bob@gpu", ConnectOptions(ssh_config_path=str(cfg), accept_new_host_key=True))
    try:
        assert s2.target.user == "bob" and "StrictHostKeyChecking=accept-new" in " ".join(s2.openssh_argv())
    finally:
        s2.close()


def test_aes_gcm_is_offered_first_only_with_aes_and_no_ciphers_setting():
    assert preferred_ciphers("Host gpu\n  Port 22\n#  Ciphers aes128-ctr\n", has_aes=True) == AES_GCM_FIRST
    assert preferred_ciphers("Host gpu\n  Port 22\n", has_aes=False) is None
    assert preferred_ciphers("Host gpu\n  Ciphers chacha20-poly1305@openssh.com\n", has_aes=True) is None
    assert preferred_ciphers("ciphers=aes256-ctr\n", has_aes=True) is None


def test_session_passes_the_cipher_preference_to_every_ssh(tmp_path, monkeypatch):
    cfg = tmp_path / "config"
    cfg.write_text("Host gpu\n  HostName 10.1.2.3\n")
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("MIGRATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("migrate.remote.openssh.local_has_aes", lambda: True)
    monkeypatch.setattr("migrate.remote.openssh._user_default_config_text", lambda: "")
    s = OpenSshSession("gpu", ConnectOptions(ssh_config_path=str(cfg)))
    try:
        assert f"Ciphers={AES_GCM_FIRST}" in s.openssh_argv()
    finally:
        s.close()
    cfg.write_text("Host gpu\n  HostName 10.1.2.3\n  Ciphers aes256-ctr\n")
    s = OpenSshSession("gpu", ConnectOptions(ssh_config_path=str(cfg)))
    try:
        assert not any(a.startswith("Ciphers=") for a in s.openssh_argv())
    finally:
        s.close()


def test_identity_agent_and_certificate_file_come_from_ssh_g(monkeypatch):
    monkeypatch.setenv("MY_AGENT", "/run/agent.sock")
    parse = lambda text: target_from_ssh_g("gpu", parse_ssh_g("user carol\nhostname h\nport 22\n" + text),  # noqa: E731
                                           ConnectOptions())
    assert parse("").identity_agent is None and parse("").certificate_files == []
    assert parse("identityagent SSH_AUTH_SOCK\n").identity_agent is None
    assert parse("identityagent none\n").identity_agent == "none"
    assert parse("identityagent $MY_AGENT\n").identity_agent == "/run/agent.sock"
    assert parse("identityagent /tmp/%r.sock\n").identity_agent == "/tmp/carol.sock"
    certs = parse("certificatefile /keys/%r-%h-cert.pub\ncertificatefile /keys/b.pub\n").certificate_files
    assert certs == ["/keys/carol-h-cert.pub", "/keys/b.pub"]


def test_the_fabric_connection_uses_identity_agent_and_certificate_file(tmp_path):
    """IdentityAgent none turns the agent off; a path is the agent paramiko asks; CertificateFile is paired
    with the identity whose key it certifies (paramiko alone only finds `<key>-cert.pub`)."""
    import socket
    import subprocess

    from migrate.remote.connection import _fabric_connection
    from migrate.remote.hosts import SshConfigSet, SshTarget

    def target(**kw) -> SshTarget:
        return SshTarget(alias="gpu", hostname="h", port=22, user="carol", known_hosts_files=[str(tmp_path / "kh")],
                         **kw)

    conn = _fabric_connection(target(identity_agent="none"), SshConfigSet(tmp_path / "none"), ConnectOptions())
    assert conn.connect_kwargs["allow_agent"] is False and "pkey" not in conn.connect_kwargs
    # an unreachable agent socket: no agent at all (OpenSSH goes on without it too)
    conn = _fabric_connection(target(identity_agent=str(tmp_path / "nope.sock")), SshConfigSet(tmp_path / "none"),
                              ConnectOptions())
    assert conn.connect_kwargs["allow_agent"] is False
    # a real ssh-agent at a private socket, holding a key: paramiko gets exactly that agent
    sock = tmp_path / "agent.sock"
    key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    with ssh_agent_holding(str(key), sock):
        conn = _fabric_connection(target(identity_agent=str(sock)), SshConfigSet(tmp_path / "none"), ConnectOptions())
        assert conn.connect_kwargs["allow_agent"] is True
        keys = conn.client._agent.get_keys()
        assert [k.get_base64() for k in keys] == [(tmp_path / "id_ed25519.pub").read_text().split()[1]]
        assert isinstance(conn.client._agent._conn, socket.socket)
        conn.client._agent.close()  # what SSHClient.close calls
        assert conn.client._agent._conn is None
    # a certificate stored away from its key
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "ca")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "t", "-n", "carol", str(key) + ".pub"],
                   check=True)
    cert = tmp_path / "certs" / "mine.pub"
    cert.parent.mkdir()
    (tmp_path / "id_ed25519-cert.pub").rename(cert)
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    conn = _fabric_connection(target(identity_files=[str(other), str(key)], certificate_files=[str(cert)]),
                              SshConfigSet(tmp_path / "none"), ConnectOptions())
    pkey = conn.connect_kwargs["pkey"]
    assert pkey.public_blob is not None and pkey.public_blob.key_type.endswith("-cert-v01@openssh.com")
    assert pkey.get_base64() == (tmp_path / "id_ed25519.pub").read_text().split()[1]


def test_a_session_pool_gives_each_host_one_session_that_borrowing_leaves_open(monkeypatch):
    """apply's data and run stages share one connection per host: a stage's `with` must not end it."""
    from migrate.remote.hosts import ConnectOptions
    from migrate.remote.openssh import OpenSshSession, SessionPool

    closed: list[str] = []
    monkeypatch.setattr(OpenSshSession, "close", lambda self: closed.append(self.spec.host))
    with SessionPool(ConnectOptions()) as pool:
        first = pool.get("alice@gpu1")
        with pool.borrow("alice@gpu1") as borrowed:
            assert borrowed is first
        assert closed == [] and pool.get("alice@gpu2") is not first
    assert sorted(closed) == ["gpu1", "gpu2"] and pool.sessions == {}


# -- the login times the link ---------------------------------------------------------------------
def _login(t0: float, rtt: float, *, jitter: float = 0.0) -> list[tuple[float, str]]:
    """An OpenSSH 9.2 client's `-v` login lines (those login_round_trip reads), `rtt` apart where one
    round trip lies between them; `jitter` late on the middle sample's end (a busy reader here)."""
    return [(t0, "debug1: SSH2_MSG_NEWKEYS received"),
            (t0 + rtt, "debug1: SSH2_MSG_SERVICE_ACCEPT received"),
            (t0 + 2 * rtt + jitter, "debug1: Authentications that can continue: publickey,password"),
            (t0 + 2 * rtt + jitter, "debug1: Offering public key: /k ED25519 SHA256:x explicit"),
            (t0 + 3 * rtt + jitter, "debug1: Server accepts key: /k ED25519 SHA256:x explicit")]


def test_the_login_lines_give_the_round_trip_and_one_late_line_does_not_move_it():
    from migrate.remote.openssh import login_round_trip

    assert abs(login_round_trip(_login(5.0, 0.08)) - 0.08) < 1e-9
    assert abs(login_round_trip(_login(5.0, 0.08, jitter=0.05)) - 0.08) < 1e-9  # the median of three
    assert abs(login_round_trip(_login(5.0, 0.0004)) - 0.0004) < 1e-9


def test_through_a_proxy_jump_the_targets_login_is_timed_and_too_few_lines_time_nothing():
    from migrate.remote.openssh import login_round_trip

    jump, target = _login(1.0, 0.01), _login(2.0, 0.09)
    assert abs(login_round_trip(jump + target) - 0.09) < 1e-9  # the jump host's login comes first
    assert login_round_trip(_login(1.0, 0.05)[:2]) is None  # one interval: another ssh's words
    assert login_round_trip([]) is None


def test_the_masters_stderr_keeps_its_words_and_the_logins_timing_lines_only(tmp_path):
    import os
    import threading

    from migrate.remote.openssh import _MasterStderr

    read_end, write_end = os.pipe()
    reader = _MasterStderr(os.fdopen(read_end, "rb"))
    lines = [b"debug1: Reading configuration data /x\r\n", b"debug1: SSH2_MSG_NEWKEYS received\r\n",
             b"Warning: Permanently added '[h]:22' (ED25519) to the list of known hosts.\r\n",
             b"debug1: SSH2_MSG_SERVICE_ACCEPT received\r\n", b'Authenticated to h ([h]:22) using "publickey".\r\n',
             b"debug1: Offering public key: /late\r\n", b"debug1: channel 1: new session\r\n",
             b"mux_client_request_session: read from master failed: Broken pipe\r\n"]
    writer = threading.Thread(target=lambda: [os.write(write_end, line) for line in lines])
    writer.start()
    writer.join()
    os.close(write_end)
    assert reader.text(wait=10).splitlines() == [
        "Warning: Permanently added '[h]:22' (ED25519) to the list of known hosts.",
        "mux_client_request_session: read from master failed: Broken pipe"]
    assert [line for _, line in reader.events] == ["debug1: SSH2_MSG_NEWKEYS received",
                                                   "debug1: SSH2_MSG_SERVICE_ACCEPT received"]  # none after login
