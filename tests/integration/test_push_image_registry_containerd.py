"""push-image --via auto onto a host whose Docker keeps images in the containerd image store (Debian 13,
docker.io 28.5 from sid, installed by `migrate host-setup`), pulling from the same real registry setup
as test_push_image_registry.py. The `registry` sandbox is brought up in the trixie/containerd flavour
here (down first: a sandbox has one flavour) and down again at the end, so the bookworm module finds
it fresh whatever the order."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile

import pytest

from tests.conftest import run_cli
from tests.integration.conftest import sandbox_env
from tests.integration.test_modern_hosts import FLAVOUR
from tests.integration.test_push_image import in_host, layer_bytes, sh
from tests.integration.test_push_image_registry import (
    CHILD,
    PASSWORD,
    clean_target,
    leftovers,
    make_images,
    push,
    remove_images,
    secrets_on,
    start_registry,
    stop_registry,
)

pytestmark = pytest.mark.release("trixie")


@pytest.fixture(scope="module")
def c8d_registry(dedicated_sandbox, tmp_path_factory):
    env = sandbox_env("registry")
    run_cli("sandbox", "down", env=env, timeout=300)
    reg_host, target = dedicated_sandbox("registry", 2, extra=FLAVOUR)
    res = run_cli("host-setup", target["alias"], "--docker-source", "distro", "--no-nvidia", env=target["env"],
                  timeout=900)
    assert res.code == 0, res.output
    info = in_host(target, "docker info --format '{{.ServerVersion}} {{json .DriverStatus}}'")
    assert "io.containerd.snapshotter" in info, info
    work = tmp_path_factory.mktemp("c8dregistry")
    facts = start_registry(reg_host, target, work)
    try:
        make_images(facts, work)
        yield dict(facts, env=dict(target["env"], DOCKER_CONFIG=str(facts["good"])))
    finally:
        remove_images(facts)
        stop_registry(facts)
        run_cli("sandbox", "down", env=env, timeout=300)


def test_containerd_host_pulls_the_base_and_gets_only_the_top_layer(c8d_registry):
    target, name = c8d_registry["target"], c8d_registry["name"]
    clean_target(target, name)
    res = run_cli("-vv", "push-image", CHILD, target["alias"], "--json", env=c8d_registry["env"])
    if res.code != 0:
        pytest.fail(res.stderr[-6000:] + in_host(target, "docker image ls -a --digests", check=False))
    [r] = json.loads(res.stdout)
    if r["via"] != "pull":
        pytest.fail(f"not pulled: {r['via_reason']}\n{res.stderr}")
    assert r["status"] == "sent" and r["layers_sent"] == 1, r
    assert "OCI" in r["detail"] or "while the host pulled" in r["detail"], r
    assert r["bytes_sent"] <= layer_bytes(CHILD, 1) + 64 * 1024, r
    local_layers = sh("docker", "image", "inspect", "--format", "{{json .RootFS.Layers}}", CHILD).strip()
    remote_layers = in_host(target, f"docker image inspect --format '{{{{json .RootFS.Layers}}}}' {CHILD}")
    assert remote_layers.strip() == local_layers
    assert in_host(target, f"docker run --rm {CHILD}").strip()
    assert secrets_on(target) == "" and leftovers(target) == ""
    assert PASSWORD not in res.output  # not even in -vv's command lines
    [r] = json.loads(push(CHILD, target["alias"], "--json", env=c8d_registry["env"]).stdout)
    assert r["status"] == "up to date" and r["bytes_sent"] == 0, r


def exported_layers(target: dict, ref: str) -> list[int]:
    """Sizes of the layer blobs `docker save` on the host writes for `ref` (each must be real)."""
    export = subprocess.run(["docker", "exec", target["container"], "docker", "save", ref], capture_output=True,
                            check=True, timeout=300).stdout
    with tarfile.open(fileobj=io.BytesIO(export)) as tar:
        [entry] = json.loads(tar.extractfile("manifest.json").read())
        assert entry["Config"].endswith(sh("docker", "image", "inspect", "--format", "{{.Id}}", CHILD)
                                        .strip().split(":")[1])
        return [tar.getmember(name).size for name in entry["Layers"]]


def test_a_base_the_host_pulled_itself_is_named_not_sent_and_exports_whole(c8d_registry):
    """The host keeps the base as its pull left it (compressed blobs). Pushing the child again sends only the
    top layer: the layout names the registry's blobs of the base. `docker save` there has every layer, and a
    whole `docker save | docker load` of the local image over it leaves the same ID."""
    target = c8d_registry["target"]
    assert [size > 0 for size in exported_layers(target, CHILD)] == [True, True]  # after the --via pull above
    in_host(target, f"docker image rm {CHILD} >/dev/null")  # the pulled base stays
    [r] = json.loads(push(CHILD, target["alias"], "--json", env=c8d_registry["env"]).stdout)
    assert r["status"] == "sent" and r["via"] == "push" and "already has" in r["via_reason"], r
    assert r["bytes_sent"] <= layer_bytes(CHILD, 1) + 64 * 1024, r  # the 24 MiB base did not travel again
    assert all(size > 0 for size in exported_layers(target, CHILD))
    fmt = "'{{.Id}} {{json .RootFS.Layers}}'"
    pushed = in_host(target, f"docker image inspect --format {fmt} {CHILD}")
    whole = subprocess.run(["docker", "save", CHILD], capture_output=True, check=True, timeout=300).stdout
    sh("docker", "exec", "-i", target["container"], "docker", "load", input=whole)
    assert in_host(target, f"docker image inspect --format {fmt} {CHILD}") == pushed
