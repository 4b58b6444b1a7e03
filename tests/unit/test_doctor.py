from migrate.commands.doctor import assess
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
