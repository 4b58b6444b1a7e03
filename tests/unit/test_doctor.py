from migrate.remote.doctor import assess
from migrate.remote.probe import parse_probe

FRESH = """os.id=debian
os.version_id=12
os.codename=bookworm
os.pretty=Debian GNU/Linux 12 (bookworm)
arch=x86_64
kernel=6.1
cgroup=1
systemd=yes
sudo=nopasswd
docker.path=
disk.home=100 1000 /
disk.docker=100 1000 /
disk.tmp=99999999 99999999 /
python3=3.11.2
rsync=3.2.7
"""


def _by_name(checks):
    return {c.name: c for c in checks}


def test_fresh_host_says_docker_and_driver_are_missing_with_hints():
    c = _by_name(assess(parse_probe(FRESH)))
    assert c["docker"].verdict == "missing" and "host-setup" in c["docker"].hint
    assert c["nvidia driver"].verdict == "missing" and "never installs drivers" in c["nvidia driver"].hint
    assert c["sudo"].verdict == "ok" and "passwordless" in c["sudo"].detail
    assert c["os"].verdict == "ok" and "bookworm" in c["os"].detail
    assert c["disk home"].verdict == "warn" and c["disk /tmp"].verdict == "ok"
    assert c["python3"].verdict == "ok" and c["rsync"].verdict == "ok"
    assert c["zstd"].verdict == "info"


def test_docker_without_group_membership_points_to_host_setup():
    text = FRESH.replace("docker.path=", "docker.path=/usr/bin/docker\ndocker.access=no\n"
                         "docker.error=permission denied while trying to connect to the Docker daemon socket")
    c = _by_name(assess(parse_probe(text)))
    assert c["docker"].verdict == "warn" and "docker group" in c["docker"].hint


def test_gpus_and_runtime_are_ok_and_listed():
    text = FRESH + ("gpu=0, NVIDIA H100, GPU-1, 81559, 550.54\nnvidia_smi=/usr/bin/nvidia-smi\n"
                    "docker.path=/usr/bin/docker\ndocker.access=yes\n"
                    "docker.info=24.0|overlay2|/var/lib/docker|runc|cgroupfs|nvidia,runc\n")
    c = _by_name(assess(parse_probe(text)))
    assert c["gpu 0"].verdict == "ok" and "GPU-1" in c["gpu 0"].detail
    assert c["nvidia runtime"].verdict == "ok"
    assert c["docker"].verdict == "ok" and "overlay2" in c["docker"].detail


def test_no_sudo_and_old_python_and_unknown_os():
    text = FRESH.replace("sudo=nopasswd", "sudo=none").replace("python3=3.11.2", "python3=3.6.9")
    text = text.replace("os.id=debian", "os.id=arch").replace("os.pretty=Debian GNU/Linux 12 (bookworm)", "")
    c = _by_name(assess(parse_probe(text)))
    assert c["sudo"].verdict == "missing"
    assert c["python3"].verdict == "warn"
    assert c["os"].verdict == "warn"


# Debian 13 with Debian's docker.io 28.5 on the containerd image store (as `migrate sandbox up
# --release trixie --docker-from sid --image-store containerd` and host-setup leave it).
TRIXIE = FRESH.replace("os.version_id=12", "os.version_id=13").replace("bookworm", "trixie") + """systemd_version=257
docker.dockerd=/usr/sbin/dockerd
docker.daemon_version=28.5.2+dfsg4
docker.daemon_running=yes
pkg.docker.io=28.5.2+dfsg4-5
"""
CONTAINERD_INFO = ("docker.path=/usr/bin/docker\ndocker.access=yes\n"
                   "docker.info=28.5.2+dfsg4|overlayfs|/var/lib/docker|runc|cgroupfs|runc,|driver-type:"
                   "io.containerd.snapshotter.v1;\n")


def test_missing_cli_next_to_a_running_daemon_is_named_not_called_not_installed():
    f = parse_probe(TRIXIE)
    assert f.docker.cli_missing and not f.docker.installed and f.docker.engine_version == "28.5.2+dfsg4"
    c = _by_name(assess(f))["docker"]
    assert c.verdict == "warn" and "`docker` command is missing" in c.detail and "running" in c.detail
    assert "docker-cli" in c.hint and "not installed" not in c.detail


def test_containerd_image_store_and_engine_version_are_reported():
    f = parse_probe(TRIXIE + CONTAINERD_INFO)
    assert f.docker.image_store == "containerd" and not f.docker.cli_missing
    c = _by_name(assess(f))["docker"]
    assert c.verdict == "ok" and c.detail.startswith("28.5.2+dfsg4 (docker.io), containerd image store (overlayfs")
    overlay = parse_probe(TRIXIE + CONTAINERD_INFO.replace("overlayfs", "overlay2").replace(
        "driver-type:io.containerd.snapshotter.v1;", "Backing Filesystem:extfs;Supports d_type:true;"))
    assert overlay.docker.image_store == "graphdriver"
    assert "storage overlay2" in _by_name(assess(overlay))["docker"].detail
    assert parse_probe(TRIXIE).to_dict()["docker"]["cli_missing"] is True


def test_cgroup_v1_under_a_systemd_that_deprecates_it_is_a_warning():
    c = _by_name(assess(parse_probe(TRIXIE)))["cgroup"]
    assert c.verdict == "warn" and "systemd 257" in c.detail and "cgroup v2" in c.hint
    old = _by_name(assess(parse_probe(FRESH + "systemd_version=252\n")))["cgroup"]
    assert old.verdict == "ok" and old.detail == "v1, systemd 252"
    v2 = _by_name(assess(parse_probe(TRIXIE.replace("cgroup=1", "cgroup=2"))))["cgroup"]
    assert v2.verdict == "ok"


def test_diagnose_probes_once_read_only_and_assesses(monkeypatch):
    """doctor's domain half on a recording host: one probe round trip, nothing that changes the host."""
    from migrate.remote import doctor
    from migrate.remote.hosts import ConnectOptions
    from tests.fakehost import FakeHost

    host = FakeHost().reply(r"kv os\.id|os-release", FRESH)
    monkeypatch.setattr(doctor, "connect", lambda h, conn: host)
    d = doctor.diagnose("gpu", ConnectOptions(), check_sudo=True)
    assert len(host.commands()) == 1 and host.mutations() == [] and host.closed
    assert d.target is host.target and d.facts.os_id == "debian"
    assert _by_name(d.checks)["docker"].verdict == "missing"


def test_a_plain_user_is_told_what_still_works():
    """Issue 21: no sudo and no docker access -> one line of what works, not only what is missing."""
    text = FRESH.replace("sudo=nopasswd", "sudo=none")
    c = _by_name(assess(parse_probe(text)))["plain user"]
    assert c.verdict == "info"
    assert "push-data" in c.detail and "push-env" in c.detail and "run --env" in c.detail and "cluster up" in c.detail
    assert "sif" not in c.detail and "host-setup" in c.hint
    with_sif = _by_name(assess(parse_probe(text + "apptainer=/usr/bin/apptainer\n")))
    assert "--format sif" in with_sif["plain user"].detail and with_sif["apptainer"].verdict == "ok"
    old = _by_name(assess(parse_probe(text.replace("python3=3.11.2", "python3=3.9.2"))))["plain user"]
    assert "push-env" in old.detail and "cluster up" not in old.detail
    assert "plain user" not in _by_name(assess(parse_probe(FRESH)))  # sudo works: the usual report


def test_password_sudo_outside_any_admin_group_is_probably_no_sudo():
    text = FRESH.replace("sudo=nopasswd", "sudo=password") + "groups=carol\n"
    c = _by_name(assess(parse_probe(text)))
    assert c["sudo"].verdict == "warn" and "plain user" in c
    bob = _by_name(assess(parse_probe(FRESH.replace("sudo=nopasswd", "sudo=password") + "groups=bob sudo\n")))
    assert bob["sudo"].verdict == "ok" and "plain user" not in bob
