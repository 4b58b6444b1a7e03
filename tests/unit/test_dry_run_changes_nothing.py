"""host-setup --dry-run on a recording host issues no command that changes the host (issue 13).

host-setup reaches its hosts through `connect()` in migrate.setup.orchestrator; the test puts the
recording host there (no transport file changes). push-data and pull-data have their own dry-run
tests in test_data_orchestrator.py.
"""

from __future__ import annotations

import pytest

from migrate.remote.hosts import ConnectOptions
from migrate.setup import orchestrator
from migrate.setup.options import HostSetupOptions
from tests.fakehost import FakeHost

# a fresh Debian 12 like the sandbox: no docker, passwordless sudo, a daemon.json only root may read
FRESH_DEBIAN = "\n".join([
    "os.id=debian", "os.version_id=12", "os.codename=bookworm", "os.pretty=Debian GNU/Linux 12 (bookworm)",
    "arch=x86_64", "dpkg_arch=amd64", "cgroup=2", "systemd=yes", "user=alice", "uid=1000", "groups=alice sudo",
    "home=/home/alice", "sudo=nopasswd", "hs.now=1800000000", "hs.downloader=apt-helper",
    "hs.keyrings_dir=yes", "hs.pkg=ca-certificates|20230311", "hs.daemon_json.exists=yes",
    "hs.daemon_json.mode=600", "hs.daemon_json.readable=no",
]) + "\n"


@pytest.fixture
def host(monkeypatch) -> FakeHost:
    fake = FakeHost().reply(r"hs\.%s", FRESH_DEBIAN).reply(r"daemon\.json", "{}\n")
    monkeypatch.setattr(orchestrator, "connect", lambda h, conn: fake)
    monkeypatch.setattr(orchestrator, "target_for", lambda h, conn: None)
    return fake


def test_host_setup_dry_run_plans_changes_but_issues_no_mutating_command(host):
    [report] = orchestrator.setup_hosts(["gpu"], ConnectOptions(), HostSetupOptions(docker_source="distro"),
                                        dry_run=True, quiet=True)
    assert report.error is None and report.dry_run
    assert any(s.status == "changed" for s in report.steps)   # there is something it would change...
    assert host.commands(root=True) == ["cat /etc/docker/daemon.json"]   # ...it only read, as root
    assert host.mutations() == []


def test_host_setup_without_dry_run_does_change_the_host(host):
    """The same host without --dry-run: the recording host sees the changes (so the test above can fail)."""
    orchestrator.setup_hosts(["gpu"], ConnectOptions(), HostSetupOptions(docker_source="distro"), quiet=True)
    assert any("apt-get" in r.command and r.root for r in host.mutations())


# -- push-image ----------------------------------------------------------------------------------
IMAGE_FACTS = """arch=x86_64
home=/home/alice
uid=1000
disk.home=5000000 /
docker=direct
info=20.10.24+dfsg1|overlay2|/var/lib/docker|linux|[["Backing Filesystem","extfs"]]
tmpdir=/var/lib/docker/tmp
disk.docker_root=9000000 /
disk.docker_tmp=9000000 /
img=sha256:111|app:1,|sha256:aaa,|amd64
inventory=done
"""


def test_push_image_dry_run_plans_a_send_but_issues_no_mutating_command(monkeypatch):
    """push-image reaches hosts through `connect()` in migrate.image.push; its streams (image/stream.py)
    start only after the dry-run return, so the recording host sees every command a dry run issues."""
    from migrate.image import push
    from migrate.image.local import LocalImage

    fake = FakeHost().reply(r"docker_root", IMAGE_FACTS)
    monkeypatch.setattr(push, "connect", lambda h, conn: fake)
    monkeypatch.setattr(push, "inspect_images", lambda names: [
        LocalImage("app:2", "sha256:222", ["sha256:aaa", "sha256:bbb"], arch="amd64", size=10 << 20, tags=["app:2"])])
    [result] = push.push_images(["app:2"], ["gpu"], ConnectOptions(), push.PushImageOptions(dry_run=True))
    assert result.status == "would send", result.error
    assert fake.commands() and fake.mutations() == []


@pytest.mark.parametrize("access", ["direct", "group", "sudo", "sudo-password"])
def test_what_a_real_push_image_sends_counts_as_mutating(access):
    """The control for the dry-run test above: the commands a push issues once it is past the dry-run
    return (the load stream, for every docker access mode, a SIF build, the tag and the partial-tag
    cleanup) are what the recording host's classifier calls mutating, so a dry run that issued one
    would fail that test."""
    from migrate.image import remote as rdocker
    from tests.fakehost import is_mutating

    for script in (rdocker.load_script(None), rdocker.load_script("zstd"),
                   rdocker.sif_script("apptainer", "/tmp/x y.tar", "/home/alice/app.sif", None)):
        assert is_mutating(rdocker.stream_command(access, script)), (access, script)
    for argv in (["tag", "sha256:222", "app:2"], ["rmi", "migrate-partial/app:1"]):
        assert is_mutating(rdocker.docker_command(access, argv)[0]), (access, argv)
    assert not is_mutating(rdocker.docker_command(access, ["image", "inspect", "app:2"])[0])
