"""push-image --via auto and playbook `pull:` with the host dockerd's `registry-mirrors`: a Docker Hub
base the host reaches only through its mirror is pulled there, not pushed over SSH (recorded probe
output on a FakeHost; the probe script itself is exercised in test_image_registry.py)."""

from __future__ import annotations

import json
import re

import pytest

from migrate.image import credentials as C
from migrate.image import registry as R
from migrate.image import remote as R_remote
from migrate.image import via as V
from migrate.image.local import LocalImage
from migrate.remote.hosts import ConnectOptions
from tests.fakehost import FakeHost

D = [f"sha256:{c * 64}" for c in "abc"]
BASE = "sha256:" + "9" * 64
MIRROR = "http://10.0.0.5:5000/"
FACTS = """arch=x86_64
home=/home/alice
uid=1000
disk.home=5000000 /
docker=direct
info=20.10.24+dfsg1|overlay2|/var/lib/docker|linux|[["Backing Filesystem","extfs"]]|mirrors=["{mirror}"]
tmpdir=/var/lib/docker/tmp
disk.docker_root=9000000 /
disk.docker_tmp=9000000 /
inventory=done
"""
LISTING = (f"sha256:222|app:2,||{D[0]},{D[1]},{D[2]},\n"
           f"sha256:333|busybox:1,|busybox@{BASE},|{D[0]},{D[1]},\n")   # a Docker Hub base (docker.io/library)
HUB = re.escape("https://registry-1.docker.io/v2/library/busybox/manifests/")
VIA_MIRROR = re.escape(f"http://10.0.0.5:5000/v2/library/busybox/manifests/{BASE}")


def test_docker_info_mirrors_are_read_from_the_facts():
    f = R_remote.parse_facts(FACTS.format(mirror=MIRROR))
    assert f.registry_mirrors == [MIRROR] and f.storage_driver == "overlay2" and f.os_type == "linux"
    none = R_remote.parse_facts(FACTS.replace('["{mirror}"]', "null"))
    assert none.registry_mirrors == [] and none.driver_status == [["Backing Filesystem", "extfs"]]
    old = R_remote.parse_facts("info=20.10.24|overlay2|/x|linux|[]\n")   # a facts line without the field
    assert old.registry_mirrors == [] and old.root_dir == "/x"
    assert "RegistryConfig.Mirrors" in R_remote.FACTS_SCRIPT


def test_probe_through_a_mirror_asks_the_mirror_for_the_hub_repo():
    ref = R.parse_ref(f"busybox@{BASE}")
    assert R.mirror_target(ref, MIRROR) == (f"http://10.0.0.5:5000/v2/library/busybox/manifests/{BASE}",
                                            "10.0.0.5:5000")
    assert R.mirror_target(ref, "mirror.gcr.io")[0].startswith("https://mirror.gcr.io/v2/library/busybox/")
    assert re.search(VIA_MIRROR, R.probe_command(ref, mirror=MIRROR))
    assert re.search(HUB, R.probe_command(ref))


def push_dry_run(monkeypatch, host: FakeHost):
    from migrate.image import push

    monkeypatch.setattr(push, "connect", lambda h, conn: host)
    monkeypatch.setattr(push, "inspect_images", lambda names: [
        LocalImage("app:2", "sha256:222", D, arch="amd64", size=10 << 20, tags=["app:2"])])
    monkeypatch.setattr(V, "_list_local_images", lambda: LISTING)
    monkeypatch.setattr(C, "lookup", lambda registry, config_dir=None: C.Credential("alice", "HUBSECRET"))
    [r] = push.push_images(["app:2"], ["gpu"], ConnectOptions(), push.PushImageOptions(dry_run=True, via="auto"))
    return r


def test_a_hub_base_behind_a_firewall_is_pulled_through_the_hosts_mirror(monkeypatch):
    host = (FakeHost().reply(r"docker_root", FACTS.format(mirror=MIRROR))
            .reply(VIA_MIRROR, "probe=ok\ndetail=\n")
            .reply(HUB, "probe=unreachable\ndetail=[Errno 101] Network is unreachable\n"))
    r = push_dry_run(monkeypatch, host)
    assert r.via == "pull" and r.pulled == f"docker.io/library/busybox@{BASE}", r
    assert f"docker.io through its registry mirror {MIRROR}" in r.via_reason
    assert host.mutations() == []
    probes = [rec for rec in host.log if "python3 -I -c" in rec.command]
    assert len(probes) == 1 and re.search(VIA_MIRROR, probes[0].command)
    assert probes[0].data == b""   # Docker Hub's credentials never go to the mirror


@pytest.mark.parametrize("mirror_answer,direct_answer,via", [
    ("probe=notfound\ndetail=HTTP 404\n", "probe=ok\ndetail=\n", "pull"),      # mirror lacks it, the Hub is reachable
    ("probe=unreachable\ndetail=refused\n", "probe=unreachable\ndetail=no route\n", "push"),  # neither: SSH
])
def test_the_hub_itself_is_asked_when_the_mirror_cannot_serve(monkeypatch, mirror_answer, direct_answer, via):
    host = (FakeHost().reply(r"docker_root", FACTS.format(mirror=MIRROR))
            .reply(VIA_MIRROR, mirror_answer).reply(HUB, direct_answer))
    r = push_dry_run(monkeypatch, host)
    if via == "pull":
        assert "mirror" not in r.via_reason, r  # pulled from the Hub itself
    else:  # the reason of the push names the mirror's failure too, not only the Hub's
        assert r.via_reason.startswith("docker.io is unreachable from the host: no route; its registry mirror "
                                       f"{MIRROR} cannot serve it either (unreachable: refused)"), r
    assert r.via == via, r
    asked = [rec.command for rec in host.log if "python3 -I -c" in rec.command]
    assert len(asked) == 2 and re.search(VIA_MIRROR, asked[0]) and re.search(HUB, asked[1])


def test_without_mirrors_nothing_changes(monkeypatch):
    host = (FakeHost().reply(r"docker_root", FACTS.replace('["{mirror}"]', "null"))
            .reply(HUB, "probe=ok\ndetail=\n"))
    r = push_dry_run(monkeypatch, host)
    assert r.via == "pull" and "mirror" not in r.via_reason
    [probe] = [rec for rec in host.log if "python3 -I -c" in rec.command]
    assert b"HUBSECRET" in probe.data  # the Hub itself gets the Hub's credentials (on stdin)


def playbook_dry_run(monkeypatch, mirror_answer: str):
    """A playbook's `pull: busybox:1.36` (--dry-run) on a host whose mirror answers `mirror_answer` and
    that cannot reach the Hub: (result, host)."""
    from migrate.image import hostpull

    host = (FakeHost().reply(r"docker_root|docker info", FACTS.format(mirror=MIRROR))
            .reply(r"image inspect", exit_code=1)
            .reply(re.escape("http://10.0.0.5:5000/v2/library/busybox/manifests/1.36"), mirror_answer)
            .reply(re.escape("https://registry-1.docker.io/"), "probe=unreachable\ndetail=no route\n"))
    monkeypatch.setattr(hostpull, "connect", lambda h, conn: host)
    monkeypatch.setattr(C, "lookup", lambda registry, config_dir=None: None)
    [r] = hostpull.pull_images(["busybox:1.36"], ["gpu"], ConnectOptions(), dry_run=True)
    return r, host


def test_playbook_pull_of_a_hub_image_goes_through_the_mirror(monkeypatch):
    r, host = playbook_dry_run(monkeypatch, "probe=ok\n")
    assert r.status == "would pull" and f"through its registry mirror {MIRROR}" in r.detail, r
    assert host.mutations() == []


def test_playbook_pull_names_the_mirror_when_neither_it_nor_the_hub_serves(monkeypatch):
    r, _ = playbook_dry_run(monkeypatch, "probe=notfound\n")
    assert r.status == "failed" and f"its registry mirror {MIRROR} cannot serve it either (notfound)" in r.error, r


def test_a_mirror_failure_is_not_cached_into_the_registrys_verdict():
    hub = R.ProbeResult("unreachable", "no route")
    ref = R.parse_ref(f"busybox@{BASE}")
    got = V.through_mirrors(lambda m: R.ProbeResult("unreachable", "refused") if m else hub, ref, [MIRROR])
    assert got.mirror_failures and hub.mirror_failures == []   # Registries keeps `hub` for the next image
    other = V.through_mirrors(lambda m: hub, R.parse_ref("nvcr.io/nvidia/x:1"), [MIRROR])
    assert other is hub  # a registry that is not the Hub never asks a mirror


@pytest.mark.parametrize("mirror", ["", MIRROR])
def test_the_hosts_pull_gets_the_hub_login_only_when_no_mirror_serves_it(monkeypatch, mirror):
    """dockerd offers a pull's credentials to every mirror it tries (moby/moby#42022): a pull through a
    mirror, which answered anonymously, gets none."""
    from migrate.image import overlap
    from migrate.image.remote import RemoteDocker

    hub = C.Credential("alice", "HUBSECRET")
    given = []
    monkeypatch.setattr(overlap, "pull_on_host", lambda remote, facts, decision, cred, *a: given.append(cred))
    img = LocalImage("app:2", "sha256:222", D, arch="amd64", size=10 << 20, tags=["app:2"])

    class Session:
        name = "alice@gpu"
        remote = FakeHost()
        facts = RemoteDocker()
        via = {img.image_id: V.ViaDecision("pull", "why", ref=f"docker.io/library/busybox@{BASE}", layers=2,
                                           registry=R.DOCKER_HUB, mirror=mirror)}

    job = overlap.PullJob(Session(), [img], V.Registries("auto", lookup=lambda registry: hub), "auto")
    assert job.wait(img.image_id) is None
    assert given == [None if mirror else hub]


def test_a_playbook_pull_through_the_mirror_hands_the_host_no_hub_login(monkeypatch):
    from migrate.image import hostpull

    host = (FakeHost().reply(r"docker_root|docker info", FACTS.format(mirror=MIRROR))
            .reply(r"image inspect", exit_code=1)
            .reply(re.escape("http://10.0.0.5:5000/v2/library/busybox/manifests/1.36"), "probe=ok\n")
            .reply(r"migrate-pull", ""))
    monkeypatch.setattr(hostpull, "connect", lambda h, conn: host)
    monkeypatch.setattr(C, "lookup", lambda registry, config_dir=None: C.Credential("alice", "HUBSECRET"))
    [r] = hostpull.pull_images(["busybox:1.36"], ["gpu"], ConnectOptions())
    assert r.status == "pulled" and f"through its registry mirror {MIRROR}" in r.detail, r
    [pull] = [rec for rec in host.log if "migrate-pull" in rec.command]
    assert b"HUBSECRET" not in pull.data and json.loads(pull.data) == {"auths": {}}
