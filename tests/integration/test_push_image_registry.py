"""push-image --via against a real registry (issue 15, part 2): Debian's `docker-registry` (Distribution
2.8) on one sandbox host, served with TLS (a CA made here with openssl) and htpasswd auth (bcrypt); the
target host (Docker 20.10) and the local engine trust the CA through /etc/docker/certs.d. A base image
is pushed there from the local engine and pulled back (so it has a RepoDigest), a child is built on
it locally; the dedicated sandbox is `registry`. Assertions about the hosts use `docker exec`. The last
tests (issue 21) add an auth-less instance on :5001 as the target dockerd's registry mirror for a Docker
Hub base, with Docker Hub itself unreachable."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from tests.conftest import assert_one_line_error, run_cli, wait_until
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
    return {"reg": reg_host, "target": target, "name": name, "local_certs": local_certs, "ca": ca,
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
    import_base(work / "rootfs", BASE_BYTES, LOCAL_BASE)
    push_to_registry(facts, LOCAL_BASE, remote_base, work)
    build_child(work / "child", remote_base, CHILD)
    return remote_base


def import_base(root: Path, size: int, tag: str) -> None:
    """`tag`: busybox and `size` random bytes, one layer (docker import)."""
    (root / "bin").mkdir(parents=True)
    sh("cp", "/bin/busybox", str(root / "bin" / "busybox"))
    for cmd in ("sh", "cat", "sha256sum"):
        os.symlink("busybox", root / "bin" / cmd)
    (root / "base.bin").write_bytes(os.urandom(size))
    tar = subprocess.run(["tar", "-C", str(root), "-cf", "-", "."], capture_output=True, check=True).stdout
    sh("docker", "import", "--change", 'CMD ["/bin/sh"]', "-", tag, input=tar)


def build_child(ctx: Path, base: str, tag: str) -> None:
    """`tag`: `base` and one 1 MiB random layer on it."""
    ctx.mkdir()
    (ctx / "top.bin").write_bytes(os.urandom(TOP_BYTES))
    (ctx / "Dockerfile").write_text(f'FROM {base}\nCOPY top.bin /top.bin\nCMD ["sha256sum", "/top.bin"]\n')
    build(ctx, tag)


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


def push_pulling_the_base(image: str, target: dict, env: dict):
    """`push-image IMAGE --json` that must send it via pull with only the top layer over SSH: (result,
    its JSON record, every argv the host showed meanwhile)."""
    sampler = ProcessSampler(target)
    sampler.start()
    try:
        res = push(image, target["alias"], "--json", env=env)
    finally:
        sampler.done.set()
        sampler.join()
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    top = layer_bytes(image, 1)
    assert r["status"] == "sent" and r["via"] == "pull" and r["layers_sent"] == 1, r
    assert r["bytes_sent"] <= top + 64 * 1024, (r["bytes_sent"], top)  # the top layer, not the base
    return res, r, "\n".join(sampler.samples)


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

    res, r, seen = push_pulling_the_base(CHILD, target, registry["env"])
    assert f"via pull: the host pulls 1 of 2 layers from {name}" in res.stderr, res.stderr
    assert "while the host pulled" in r["detail"], r  # the top layer streamed during the pull
    assert remote_id(target, CHILD) == local_id(CHILD)
    assert in_host(target, f"docker run --rm {CHILD}").strip()
    # the credentials are nowhere on the host: files, journal, any argv seen during the pull
    assert secrets_on(target) == ""
    assert leftovers(target) == ""
    assert PASSWORD not in seen and base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() not in seen
    assert "migrate-pull." in seen or "python3 -I -c" in seen, "the process samples saw no pull"
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


# -- a Docker Hub base pulled through the host dockerd's registry mirror (issue 21) ------------------
# A second, auth-less instance of the same docker-registry on the registry host (:5001, TLS with the test
# CA) plays the mirror: it serves `library/<HUB_NAME>` as a pull-through mirror would. The local engine gets
# the mirror for a moment (daemon.json + SIGHUP, a live-reloadable option) to pull HUB_NAME:1 through it,
# which gives the base a `docker.io/library/...` RepoDigest with Docker Hub unreachable; the target gets it
# through `migrate host-setup --registry-mirror` (undone with --undo).
HUB_NAME = f"migrate-test-hub-{secrets.token_hex(4)}"  # docker.io/library/<it>: nothing on the Hub collides
HUB_BASE = f"{HUB_NAME}:1"
HUB_CHILD = f"{PREFIX}/hubchild:1"
HUB_BASE_BYTES = 3 << 20
HUB_PASSWORD = "Hub-" + secrets.token_hex(10)  # a Docker Hub login here that must never reach the host
MIRROR_UNIT = "migrate-test-mirror"
MIRROR_CONFIG = """version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /var/lib/docker-registry-mirror
http:
  addr: :5001
  tls:
    certificate: /etc/docker/registry/server.crt
    key: /etc/docker/registry/server.key
"""
LOCAL_DAEMON_JSON = Path("/etc/docker/daemon.json")
LOCAL_DAEMON_LOCK = Path("/run/lock/migrate-test-daemon-json.lock")


def start_mirror(reg_host: dict) -> None:
    """The mirror instance as a transient systemd unit (stop it with `systemctl stop`)."""
    in_host(reg_host, f"systemctl reset-failed {MIRROR_UNIT} >/dev/null 2>&1; "
                      "install -d -o docker-registry -g docker-registry /var/lib/docker-registry-mirror && "
                      f"systemd-run -q --unit {MIRROR_UNIT} -p User=docker-registry -p Group=docker-registry "
                      "/usr/bin/docker-registry serve /etc/docker/registry/mirror.yml && for i in $(seq 100); do "
                      "python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", 5001), 1)' 2>/dev/null "
                      f"&& exit 0; sleep 0.1; done; journalctl -u {MIRROR_UNIT} --no-pager | tail -5; exit 1")


def local_mirrors() -> list[str]:
    out = sh("docker", "info", "--format", "{{json .RegistryConfig.Mirrors}}").strip()
    return [m.rstrip("/") for m in json.loads(out) or []]


def reload_local_dockerd(url: str, present: bool) -> None:
    """SIGHUP the local dockerd (registry-mirrors is live-reloadable) and wait until it shows (or not) `url`."""
    pid = int(Path("/var/run/docker.pid").read_text().strip())
    assert Path(f"/proc/{pid}/comm").read_text().strip() == "dockerd", f"/var/run/docker.pid: {pid} is no dockerd"
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: (url in local_mirrors()) == present, timeout=20,
               what=f"the local dockerd to {'add' if present else 'drop'} registry mirror {url} after SIGHUP "
                    "(a registry-mirrors flag on its command line makes the reload fail: see its log)")


@contextlib.contextmanager
def local_engine_mirror(url: str):
    """The local dockerd with `url` added to its registry-mirrors, for the `with` block only: merged into
    daemon.json, which is restored byte for byte afterwards (or removed again when there was none), under
    a lock so that concurrent test runs on this machine do not restore each other's state."""
    LOCAL_DAEMON_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCAL_DAEMON_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        original = LOCAL_DAEMON_JSON.read_bytes() if LOCAL_DAEMON_JSON.exists() else None
        config = json.loads(original) if original and original.strip() else {}
        mirrors = list(config.get("registry-mirrors", []))
        try:
            LOCAL_DAEMON_JSON.parent.mkdir(parents=True, exist_ok=True)
            LOCAL_DAEMON_JSON.write_text(json.dumps(dict(config, **{"registry-mirrors": [*mirrors, url]})))
            reload_local_dockerd(url, present=True)
            yield
        finally:
            # a reload keeps the mirrors when daemon.json is gone or lacks the key: drop ours with an
            # explicit list, then put the file back as it was (the daemon's mirrors are then the original's)
            LOCAL_DAEMON_JSON.write_text(json.dumps(dict(config, **{"registry-mirrors": mirrors})))
            try:
                reload_local_dockerd(url, present=False)
            finally:
                if original is None:
                    LOCAL_DAEMON_JSON.unlink(missing_ok=True)
                else:
                    LOCAL_DAEMON_JSON.write_bytes(original)


def make_hub_images(facts: dict, mirror: str, work: Path) -> None:
    """HUB_BASE (busybox + 3 MiB of random bytes) pushed into the mirror as library/HUB_NAME:1 and pulled
    back through the local engine's mirror (so its RepoDigest is docker.io's), and HUB_CHILD on it (1 MiB)."""
    in_mirror = f"{mirror.removeprefix('https://')}/library/{HUB_BASE}"
    import_base(work / "hubroot", HUB_BASE_BYTES, in_mirror)
    sh("docker", "push", in_mirror, timeout=600)  # no login: the mirror has no auth
    sh("docker", "image", "rm", in_mirror)  # else the base would also carry the mirror's own RepoDigest
    with local_engine_mirror(mirror):
        sh("docker", "pull", HUB_BASE, timeout=600)  # = docker.io/library/HUB_NAME:1, through the mirror
    [digest] = json.loads(sh("docker", "image", "inspect", "--format", "{{json .RepoDigests}}", HUB_BASE))
    assert digest.startswith(f"{HUB_NAME}@sha256:"), digest  # docker.io/library/HUB_NAME, as from the Hub
    build_child(work / "hubchild", HUB_BASE, HUB_CHILD)


def clean_hub_target(target: dict) -> None:
    in_host(target, f"docker image rm -f {HUB_CHILD} >/dev/null 2>&1; docker image ls -q {HUB_NAME} | sort -u "
                    "| xargs -r docker image rm -f >/dev/null 2>&1; "
                    "docker image ls -q migrate-partial | xargs -r docker image rm -f >/dev/null 2>&1; true")


def hub_login(work: Path, registry: str) -> Path:
    """DOCKER_CONFIG with the test registry's login and a Docker Hub login (HUB_PASSWORD) besides."""
    path = docker_config(work / "hublogin", registry, PASSWORD)
    config = json.loads((path / "config.json").read_text())
    config["auths"]["https://index.docker.io/v1/"] = {"auth": base64.b64encode(f"hubber:{HUB_PASSWORD}".encode())
                                                      .decode()}
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def hub_mirror(registry, tmp_path_factory):
    """{'mirror': 'https://IP:5001', 'env': ...}: the mirror serving HUB_BASE, the target's dockerd using it."""
    reg_host, target = registry["reg"], registry["target"]
    mirror = f"https://{reg_host['ip']}:5001"
    host_port = mirror.removeprefix("https://")
    work = tmp_path_factory.mktemp("hub")
    local_certs = Path(f"/etc/docker/certs.d/{host_port}")
    put(reg_host, "/etc/docker/registry/mirror.yml", MIRROR_CONFIG.encode())
    put(target, f"/etc/docker/certs.d/{host_port}/ca.crt", registry["ca"])
    local_certs.mkdir(parents=True, exist_ok=True)
    (local_certs / "ca.crt").write_bytes(registry["ca"])
    host_setup_ran = False
    try:
        start_mirror(reg_host)
        make_hub_images(registry, mirror, work)
        # the user's path: host-setup merges the mirror into the host's daemon.json (Docker is there already)
        host_setup_ran = True
        res = run_cli("host-setup", target["alias"], "--docker-source", "distro", "--no-nvidia", "--registry-mirror",
                      mirror, env=target["env"], timeout=300)
        assert res.code == 0, res.output
        assert in_host(target, "docker info --format '{{json .RegistryConfig.Mirrors}}'").strip() \
            == json.dumps([mirror + "/"])
        yield {"mirror": mirror, "env": dict(target["env"], DOCKER_CONFIG=str(hub_login(work, registry["name"])))}
    finally:
        undo = run_cli("host-setup", target["alias"], "--undo", env=target["env"], timeout=300) \
            if host_setup_ran else None
        in_host(reg_host, f"systemctl stop {MIRROR_UNIT} >/dev/null 2>&1; true")
        sh("docker", "image", "rm", "-f", HUB_CHILD, HUB_BASE, check=False)
        shutil.rmtree(local_certs, ignore_errors=True)
        assert undo is None or undo.code == 0, undo.output


def hub_secrets_on(host: dict) -> str:
    b64 = base64.b64encode(f"hubber:{HUB_PASSWORD}".encode()).decode()
    return in_host(host, f"grep -rlsF -e {HUB_PASSWORD} -e {b64} /home /root /tmp /var/tmp /etc/docker 2>/dev/null; "
                         f"journalctl --no-pager -q 2>/dev/null | grep -F -e {HUB_PASSWORD} -e {b64} | head -3; "
                         "true").strip()


def test_via_auto_pulls_a_docker_hub_base_through_the_hosts_registry_mirror(registry, hub_mirror):
    target, reg_host, mirror, env = registry["target"], registry["reg"], hub_mirror["mirror"], hub_mirror["env"]
    clean_hub_target(target)
    res = push(HUB_CHILD, target["alias"], "--dry-run", "--json", env=env)
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["status"] == "would send" and r["via"] == "pull", r
    assert r["pulled"].startswith(f"docker.io/library/{HUB_NAME}@sha256:"), r
    assert f"through its registry mirror {mirror}" in r["via_reason"], r
    assert remote_id(target, HUB_CHILD) == "" and remote_id(target, HUB_BASE) == ""

    res, r, seen = push_pulling_the_base(HUB_CHILD, target, env)
    assert f"the host pulls 1 of 2 layers from docker.io through its registry mirror {mirror}" in res.stderr, \
        res.stderr
    assert remote_id(target, HUB_CHILD) == local_id(HUB_CHILD)
    hub_digest = sh("docker", "image", "inspect", "--format", "{{index .RepoDigests 0}}", HUB_BASE).strip()
    assert remote_id(target, hub_digest) == local_id(HUB_BASE)  # the host pulled the base by its Hub digest
    assert in_host(target, f"docker run --rm {HUB_CHILD}").strip()
    # the host's dockerd fetched the base's blobs from the mirror (the probe only asks for the manifest)
    wait_until(lambda: target["ip"] in in_host(reg_host, f"journalctl -u {MIRROR_UNIT} --no-pager -q "
                                                         f"| grep 'library/{HUB_NAME}/blobs/' || true"),
               timeout=20, what="the mirror's log of the host's blob requests")
    # no credential of any kind on the host: neither the registry's nor the Docker Hub login
    assert secrets_on(target) == "" and hub_secrets_on(target) == "" and leftovers(target) == ""
    assert PASSWORD not in seen and HUB_PASSWORD not in seen
    assert HUB_PASSWORD not in res.output

    [r] = json.loads(push(HUB_CHILD, target["alias"], "--json", env=env).stdout)
    assert r["status"] == "up to date" and r["bytes_sent"] == 0, r


def test_a_stopped_registry_mirror_never_blocks_the_push(registry, hub_mirror):
    """Without the mirror the Hub itself is asked (anonymously here: no Hub login to hand anyone)."""
    target, reg_host, mirror, env = registry["target"], registry["reg"], hub_mirror["mirror"], registry["env"]
    clean_hub_target(target)
    in_host(reg_host, f"systemctl stop {MIRROR_UNIT}")
    try:
        res = push(HUB_CHILD, target["alias"], "--json", env=env)
        assert res.code == 0, res.output
        [r] = json.loads(res.stdout)
        assert r["status"] == "sent" and r["via"] == "push", r
        assert r["via_reason"].startswith("docker.io "), r  # unreachable here (or lacking the image)
        assert f"; its registry mirror {mirror}/ cannot serve it either (unreachable: " in r["via_reason"], r
        assert r["bytes_sent"] > HUB_BASE_BYTES  # everything over SSH
        assert remote_id(target, HUB_CHILD) == local_id(HUB_CHILD)
        assert leftovers(target) == ""
    finally:
        start_mirror(reg_host)
