"""Sandbox releases, engine sources and image stores: validation and the one-flavour-per-sandbox rule."""

import json
import subprocess

import pytest

from migrate.errors import UsageError
from migrate.sandbox import recipe
from migrate.sandbox.manager import Sandbox, SandboxSettings


def test_flavour_validation():
    s = SandboxSettings().with_flavour("trixie", "sid", "containerd")
    assert s.image == "migrate-sandbox:trixie"
    assert s.flavour == {"release": "trixie", "docker_from": "sid", "image_store": "containerd"}
    assert SandboxSettings().image == "migrate-sandbox:bookworm"
    with pytest.raises(UsageError, match="unknown sandbox release"):
        SandboxSettings().with_flavour("sid")
    with pytest.raises(UsageError, match="needs --release trixie"):
        SandboxSettings().with_flavour("bookworm", "sid")
    with pytest.raises(UsageError, match="unknown image store"):
        SandboxSettings().with_flavour("trixie", "", "zfs")


def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("MIGRATE_SANDBOX_RELEASE", "trixie")
    monkeypatch.setenv("MIGRATE_SANDBOX_IMAGE_STORE", "containerd")
    s = SandboxSettings.from_env()
    assert (s.suite, s.docker_from, s.image_store) == ("trixie", "", "containerd")


def test_hosts_of_one_sandbox_share_one_flavour(monkeypatch):
    sb = Sandbox(SandboxSettings(name="unitflavour"))
    monkeypatch.setattr(sb, "recorded_flavour",
                        lambda: {"release": "bookworm", "docker_from": "", "image_store": "overlay2"})
    sb.choose_flavour(None, None, None)  # nothing asked: what is up
    assert sb.s.suite == "bookworm"
    with pytest.raises(UsageError, match="is up as bookworm/overlay2"):
        sb.choose_flavour("trixie", None, None)
    monkeypatch.setattr(sb, "recorded_flavour", lambda: None)
    sb.choose_flavour("trixie", "sid", "containerd")
    assert sb.s.flavour == {"release": "trixie", "docker_from": "sid", "image_store": "containerd"}


def _configure(tmp_path, docker_from: str, image_store: str, daemon_json: str | None = None) -> dict:
    """Run the flavour part of CONFIGURE against a scratch root (paths rewritten under tmp_path)."""
    part = "#" + recipe.CONFIGURE.split("# --docker-from sid:", 1)[1].split('if [ "$GPUS" -gt 0 ]', 1)[0]
    part = part.replace("/etc/", f"{tmp_path}/etc/")
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/preferences.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text("Types: deb\nURIs: http://mirror.test/debian\n")
    if daemon_json is not None:
        (tmp_path / "etc/docker").mkdir(parents=True)
        (tmp_path / "etc/docker/daemon.json").write_text(daemon_json)
    env = {"DOCKER_FROM": docker_from, "IMAGE_STORE": image_store, "SID_PACKAGES": " ".join(recipe.SID_PACKAGES),
           "PATH": "/usr/bin:/bin"}
    subprocess.run(["sh", "-c", "set -eu\n" + part], env=env, check=True)
    out = {}
    for p in tmp_path.rglob("*"):
        if p.is_file():
            out[str(p.relative_to(tmp_path))] = p.read_text()
    return out


def test_docker_from_sid_pins_only_the_engine_packages(tmp_path):
    files = _configure(tmp_path, "sid", "overlay2")
    src = files["etc/apt/sources.list.d/migrate-sid.sources"]
    assert "URIs: http://mirror.test/debian" in src and "Suites: sid" in src
    prefs = files["etc/apt/preferences.d/migrate-sid"]
    assert "Package: *\nPin: release n=sid\nPin-Priority: 100" in prefs
    assert "Package: docker.io docker-cli" in prefs and "Pin-Priority: 990" in prefs
    assert "etc/docker/daemon.json" not in files


def test_containerd_store_is_merged_into_an_existing_daemon_json(tmp_path):
    files = _configure(tmp_path, "", "containerd", '{"log-driver": "local"}')
    cfg = json.loads(files["etc/docker/daemon.json"])
    assert cfg == {"log-driver": "local", "features": {"containerd-snapshotter": True}}
    assert "etc/apt/sources.list.d/migrate-sid.sources" not in files
