"""push-image with the containerd image store, on the host and on the laptop, against real engines.

Three Debian 13 hosts with Debian's newest engine (docker.io 28.5 from sid, containerd 2.1), the
dedicated sandbox `modern` (`--release trixie --docker-from sid --image-store containerd`):
- modern2: a host whose dockerd uses the containerd image store (installed by `migrate host-setup`);
- modern3: the same, used as the *laptop*: its engine is reached through an SSH-forwarded socket in
  DOCKER_HOST, so `docker save` there writes the OCI layout a containerd store writes;
- modern1: after test_modern_hosts.py is done with it, Docker 28.5 again but on the classic overlay2
  store (daemon.json without the snapshotter feature).
The test images are made on this machine's classic engine; assertions about a host use
`docker exec` into its container, independent of the code under test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from migrate.sandbox.manager import Sandbox, SandboxSettings
from tests.conftest import assert_one_line_error, run_cli
from tests.integration.test_modern_hosts import FLAVOUR
from tests.integration.test_push_image import (
    assert_like_a_whole_load,
    cut_after_first_checkpoint,
    layer_bytes,
    push,
    push_json,
    sh,
    sh_bytes,
)

pytestmark = pytest.mark.release("trixie")
PREFIX = "migrate-c8d-test"
BASE = f"{PREFIX}/base:1"
CHILD = f"{PREFIX}/child:1"
MULTI = f"{PREFIX}/multi:1"
ALL = [BASE, CHILD, MULTI]


def in_host(host: dict, script: str, check: bool = True) -> str:
    return sh("docker", "exec", host["container"], "sh", "-c", script, check=check)


def remote_ids(host: dict, ref: str) -> str:
    return in_host(host, f"docker image inspect --format '{{{{.Id}}}}' {ref} 2>/dev/null", check=False).strip()


def clean(host: dict) -> None:
    in_host(host, "docker image ls -q | sort -u | xargs -r docker image rm -f >/dev/null 2>&1; true")


@pytest.fixture(scope="module")
def hosts(dedicated_sandbox) -> dict[str, dict]:
    """modern1 (classic store, Docker 28.5), modern2 (containerd store), modern3 (the laptop's engine)."""
    h1, h2, h3 = dedicated_sandbox("modern", 3, extra=FLAVOUR)
    in_host(h1, "systemctl stop docker docker.socket >/dev/null 2>&1; echo '{}' > /etc/docker/daemon.json "
                "2>/dev/null || { mkdir -p /etc/docker && echo '{}' > /etc/docker/daemon.json; }")
    res = run_cli("host-setup", h1["alias"], h2["alias"], h3["alias"], "--docker-source", "distro", "--no-nvidia",
                  env=h1["env"], timeout=900)
    assert res.code == 0, res.output
    for h, containerd in ((h1, False), (h2, True), (h3, True)):
        info = in_host(h, "docker info --format '{{.ServerVersion}} {{.Driver}} {{json .DriverStatus}}'")
        assert info.startswith("28.") and ("io.containerd.snapshotter" in info) == containerd, info
    return {"classic": h1, "c8d": h2, "laptop": h3}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """base (busybox + 3 MB), child (+ one 5 MB layer), multi (base + 3 x 8 MiB layers), on this machine."""
    work = tmp_path_factory.mktemp("c8dimages")
    root = work / "rootfs"
    (root / "bin").mkdir(parents=True)
    sh("cp", "/bin/busybox", str(root / "bin" / "busybox"))
    os.symlink("busybox", root / "bin" / "sh")
    (root / "base.bin").write_bytes(os.urandom(3_000_000))
    rootfs = sh_bytes("tar", "-C", str(root), "-cf", "-", ".")
    sh("docker", "import", "--change", 'CMD ["/bin/sh"]', "-", BASE, input=rootfs)
    for name, files in (("child", {"app.bin": 5_000_000}), ("multi", {f"l{i}.bin": 8 << 20 for i in range(3)})):
        ctx = work / name
        ctx.mkdir()
        for f, size in files.items():
            (ctx / f).write_bytes(os.urandom(size))
        (ctx / "Dockerfile").write_text(f"FROM {BASE}\n" + "".join(f"COPY {f} /{f}\n" for f in files))
        subprocess.run(["docker", "build", "-q", "-t", f"{PREFIX}/{name}:1", str(ctx)], check=True, capture_output=True,
                       env=dict(os.environ, DOCKER_BUILDKIT="0"))
    yield
    sh("docker", "image", "rm", "-f", *ALL, check=False)


@pytest.fixture(scope="module")
def laptop(hosts, images, tmp_path_factory):
    """DOCKER_HOST for modern3's engine (containerd store) through an SSH-forwarded socket; the test
    images are loaded into it."""
    h = hosts["laptop"]
    sock = tmp_path_factory.mktemp("laptop") / "docker.sock"
    config = Sandbox(SandboxSettings(name=h["env"]["MIGRATE_SANDBOX"])).ssh_config
    fwd = subprocess.Popen(["ssh", "-F", str(config), "-N", "-o", "ExitOnForwardFailure=yes",
                            "-L", f"{sock}:/var/run/docker.sock", h["alias"]])
    for _ in range(100):
        if sock.exists():
            break
        time.sleep(0.1)
    env = dict(h["env"], DOCKER_HOST=f"unix://{sock}")
    save = subprocess.Popen(["docker", "save", *ALL], stdout=subprocess.PIPE)
    subprocess.run(["docker", "load"], stdin=save.stdout, env=dict(os.environ, **env), check=True, capture_output=True)
    save.wait()
    info = sh("docker", "-H", f"unix://{sock}", "info", "--format", "{{json .DriverStatus}}")
    assert "io.containerd.snapshotter" in info
    yield env
    fwd.terminate()
    fwd.wait()


def test_containerd_host_gets_only_missing_layers_and_sees_an_unchanged_image_as_up_to_date(hosts, images):
    h = hosts["c8d"]
    clean(h)
    [r] = push_json(BASE, h["alias"], env=h["env"])
    assert r["status"] == "sent" and "OCI layout" in r["detail"], r
    t0 = time.monotonic()
    res = push(BASE, h["alias"], "--json", env=h["env"])
    assert res.code == 0 and "moves" not in res.stderr, res.output
    [r] = json.loads(res.stdout)
    assert r["status"] == "up to date" and r["bytes_sent"] == 0, r
    assert time.monotonic() - t0 < 10
    new_layer = layer_bytes(CHILD, 1)
    [r] = push_json(CHILD, h["alias"], env=h["env"])
    assert r["status"] == "sent" and r["layers_sent"] == 1, r
    assert r["bytes_sent"] < 9_000_000 and r["bytes_sent"] <= new_layer + 64 * 1024, r
    assert in_host(h, f"docker run --rm {CHILD} busybox wc -c /app.bin").split()[0] == "5000000"
    assert in_host(h, "docker image ls -q migrate-partial").strip() == ""
    # the base layer was left out of the second push: the content store must still have its blob
    assert_like_a_whole_load(h, CHILD, hosts["classic"])


def test_dry_run_names_the_oci_layout_and_changes_nothing(hosts, images):
    h = hosts["c8d"]
    in_host(h, f"docker image rm -f {MULTI} >/dev/null 2>&1; true")
    before = in_host(h, "docker image ls -a --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}' | sort")
    [r] = push_json(MULTI, h["alias"], "--dry-run", env=h["env"])
    assert r["status"] == "would send" and "3/4 layers" in r["detail"] and "OCI layout" in r["detail"], r
    assert in_host(h, "docker image ls -a --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}' | sort") == before


def test_killed_connection_resumes_on_the_containerd_store(hosts, images):
    h = hosts["c8d"]
    in_host(h, f"docker image rm -f {MULTI} >/dev/null 2>&1; true")
    # 3 MiB/s: the 25 MB push lasts ~8 s, so on a busy CI machine (each poll of the host is a docker exec)
    # the cut still lands in the middle; at 6 MiB/s it once landed after the last byte
    argv = [sys.executable, "-m", "migrate", "push-image", MULTI, h["alias"], "--checkpoint", "8M",
            "--bwlimit", "3M", "--compress", "none", "--json"]
    proc = subprocess.Popen(argv, env=dict(os.environ, **h["env"]), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    killed = cut_after_first_checkpoint(proc, h)
    out, err = proc.communicate(timeout=120)
    assert killed, f"never saw a checkpoint before the push ended: {out}{err}"
    assert proc.returncode == 1 and "lost" in err and "committed" in err, out + err
    full = sum(layer_bytes(MULTI, i) for i in range(1, 4))
    [r] = push_json(MULTI, h["alias"], "--compress", "none", env=h["env"])
    assert r["status"] == "sent" and 0 < r["bytes_sent"] <= full - (8 << 20) + 64 * 1024, (r, full)  # >= 1 layer kept
    assert in_host(h, f"docker run --rm {MULTI} busybox wc -c /l2.bin").split()[0] == str(8 << 20)
    assert in_host(h, "docker image ls -q migrate-partial").strip() == "", "checkpoint tags were not cleaned up"
    # the same ID as an uninterrupted push or a whole load, wherever the first push was cut
    assert_like_a_whole_load(h, MULTI, hosts["classic"])


SMALL_ROOT = "/var/lib/c8d-small"


def test_free_space_is_checked_where_containerd_keeps_the_layers(hosts, images, tmp_path):
    """containerd's root moved to a 64 MiB tmpfs (its config's `root`): a 40 MiB layer (80 MiB as blob plus
    snapshot) is refused in the preflight with one line naming that root, and nothing reaches the host.
    Docker's data-root, on the big disk, would have let it through to a `no space left` mid-load."""
    h = hosts["c8d"]
    big = f"{PREFIX}/big:1"
    payload = tmp_path / "big"
    payload.mkdir()
    (payload / "big.bin").write_bytes(os.urandom(40 << 20))
    sh("docker", "import", "-", big, input=sh_bytes("tar", "-C", str(payload), "-cf", "-", "big.bin"))
    restart = "systemctl stop docker docker.socket containerd && "
    conf = "/etc/containerd/config.toml"
    try:
        in_host(h, restart + f"cp {conf} {conf}.orig && mkdir -p {SMALL_ROOT} && "
                f"mount -t tmpfs -o size=64m,mode=0711 tmpfs {SMALL_ROOT} && "
                f"{{ echo 'root = \"{SMALL_ROOT}\"'; cat {conf}.orig; }} > {conf} && systemctl start containerd docker")
        used = int(in_host(h, f"df -Pk {SMALL_ROOT} | awk 'NR==2 {{print $3}}'"))
        res = push(big, h["alias"], env=h["env"])
        assert_one_line_error(res, "not enough disk", f"containerd's root {SMALL_ROOT}")
        assert "/var/lib/docker" not in res.stderr and "no space left" not in res.stderr.lower(), res.stderr
        assert int(in_host(h, f"df -Pk {SMALL_ROOT} | awk 'NR==2 {{print $3}}'")) < used + 1024  # no layer written
        assert in_host(h, "docker image ls -q").strip() == ""  # no image, no checkpoint
    finally:
        in_host(h, restart + f"{{ [ ! -f {conf}.orig ] || mv -f {conf}.orig {conf}; }}; "
                f"umount {SMALL_ROOT} 2>/dev/null; systemctl start containerd docker", check=False)
        sh("docker", "image", "rm", "-f", big, check=False)
    assert "overlayfs" in in_host(h, "docker info --format '{{.Driver}}'")


def test_laptop_on_the_containerd_store_pushes_to_both_stores(hosts, laptop):
    classic, c8d = hosts["classic"], hosts["c8d"]
    clean(classic)
    in_host(c8d, f"docker image rm -f {CHILD} >/dev/null 2>&1; true")  # base stays: one layer to send there
    config_digest = sh("docker", "image", "inspect", "--format", "{{.Id}}", CHILD).strip()
    laptop_id = sh("docker", "-H", laptop["DOCKER_HOST"], "image", "inspect", "--format", "{{.Id}}", CHILD).strip()
    assert laptop_id != config_digest  # the laptop's store names it by its manifest digest
    results = push_json(CHILD, classic["alias"], c8d["alias"], env=laptop)
    by_host = {r["host"].split("@")[-1]: r for r in results}
    assert all(r["status"] == "sent" for r in results), results
    assert by_host[c8d["alias"]]["layers_sent"] == 1 and by_host[classic["alias"]]["layers_sent"] == 2, results
    assert remote_ids(classic, CHILD) == config_digest  # a classic store: the very same image ID
    assert remote_ids(c8d, CHILD) == laptop_id  # a containerd store: the laptop's manifest, so the laptop's ID
    for h in (classic, c8d):
        assert in_host(h, f"docker run --rm {CHILD} busybox wc -c /app.bin").split()[0] == "5000000"
    again = push_json(CHILD, classic["alias"], c8d["alias"], env=laptop)
    assert [r["status"] for r in again] == ["up to date", "up to date"], again


APPTAINER = ("command -v apptainer >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq apptainer "
             ">/dev/null 2>&1; apptainer --version")   # Debian sid's apptainer (1.4.5), pinned in by --docker-from sid


def test_real_apptainer_builds_a_sif(hosts, images):
    h = hosts["c8d"]
    in_host(h, APPTAINER)
    [r] = push_json(CHILD, h["alias"], "--format", "sif", env=h["env"])
    assert r["status"] == "sent", r
    sif = Path("/home/alice/.migrate/images/migrate-c8d-test_child_1.sif")
    out = sh("docker", "exec", "-u", "alice", h["container"], "apptainer", "exec", str(sif), "busybox", "wc", "-c",
             "/app.bin")
    assert out.split()[0] == "5000000"
    [r] = push_json(CHILD, h["alias"], "--format", "sif", env=h["env"])
    assert r["status"] == "up to date", r
    assert in_host(h, "ls /home/alice/.migrate/tmp 2>/dev/null | wc -l").strip() == "0"


def sif_jobs_as_a_plain_user(h: dict, image: str) -> None:
    """carol (no sudo, no docker group) builds a SIF with the real apptainer, then runs jobs in it through
    `apptainer exec --nv`: the dispatcher's GPU (the FAKE backend: a test double, no NVIDIA libraries, so
    --nv has nothing to bind) reaches the command, the log holds its output, cancel stops apptainer and
    the command. `image` holds /app.bin (5000000 bytes)."""
    from migrate.agent.gpus import fake_state, fake_uuid
    from migrate.remote import shell
    from tests.conftest import wait_until

    carol, env = "carol@" + h["alias"], h["env"]
    fake = "/home/carol/.migrate/fake-gpus.json"
    in_host(h, "rm -rf /home/carol/.migrate/images && install -d -m 700 -o carol -g carol /home/carol/.migrate && "
               f"printf '%s' {shell.quote(json.dumps(fake_state(1)))} > {fake} && chown carol: {fake} && "
               f"chmod 600 {fake}")
    [r] = push_json(image, carol, "--format", "sif", env=env)
    assert r["status"] == "sent", r
    sif = Path(r["detail"].split(",")[0]).name
    res = run_cli("run", carol, "--gpu-backend", f"fake:{fake}", "--gpus-per-job", "1", "--image", sif, "-f", "--",
                  'echo "gpus=$CUDA_VISIBLE_DEVICES"; busybox wc -c /app.bin', env=env, timeout=120)
    assert res.code == 0, res.output
    assert f"gpus={fake_uuid(0)}" in res.stdout and "5000000 /app.bin" in res.stdout, res.stdout
    res = run_cli("run", carol, "--gpus-per-job", "1", "--image", sif, "--name", "sif-sleep", "--",
                  "echo up; exec sleep 300", env=env)
    assert res.code == 0, res.output
    wait_until(lambda: "up" in run_cli("logs", carol, "sif-sleep", env=env).stdout.split(), timeout=60,
               what="the SIF job's first line")
    assert in_host(h, "pgrep -u carol -x sleep", check=False).strip(), "no sleep in the SIF job"
    res = run_cli("cancel", carol, "sif-sleep", env=env)
    assert res.code == 0, res.output
    wait_until(lambda: not in_host(h, "pgrep -u carol -f 'Apptainer runtime|sleep 300'", check=False).strip(),
               timeout=30, what="apptainer and the command to stop")
    jobs = json.loads(run_cli("status", carol, "--json", env=env).stdout)["jobs"]
    assert [j["state"] for j in jobs if j["name"] == "sif-sleep"] == ["cancelled"]


def test_real_apptainer_runs_sif_jobs_for_a_plain_user(hosts, images):
    h = hosts["c8d"]
    in_host(h, APPTAINER)
    sif_jobs_as_a_plain_user(h, CHILD)


def test_real_compose_job_on_trixie(hosts, images, tmp_path):
    h = hosts["c8d"]
    push_json(CHILD, h["alias"], env=h["env"])
    stack = tmp_path / "stack"
    stack.mkdir()
    (stack / "docker-compose.yml").write_text(
        f"services:\n  app:\n    image: {CHILD}\n    command: [\"sh\", \"-c\", \"busybox wc -c /app.bin\"]\n")
    res = run_cli("run", h["alias"], "--compose", str(stack / "docker-compose.yml"), "--gpus-per-job", "0",
                  "--name", "c8dcompose", env=h["env"])
    assert res.code == 0, res.output
    for _ in range(120):
        st = run_cli("status", h["alias"], "--json", env=h["env"])
        jobs = [j for j in json.loads(st.stdout)["jobs"] if j["name"] == "c8dcompose"]
        if jobs and jobs[0]["state"] in ("done", "failed"):
            break
        time.sleep(1)
    assert jobs and jobs[0]["state"] == "done", jobs
    assert "5000000 /app.bin" in run_cli("logs", h["alias"], "c8dcompose", env=h["env"]).stdout


def test_fan_out_rides_the_oci_layout_between_containerd_stores(hosts, images):
    """Fan-out on the containerd store (issue 24; last in this file: it empties the laptop's engine). The
    c8d host seeds; the laptop's engine, a containerd store too, rides the OCI layout c8d loads, as it
    arrives; the classic host cannot load that layout and gets `docker save` of c8d's copy."""
    seed, rider, classic = hosts["c8d"], hosts["laptop"], hosts["classic"]
    for h in (seed, rider, classic):
        clean(h)
    r_seed, r_rider, r_classic = push_json(MULTI, seed["alias"], rider["alias"], classic["alias"], env=seed["env"])
    assert (r_seed["status"], r_seed["fed_via"]) == ("sent", "this machine"), r_seed
    assert r_rider["fed_via"] == seed["alias"] and "as they arrived there" in r_rider["detail"], r_rider
    assert r_classic["fed_via"] == seed["alias"] and r_classic["detail"].endswith("(docker save there)"), r_classic
    assert r_rider["bytes_sent"] == 0 == r_classic["bytes_sent"] and r_rider["relayed_bytes"] >= 3 * (8 << 20)
    for h in (rider, classic):
        assert in_host(h, f"docker run --rm {MULTI} busybox wc -c /l2.bin").split()[0] == str(8 << 20)
    assert in_host(rider, "docker image ls -q migrate-partial").strip() == ""
    assert_like_a_whole_load(rider, MULTI, classic)
