"""push-image --via auto onto a host whose Docker keeps images in the containerd image store (Debian 13,
docker.io 28.5 from sid, installed by `migrate host-setup`), pulling from the same real registry setup
as test_push_image_registry.py. The `registry` sandbox is brought up in the trixie/containerd flavour
here (down first: a sandbox has one flavour) and down again at the end, so the bookworm module finds
it fresh whatever the order."""

from __future__ import annotations

import json

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
