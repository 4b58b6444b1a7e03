"""The connection layer against a real sshd: quoting, host keys, sudo, OpenSSH parity."""

from __future__ import annotations

import subprocess

import pytest

from migrate.errors import SudoError
from migrate.remote import shell
from migrate.remote.connection import connect
from migrate.sandbox.manager import Sandbox
from tests.conftest import assert_one_line_error, run_cli, ssh_agent_holding

WEIRD = "we ird 'q' \"dq\" $(touch PWNED) `touch PWNED2` ;&|*? ünï -x"


def test_weird_path_reaches_the_remote_as_one_literal_argument(remote1):
    base = "/tmp/migrate-quoting-test"
    remote1.run(shell.join(["rm", "-rf", base]) + " && " + shell.join(["mkdir", "-p", base]))
    path = f"{base}/{WEIRD}"
    remote1.run(shell.join(["touch", path]))
    names = remote1.connection.sftp().listdir(base)
    assert names == [WEIRD]
    res = remote1.run(shell.join(["ls", "-A", base]) + " ; ls /tmp/PWNED* ~/PWNED* 2>/dev/null; true")
    assert "PWNED" not in res.stdout.replace(WEIRD, "")
    remote1.run(shell.join(["rm", "-rf", base]))


def test_remote_command_failure_names_the_action(remote1):
    from migrate.errors import RemoteCommandError
    with pytest.raises(RemoteCommandError) as exc:
        remote1.run("ls /definitely/not/here", what="list things")
    assert "list things failed" in exc.value.message and exc.value.remote_exit_code != 0


def test_sudo_modes(sandbox_hosts, monkeypatch):
    alias = sandbox_hosts[1]["alias"]
    with connect(alias) as alice:
        assert alice.sudo_mode() == "nopasswd"
        assert alice.run("id -u", sudo=True).stdout.strip() == "0"
    monkeypatch.setenv("MIGRATE_SUDO_PASSWORD", sandbox_hosts[1]["password_sudo_user_password"])
    with connect(f"bob@{alias}") as bob:
        assert bob.sudo_mode() == "password"
        assert bob.run("id -u", sudo=True).stdout.strip() == "0"
        assert bob.run("echo 'a b' | wc -w", sudo=True).stdout.strip() == "2"
    monkeypatch.setenv("MIGRATE_SUDO_PASSWORD", "wrong-password")
    with connect(f"bob@{alias}") as bob, pytest.raises(SudoError, match="wrong sudo password") as exc:
        bob.run("true", sudo=True)
    assert "rejected the password in $MIGRATE_SUDO_PASSWORD" in (exc.value.hint or "")


def test_password_sudo_without_terminal_or_env_is_a_clear_error(sandbox_hosts, monkeypatch):
    monkeypatch.delenv("MIGRATE_SUDO_PASSWORD", raising=False)
    with connect(f"bob@{sandbox_hosts[1]['alias']}") as bob, pytest.raises(SudoError, match="no terminal"):
        bob.run("true", sudo=True)
    monkeypatch.setenv("MIGRATE_SUDO_PASSWORD", "")  # set but empty: no password, not a wrong one
    with connect(f"bob@{sandbox_hosts[1]['alias']}") as bob, pytest.raises(SudoError, match="set but empty"):
        bob.run("true", sudo=True)


def test_put_bytes_and_read_text(remote1):
    remote1.put_bytes(b"hello\n", "/tmp/migrate-put test", mode=0o640)
    assert remote1.read_text("/tmp/migrate-put test") == "hello\n"
    assert remote1.run("stat -c %a '/tmp/migrate-put test'").stdout.strip() == "640"
    remote1.put_bytes(b"root file\n", "/etc/migrate-put-test", mode=0o644, sudo=True)
    assert remote1.run("stat -c '%U %a' /etc/migrate-put-test").stdout.strip() == "root 644"
    remote1.run("rm -f /etc/migrate-put-test", sudo=True)
    assert remote1.read_text("/nonexistent/file") is None
    assert remote1.run("ls -A ~/.migrate/tmp").stdout.strip() == ""


def test_openssh_argv_reaches_the_same_host_with_the_same_checks(remote1):
    argv = remote1.openssh_argv() + ["hostname"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == remote1.run("hostname").stdout.strip()


def test_sandbox_ssh_config_works_with_plain_openssh(sandbox_hosts, tmp_path):
    res = run_cli("sandbox", "ssh-config")
    assert res.code == 0
    cfg = tmp_path / "sb.conf"
    cfg.write_text(res.stdout)
    for h in sandbox_hosts[:2]:
        out = subprocess.run(["ssh", "-F", str(cfg), "-o", "BatchMode=yes", h["alias"], "hostname"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == h["alias"]


def _private_config(tmp_path, host: dict, known_hosts_text: str) -> str:
    kh = tmp_path / "known_hosts"
    kh.write_text(known_hosts_text)
    cfg = tmp_path / "config"
    cfg.write_text(f"Host lab\n  HostName {host['hostname']}\n  Port {host['port']}\n  User alice\n"
                   f"  IdentityFile {host['identity_file']}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n")
    return str(cfg)


def test_unknown_host_key_is_refused_then_accepted_on_request(sandbox_hosts, tmp_path):
    h = sandbox_hosts[0]
    cfg = _private_config(tmp_path, h, "")
    env = {"MIGRATE_SSH_CONFIG": cfg, "MIGRATE_STATE_DIR": str(tmp_path / "nostate")}
    res = run_cli("doctor", "lab", env=env)
    assert_one_line_error(res, "unknown host key", "SHA256:", "--accept-new-host-key")
    assert (tmp_path / "known_hosts").read_text() == ""
    res = run_cli("doctor", "lab", "--accept-new-host-key", "--json", env=env)
    assert res.code == 0, res.output
    assert f"[{h['hostname']}]:{h['port']}" in (tmp_path / "known_hosts").read_text()
    # and now plain OpenSSH trusts the same file
    res = run_cli("doctor", "lab", env=env)
    assert res.code == 0


def test_changed_host_key_is_always_refused(sandbox_hosts, tmp_path):
    h = sandbox_hosts[0]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    other = (tmp_path / "other.pub").read_text().split()
    cfg = _private_config(tmp_path, h, f"[{h['hostname']}]:{h['port']} {other[0]} {other[1]}\n")
    env = {"MIGRATE_SSH_CONFIG": cfg, "MIGRATE_STATE_DIR": str(tmp_path / "nostate")}
    for extra in ([], ["--accept-new-host-key"]):
        res = run_cli("doctor", "lab", *extra, env=env)
        assert_one_line_error(res, "CHANGED", "ssh-keygen -R")


def _push_one_file(tmp_path, host: str, env: dict) -> tuple:
    """push-data (the OpenSSH path) of one small file into a fresh directory on `host`."""
    src = tmp_path / "payload.txt"
    src.write_text("hello\n")
    dest = f"/tmp/conn-test-{tmp_path.name}"
    return run_cli("push-data", str(src), f"{host}:{dest}/", env=env), f"{dest}/payload.txt"


def test_doctor_and_push_data_reach_a_host_defined_only_through_an_include(sandbox_hosts, tmp_path):
    h = sandbox_hosts[0]
    inc = tmp_path / "lab.conf"
    inc.write_text(f"Host incl-lab\n  HostName {h['hostname']}\n  Port {h['port']}\n  User alice\n"
                   f"  IdentityFile {h['identity_file']}\n  IdentitiesOnly yes\n"
                   f"  UserKnownHostsFile {Sandbox().known_hosts}\n")
    cfg = tmp_path / "config"
    cfg.write_text(f"Include {inc}\n")
    env = {"MIGRATE_SSH_CONFIG": str(cfg)}
    res = run_cli("doctor", "incl-lab", "--json", env=env)
    assert res.code == 0, res.output
    res, pushed = _push_one_file(tmp_path, "incl-lab", env)
    assert res.code == 0, res.output
    with connect(h["alias"]) as r:
        assert r.read_text(pushed) == "hello\n"
        r.run(shell.join(["rm", "-rf", pushed.rsplit("/", 1)[0]]))


SECOND_SSHD = "/run/migrate-second-sshd"


def _second_sshd(container: str, port: int, *, extra: str = "", files: dict[str, str] | None = None) -> None:
    """A second sshd in a shared sandbox host: its own port and host key, the host's settings otherwise
    (sshd keeps the first value; Port and HostKey add up, and the host's file sets neither), so the
    host's own sshd and host key stay as they are for every other test.

    Called again, it restarts with a freshly generated host key: a server that was reinstalled.
    """
    d = SECOND_SSHD
    extra_line = f"{extra}\\n" if extra else ""
    script = (f"[ -f {d}/pid ] && kill $(cat {d}/pid) && sleep 0.3; mkdir -p {d} && rm -f {d}/key {d}/key.pub && "
              f"ssh-keygen -q -t ed25519 -N '' -f {d}/key && "
              + "".join(f"printf '%s\\n' {shell.quote(text)} > {d}/{name} && "
                        for name, text in (files or {}).items())
              + f"printf 'Port {port}\\nHostKey {d}/key\\nPidFile {d}/pid\\n{extra_line}"
              "Include /etc/ssh/sshd_config\\n' "
              f">{d}/sshd_config && /usr/sbin/sshd -f {d}/sshd_config")
    subprocess.run(["docker", "exec", container, "sh", "-c", script], check=True, timeout=60)


def _stop_second_sshd(container: str) -> None:
    subprocess.run(["docker", "exec", container, "sh", "-c",
                    f"[ -f {SECOND_SSHD}/pid ] && kill $(cat {SECOND_SSHD}/pid); rm -rf {SECOND_SSHD}"],
                   timeout=60)


def test_accept_new_in_ssh_config_and_changed_keys_are_one_policy_on_both_paths(sandbox_hosts, tmp_path):
    h = sandbox_hosts[0]
    port = 2299
    kh = tmp_path / "known_hosts"
    cfg = tmp_path / "config"
    cfg.write_text(f"Host lab\n  HostName {h['ip']}\n  Port {port}\n  User alice\n"
                   f"  IdentityFile {h['identity_file']}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n"
                   "  StrictHostKeyChecking accept-new\n")
    env = {"MIGRATE_SSH_CONFIG": str(cfg), "MIGRATE_STATE_DIR": str(tmp_path / "nostate")}
    name = f"[{h['ip']}]:{port}"
    _second_sshd(h["container"], port)
    try:
        # a new key: push-data (OpenSSH) and doctor (paramiko) both accept it and record it
        kh.write_text("")
        res, _ = _push_one_file(tmp_path, "lab", env)
        assert res.code == 0, res.output
        assert name in kh.read_text()
        kh.write_text("")
        res = run_cli("doctor", "lab", "--json", env=env)
        assert res.code == 0, res.output
        assert name in kh.read_text()
        # a changed key: refused on both paths with the same one-line error, accept-new or not
        _second_sshd(h["container"], port)
        res, _ = _push_one_file(tmp_path, "lab", env)
        assert_one_line_error(res, "CHANGED", "ssh-keygen -R")
        res = run_cli("doctor", "lab", env=env)
        assert_one_line_error(res, "CHANGED", "ssh-keygen -R")
    finally:
        _stop_second_sshd(h["container"])
        subprocess.run(["docker", "exec", h["container"], "rm", "-rf", f"/tmp/conn-test-{tmp_path.name}"], timeout=60)


def test_sandbox_state_files_are_private(sandbox_hosts):
    sb = Sandbox()
    for p in (sb.key, sb.known_hosts, sb.ssh_config, sb.hosts_json):
        assert p.stat().st_mode & 0o077 == 0, p


def test_identity_agent_and_certificate_file_work_on_both_paths(sandbox_hosts, tmp_path, monkeypatch):
    """ssh_config's IdentityAgent (a key held only by a private ssh-agent) and CertificateFile (a user
    certificate stored away from its key, accepted by an sshd through TrustedUserCAKeys) reach the host
    on the Fabric path (doctor) and the OpenSSH path (push-data) alike."""
    h = sandbox_hosts[0]
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    kh = tmp_path / "known_hosts"
    kh.write_text(subprocess.run(["cat", Sandbox().known_hosts], capture_output=True, text=True).stdout)
    env = {"MIGRATE_SSH_CONFIG": str(tmp_path / "config"), "MIGRATE_STATE_DIR": str(tmp_path / "nostate"),
           "SSH_AUTH_SOCK": ""}
    pushed = f"/tmp/conn-test-{tmp_path.name}/payload.txt"
    # 1. IdentityAgent: the sandbox key lives only in an agent at a private socket
    sock = tmp_path / "agent.sock"
    with ssh_agent_holding(h["identity_file"], sock):
        (tmp_path / "config").write_text(
            f"Host lab\n  HostName {h['hostname']}\n  Port {h['port']}\n  User alice\n"
            f"  IdentityFile {tmp_path}/no-such-key\n  IdentityAgent {sock}\n  UserKnownHostsFile {kh}\n")
        res = run_cli("doctor", "lab", "--json", env=env)
        assert res.code == 0, res.output
        res, _ = _push_one_file(tmp_path, "lab", env)
        assert res.code == 0, res.output
        # and without the agent the same config is refused: the agent is what let us in
        (tmp_path / "config").write_text((tmp_path / "config").read_text().replace(str(sock), "none"))
        assert_one_line_error(run_cli("doctor", "lab", env=env), "authentication failed")
    # 2. CertificateFile: a fresh key that no authorized_keys lists, certified by a CA a second sshd trusts
    port = 2298
    for name in ("ca", "user"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)], check=True)
    subprocess.run(["ssh-keygen", "-q", "-s", str(tmp_path / "ca"), "-I", "lab", "-n", "alice", "-V", "+1h",
                    str(tmp_path / "user.pub")], check=True)
    (tmp_path / "certs").mkdir()
    (tmp_path / "user-cert.pub").rename(tmp_path / "certs" / "alice.pub")
    ca_pub = (tmp_path / "ca.pub").read_text().strip()
    _second_sshd(h["container"], port, extra=f"TrustedUserCAKeys {SECOND_SSHD}/ca.pub", files={"ca.pub": ca_pub})
    try:
        (tmp_path / "config").write_text(
            f"Host lab\n  HostName {h['ip']}\n  Port {port}\n  User alice\n  IdentityFile {tmp_path}/user\n"
            f"  CertificateFile {tmp_path}/certs/alice.pub\n  IdentitiesOnly yes\n  IdentityAgent none\n"
            f"  UserKnownHostsFile {kh}\n  StrictHostKeyChecking accept-new\n")
        res = run_cli("doctor", "lab", "--json", env=env)
        assert res.code == 0, res.output
        res, _ = _push_one_file(tmp_path, "lab", env)
        assert res.code == 0, res.output
    finally:
        _stop_second_sshd(h["container"])
        subprocess.run(["docker", "exec", h["container"], "rm", "-rf", pushed.rsplit("/", 1)[0]], timeout=60)


def test_an_unused_address_on_the_sandbox_network_says_no_route_to_host(sandbox_hosts):
    """Issue 20: an address nothing answers at (no ARP reply) was reported as "connection refused"."""
    import ipaddress

    addr = str(ipaddress.ip_network(Sandbox().s.subnet).network_address + 250)  # hosts are .11, .12, ...
    res = run_cli("doctor", f"alice@{addr}", "--connect-timeout", "15")
    assert_one_line_error(res, f"cannot connect to {addr} port 22: no route to host")


def test_the_early_login_of_push_data_fails_once_and_is_reported_as_the_cli_would(sandbox_hosts, tmp_path):
    """migrate/early.py starts push-data's login before the CLI's imports. A host it cannot log in to
    (here: its host key is unknown) is reported by the verb in the usual words, with no second login
    attempt: the early master, then the paramiko layer that says why (2 connections, as before)."""
    from migrate.remote.roundtrips import ENV, tally

    h = sandbox_hosts[0]
    cfg = _private_config(tmp_path, h, "")
    counted = tmp_path / "rt"
    env = {"MIGRATE_SSH_CONFIG": cfg, "MIGRATE_STATE_DIR": str(tmp_path / "nostate"), ENV: str(counted)}
    res, _landing = _push_one_file(tmp_path, "lab", env)
    assert_one_line_error(res, "unknown host key", "SHA256:", "--accept-new-host-key")
    assert tally(counted.read_text())["connect"] == 2, counted.read_text()


def test_an_early_login_the_cli_never_uses_is_closed_when_migrate_exits(sandbox_hosts, tmp_path):
    """A usage error found by click after the early login started: the process leaves no ssh master."""
    import os
    import sys
    from pathlib import Path

    from migrate.remote.roundtrips import ENV, tally

    (tmp_path / "d").mkdir()
    counted = tmp_path / "rt"
    proc = subprocess.Popen([sys.executable, "-m", "migrate", "push-data", str(tmp_path / "d"),
                             f"{sandbox_hosts[0]['alias']}:/tmp/early-{tmp_path.name}", "--method", "bogus"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, ENV: str(counted)})
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "bogus" in err, err
    assert tally(counted.read_text())["connect"] == 1  # the early login did start
    socket_of_run = f"/{proc.pid}-".encode()
    left = []
    for p in Path("/proc").iterdir():
        try:
            argv = (p / "cmdline").read_bytes().split(b"\0") if p.name.isdigit() else []
        except OSError:
            continue
        if argv and argv[0].endswith(b"ssh") and b"-M" in argv and any(socket_of_run in a for a in argv):
            left.append(argv)
    assert left == []
