"""`migrate host-setup` against real sandbox hosts (systemd + sshd containers, real apt, real dockerd).

One dedicated sandbox `hsetup` with four hosts, because these tests install Docker and break
things on purpose (the reserved second name `hsetup2` is not a valid sandbox name: names may not
end in a digit):
- hsetup1: dry run on a fresh host, fresh distro setup + idempotent rerun, the daemon.json cases,
  --undo back to the pre-setup state; at the end the host that is killed mid-run;
- hsetup2: official source + NVIDIA repository as the password-sudo user bob;
- hsetup3: mirror source + NVIDIA mirror; at the end the host that completes in parallel;
- hsetup4: offline install with apt's network blocked.

Docker's and NVIDIA's repositories are stood in by a local signed apt repository served on the
sandbox network's gateway (tests/integration/aptrepo.py). The tests in this file run in order
and build on each other (one installed host shared by the daemon.json tests, as apt installs
cost 15-60 s each on 2 cores).
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import pty
import select
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from migrate.paths import cache_root, state_root
from migrate.sandbox.manager import Sandbox, SandboxSettings
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.aptrepo import VERSION, SignedRepo
from tests.integration.conftest import sandbox_env

BOB_PASSWORD = "bobpass"
DAEMON_JSON = "/etc/docker/daemon.json"
STATE: dict = {}  # shared between the ordered tests of this module


# --------------------------------------------------------------------------------------------
# helpers

def root_sh(host: dict, script: str, check: bool = True) -> str:
    """Run a shell script as root inside the sandbox host (inspection and fixtures only)."""
    proc = subprocess.run(["docker", "exec", host["container"], "sh", "-c", script], capture_output=True, text=True,
                          timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script!r} failed on {host['alias']}: {proc.stderr or proc.stdout}")
    return proc.stdout


def ssh_as(host: dict, command: str, user: str = "alice") -> subprocess.CompletedProcess:
    """A fresh OpenSSH login as `user` (new session: new group memberships apply)."""
    settings = SandboxSettings(name=host["env"]["MIGRATE_SANDBOX"])
    config = Sandbox(settings).ssh_config
    return subprocess.run(["ssh", "-F", str(config), "-l", user, host["alias"], command], capture_output=True,
                          text=True, timeout=120)


def snapshot(host: dict) -> dict:
    """Package list, every file under /etc (regular files by checksum, symlinks by target), groups."""
    dpkg = root_sh(host, "dpkg-query -W -f='${db:Status-Abbrev} ${Package} ${Version}\\n' | sort")
    etc = root_sh(host, "find /etc -xdev -type f -print0 | sort -z | xargs -0 sha256sum; "
                        "find /etc -xdev -type l -printf '%p -> %l\\n' | sort; find /etc -xdev -type d | sort")
    groups = root_sh(host, "getent group | sort")
    return {"dpkg": dpkg.splitlines(), "etc": etc.splitlines(), "groups": groups.splitlines()}


def setup(*args: str, env: dict | None = None, timeout: float = 600):
    """`migrate host-setup ... --json`: (exit code, reports, stderr)."""
    res = run_cli("host-setup", *args, "--json", env=env, timeout=timeout)
    try:
        reports = json.loads(res.stdout) if res.stdout.strip() else []
    except json.JSONDecodeError:
        raise AssertionError(res.output) from None
    return res.code, reports, res.stderr


def steps(report: dict) -> dict:
    return {s["name"]: s for s in report["steps"]}


def gateway(name: str) -> str:
    """This machine's address on the sandbox network (Docker gives the bridge the subnet's first address)."""
    out = subprocess.run(["docker", "network", "inspect", f"migrate-{sandbox_env(name)['MIGRATE_SANDBOX']}", "-f",
                          "{{(index .IPAM.Config 0).Gateway}} {{(index .IPAM.Config 0).Subnet}}"],
                         capture_output=True, text=True, check=True).stdout.split()
    if len(out) == 2:
        return out[0]
    return str(ipaddress.ip_network(out[-1]).network_address + 1)


def docker_io_deb(host: dict, dest: Path) -> Path:
    """Debian's real docker.io .deb, fetched by a sandbox host (so it always matches bookworm)."""
    root_sh(host, "apt-get -q update >/dev/null 2>&1; cd /tmp && rm -f docker.io_*.deb && "
                  "apt-get -q download docker.io >/dev/null 2>&1; ls /tmp/docker.io_*.deb")
    name = root_sh(host, "ls /tmp/docker.io_*.deb").strip()
    subprocess.run(["docker", "cp", f"{host['container']}:{name}", str(dest)], check=True)
    root_sh(host, f"rm -f {name}")
    return dest / Path(name).name


def run_with_pty(args: list[str], answer: str, prompt: bytes = b"sudo password for", timeout: float = 600):
    """Run the CLI on a terminal, answer each password prompt; return (exit code, output, prompts)."""
    env = {k: v for k, v in os.environ.items() if k != "MIGRATE_SUDO_PASSWORD"}
    env["COLUMNS"] = "200"
    pid, fd = pty.fork()
    if pid == 0:  # child: the CLI, on the pty as its controlling terminal
        os.execve(sys.executable, [sys.executable, "-m", "migrate", *args], env)
    out, prompts, deadline = b"", 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 5)
        if not ready:
            if os.waitpid(pid, os.WNOHANG)[0]:
                break
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        out += data
        if prompt in data:
            prompts += 1
            os.write(fd, answer.encode() + b"\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace"), prompts


def import_busybox(host: dict, user: str = "alice") -> str:
    """A tiny local image (static busybox, docker import; no registry) on the host."""
    image = "migrate-test/busybox:hsetup"
    tar = subprocess.run(["tar", "-C", "/", "-cf", "-", "bin/busybox"], capture_output=True, check=True).stdout
    settings = SandboxSettings(name=host["env"]["MIGRATE_SANDBOX"])
    proc = subprocess.run(["ssh", "-F", str(Sandbox(settings).ssh_config), "-l", user, host["alias"],
                           f"docker import - {image}"], input=tar, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return image


# --------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def hs(dedicated_sandbox):
    hosts = dedicated_sandbox("hsetup", 4)
    assert len(hosts) == 4
    STATE.setdefault("pre", snapshot(hosts[0]))  # hsetup1 before anything touched it
    return hosts


@pytest.fixture(scope="module")
def repo(hs, tmp_path_factory):
    deb = docker_io_deb(hs[1], tmp_path_factory.mktemp("debs"))
    r = SignedRepo(deb)
    yield r, r.serve(gateway("hsetup"))
    r.close()


# --------------------------------------------------------------------------------------------
# hsetup1: dry run, fresh setup, idempotence, daemon.json, undo

def test_dry_run_on_a_fresh_host_changes_nothing(hs, repo):
    h = hs[0]
    _, url = repo
    before = snapshot(h)
    res = run_cli("host-setup", h["alias"], "--dry-run", "--docker-url", f"{url}/docker", "--nvidia-url",
                  f"{url}/nvidia", "--force", "--registry-mirror", "https://mirror.example.com")
    assert res.code == 0, res.output
    out = res.stdout
    assert "dry run: nothing is changed" in out
    assert f"apt-helper download-file {url}/docker/linux/debian/gpg" in out
    assert "install docker-ce docker-ce-cli containerd.io docker-buildx-plugin docker-compose-plugin" in out
    assert "+Signed-By: /etc/apt/keyrings/docker.asc" in out
    keyring = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
    assert f"+deb [signed-by={keyring}] {url}/nvidia/stable/deb/$(ARCH) /" in out
    assert "--- /etc/docker/daemon.json (absent)" in out and '+    "registry-mirrors": [' in out
    assert "[root] $ usermod -aG docker alice" in out
    after = snapshot(h)
    assert after == before
    assert root_sh(h, "ls -A /home/alice/.migrate/host-setup 2>/dev/null || true").strip() == ""


def test_user_mistakes_are_one_line_errors_and_change_nothing(hs):
    h = hs[0]
    before = snapshot(h)
    assert_one_line_error(run_cli("host-setup", f"bob@{h['alias']}", env={"MIGRATE_SUDO_PASSWORD": "not-it"}),
                          "wrong sudo password for bob@")
    assert_one_line_error(run_cli("host-setup", f"bob@{h['alias']}"), "needs bob's password and there is no terminal")
    assert_one_line_error(run_cli("host-setup", h["alias"], "--port", "1"), "connection refused")
    assert_one_line_error(run_cli("host-setup", "nosuchhost.invalid"), "cannot resolve host")
    assert snapshot(h) == before
    assert root_sh(h, "ls -A /home/bob/.migrate/host-setup 2>/dev/null || true").strip() == ""


def test_fresh_distro_setup_then_idempotent_rerun(hs):
    h = hs[0]
    args = [h["alias"], "--docker-source", "distro", "--no-nvidia", "--registry-mirror", "https://mirror.example.com"]
    t0 = time.monotonic()
    code, reports, err = setup(*args)
    STATE["fresh_wall"] = time.monotonic() - t0
    assert code == 0, (reports, err)
    r = reports[0]
    s = steps(r)
    assert r["ok"] and r["changed"] == 3, r
    assert s["docker-engine"]["status"] == "changed" and s["daemon-json"]["status"] == "changed"
    assert s["docker-group"]["status"] == "changed" and s["verify"]["status"] == "ok"
    STATE["fresh_remote"] = r["remote_seconds"]
    assert "install ok installed" in root_sh(h, "dpkg-query -W -f='${Status}' docker.io")
    assert json.loads(root_sh(h, f"cat {DAEMON_JSON}")) == {"registry-mirrors": ["https://mirror.example.com"]}
    info = ssh_as(h, "docker info --format '{{.ServerVersion}}'")  # a new login, no sudo
    assert info.returncode == 0 and info.stdout.strip(), info.stderr
    perms = root_sh(h, "stat -c '%a %U' /home/alice/.migrate/host-setup /home/alice/.migrate/host-setup/journal.jsonl")
    assert perms.split("\n")[:2] == ["700 alice", "600 alice"]

    pid = root_sh(h, "pidof dockerd").strip()
    t0 = time.monotonic()
    code, reports, err = setup(*args)
    STATE["rerun_wall"] = time.monotonic() - t0
    assert code == 0, (reports, err)
    r = reports[0]
    STATE["rerun_remote"] = r["remote_seconds"]
    assert r["changed"] == 0 and r["docker_restarts"] == 0, r
    assert {x["status"] for x in r["steps"]} <= {"ok", "skipped"}
    assert root_sh(h, "pidof dockerd").strip() == pid  # no restart
    assert r["remote_seconds"] < 5, r
    print(f"\nTIMING fresh setup: {STATE['fresh_wall']:.1f}s wall, {STATE['fresh_remote']:.1f}s remote; "
          f"idempotent rerun: {STATE['rerun_wall']:.1f}s wall, {STATE['rerun_remote']:.2f}s remote")


def test_daemon_json_keys_survive_with_backup_and_nvidia_runtime(hs, repo):
    h = hs[0]
    _, url = repo
    seeded = {"registry-mirrors": ["https://mirror.one.example"], "data-root": "/var/lib/docker",
              "features": {"buildkit": True}, "log-opts": {"max-size": "10m", "max-file": "3"},
              "default-shm-size": "1G"}
    text = json.dumps(seeded, indent=2) + "\n"
    root_sh(h, f"cat > {DAEMON_JSON} <<'EOF'\n{text}EOF\nsystemctl restart docker")
    seeded_sum = root_sh(h, f"sha256sum < {DAEMON_JSON}").split()[0]
    code, reports, err = setup(h["alias"], "--docker-source", "distro", "--nvidia-url", f"{url}/nvidia",
                               "--force", "--registry-mirror", "https://mirror.two.example")
    assert code == 0, (reports, err)
    r = reports[0]
    assert steps(r)["nvidia-toolkit"]["status"] == "changed" and steps(r)["daemon-json"]["status"] == "changed"
    assert r["docker_restarts"] == 1, r  # toolkit + daemon.json: one restart
    now = json.loads(root_sh(h, f"cat {DAEMON_JSON}"))
    for key in ("data-root", "features", "log-opts", "default-shm-size"):
        assert now[key] == seeded[key], key
    assert now["registry-mirrors"] == ["https://mirror.one.example", "https://mirror.two.example"]
    assert now["runtimes"]["nvidia"] == {"path": "nvidia-container-runtime", "args": []}
    assert list(now)[:5] == list(seeded)  # order kept, new keys at the end
    backups = root_sh(h, f"ls {DAEMON_JSON}.migrate-backup-*").split()
    assert len(backups) == 1
    assert root_sh(h, f"sha256sum < {backups[0]}").split()[0] == seeded_sum
    assert root_sh(h, "systemctl is-active docker").strip() == "active"
    info = ssh_as(h, "docker info --format '{{json .Runtimes}}'")
    assert "nvidia" in json.loads(info.stdout)


def test_invalid_daemon_json_is_left_untouched_and_fails(hs):
    h = hs[0]
    good = root_sh(h, f"cat {DAEMON_JSON}")
    root_sh(h, f"printf '%s' '{{\"registry-mirrors\": [\"https://a\",' > {DAEMON_JSON}")
    before = root_sh(h, f"sha256sum {DAEMON_JSON}; ls /etc/docker")
    try:
        code, reports, err = setup(h["alias"], "--docker-source", "distro", "--no-nvidia", "--registry-mirror",
                                   "https://mirror.three.example")
        assert code == 1
        detail = steps(reports[0])["daemon-json"]["detail"]
        assert steps(reports[0])["daemon-json"]["status"] == "failed"
        assert "/etc/docker/daemon.json is not valid JSON" in detail and "line 1 column" in detail, detail
        assert root_sh(h, f"sha256sum {DAEMON_JSON}; ls /etc/docker") == before  # untouched, no backup made
        assert root_sh(h, "systemctl is-active docker").strip() == "active"
        plain = run_cli("host-setup", h["alias"], "--docker-source", "distro", "--no-nvidia")
        assert plain.code == 1 and "not valid JSON" in plain.stdout and "Traceback" not in plain.output
    finally:
        root_sh(h, f"cat > {DAEMON_JSON} <<'EOF'\n{good}EOF")


def test_daemon_json_that_stops_dockerd_is_rolled_back(hs):
    h = hs[0]
    before = root_sh(h, f"sha256sum {DAEMON_JSON}; ls /etc/docker")
    # accepted by migrate (an https URL), refused by dockerd 20.10 at start: the restart fails
    code, reports, err = setup(h["alias"], "--docker-source", "distro", "--no-nvidia", "--registry-mirror",
                               "https://mirror.invalid/some/path")
    assert code == 1
    s = steps(reports[0])["daemon-json"]
    assert s["status"] == "failed"
    assert "invalid mirror" in s["detail"] and "restored the previous /etc/docker/daemon.json" in s["detail"], s
    assert "docker is running again" in s["detail"]
    assert root_sh(h, "systemctl is-active docker").strip() == "active"
    assert root_sh(h, f"sha256sum {DAEMON_JSON}; ls /etc/docker") == before  # same file, backup moved back
    assert ssh_as(h, "docker info >/dev/null").returncode == 0
    # the next run sees nothing left to do (the rollback is in the journal, not a pending change)
    code, reports, _ = setup(h["alias"], "--docker-source", "distro", "--no-nvidia")
    assert code == 0 and reports[0]["changed"] == 0, reports


def test_undo_returns_the_host_to_its_pre_setup_state(hs):
    h = hs[0]
    code, reports, err = setup(h["alias"], "--undo")
    assert code == 0, (reports, err)
    after = snapshot(h)
    pre = STATE["pre"]
    assert after["dpkg"] == pre["dpkg"]
    assert after["groups"] == pre["groups"]
    # /etc/group- and /etc/gshadow- are the shadow tools' own copies of the previous version,
    # rewritten by every usermod/groupdel: they are not configuration.
    noise = ("/etc/group-", "/etc/gshadow-")
    assert [ln for ln in after["etc"] if not ln.endswith(noise)] == [ln for ln in pre["etc"] if not ln.endswith(noise)]
    assert root_sh(h, "ls /home/alice/.migrate/host-setup").split()[0].startswith("journal.undone-")
    again = run_cli("host-setup", h["alias"], "--undo")
    assert again.code == 0 and "nothing to undo" in again.stdout


# --------------------------------------------------------------------------------------------
# hsetup2: official source + NVIDIA repository as the password-sudo user

def test_official_source_and_nvidia_repo_as_password_sudo_user(hs, repo):
    h = hs[1]
    r, url = repo
    served_before = len(r.served)
    code, out, prompts = run_with_pty(["host-setup", f"bob@{h['alias']}", "--docker-url", f"{url}/docker",
                                       "--nvidia-url", f"{url}/nvidia", "--force"], BOB_PASSWORD)
    assert code == 0, out
    assert prompts == 1, out  # asked once, for the whole run
    assert BOB_PASSWORD not in out
    # key files (signed-by, never apt-key), sources files with the given URLs, packages from them
    assert root_sh(h, "stat -c '%a %U' /etc/apt/keyrings/docker.asc").strip() == "644 root"
    assert "BEGIN PGP PUBLIC KEY BLOCK" in root_sh(h, "cat /etc/apt/keyrings/docker.asc")
    assert root_sh(h, "head -c1 /usr/share/keyrings/nvidia-container-toolkit-keyring.gpg | od -An -tx1").strip() \
        in ("98", "99", "c6")  # dearmored: a binary OpenPGP packet
    sources = root_sh(h, "cat /etc/apt/sources.list.d/docker.sources")
    assert f"URIs: {url}/docker/linux/debian\n" in sources and "Suites: bookworm\n" in sources
    assert "Signed-By: /etc/apt/keyrings/docker.asc\n" in sources
    assert root_sh(h, "cat /etc/apt/sources.list.d/nvidia-container-toolkit.list").splitlines()[-1] == \
        f"deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] {url}/nvidia/stable/deb/$(ARCH) /"
    legacy = root_sh(h, "ls /etc/apt/trusted.gpg 2>/dev/null; ls /etc/apt/trusted.gpg.d | grep -Ei 'docker|nvidia'"
                        "; true")
    assert not legacy.strip()  # nothing in apt-key's global keyrings
    versions = root_sh(h, "dpkg-query -W -f='${Package} ${Version}\\n' docker-ce nvidia-container-toolkit")
    assert f"docker-ce {VERSION}" in versions and f"nvidia-container-toolkit {VERSION}" in versions
    served = r.served[served_before:]
    assert "/docker/linux/debian/dists/bookworm/InRelease" in served
    assert "/nvidia/stable/deb/amd64/InRelease" in served
    assert any(p.startswith("/docker/linux/debian/pool/") for p in served)
    # the stand-in runtime through docker, as bob, without sudo
    image = import_busybox(h, user="bob")
    run = ssh_as(h, f"docker run --rm --runtime nvidia {image} /bin/busybox echo via-nvidia-runtime", user="bob")
    assert run.returncode == 0 and "via-nvidia-runtime" in run.stdout, run.stderr
    # the password is in no file on either side
    remote = root_sh(h, f"grep -rlsa --exclude-dir=proc {BOB_PASSWORD} /etc /home /root /tmp /var/tmp /var/log /run "
                        "/var/lib/apt /var/cache/debconf /var/lib/dpkg || true")
    assert remote.strip() == ""
    local_dirs = [d for d in (state_root(), cache_root() / "offline-apt", Path.home() / ".migrate") if d.exists()]
    local = subprocess.run(["grep", "-rlsa", "--exclude=hosts.json", BOB_PASSWORD, *map(str, local_dirs)],
                           capture_output=True, text=True).stdout
    assert local.strip() == "", local  # hosts.json is the sandbox's own fixture description


def fake_cuda_image_tar() -> bytes:
    """A tiny image rootfs (busybox + a FAKE nvidia-smi): the stand-in hook injects nothing, so the
    image carries what the real toolkit would inject. A test double for the GPU smoke test."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add("/bin/busybox", arcname="bin/busybox")
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        tar.addfile(link)
        script = b"#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (sandbox fake) (UUID: GPU-5a4db0c5-fake)'\n"
        info = tarfile.TarInfo("usr/bin/nvidia-smi")
        info.size, info.mode = len(script), 0o755
        tar.addfile(info, io.BytesIO(script))
    return buf.getvalue()


def test_gpu_container_check_and_failure_explanation(hs, repo):
    """On hsetup2 (toolkit stand-in installed, docker restarted after it): with a fake GPU on the host,
    verify picks a local image and runs `docker run --gpus all ... nvidia-smi -L`; an image without
    nvidia-smi fails with the known-failure explanation."""
    h = hs[1]
    _, url = repo
    settings = SandboxSettings(name=h["env"]["MIGRATE_SANDBOX"])
    index = int(h["alias"][len(settings.name):])
    Sandbox(settings).mock_gpus(index, 1)  # one mock GPU: nvidia-smi reads it through the mock libnvidia-ml
    imp = subprocess.run(["ssh", "-F", str(Sandbox(settings).ssh_config), "-l", "bob", h["alias"],
                          "docker import - migrate-test/cuda-fake:hsetup"], input=fake_cuda_image_tar(),
                         capture_output=True, timeout=120)
    assert imp.returncode == 0, imp.stderr
    try:
        args = [f"bob@{h['alias']}", "--docker-url", f"{url}/docker", "--nvidia-url", f"{url}/nvidia"]
        code, reports, err = setup(*args, env={"MIGRATE_SUDO_PASSWORD": BOB_PASSWORD})
        assert code == 0, (reports, err)
        v = steps(reports[0])["verify"]
        assert reports[0]["changed"] == 0
        assert "GPU container sees 1 GPU(s) (migrate-test/cuda-fake:hsetup)" in v["detail"], v
        code, reports, err = setup(*args, "--verify-image", "migrate-test/busybox:hsetup",
                                   env={"MIGRATE_SUDO_PASSWORD": BOB_PASSWORD})
        assert code == 1
        v = steps(reports[0])["verify"]
        assert v["status"] == "failed" and 'exec: "nvidia-smi": executable file not found' in v["detail"], v
        assert "-> the toolkit did not inject nvidia-smi" in v["detail"] and "--gpus all" in v["detail"]
    finally:
        Sandbox(settings).mock_gpus(index, 0)


# --------------------------------------------------------------------------------------------
# hsetup3: mirror source, hsetup4: offline, then hsetup1 + hsetup3 with hsetup1 killed mid-run

def test_mirror_source_rewrites_every_url(hs, repo):
    h = hs[2]
    r, url = repo
    served_before = len(r.served)
    code, reports, err = setup(h["alias"], "--docker-source", f"mirror:{url}/mirror/docker-ce", "--nvidia-mirror",
                               f"{url}/mirror/libnvidia-container", "--force")
    assert code == 0, (reports, err)
    text = root_sh(h, "cd /etc/apt/sources.list.d && cat docker.sources nvidia-container-toolkit.list")
    assert f"URIs: {url}/mirror/docker-ce/linux/debian" in text
    assert f"{url}/mirror/libnvidia-container/stable/deb/$(ARCH) /" in text
    assert "download.docker.com" not in text and "nvidia.github.io" not in text
    served = r.served[served_before:]
    assert "/mirror/docker-ce/linux/debian/gpg" in served and "/mirror/libnvidia-container/gpgkey" in served
    assert "/mirror/docker-ce/linux/debian/dists/bookworm/InRelease" in served
    assert not any(p.startswith(("/docker/", "/nvidia/")) for p in served)
    assert f"docker-ce {VERSION}" in root_sh(h, "dpkg-query -W -f='${Package} ${Version}' docker-ce")
    info = ssh_as(h, "docker info --format '{{json .Runtimes}}'")
    assert "nvidia" in json.loads(info.stdout)


def test_offline_install_without_network(hs, tmp_path):
    h = hs[3]
    debs = tmp_path / "debs"
    dl = run_cli("host-setup", "--download-offline", str(debs), "--for", "debian:12", "--docker-source", "distro",
                 "--no-nvidia", timeout=900)
    assert dl.code == 0, dl.output
    manifest = json.loads((debs / "migrate-offline.json").read_text())
    assert manifest["for"] == "debian:12" and "docker.io" in manifest["packages"]
    assert (debs / "SHA256SUMS").read_text().count(".deb") == len(manifest["files"])
    assert not any(f.startswith(("libc6_", "base-files_")) for f in manifest["files"])
    # the host cannot reach any apt repository any more
    root_sh(h, "printf 'Acquire::http::Proxy \"http://127.0.0.1:9\";\\nAcquire::https::Proxy \"http://127.0.0.1:9\";\\n'"
               " > /etc/apt/apt.conf.d/00migrate-test-offline; rm -rf /var/lib/apt/lists/*")
    try:
        code, reports, err = setup(h["alias"], "--offline-dir", str(debs), "--no-nvidia")
        assert code == 0, (reports, err)
        s = steps(reports[0])
        assert s["docker-engine"]["status"] == "changed" and "from" in s["docker-engine"]["detail"]
        assert ssh_as(h, "docker info --format '{{.ServerVersion}}'").returncode == 0
        assert root_sh(h, "ls -A /home/alice/.migrate/host-setup").split() == ["journal.jsonl"]  # pushed files gone
    finally:
        root_sh(h, "rm -f /etc/apt/apt.conf.d/00migrate-test-offline")


def test_parallel_hosts_one_killed_mid_run(hs):
    """hsetup1 (fresh again after --undo) installs docker.io and loses its SSH session in the middle of
    apt (its sshd session processes are killed); hsetup3 completes. apt ran detached, so it finishes on
    hsetup1 anyway; the next run records what it installed, and --undo still restores the host."""
    victim, survivor = hs[0], hs[2]
    killer = subprocess.Popen(
        ["sh", "-c", f"for i in $(seq 600); do if docker exec {victim['container']} pgrep -f 'apt-get.* install' "
                     f">/dev/null 2>&1; then sleep 1; docker exec {victim['container']} pkill -KILL -f 'sshd: alice'; "
                     "echo killed; exit 0; fi; sleep 0.2; done; echo never"], stdout=subprocess.PIPE, text=True)
    res = run_cli("host-setup", victim["alias"], survivor["alias"], "--docker-source", "distro", "--no-nvidia",
                  "--registry-mirror", "https://parallel.example")
    assert killer.communicate(timeout=60)[0].strip() == "killed"
    assert res.code == 1, res.output
    assert "Traceback" not in res.output
    summary = res.stdout[res.stdout.index("host-setup summary"):]
    rows = {ln.split("│")[1].strip(): ln for ln in summary.splitlines() if ln.startswith("│ hsetup")}
    assert " failed " in rows[victim["alias"]] and "connection to alice@hsetup1 lost" in summary
    assert " ok " in rows[survivor["alias"]]
    now = json.loads(root_sh(survivor, f"cat {DAEMON_JSON}"))
    assert "https://parallel.example" in now["registry-mirrors"]
    assert root_sh(survivor, "systemctl is-active docker").strip() == "active"

    # the victim's apt was detached from the session: it completes, dpkg is consistent
    root_sh(victim, "for i in $(seq 300); do pgrep -x apt-get >/dev/null || pgrep -x dpkg >/dev/null || exit 0; "
                    "sleep 0.5; done; exit 1")
    assert root_sh(victim, "dpkg --audit; dpkg-query -W -f='${Status}' docker.io") == "install ok installed"
    code, reports, err = setup(victim["alias"], "--docker-source", "distro", "--no-nvidia", "--registry-mirror",
                               "https://parallel.example")
    assert code == 0, (reports, err)
    assert any("interrupted apt run" in w for w in steps(reports[0])["host"]["warnings"]), reports
    code, reports, err = setup(victim["alias"], "--undo")
    assert code == 0, (reports, err)
    after = snapshot(victim)
    assert after["dpkg"] == STATE["pre"]["dpkg"] and after["groups"] == STATE["pre"]["groups"]
