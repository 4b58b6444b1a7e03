"""`migrate push-image` against real Docker engines: the local dockerd and dockerd inside dedicated
sandbox hosts (`pimage1`, `pimage2`; Docker is installed there by the fixture, never on the shared
sandbox). Assertions about the remote use `docker exec` into the sandbox container, independent of
the code under test."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from migrate.remote import reap
from tests.conftest import assert_one_line_error, run_cli, wait_until
from tests.integration.test_round_trips import counted
from tests.tar_helpers import tar_bytes

PREFIX = "migrate-pimage-test"
BASE = f"{PREFIX}/base:1"
CHILD = f"{PREFIX}/child:1"
MULTI = f"{PREFIX}/multi:1"
BIG = f"{PREFIX}/big:1"
ARM = f"{PREFIX}/arm:1"
RESUME = f"{PREFIX}/resume:1"
ALL = [BASE, CHILD, MULTI, BIG, ARM, RESUME]


def sh(*argv: str, input: bytes | None = None, check: bool = True, timeout: float = 300) -> str:
    proc = subprocess.run(argv, input=input, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed: {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode(errors="replace")


def in_host(host: dict, script: str, check: bool = True) -> str:
    """Run a root shell script inside the sandbox container (the test's own view of the host)."""
    return sh("docker", "exec", host["container"], "sh", "-c", script, check=check)


def remote_id(host: dict, ref: str) -> str:
    return in_host(host, f"docker image inspect --format '{{{{.Id}}}}' {ref} 2>/dev/null", check=False).strip()


def remote_rmi(host: dict, *refs: str) -> None:
    in_host(host, f"docker image rm -f {' '.join(refs)} >/dev/null 2>&1; "
                  "docker image ls -q migrate-partial | xargs -r docker image rm -f >/dev/null 2>&1; true")


def local_id(ref: str) -> str:
    return sh("docker", "image", "inspect", "--format", "{{.Id}}", ref).strip()


def host_image(host: dict, ref: str) -> tuple[str, list[str]]:
    """(Id, RootFS layers) of `ref` as `docker image inspect` on the host reports them."""
    fmt = "'{{.Id}} {{range .RootFS.Layers}}{{.}},{{end}}'"
    out = in_host(host, f"docker image inspect --format {fmt} {ref}")
    image_id, _, layers = out.strip().partition(" ")
    return image_id, [d for d in layers.split(",") if d]


def assert_like_a_whole_load(host: dict, ref: str, other: dict) -> None:
    """What push-image left on `host` is indistinguishable from `docker save | docker load` of the local image:
    `docker save` there gives an archive that loads into `other` (a classic store) as the very local image,
    and a whole load of the local image onto `host` leaves its ID and layers as they were."""
    pushed = host_image(host, ref)
    export = subprocess.run(["docker", "exec", host["container"], "docker", "save", ref], capture_output=True,
                            check=True, timeout=300).stdout
    in_host(other, f"docker image rm -f {ref} >/dev/null 2>&1; true")
    sh("docker", "exec", "-i", other["container"], "docker", "load", input=export)
    assert remote_id(other, ref) == local_id(ref), f"{ref} exported from {host['alias']} is not the local image"
    in_host(other, f"docker image rm -f {ref} >/dev/null 2>&1; true")  # `other` as it was for later tests
    whole = subprocess.run(["docker", "save", ref], capture_output=True, check=True, timeout=300).stdout
    sh("docker", "exec", "-i", host["container"], "docker", "load", input=whole)
    assert host_image(host, ref) == pushed, f"a whole load of {ref} on {host['alias']} gives another image"


def push(*args: str, env: dict, timeout: float = 300):
    return run_cli("push-image", *args, env=env, timeout=timeout)


def push_json(*args: str, env: dict) -> list[dict]:
    res = push(*args, "--json", env=env)
    assert res.code == 0, res.output
    return json.loads(res.stdout)


# -- fixtures --------------------------------------------------------------------------------------
def _install_docker(host: dict, zstd: bool) -> None:
    pkgs = "docker.io zstd" if zstd else "docker.io"
    in_host(host, "command -v docker >/dev/null || { apt-get update -qq >/dev/null && "
                  f"DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {pkgs} >/dev/null 2>&1; }}; "
                  "usermod -aG docker alice; systemctl is-active -q docker || systemctl start docker; "
                  "docker version >/dev/null")


@pytest.fixture(scope="module")
def docker_hosts(dedicated_sandbox) -> list[dict]:
    """Two sandbox hosts with Docker 20.10 (Debian's docker.io); only the first has zstd."""
    hosts = dedicated_sandbox("pimage", 2)
    errors: list[BaseException] = []

    def install(h: dict, zstd: bool) -> None:
        try:
            _install_docker(h, zstd)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=install, args=(h, i == 0)) for i, h in enumerate(hosts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        pytest.fail(f"installing docker in the sandbox failed: {errors[0]}")
    return hosts


def _load_arm64_image(tag: str) -> None:
    """A tiny linux/arm64 image, loaded locally from a hand-made archive (docker import ignores --platform)."""
    layer = tar_bytes({"hello.txt": b"built for arm64\n"})
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps({"architecture": "arm64", "os": "linux", "config": {"Cmd": ["/hello"]},
                         "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                         "history": [{"created_by": "test"}]}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["l/layer.tar"]}]).encode()
    archive = tar_bytes({"manifest.json": manifest, config_name: config, "l/layer.tar": layer})
    sh("docker", "load", input=archive)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Local test images: base (busybox + 3 MB), child (+1 MB layer), multi (3 x 24 MiB layers),
    big (one 80 MiB layer), arm (linux/arm64). Removed afterwards."""
    work = tmp_path_factory.mktemp("pimages")
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "data").mkdir()
    sh("cp", "/bin/busybox", str(root / "bin" / "busybox"))
    for cmd in ("sh", "cat", "sha256sum", "ls"):
        os.symlink("busybox", root / "bin" / cmd)
    (root / "data" / "base.bin").write_bytes(os.urandom(3_000_000))
    rootfs_tar = sh_bytes("tar", "-C", str(root), "-cf", "-", ".")
    sh("docker", "import", "--change", 'CMD ["/bin/sh"]', "-", BASE, input=rootfs_tar)
    ctx = work / "child"
    ctx.mkdir()
    (ctx / "app.bin").write_bytes(os.urandom(1_000_000))
    (ctx / "Dockerfile").write_text(f'FROM {BASE}\nCOPY app.bin /app/app.bin\nCMD ["sha256sum", "/app/app.bin"]\n')
    build(ctx, CHILD)
    ctx = work / "multi"
    ctx.mkdir()
    for i in range(3):
        (ctx / f"l{i}.bin").write_bytes(os.urandom(24 << 20))
    (ctx / "Dockerfile").write_text(f"FROM {BASE}\n" + "".join(f"COPY l{i}.bin /d/l{i}.bin\n" for i in range(3)))
    build(ctx, MULTI)
    big = work / "big"
    big.mkdir()
    (big / "big.bin").write_bytes(os.urandom(80 << 20))
    sh("docker", "import", "-", BIG, input=sh_bytes("tar", "-C", str(big), "-cf", "-", "big.bin"))
    _load_arm64_image(ARM)
    yield {"child_app_sha": hashlib.sha256((work / "child" / "app.bin").read_bytes()).hexdigest()}
    sh("docker", "image", "rm", "-f", *ALL, check=False)


def sh_bytes(*argv: str) -> bytes:
    return subprocess.run(argv, capture_output=True, check=True).stdout


def build(ctx: Path, tag: str) -> None:
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    subprocess.run(["docker", "build", "-q", "-t", tag, str(ctx)], check=True, capture_output=True, env=env)


def layer_bytes(ref: str, index: int) -> int:
    """Size of one layer tar of a local image (from a docker save)."""
    with tempfile.TemporaryDirectory() as d:
        sh("sh", "-c", f"docker save {ref} | tar -C {d} -xf -")
        manifest = json.loads(Path(d, "manifest.json").read_text())
        return Path(d, manifest[0]["Layers"][index]).stat().st_size


# -- tests -----------------------------------------------------------------------------------------
def test_full_push_then_up_to_date_then_only_the_new_layer(docker_hosts, images, tmp_path):
    h = docker_hosts[0]
    env = h["env"]
    remote_rmi(h, CHILD, BASE)
    [r] = push_json(BASE, h["alias"], env=env)
    assert r["status"] == "sent" and r["bytes_sent"] > 3_000_000, r
    assert remote_id(h, BASE) == local_id(BASE)

    t0 = time.monotonic()
    [r] = push_json(BASE, h["alias"], env=env)
    assert r["status"] == "up to date" and r["bytes_sent"] == 0, r
    assert time.monotonic() - t0 < 10
    # its connections and round trips, counted (docs/performance.md: "Round trips per verb"), here and
    # over a far link (the sandbox's relay, 100 ms round trip; test_sandbox_link.py counts the other verbs)
    counted(tmp_path, "push-image", BASE, h["alias"], env=env, label="push-image, unchanged")
    res = run_cli("sandbox", "up", str(len(docker_hosts)), "--link", "100mbit/50ms", env=env, timeout=600)
    assert res.code == 0, res.output
    try:
        t0 = time.monotonic()
        got = counted(tmp_path, "push-image", BASE, h["alias"], env=env, label="push-image, unchanged")
        assert got == {"connect": 1, "round trips": 1} and time.monotonic() - t0 >= 0.1 * 6  # login + 1: far
    finally:
        res = run_cli("sandbox", "up", str(len(docker_hosts)), "--link", "off", env=env, timeout=600)
    assert res.code == 0, res.output

    new_layer = layer_bytes(CHILD, 1)
    [r] = push_json(CHILD, h["alias"], env=env)
    assert r["status"] == "sent" and r["layers_sent"] == 1, r
    assert r["bytes_sent"] <= new_layer + 64 * 1024, (r["bytes_sent"], new_layer)
    assert remote_id(h, CHILD) == local_id(CHILD)
    out = in_host(h, f"docker run --rm {CHILD}")
    assert images["child_app_sha"] in out


def test_docker_save_path_and_a_tag_only_update(docker_hosts, images):
    h = docker_hosts[0]
    env = dict(h["env"])
    remote_rmi(h, CHILD, BASE)
    res = push(CHILD, h["alias"], "--no-direct-layers", "--compress", "gzip", env=env)
    assert res.code == 0, res.output
    assert remote_id(h, CHILD) == local_id(CHILD)
    in_host(h, f"docker tag {CHILD} {PREFIX}/keep:1 && docker image rm {CHILD} >/dev/null")
    [r] = push_json(CHILD, h["alias"], env=env)
    assert r["status"] == "up to date" and r["bytes_sent"] == 0 and "tagged" in r["detail"], r
    assert remote_id(h, CHILD) == local_id(CHILD)
    in_host(h, f"docker image rm {PREFIX}/keep:1 >/dev/null")


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for c in map(int, children):
                out.append(c)
                todo.append(c)
    return out


def _ssh_master_of(pid: int) -> int | None:
    for child in _descendants(pid):
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"ssh") and b"-M" in argv:
            return child
    return None


def cut_after_first_checkpoint(proc: subprocess.Popen, host: dict, timeout: float = 60) -> bool:
    """Kill the push's SSH master once a checkpoint is committed on `host`; True when it was cut."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if in_host(host, "docker image ls -q migrate-partial", check=False).split():
            # the tag shows on the host a moment before migrate hears that step end: cut only once the
            # next step streams (the master has sent NEXT_STEP_BYTES more), so the cut lands inside it
            master = _ssh_master_of(proc.pid)
            sent = _bytes_written(master) if master else None
            while sent is not None and proc.poll() is None and time.monotonic() < deadline:
                now = _bytes_written(master)
                if now is None:
                    break
                if now - sent >= NEXT_STEP_BYTES:
                    os.kill(master, signal.SIGKILL)
                    return True
                time.sleep(0.05)
        time.sleep(0.2)
    return False


NEXT_STEP_BYTES = 2 << 20


def _bytes_written(pid: int) -> int | None:
    """What a process has written so far (its sockets included): /proc/PID/io's wchar."""
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("wchar:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def test_killed_connection_resumes_with_less_than_the_full_image(docker_hosts, images):
    h = docker_hosts[0]
    env = dict(os.environ, **h["env"])
    remote_rmi(h, MULTI, BASE)
    argv = [sys.executable, "-m", "migrate", "push-image", MULTI, h["alias"], "--checkpoint", "20M",
            "--bwlimit", "12M", "--compress", "none", "--json"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = cut_after_first_checkpoint(proc, h)
    out, err = proc.communicate(timeout=120)
    assert killed, f"never saw a checkpoint before the push ended: {out}{err}"
    assert proc.returncode == 1, out + err
    assert "lost" in err and "committed" in err, err
    # the count covers every step of the image: at least the committed 20M checkpoint, not only the broken step
    lost = re.search(r"lost after ([0-9.]+) (MiB|GiB)", err)
    assert lost and float(lost.group(1)) * (1024 if lost.group(2) == "GiB" else 1) >= 20, err
    assert remote_id(h, MULTI) == ""

    full = sum(layer_bytes(MULTI, i) for i in range(4))
    [r] = push_json(MULTI, h["alias"], "--compress", "none", env=h["env"])
    assert r["status"] == "sent", r
    assert 0 < r["bytes_sent"] < full - (20 << 20), (r["bytes_sent"], full)
    assert remote_id(h, MULTI) == local_id(MULTI)
    assert in_host(h, "docker image ls -q migrate-partial").strip() == "", "checkpoint tags were not cleaned up"
    assert_like_a_whole_load(h, MULTI, docker_hosts[1])


def test_a_run_killed_with_sigkill_leaves_nothing_the_next_run_does_not_remove(docker_hosts, images, tmp_path):
    """SIGKILL mid-transfer leaves an orphan ssh master and a `docker save` spool; the rerun removes
    both (and only those of dead runs), then resumes from the committed checkpoint."""
    h = docker_hosts[0]
    remote_rmi(h, MULTI, BASE)
    env = dict(os.environ, **h["env"], MIGRATE_CACHE_DIR=str(tmp_path / "cache"))
    argv = [sys.executable, "-m", "migrate", "push-image", MULTI, h["alias"], "--checkpoint", "20M",
            "--bwlimit", "12M", "--compress", "none", "--no-direct-layers", "--json"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    master = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        if in_host(h, "docker image ls -q migrate-partial", check=False).split():
            master = _ssh_master_of(proc.pid)
            break
        time.sleep(0.2)
    assert master, "never saw a checkpoint and the ssh master before the push ended"
    proc.kill()  # SIGKILL: no cleanup runs
    proc.communicate(timeout=30)
    spools = list((tmp_path / "cache" / "push-image").glob("spool-*"))
    assert spools and Path(f"/proc/{master}").exists(), "the killed run left no orphan to clean up"
    live_spool = tmp_path / "cache" / "push-image" / f"{reap.spool_prefix()}live"
    live_spool.mkdir()  # a concurrent live run's spool (this test's process): must stay

    full = sum(layer_bytes(MULTI, i) for i in range(4))
    res = run_cli("push-image", MULTI, h["alias"], "--compress", "none", "--json", env=dict(h["env"],
                  MIGRATE_CACHE_DIR=str(tmp_path / "cache")), timeout=300)
    assert res.code == 0, res.output
    [r] = json.loads(res.stdout)
    assert r["status"] == "sent" and 0 < r["bytes_sent"] < full - (20 << 20), (r, full)  # resumed
    assert remote_id(h, MULTI) == local_id(MULTI)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{master}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{master}").exists(), "the orphan ssh master still runs"
    assert not any(p.exists() for p in spools), "the dead run's spool is still there"
    assert live_spool.exists(), "a live run's spool was removed"
    assert not list((tmp_path / "cache" / "cm").glob("*")), "a master socket was left"


STAGE_DIR = "/home/alice/.migrate/image-partial"


def _staged(host: dict) -> tuple[int, int]:
    """(bytes in the host's staged archive file, its committed length); (0, 0) when there is none."""
    out = in_host(host, f"cd {STAGE_DIR} 2>/dev/null && for f in *.tar; do [ -f \"$f\" ] && "
                        "echo $(wc -c < \"$f\") $(cat \"$f.ok\" 2>/dev/null || echo 0); done", check=False).split()
    return (int(out[0]), int(out[1])) if len(out) == 2 else (0, 0)


def test_an_interrupted_big_layer_resumes_inside_the_layer(docker_hosts, images, tmp_path):
    """Ctrl-C at ~67 % of a single 200 MiB layer, then the same command: it sends only what the host had
    not committed (at most the rest plus one --checkpoint), the image loads and runs, nothing stays."""
    h = docker_hosts[0]
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    sh("cp", "/bin/busybox", str(root / "bin" / "busybox"))
    os.symlink("busybox", root / "bin" / "sha256sum")
    big = os.urandom(200 << 20)
    (root / "big.bin").write_bytes(big)
    layer = root.parent / "layer.tar"
    sh("tar", "-C", str(root), "-cf", str(layer), ".")
    sh("docker", "import", str(layer), RESUME)
    archive_max = layer.stat().st_size + (64 << 10)  # the layer plus manifest, config and tar headers
    remote_rmi(h, RESUME)
    in_host(h, f"rm -rf {STAGE_DIR}")
    checkpoint = 16 << 20
    argv = [sys.executable, "-m", "migrate", "push-image", RESUME, h["alias"], "--checkpoint", "16M",
            "--compress", "none", "--bwlimit", "64M"]
    proc = subprocess.Popen(argv, env=dict(os.environ, **h["env"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: proc.poll() is not None or _staged(h)[0] >= 0.67 * len(big), timeout=120)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "~/.migrate/image-partial/" in err and "is kept there" in err, err
    size, committed = _staged(h)
    assert committed % checkpoint == 0 and size - checkpoint <= committed <= size and size >= 0.67 * len(big)
    assert remote_id(h, RESUME) == ""

    [r] = push_json(RESUME, h["alias"], "--checkpoint", "16M", "--compress", "none", env=h["env"])
    assert r["status"] == "sent", r
    rest = archive_max - size  # what the host had not received when the push was interrupted (at most)
    assert r["bytes_sent"] <= rest + checkpoint, (r["bytes_sent"], rest)
    assert r["bytes_sent"] >= layer.stat().st_size - committed, (r["bytes_sent"], committed)  # nothing skipped
    assert remote_id(h, RESUME) == local_id(RESUME)
    assert hashlib.sha256(big).hexdigest() in in_host(h, f"docker run --rm {RESUME} sha256sum /big.bin")
    assert in_host(h, f"ls -A {STAGE_DIR}").strip() == "", "the staged archive was not removed"
    remote_rmi(h, RESUME)
    sh("docker", "image", "rm", "-f", RESUME, check=False)


def test_two_hosts_at_once_each_gets_its_own_missing_layers(docker_hosts, images):
    h1, h2 = docker_hosts
    remote_rmi(h1, CHILD)
    remote_rmi(h2, CHILD, BASE)
    # --no-relay: each host's own missing layers from here (with the relay, h1 could feed h2: test_fanout.py)
    results = push_json(CHILD, BASE, h1["alias"], h2["alias"], "--no-relay", env=h1["env"])
    by_host = {(r["host"].split("@")[-1], r["image"]): r for r in results}
    assert len(results) == 4
    for h in (h1, h2):
        assert remote_id(h, CHILD) == local_id(CHILD)
        assert remote_id(h, BASE) == local_id(BASE)
    r1 = by_host[(h1["alias"], CHILD)]
    r2 = by_host[(h2["alias"], CHILD)]
    assert r2["bytes_sent"] > 3_000_000  # h2 had nothing: both layers
    if remote_id(h1, BASE):  # h1 kept the base from earlier tests: only the new layer
        assert r1["bytes_sent"] < r2["bytes_sent"]


def test_password_sudo_user_pushes_through_sudo(docker_hosts, images):
    h = docker_hosts[1]
    remote_rmi(h, BASE)
    env = dict(h["env"], MIGRATE_SUDO_PASSWORD=h["password_sudo_user_password"])
    res = push(BASE, f"bob@{h['alias']}", "--json", env=env)
    assert res.code == 0, res.output
    assert h["password_sudo_user_password"] not in res.output
    assert remote_id(h, BASE) == local_id(BASE)


def test_dry_run_changes_nothing(docker_hosts, images):
    h = docker_hosts[1]
    remote_rmi(h, CHILD)
    res = push(CHILD, h["alias"], "--dry-run", env=h["env"])
    assert res.code == 0, res.output
    assert "would send" in res.stdout
    assert remote_id(h, CHILD) == ""


def test_to_file_then_from_file(docker_hosts, images, tmp_path):
    h = docker_hosts[1]
    remote_rmi(h, CHILD, BASE)
    path = tmp_path / "child.tar.zst"
    res = push(CHILD, "--to-file", str(path), env=h["env"])
    assert res.code == 0, res.output
    assert path.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"
    res = push("--from-file", str(path), h["alias"], env=h["env"])
    assert res.code == 0, res.output
    assert remote_id(h, CHILD) == local_id(CHILD)


def test_missing_image_lists_close_matches(docker_hosts, images):
    h = docker_hosts[0]
    res = push(f"{PREFIX}/chlid:1", h["alias"], env=h["env"])
    assert_one_line_error(res, "not found locally", CHILD)


def test_wrong_arch_is_refused_unless_forced(docker_hosts, images):
    h = docker_hosts[0]
    remote_rmi(h, ARM)
    assert_one_line_error(push(ARM, h["alias"], env=h["env"]), "built for arm64", "--force-arch")
    assert remote_id(h, ARM) == ""
    res = push(ARM, h["alias"], "--force-arch", env=h["env"])
    assert res.code == 0, res.output
    assert remote_id(h, ARM) == local_id(ARM)
    remote_rmi(h, ARM)


def test_remote_disk_too_small_is_refused_before_sending(docker_hosts, images):
    """Docker's temp dir on the host's 64 MiB tmpfs; an 80 MiB layer cannot be loaded."""
    h = docker_hosts[1]
    dropin = "/etc/systemd/system/docker.service.d/migrate-test-tmp.conf"
    in_host(h, f"mkdir -p /mnt/small/dockertmp $(dirname {dropin}) && printf '[Service]\\n"
               f"Environment=DOCKER_TMPDIR=/mnt/small/dockertmp\\n' > {dropin} && "
               "systemctl daemon-reload && systemctl restart docker")
    try:
        remote_rmi(h, BIG)
        res = push(BIG, h["alias"], env=h["env"])
        assert_one_line_error(res, "not enough disk", "/mnt/small")
        assert remote_id(h, BIG) == ""
        assert in_host(h, "ls -A /mnt/small/dockertmp").strip() == ""
    finally:
        in_host(h, f"rm -f {dropin} && systemctl daemon-reload && systemctl restart docker")


def test_no_docker_on_the_host(sandbox_hosts, images):
    res = run_cli("push-image", BASE, sandbox_hosts[0]["alias"])
    assert_one_line_error(res, "Docker is not installed")


def test_sif_without_apptainer_is_a_clear_error(docker_hosts, images):
    h = docker_hosts[0]
    res = push(BASE, h["alias"], "--format", "sif", env=h["env"])
    assert_one_line_error(res, "neither apptainer nor singularity")


FAKE_APPTAINER = r"""#!/bin/sh
# FAKE apptainer (test double, not a real SIF builder): checks that the docker-archive it is given
# has a manifest and the image's files, and writes a text file listing the archive instead of a SIF.
[ "$1" = build ] || exit 2
shift
[ "$1" = --force ] && shift
out=$1
src=${2#docker-archive://}
tar -xOf "$src" manifest.json >/dev/null || exit 3
{ echo FAKE-SIF; tar -tf "$src"; } > "$out"
"""


def test_sif_format_streams_a_docker_archive_to_apptainer(docker_hosts, images):
    """Our side of --format sif (stream, temp file, marker, cleanup, skip) with a FAKE apptainer."""
    h = docker_hosts[1]
    sh("docker", "exec", "-i", h["container"], "sh", "-c",
       "cat > /usr/local/bin/apptainer && chmod 755 /usr/local/bin/apptainer", input=FAKE_APPTAINER.encode())
    try:
        in_host(h, "rm -rf /home/alice/.migrate/images")
        [r] = push_json(BASE, h["alias"], "--format", "sif", env=h["env"])
        assert r["status"] == "sent", r
        sif = "/home/alice/.migrate/images/migrate-pimage-test_base_1.sif"
        listing = in_host(h, f"cat {sif}")
        assert listing.startswith("FAKE-SIF") and "manifest.json" in listing and "layer.tar" in listing
        assert in_host(h, f"cat {sif}.image-id").strip() == local_id(BASE)
        assert in_host(h, "ls -A /home/alice/.migrate/tmp 2>/dev/null").strip() == ""
        [r] = push_json(BASE, h["alias"], "--format", "sif", env=h["env"])
        assert r["status"] == "up to date" and r["bytes_sent"] == 0, r
    finally:
        in_host(h, "rm -f /usr/local/bin/apptainer; rm -rf /home/alice/.migrate/images")
