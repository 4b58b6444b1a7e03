"""push-image --via against a real registry (issue 15, part 2): Debian's `docker-registry` (Distribution
2.8) on one sandbox host, served with TLS (a CA made here with openssl) and htpasswd auth (bcrypt); the
target host (Docker 20.10) and the local engine trust the CA through /etc/docker/certs.d. A base image
is pushed there from the local engine and pulled back (so it has a RepoDigest), a child is built on
it locally; the dedicated sandbox is `registry`. Assertions about the hosts use `docker exec`."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import assert_one_line_error, run_cli
from tests.integration.test_push_image import _install_docker, build, in_host, layer_bytes, local_id, remote_id, sh

PREFIX = "migrate-reg-test"
LOCAL_BASE = f"{PREFIX}/base:1"
CHILD = f"{PREFIX}/child:1"
USER = "tester"
PASSWORD = "Reg-" + secrets.token_hex(10)  # unique: grepping the host for it means something
BASE_BYTES = 24 << 20
TOP_BYTES = 1 << 20

REGISTRY_CONFIG = """version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry
  delete:
    enabled: true
http:
  addr: :5000
  tls:
    certificate: /etc/docker/registry/server.crt
    key: /etc/docker/registry/server.key
auth:
  htpasswd:
    realm: migrate-test
    path: /etc/docker/registry/htpasswd
"""


def put(host: dict, path: str, data: bytes, mode: str = "644") -> None:
    sh("docker", "exec", "-i", host["container"], "sh", "-c",
       f"mkdir -p $(dirname {path}) && cat > {path} && chmod {mode} {path}", input=data)


def make_certs(work: Path, ip: str) -> tuple[bytes, bytes, bytes]:
    """(CA cert, server cert, server key): a throwaway CA and a server certificate for `ip`."""
    ossl = ["openssl"]
    sh(*ossl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=migrate test CA",
       "-keyout", str(work / "ca.key"), "-out", str(work / "ca.crt"))
    sh(*ossl, "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ip}", "-keyout", str(work / "server.key"),
       "-out", str(work / "server.csr"))
    (work / "ext").write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth\n")
    sh(*ossl, "x509", "-req", "-in", str(work / "server.csr"), "-CA", str(work / "ca.crt"), "-CAkey",
       str(work / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(work / "ext"),
       "-out", str(work / "server.crt"))
    return tuple((work / n).read_bytes() for n in ("ca.crt", "server.crt", "server.key"))  # type: ignore[return-value]


def docker_config(path: Path, registry: str, password: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{USER}:{password}".encode()).decode()
    (path / "config.json").write_text(json.dumps({"auths": {registry: {"auth": auth}}}))
    return path


def start_registry(reg_host: dict, target: dict, work: Path) -> dict:
    """Serve Debian's docker-registry on `reg_host` (TLS, htpasswd) and make `target` (Docker installed
    here too) and the local engine trust its CA. Returns the registry facts; undo with `stop_registry`."""
    name = f"{reg_host['ip']}:5000"
    errors: list[BaseException] = []

    def install_registry() -> None:
        try:
            in_host(reg_host, "command -v docker-registry >/dev/null || { apt-get update -qq >/dev/null && "
                              "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry "
                              ">/dev/null 2>&1; }")
        except BaseException as exc:  # reported below
            errors.append(exc)

    def install_docker() -> None:
        try:
            _install_docker(target, zstd=False)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=install_registry), threading.Thread(target=install_docker)]
    for t in threads:
        t.start()
    ca, cert, key = make_certs(work, reg_host["ip"])
    for t in threads:
        t.join()
    if errors:
        raise AssertionError(f"setting up the registry sandbox failed: {errors[0]}")
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10))
    put(reg_host, "/etc/docker/registry/config.yml", REGISTRY_CONFIG.encode())
    put(reg_host, "/etc/docker/registry/server.crt", cert)
    put(reg_host, "/etc/docker/registry/server.key", key, mode="640")
    put(reg_host, "/etc/docker/registry/htpasswd", f"{USER}:".encode() + hashed + b"\n", mode="640")
    in_host(reg_host, "chgrp docker-registry /etc/docker/registry/server.key /etc/docker/registry/htpasswd && "
                      "systemctl restart docker-registry && for i in $(seq 50); do "
                      "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 5000), 1)' 2>/dev/null "
                      "&& exit 0; sleep 0.2; done; exit 1")
    put(target, f"/etc/docker/certs.d/{name}/ca.crt", ca)
    local_certs = Path(f"/etc/docker/certs.d/{name}")
    local_certs.mkdir(parents=True, exist_ok=True)
    (local_certs / "ca.crt").write_bytes(ca)
    return {"reg": reg_host, "target": target, "name": name, "local_certs": local_certs,
            "good": docker_config(work / "good", name, PASSWORD),
            "bad": docker_config(work / "bad", name, "wrong-" + PASSWORD[::-1])}


def stop_registry(facts: dict) -> None:
    shutil.rmtree(facts["local_certs"], ignore_errors=True)


def push_to_registry(facts: dict, local_ref: str, remote_ref: str, work: Path) -> None:
    """`docker push` a local image into the test registry (a temporary DOCKER_CONFIG for the login), then
    replace the local image by a pull of it, so it carries the registry's RepoDigest like a real base."""
    sh("docker", "tag", local_ref, remote_ref)
    env = dict(os.environ, DOCKER_CONFIG=str(work / "login"))
    subprocess.run(["docker", "login", facts["name"], "-u", USER, "--password-stdin"], input=PASSWORD.encode(),
                   env=env, check=True, capture_output=True)
    try:
        subprocess.run(["docker", "push", remote_ref], env=env, check=True, capture_output=True, timeout=1800)
        sh("docker", "image", "rm", local_ref, remote_ref)
        subprocess.run(["docker", "pull", remote_ref], env=env, check=True, capture_output=True, timeout=1800)
    finally:
        shutil.rmtree(work / "login", ignore_errors=True)


def make_images(facts: dict, work: Path) -> str:
    """The base (busybox + 24 MiB of random bytes) into the registry and back (so it has a RepoDigest), and
    CHILD built on it here with one 1 MiB random layer; returns the base's registry reference."""
    remote_base = f"{facts['name']}/team/base:1"
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    sh("cp", "/bin/busybox", str(root / "bin" / "busybox"))
    for cmd in ("sh", "cat", "sha256sum"):
        os.symlink("busybox", root / "bin" / cmd)
    (root / "base.bin").write_bytes(os.urandom(BASE_BYTES))
    tar = subprocess.run(["tar", "-C", str(root), "-cf", "-", "."], capture_output=True, check=True).stdout
    sh("docker", "import", "--change", 'CMD ["/bin/sh"]', "-", LOCAL_BASE, input=tar)
    push_to_registry(facts, LOCAL_BASE, remote_base, work)
    ctx = work / "child"
    ctx.mkdir()
    (ctx / "top.bin").write_bytes(os.urandom(TOP_BYTES))
    (ctx / "Dockerfile").write_text(f'FROM {remote_base}\nCOPY top.bin /top.bin\nCMD ["sha256sum", "/top.bin"]\n')
    build(ctx, CHILD)
    return remote_base


def remove_images(facts: dict) -> None:
    sh("docker", "image", "rm", "-f", CHILD, f"{facts['name']}/team/base:1", LOCAL_BASE, check=False)


@pytest.fixture(scope="module")
def registry(dedicated_sandbox, tmp_path_factory):
    """{'reg': registry host, 'target': Docker host, 'name': 'IP:5000', 'good'/'bad': DOCKER_CONFIG dirs, ...}"""
    reg_host, target = dedicated_sandbox("registry", 2)
    work = tmp_path_factory.mktemp("registry")
    facts = start_registry(reg_host, target, work)
    try:
        remote_base = make_images(facts, work)
        yield dict(facts, base=remote_base, env=dict(target["env"], DOCKER_CONFIG=str(facts["good"])))
    finally:
        remove_images(facts)
        stop_registry(facts)


def clean_target(target: dict, registry_name: str) -> None:
    """The host without the test images: the child, the base however it came (by digest or by tag)."""
    in_host(target, f"docker image rm -f {CHILD} >/dev/null 2>&1; "
                    "docker image ls --digests --format '{{.Repository}} {{.ID}}' "
                    f"| awk '$1 ~ /^{registry_name}\\//{{print $2}}' | sort -u | xargs -r docker image rm -f "
                    ">/dev/null 2>&1; "
                    "docker image ls -q migrate-partial | xargs -r docker image rm -f >/dev/null 2>&1; true")


def leftovers(target: dict) -> str:
    """Temporary DOCKER_CONFIG dirs (in /tmp, /var/tmp), docker configs in homes, spooled top layers."""
    return in_host(target, "ls -d /tmp/migrate-pull.* /var/tmp/migrate-pull.* /home/*/.docker/config.json "
                           "/root/.docker/config.json /home/*/.migrate/tmp/load-* 2>/dev/null; true").strip()


def registry_images(target: dict, registry_name: str) -> str:
    return in_host(target, "docker image ls --digests --format '{{.Repository}}@{{.Digest}}' | "
                           f"grep '^{registry_name}/' || true").strip()


class ProcessSampler(threading.Thread):
    """Samples the host's process list (every argv) until stopped."""

    def __init__(self, host: dict) -> None:
        super().__init__(daemon=True)
        self.host = host
        self.samples: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.samples.append(in_host(self.host, "ps -eww -o args", check=False))
            time.sleep(0.05)


def secrets_on(host: dict) -> str:
    """Where the password or its base64 form shows on the host: files under homes and tmp dirs, the journal."""
    b64 = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    found = in_host(host, f"grep -rlsF -e {PASSWORD} -e {b64} /home /root /tmp /var/tmp /etc/docker 2>/dev/null; "
                          f"journalctl --no-pager -q 2>/dev/null | grep -F -e {PASSWORD} -e {b64} | head -3; true")
    return found.strip()


def push(*args: str, env: dict, timeout: float = 300):
    return run_cli("push-image", *args, env=env, timeout=timeout)


# -- tests -------------------------------------------------------------------------------------------
def test_via_auto_host_pulls_the_base_and_ssh_carries_only_the_top_layer(registry):
    target, name = registry["target"], registry["name"]
    clean_target(target, name)
    # --dry-run: the decision and its reason, nothing changed
    res = push(CHILD, target["alias"], "--dry-run", "--json", env=registry["env"])
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["status"] == "would send" and r["via"] == "pull" and r["pulled"].startswith(f"{name}/team/base@"), r
    assert registry_images(target, name) == "" and remote_id(target, CHILD) == ""

    sampler = ProcessSampler(target)
    sampler.start()
    try:
        res = push(CHILD, target["alias"], "--json", env=registry["env"])
    finally:
        sampler.done.set()
        sampler.join()
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    top = layer_bytes(CHILD, 1)
    assert r["status"] == "sent" and r["via"] == "pull" and r["layers_sent"] == 1, r
    assert r["bytes_sent"] <= top + 64 * 1024, (r["bytes_sent"], top)  # the top layer, not the 24 MiB base
    assert f"via pull: the host pulls 1 of 2 layers from {name}" in res.stderr, res.stderr
    assert "while the host pulled" in r["detail"], r  # the top layer streamed during the pull
    assert remote_id(target, CHILD) == local_id(CHILD)
    assert in_host(target, f"docker run --rm {CHILD}").strip()
    # the credentials are nowhere on the host: files, journal, any argv seen during the pull
    assert secrets_on(target) == ""
    assert leftovers(target) == ""
    seen = "\n".join(sampler.samples)
    assert PASSWORD not in seen and base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in seen
    assert "migrate-pull." in seen or "python3 -I -c" in seen, f"{len(sampler.samples)} samples saw no pull"
    assert PASSWORD not in res.output

    # a rerun is up to date, nothing asked of the registry
    [r] = json.loads(push(CHILD, target["alias"], "--json", env=registry["env"]).stdout)
    assert r["status"] == "up to date" and r["bytes_sent"] == 0, r


def test_wrong_password_is_one_clear_line_and_nothing_half_done(registry):
    target, name = registry["target"], registry["name"]
    clean_target(target, name)
    env = dict(registry["env"], DOCKER_CONFIG=str(registry["bad"]))
    for via in ("auto", "pull"):
        res = push(CHILD, target["alias"], "--via", via, env=env)
        assert_one_line_error(res, "unauthorized", f"check the credentials for {name}")
        assert remote_id(target, CHILD) == "" and registry_images(target, name) == ""
        assert leftovers(target) == ""
        assert in_host(target, "docker image ls -q migrate-partial").strip() == ""


def test_registry_unreachable_via_pull_fails_before_anything_moves_and_auto_pushes(registry):
    target, name, reg_host = registry["target"], registry["name"], registry["reg"]
    clean_target(target, name)
    in_host(reg_host, "systemctl stop docker-registry")
    try:
        res = push(CHILD, target["alias"], "--via", "pull", env=registry["env"])
        assert_one_line_error(res, "--via pull", "unreachable from the host")
        assert remote_id(target, CHILD) == "" and registry_images(target, name) == ""
        assert leftovers(target) == ""
        res = push(CHILD, target["alias"], "--json", env=registry["env"])
        assert res.code == 0, res.output
        [r] = json.loads(res.stdout)
        assert r["status"] == "sent" and r["via"] == "push" and "unreachable" in r["via_reason"], r
        assert r["bytes_sent"] > BASE_BYTES  # everything over SSH
        assert remote_id(target, CHILD) == local_id(CHILD)
    finally:
        in_host(reg_host, "systemctl start docker-registry")


def test_playbook_pull_entry_pulls_on_the_host_and_is_idempotent(registry, tmp_path):
    target, name = registry["target"], registry["name"]
    clean_target(target, name)
    in_host(target, f"docker image rm -f {registry['base']} >/dev/null 2>&1; true")
    book = tmp_path / "playbook.yaml"
    book.write_text(f"hosts: [{target['alias']}]\nimages:\n  - pull: {registry['base']}\n")
    res = run_cli("apply", str(book), env=registry["env"], timeout=300)
    assert res.code == 0, res.output
    assert in_host(target, f"docker image inspect --format '{{{{.Id}}}}' {registry['base']}").strip() \
        == local_id(registry["base"])
    assert secrets_on(target) == "" and leftovers(target) == ""
    res = run_cli("apply", str(book), env=registry["env"], timeout=300)
    assert res.code == 0 and "up to date" in res.stdout, res.output


def test_password_sudo_user_pulls_through_sudo_with_nothing_left(registry):
    """bob reaches Docker only through sudo with a password: the sudo password and the registry login
    share the pull's stdin (password line first), and neither shows anywhere on the host."""
    target, name = registry["target"], registry["name"]
    clean_target(target, name)
    env = dict(registry["env"], MIGRATE_SUDO_PASSWORD=target["password_sudo_user_password"])
    res = push(CHILD, f"{target['password_sudo_user']}@{target['alias']}", "--json", env=env)
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["status"] == "sent" and r["via"] == "pull" and r["layers_sent"] == 1, r
    assert remote_id(target, CHILD) == local_id(CHILD)
    assert secrets_on(target) == "" and leftovers(target) == ""
    assert in_host(target, "ls -A /home/bob/.migrate/tmp 2>/dev/null; true").strip() == ""
