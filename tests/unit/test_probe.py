import subprocess

from migrate.remote.probe import PROBE_SCRIPT, normalize_arch, parse_probe

SAMPLE = """os.id=ubuntu
os.version_id=22.04
os.codename=jammy
os.ubuntu_codename=jammy
os.id_like=debian
os.pretty=Ubuntu 22.04.4 LTS
arch=x86_64
dpkg_arch=amd64
kernel=5.15.0-100-generic
cgroup=2
systemd=yes
user=alice
uid=1001
groups=alice sudo docker
home=/home/alice
sudo=password
docker.path=/usr/bin/docker
docker.client=24.0.7
docker.access=yes
docker.info=24.0.7|overlay2|/var/lib/docker|runc|systemd|io.containerd.runc.v2,nvidia,runc,
pkg.docker-ce=5:24.0.7-1~ubuntu.22.04~jammy
pkg.nvidia-container-toolkit=1.14.3-1
nvidia_smi=/usr/bin/nvidia-smi
gpu=0, NVIDIA A100-SXM4-80GB, GPU-aaaa, 81920, 535.104.05
gpu=1, NVIDIA A100-SXM4-80GB, GPU-bbbb, 81920, 535.104.05
nvidia_smi_exit=0
disk.home=1000 2000 /home
disk.docker=3000 4000 /
disk.tmp=5000 6000 /
python3=3.10.12
rsync=3.2.7
zstd=1.4.8
cpus=64
aes=aes
garbage line without equals
unknown.key=ignored
"""


def test_parse_probe_reads_every_fact():
    f = parse_probe(SAMPLE)
    assert (f.os_id, f.os_version_id, f.os_codename, f.os_family) == ("ubuntu", "22.04", "jammy", "ubuntu")
    assert (f.arch, f.docker_arch, f.cgroup_version, f.systemd) == ("x86_64", "amd64", 2, True)
    assert (f.user, f.uid, f.sudo) == ("alice", 1001, "password")
    assert "docker" in f.groups
    d = f.docker
    assert d.installed and d.access and d.server_version == "24.0.7" and d.storage_driver == "overlay2"
    assert d.runtimes == ["io.containerd.runc.v2", "nvidia", "runc"] and d.package == "docker-ce"
    assert [g.uuid for g in f.gpus] == ["GPU-aaaa", "GPU-bbbb"] and f.gpus[0].memory_mib == 81920
    assert f.nvidia_smi_ok
    assert f.disks["home"].free_kib == 1000 and f.disks["docker"].mount == "/"
    assert f.python_at_least(3, 8) and not f.python_at_least(3, 11)
    assert (f.rsync, f.zstd, f.cpus, f.aes) == ("3.2.7", "1.4.8", 64, True)


def test_parse_probe_of_empty_output_is_safe():
    f = parse_probe("")
    assert f.sudo == "none" and not f.docker.installed and f.gpus == [] and not f.python_at_least(3, 8)


def test_derivative_maps_to_family_through_id_like():
    assert parse_probe("os.id=linuxmint\nos.id_like=ubuntu debian\n").os_family == "ubuntu"
    assert parse_probe("os.id=raspbian\n").os_family == "debian"
    assert parse_probe("os.id=fedora\n").os_family == ""


def test_normalize_arch():
    assert normalize_arch("x86_64") == "amd64"
    assert normalize_arch("aarch64") == "arm64"
    assert normalize_arch("riscv64") == "riscv64"


def test_probe_script_runs_under_plain_sh_here():
    """The script is POSIX sh and always exits 0; its output parses on this machine."""
    proc = subprocess.run(["sh", "-c", PROBE_SCRIPT], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    facts = parse_probe(proc.stdout)
    assert facts.arch and facts.kernel and facts.user and facts.cgroup_version in (1, 2)
    assert "home" in facts.disks and facts.disks["home"].total_kib > 0
