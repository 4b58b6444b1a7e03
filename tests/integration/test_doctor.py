"""`migrate doctor` as a user runs it, against the sandbox."""

import json

from tests.conftest import assert_one_line_error, run_cli


def test_doctor_reports_os_docker_missing_sudo_disk_and_gpu(sandbox_hosts):
    res = run_cli("doctor", sandbox_hosts[0]["alias"])
    assert res.code == 0, res.output
    out = res.stdout
    for needle in ("Debian GNU/Linux 12", "docker", "not installed", "passwordless sudo", "disk home",
                   "/var/lib/docker", "nvidia driver", "python3", "rsync"):
        assert needle in out, needle


def test_doctor_json_parses(sandbox_hosts):
    res = run_cli("doctor", sandbox_hosts[1]["alias"], "--json")
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert data["facts"]["os_id"] == "debian"
    assert data["facts"]["docker"]["installed"] is False
    assert data["facts"]["sudo"] == "nopasswd"
    assert {c["name"] for c in data["checks"]} >= {"os", "sudo", "docker", "nvidia driver", "disk home"}


def test_doctor_sees_password_sudo_for_bob(sandbox_hosts):
    h = sandbox_hosts[1]
    env = {"MIGRATE_SUDO_PASSWORD": h["password_sudo_user_password"]}
    res = run_cli("doctor", f"bob@{h['alias']}", "--sudo", env=env)
    assert res.code == 0, res.output
    assert "sudo with password" in res.stdout
    assert h["password_sudo_user_password"] not in res.output


def test_unresolvable_host(sandbox_hosts):
    assert_one_line_error(run_cli("doctor", "nosuchhost.invalid"), "cannot resolve host")


def test_refused_port(sandbox_hosts):
    assert_one_line_error(run_cli("doctor", sandbox_hosts[0]["alias"], "--port", "1"), "connection refused")


def test_wrong_sudo_password(sandbox_hosts):
    h = sandbox_hosts[1]
    res = run_cli("doctor", f"bob@{h['alias']}", "--sudo", env={"MIGRATE_SUDO_PASSWORD": "not-the-password"})
    assert_one_line_error(res, "wrong sudo password")


def test_unknown_user_authentication_fails_cleanly(sandbox_hosts):
    assert_one_line_error(run_cli("doctor", f"mallory@{sandbox_hosts[0]['alias']}"), "authentication failed")
