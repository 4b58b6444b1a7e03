"""How a sandbox host is built: a Debian rootfs from debootstrap, customised, imported as an image.

The sandbox rehearses a borrowed GPU server: systemd as PID 1, sshd with key auth, a user `alice`
with passwordless sudo and a user `bob` with password sudo, working apt, no Docker. Everything
here is data (package list, shell scripts); `recipe_hash()` changes whenever any of it changes,
so a cached rootfs is rebuilt exactly when the recipe is different.

Why the odd bits (measured on this kind of machine):
- `docker run --privileged` fails where the capability bounding set lacks CAP_SYS_RESOURCE, so
  containers run with every other capability and a PID-1 shim remounts /sys and the cgroup
  mounts read-write (a plain `remount,rw` says "busy": `remount,bind,rw` works) before systemd.
- Docker rewrites /etc/resolv.conf and /etc/hosts at each container start; a oneshot unit
  re-applies our copies early in boot, so Docker installed later inside gets working DNS.
- overlayfs on overlayfs is refused, so the inner /var/lib/docker is a named volume.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

SUITE = "bookworm"
# Debian releases a sandbox host can run (`sandbox up --release`). sid's systemd (262+) no longer
# boots on cgroup v1 kernels, so newer engines come from sid into a trixie host (`--docker-from sid`).
RELEASES = ("bookworm", "trixie")
DOCKER_FROM = ("sid",)
IMAGE_STORES = ("overlay2", "containerd")
# What `--docker-from sid` takes from sid; everything else stays trixie's (pin 100 for the rest).
SID_PACKAGES = ["docker.io", "docker-cli", "docker-compose", "docker-buildx", "containerd", "runc", "tini",
                "apptainer", "apptainer-suid"]
MIRROR = "http://deb.debian.org/debian"
SECURITY_MIRROR = "http://deb.debian.org/debian-security"
PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "libpam-systemd", "openssh-server", "sudo", "rsync", "python3",
    "ca-certificates", "curl", "gnupg", "iproute2", "iputils-ping", "procps", "less", "kmod", "lsb-release",
]

INIT_SHIM = r"""#!/bin/sh
# PID 1 shim for migrate sandbox hosts: without --privileged, /sys and the cgroup mounts are
# read-only; make them writable (remount,bind,rw works where remount,rw says "busy"), then boot.
mount -o remount,rw /sys 2>/dev/null || mount -o remount,bind,rw /sys 2>/dev/null || true
for m in /sys/fs/cgroup $(awk '$3=="cgroup"||$3=="cgroup2"{print $2}' /proc/self/mounts); do
  mount -o remount,bind,rw "$m" 2>/dev/null || true
done
exec /sbin/init "$@"
"""

NETFIX = r"""#!/bin/sh
# Docker regenerates resolv.conf/hosts at each start; re-apply the sandbox's own copies.
[ -s /etc/migrate-sandbox/resolv.conf ] && cat /etc/migrate-sandbox/resolv.conf > /etc/resolv.conf
if [ -s /etc/migrate-sandbox/hosts ]; then
  { grep -Ev '# migrate-sandbox$' /etc/hosts; cat /etc/migrate-sandbox/hosts; } > /run/migrate-hosts
  cat /run/migrate-hosts > /etc/hosts; rm -f /run/migrate-hosts
fi
exit 0
"""

NETFIX_UNIT = """[Unit]
Description=migrate sandbox: re-apply resolv.conf/hosts after Docker regenerated them
DefaultDependencies=no
After=local-fs.target
Before=sysinit.target network.target ssh.service
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/migrate-sandbox-netfix
[Install]
WantedBy=sysinit.target
"""

# Runs on this machine with $R = the rootfs directory (as root).
CUSTOMIZE = r"""
set -eu
rm -f "$R/etc/apt/sources.list"
cat >"$R/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: $SUITE $SUITE-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $SECURITY_MIRROR
Suites: $SUITE-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
chroot "$R" useradd -m -s /bin/bash -G sudo alice
chroot "$R" useradd -m -s /bin/bash -G sudo bob
echo 'alice ALL=(ALL) NOPASSWD:ALL' >"$R/etc/sudoers.d/90-alice"
chmod 440 "$R/etc/sudoers.d/90-alice"
chroot "$R" visudo -c >/dev/null
rm -f "$R"/etc/ssh/ssh_host_*
mkdir -p "$R/etc/systemd/system/ssh.service.d"
printf '[Service]\nExecStartPre=\nExecStartPre=/usr/bin/ssh-keygen -A\nExecStartPre=/usr/sbin/sshd -t\n' \
  >"$R/etc/systemd/system/ssh.service.d/migrate-hostkeys.conf"
printf 'UseDNS no\nPasswordAuthentication yes\nPermitRootLogin prohibit-password\nMaxStartups 100:30:200\nMaxSessions 100\n' \
  >"$R/etc/ssh/sshd_config.d/migrate-sandbox.conf"
: >"$R/etc/machine-id"; rm -f "$R/var/lib/dbus/machine-id"
for u in getty@tty1.service console-getty.service getty.target e2scrub_reap.service e2scrub_all.timer \
         systemd-pstore.service apt-daily.timer apt-daily-upgrade.timer fstrim.timer \
         systemd-remount-fs.service sys-kernel-config.mount sys-kernel-debug.mount; do
  chroot "$R" systemctl mask "$u" >/dev/null 2>&1
done
mkdir -p "$R/etc/migrate-sandbox"
printf '%s' "$INIT_SHIM" >"$R/usr/local/sbin/migrate-sandbox-init"
printf '%s' "$NETFIX" >"$R/usr/local/sbin/migrate-sandbox-netfix"
printf '%s' "$NETFIX_UNIT" >"$R/etc/systemd/system/migrate-sandbox-netfix.service"
chmod 755 "$R/usr/local/sbin/migrate-sandbox-init" "$R/usr/local/sbin/migrate-sandbox-netfix"
chroot "$R" systemctl enable migrate-sandbox-netfix.service >/dev/null 2>&1
chroot "$R" apt-get clean
rm -rf "$R"/var/lib/apt/lists/* "$R"/var/log/*.log "$R"/var/cache/debconf/*-old
"""

# The mock GPUs of `--gpus N` (run as root on the host, in CONFIGURE or alone): the mock NVML library
# as libnvidia-ml.so.1, where every NVML user on the host (any user, no flag) loads it; its state
# (kept while the GPU count is unchanged, so simulated processes survive a re-up); its call log,
# open to every user; and nvidia-smi reading through it. Env: GPUS, MOCK_STATE, MOCK_LIB_DIR
# (the library builds, copied in first), FAKE_NVIDIA_SMI.
MOCK_NVML_ON = r"""
libdir=/usr/lib/$(uname -m)-linux-gnu; [ -d "$libdir" ] || libdir=/usr/lib
st=/etc/migrate-sandbox/mock-nvml.state
mkdir -p /etc/migrate-sandbox
if [ "$(grep -c '^gpu ' "$st" 2>/dev/null || true)" != "$GPUS" ]; then
  printf '%s' "$MOCK_STATE" > "$st.tmp"; chmod 644 "$st.tmp"; mv "$st.tmp" "$st"
fi
variant=$(sed -n 's/^variant //p' "$st"); variant=${variant:-v3}
cp "$MOCK_LIB_DIR/libnvidia-ml-$variant.so" "$libdir/.libnvidia-ml.so.1.tmp"
chmod 755 "$libdir/.libnvidia-ml.so.1.tmp"; mv "$libdir/.libnvidia-ml.so.1.tmp" "$libdir/libnvidia-ml.so.1"
ldconfig
[ -e /var/log/migrate-mock-nvml.calls ] || { : > /var/log/migrate-mock-nvml.calls; chmod 666 /var/log/migrate-mock-nvml.calls; }
printf '%s' "$FAKE_NVIDIA_SMI" > /usr/local/bin/nvidia-smi; chmod 755 /usr/local/bin/nvidia-smi
"""
MOCK_NVML_OFF = r"""
libdir=/usr/lib/$(uname -m)-linux-gnu; [ -d "$libdir" ] || libdir=/usr/lib
rm -f /usr/local/bin/nvidia-smi "$libdir/libnvidia-ml.so.1" /etc/migrate-sandbox/mock-nvml.state
rm -rf "$MOCK_LIB_DIR"
ldconfig
"""

# Runs inside a started sandbox host (docker exec -i, as root); stdin is the public key.
CONFIGURE = (r"""
set -eu
for k in $(seq 200); do s=$(systemctl is-system-running 2>/dev/null || true)
  case "$s" in running|degraded) break;; esac; sleep 0.1; done
key=$(cat)
id carol >/dev/null 2>&1 || useradd -m -s /bin/bash carol   # a plain user: no sudo, not in the docker group
for u in alice bob carol; do
  install -d -m700 -o $u -g $u /home/$u/.ssh
  grep -qxF "$key" /home/$u/.ssh/authorized_keys 2>/dev/null || echo "$key" >> /home/$u/.ssh/authorized_keys
  chown $u:$u /home/$u/.ssh/authorized_keys; chmod 600 /home/$u/.ssh/authorized_keys
done
echo "bob:$BOBPW" | chpasswd
# the small-disk tmpfs loses its docker --tmpfs mode when a stopped container is started again
if mountpoint -q /mnt/small 2>/dev/null; then chmod 1777 /mnt/small; fi
if [ -n "$NS" ]; then printf "%s\n" "$NS" > /etc/migrate-sandbox/resolv.conf; fi
printf "%s" "$HOSTS" > /etc/migrate-sandbox/hosts
/usr/local/sbin/migrate-sandbox-netfix
if [ -n "$APTCONF" ]; then printf "%s\n" "$APTCONF" > /etc/apt/apt.conf.d/99migrate-sandbox
else rm -f /etc/apt/apt.conf.d/99migrate-sandbox; fi
mkdir -p /etc/systemd/logind.conf.d
cur=$(cat /etc/systemd/logind.conf.d/migrate-sandbox.conf 2>/dev/null || true)
want=$(printf "[Login]\nKillUserProcesses=%s" "$KUP")
if [ "$cur" != "$want" ]; then printf "%s\n" "$want" > /etc/systemd/logind.conf.d/migrate-sandbox.conf
  systemctl restart systemd-logind; fi
printf '%s\n' "$GPUS" > /etc/migrate-sandbox/gpus
# --docker-from sid: a sid apt source, pinned so that only the Docker/containerd/apptainer packages
# come from it (a trixie host with Debian's newest engine); without it, no sid source at all.
if [ "$DOCKER_FROM" = sid ]; then
  printf 'Types: deb\nURIs: %s\nSuites: sid\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$(sed -n 's/^URIs: //p' /etc/apt/sources.list.d/debian.sources | head -n1)" > /etc/apt/sources.list.d/migrate-sid.sources
  printf 'Package: *\nPin: release n=sid\nPin-Priority: 100\n\nPackage: %s\nPin: release n=sid\nPin-Priority: 990\n' \
    "$SID_PACKAGES" > /etc/apt/preferences.d/migrate-sid
else
  rm -f /etc/apt/sources.list.d/migrate-sid.sources /etc/apt/preferences.d/migrate-sid
fi
# --image-store containerd: the engine host-setup installs later starts on the containerd image
# store, as fresh Docker 29 installs do; an existing daemon.json keeps every other key.
if [ "$IMAGE_STORE" = containerd ]; then
  mkdir -p /etc/docker
  python3 - <<'PY'
import json, os
p = "/etc/docker/daemon.json"
try:
    cfg = json.load(open(p))
except (OSError, ValueError):
    cfg = {}
if cfg.get("features", {}).get("containerd-snapshotter") is not True:
    cfg.setdefault("features", {})["containerd-snapshotter"] = True
    tmp = p + ".migrate-sandbox"
    with open(tmp, "w") as fh:
        json.dump(cfg, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, p)
PY
fi
if [ "$GPUS" -gt 0 ]; then
"""
    + MOCK_NVML_ON
    + r"""
  printf '#!/bin/sh\n# migrate sandbox FAKE: an "nvidia" OCI runtime that is plain runc (no GPU)\nexec runc "$@"\n' \
    > /usr/local/bin/nvidia-container-runtime
  printf '#!/bin/sh\n# migrate sandbox FAKE prestart hook (no GPU)\ncat >/dev/null\nexit 0\n' \
    > /usr/local/bin/nvidia-container-runtime-hook
  chmod 755 /usr/local/bin/nvidia-container-runtime /usr/local/bin/nvidia-container-runtime-hook
else
  rm -f /usr/local/bin/nvidia-container-runtime /usr/local/bin/nvidia-container-runtime-hook
"""
    + MOCK_NVML_OFF
    + r"""
fi
for k in $(seq 100); do systemctl is-active --quiet ssh && break; sleep 0.1; done
systemctl is-active --quiet ssh || systemctl restart ssh
for k in $(seq 50); do ls /etc/ssh/ssh_host_*_key.pub >/dev/null 2>&1 && break; sleep 0.1; done
cat /etc/ssh/ssh_host_*_key.pub
""")

# A test double for nvidia-smi (no GPU behind it), installed only with `sandbox up --gpus N`: it reads
# the GPUs through the mock NVML library, as the real one does through the driver's.
FAKE_NVIDIA_SMI = (Path(__file__).parent / "mocknvml" / "nvidia_smi.py").read_text()
MOCK_LIB_DIR = "/usr/local/lib/migrate-mock-nvml"  # the library's driver generations, copied in by `up`


def recipe_hash(suite: str = SUITE, mirror: str = MIRROR, security_mirror: str = SECURITY_MIRROR) -> str:
    """12 hex digits that change whenever the image recipe changes."""
    h = hashlib.sha256()
    for part in (INIT_SHIM, NETFIX, NETFIX_UNIT, CUSTOMIZE, " ".join(PACKAGES), suite, mirror, security_mirror):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]
