import hashlib
import json

import pytest

from migrate.errors import MigrateError, UsageError
from migrate.setup import offline
from migrate.setup.options import HostSetupOptions, HostSetupReport, StepResult
from migrate.setup.orchestrator import setup_hosts, undo_hosts
from tests.conftest import run_cli


def test_api_contract_types_and_defaults():
    o = HostSetupOptions()
    assert (o.docker_source, o.nvidia, o.default_runtime, o.registry_mirrors, o.data_root) == \
        ("official", True, None, [], None)
    r = HostSetupReport(host="h", steps=[StepResult("a", "ok"), StepResult("b", "changed")])
    assert r.ok and r.changed == 1
    assert not HostSetupReport(host="h", steps=[StepResult("a", "failed")]).ok
    assert not HostSetupReport(host="h", error="boom").ok
    assert callable(setup_hosts) and callable(undo_hosts)


@pytest.mark.parametrize("args, needle", [
    (["host-setup"], "missing HOST"),
    (["host-setup", "h1", "--docker-source", "snap"], "bad --docker-source"),
    (["host-setup", "h1", "--docker-source", "mirror:nowhere"], "unknown Docker mirror"),
    (["host-setup", "h1", "--registry-mirror", "mirror.example"], "bad --registry-mirror"),
    (["host-setup", "h1", "--data-root", "docker"], "bad --data-root"),
    (["host-setup", "h1", "--undo", "--no-nvidia"], "--undo takes no setup options"),
    (["host-setup", "h1", "--for", "ubuntu:22.04"], "only go with --download-offline"),
    (["host-setup", "h1", "--download-offline", "/tmp/x", "--for", "ubuntu:22.04"], "give no HOST"),
    (["host-setup", "--download-offline", "/tmp/x"], "needs --for"),
    (["host-setup", "--download-offline", "/tmp/x", "--for", "fedora:40"], "bad --for"),
    (["host-setup", "--download-offline", "/tmp/x", "--for", "ubuntu:22.04", "--undo"], "cannot be combined"),
    (["host-setup", "h1", "h1"], "given twice"),
    (["host-setup", "alice@"], "malformed host"),
    (["host-setup", "h1", "--offline-dir", "/nonexistent/debs"], "no such directory"),
    (["host-setup", "h1", "--offline"], "say where they are"),
])
def test_bad_input_is_a_one_line_usage_error_and_nothing_runs(args, needle):
    res = run_cli(*args)
    assert res.code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], res.stderr
    assert "Traceback" not in res.output


def test_parse_target():
    assert offline.parse_target("ubuntu:22.04") == offline.Target("ubuntu", "jammy", "22.04")
    assert offline.parse_target("Debian:bookworm") == offline.Target("debian", "bookworm", "12")
    for bad in ("ubuntu", "ubuntu:", "ubuntu:9.04", "arch:rolling", ""):
        with pytest.raises(UsageError):
            offline.parse_target(bad)


def test_parse_simulated_and_status_stanzas(tmp_path):
    sim = "NOTE: simulation\nInst libc6 (2.36-9 Debian:12 [amd64])\nInst base-files (12.4)\nConf libc6 (2.36-9)\n"
    assert offline.parse_simulated(sim) == ["libc6", "base-files"]
    lists = [
        "Package: libc6\nVersion: 2.36-9\nPriority: required\nFilename: pool/l/libc6.deb\nSize: 1\nSHA256: ab\n\n"
        "Package: docker.io\nVersion: 20.10\nPriority: optional\nDepends: runc\n\n"
        "Package: base-files\nVersion: 12.4\nPriority: required\nEssential: yes\n"]
    assert offline.required_packages(lists) == ["base-files", "libc6"]
    status = offline.stanzas_for(lists, {"libc6", "base-files"})
    assert "Package: libc6\nStatus: install ok installed\nVersion: 2.36-9" in status
    assert "Filename:" not in status and "SHA256" not in status and "docker.io" not in status


def _deb(d, name, data=b"x"):
    p = d / name
    p.write_bytes(data)
    return p


def test_load_offline_set_splits_and_checks_sums(tmp_path):
    a = _deb(tmp_path, "docker.io_20.10.24_amd64.deb", b"engine")
    _deb(tmp_path, "runc_1.1.5_amd64.deb", b"runc")
    _deb(tmp_path, "nvidia-container-toolkit_1.17.8-1_amd64.deb", b"tk")
    _deb(tmp_path, "libnvidia-container1_1.17.8-1_amd64.deb", b"lib")
    (tmp_path / "SHA256SUMS").write_text(f"{hashlib.sha256(b'engine').hexdigest()}  {a.name}\n")
    (tmp_path / "migrate-offline.json").write_text(json.dumps({"for": "debian:12"}))
    s = offline.load_offline_set(str(tmp_path))
    assert [n for n, _ in s.engine] == ["docker.io", "runc"] and s.engine_package == "docker.io"
    assert [n for n, _ in s.nvidia] == ["libnvidia-container1", "nvidia-container-toolkit"]
    assert s.target == "debian:12"
    a.write_bytes(b"tampered")
    with pytest.raises(MigrateError) as exc:
        offline.load_offline_set(str(tmp_path))
    assert "do not match" in exc.value.message


def test_offline_file_names_must_be_apts(tmp_path):
    _deb(tmp_path, "docker.deb")
    with pytest.raises(UsageError):
        offline.load_offline_set(str(tmp_path))


def test_offline_set_for_debian_13_brings_the_separate_docker_cli():
    opts = HostSetupOptions(docker_source="distro", nvidia=False)
    debian = offline.parse_target
    assert offline.top_packages(opts, "distro", debian("debian:13")) == ["docker.io", "docker-cli"]
    assert offline.top_packages(opts, "distro", debian("debian:12")) == ["docker.io"]
    assert "docker-cli" not in offline.top_packages(opts, "official", debian("debian:13"))
