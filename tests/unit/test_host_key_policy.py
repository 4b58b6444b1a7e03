import paramiko
import pytest

from migrate.errors import HostKeyError
from migrate.remote.connection import VerifyingHostKeyPolicy, fingerprint
from migrate.remote.hosts import SshTarget


def _target(tmp_path, accept_new):
    return SshTarget(alias="lab", hostname="10.0.0.9", port=2200, user="u",
                     known_hosts_files=[str(tmp_path / "ssh" / "known_hosts")], accept_new_host_key=accept_new)


def test_unknown_key_is_refused_with_fingerprint_and_the_option_to_accept(tmp_path):
    key = paramiko.Ed25519Key.from_private_key_file(_keyfile(tmp_path))
    client = paramiko.SSHClient()
    with pytest.raises(HostKeyError) as exc:
        VerifyingHostKeyPolicy(_target(tmp_path, False)).missing_host_key(client, "[10.0.0.9]:2200", key)
    assert fingerprint(key) in exc.value.message
    assert "--accept-new-host-key" in exc.value.hint
    assert not (tmp_path / "ssh" / "known_hosts").exists()


def test_accept_new_appends_an_openssh_line(tmp_path):
    key = paramiko.Ed25519Key.from_private_key_file(_keyfile(tmp_path))
    client = paramiko.SSHClient()
    VerifyingHostKeyPolicy(_target(tmp_path, True)).missing_host_key(client, "[10.0.0.9]:2200", key)
    path = tmp_path / "ssh" / "known_hosts"
    assert path.read_text() == f"[10.0.0.9]:2200 ssh-ed25519 {key.get_base64()}\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert client.get_host_keys().lookup("[10.0.0.9]:2200")
    # the file parses back as known_hosts
    hk = paramiko.HostKeys(str(path))
    assert hk.lookup("[10.0.0.9]:2200")["ssh-ed25519"] == key


def test_fingerprint_matches_ssh_keygen(tmp_path):
    import subprocess
    path = _keyfile(tmp_path)
    key = paramiko.Ed25519Key.from_private_key_file(path)
    out = subprocess.run(["ssh-keygen", "-lf", path + ".pub"], capture_output=True, text=True).stdout
    assert fingerprint(key) in out


def _keyfile(tmp_path):
    import subprocess
    path = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return str(path)
