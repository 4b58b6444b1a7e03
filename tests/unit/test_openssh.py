from migrate.remote.hosts import ConnectOptions, parse_ssh_g, target_from_ssh_g
from migrate.remote.openssh import AES_GCM_FIRST, OpenSshSession, preferred_ciphers


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
