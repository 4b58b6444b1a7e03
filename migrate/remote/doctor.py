"""What `migrate doctor` concludes from a host's probed facts: one `Check` (verdict, detail, hint)
per fact, and `diagnose()`, which probes a host (read-only, one round trip) and assesses it.
Nothing here prints or exits; `commands/doctor.py` prints the report.
"""

from __future__ import annotations

from dataclasses import dataclass

from migrate import ui
from migrate.remote.connection import connect
from migrate.remote.hosts import ConnectOptions, SshTarget
from migrate.remote.probe import HostFacts, probe

LOW_DISK_KIB = 10 * 1024 * 1024  # 10 GiB


@dataclass
class Check:
    """One line of the doctor's report."""

    name: str
    verdict: str  # ok | warn | missing | info
    detail: str
    hint: str = ""


def _disk_line(facts: HostFacts, key: str, label: str) -> Check:
    disk = facts.disks.get(key)
    if disk is None:
        return Check(f"disk {label}", "warn", "unknown (df failed)")
    detail = f"{ui.human_bytes(disk.free_kib * 1024)} free of {ui.human_bytes(disk.total_kib * 1024)} on {disk.mount}"
    if disk.free_kib < LOW_DISK_KIB:
        return Check(f"disk {label}", "warn", detail, "little space left: images and datasets may not fit")
    return Check(f"disk {label}", "ok", detail)


# systemd deprecated cgroup v1 in 256 and no longer boots on it from 258 on.
SYSTEMD_V1_DEPRECATED = 256
SYSTEMD_V1_REMOVED = 258


def _cgroup_line(facts: HostFacts) -> Check:
    """The cgroup version, and whether the host's systemd expects another one."""
    sd = facts.systemd_version
    detail = f"v{facts.cgroup_version}" + (f", systemd {sd}" if sd else "")
    if facts.cgroup_version == 2 and facts.nvidia_ctk:
        return Check("cgroup", "ok", detail, "cgroup v2 + systemd: containers may lose GPUs ('NVML: Unknown Error') "
                                             "after daemon-reload; use CDI")
    if facts.cgroup_version == 1 and sd >= SYSTEMD_V1_DEPRECATED:
        expects = "no longer supports" if sd >= SYSTEMD_V1_REMOVED else "deprecates"
        return Check("cgroup", "warn", detail + f": systemd {sd} {expects} cgroup v1",
                     f"the host's next systemd (>= {SYSTEMD_V1_REMOVED}) will not boot on cgroup v1; the owner should "
                     "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)")
    return Check("cgroup", "ok", detail)


def _image_store(d) -> str:
    """'containerd image store (overlayfs snapshotter)' or 'storage overlay2'."""
    if d.image_store == "containerd":
        return f"containerd image store ({d.storage_driver or '?'} snapshotter)"
    return f"storage {d.storage_driver}"


def assess(facts: HostFacts) -> list[Check]:
    """Verdicts and hints for every probed fact (pure; unit-tested)."""
    checks: list[Check] = []
    os_name = facts.os_pretty or f"{facts.os_id} {facts.os_version_id}".strip() or "unknown"
    codename = facts.ubuntu_codename or facts.os_codename
    os_detail = f"{os_name}" + (f" ({codename})" if codename and codename not in os_name else "")
    os_detail += f", {facts.arch}, kernel {facts.kernel}"
    if facts.os_family:
        checks.append(Check("os", "ok", os_detail))
    else:
        checks.append(Check("os", "warn", os_detail, "host-setup supports Ubuntu and Debian (and their derivatives)"))

    sudo_hint = {
        "root": ("ok", "logged in as root"),
        "nopasswd": ("ok", "passwordless sudo"),
        "password": ("ok", "sudo with password (asked once, never stored)"),
        "none": ("missing", "no sudo"),
    }
    verdict, detail = sudo_hint.get(facts.sudo, ("warn", facts.sudo))
    hint = "host-setup needs root; push-data, push-env and run work without it" if facts.sudo == "none" else ""
    if likely_no_sudo(facts) and facts.sudo == "password":
        verdict, detail = "warn", "sudo asks a password, and you are in no sudo/wheel/admin group: probably no sudo"
        hint = "`migrate doctor --sudo` proves it; push-data, push-env and run work without it"
    checks.append(Check("sudo", verdict, detail, hint))

    checks.append(Check("systemd", "ok" if facts.systemd else "warn", "running" if facts.systemd else "not PID 1",
                        "" if facts.systemd else "services are restarted with `service`; the dispatcher uses setsid"))
    checks.append(_cgroup_line(facts))

    d = facts.docker
    if d.cli_missing:
        state = "running" if d.daemon_running else "not running"
        checks.append(Check("docker", "warn",
                            f"engine {d.daemon_version or '?'} installed ({state}) but the `docker` command is missing",
                            "Debian 13+ ships the CLI in the separate docker-cli package: `migrate host-setup HOST` "
                            "installs it"))
    elif not d.installed:
        checks.append(Check("docker", "missing", "not installed", "run `migrate host-setup HOST`"))
    elif not d.access:
        err = d.error or "cannot reach the daemon"
        hint = "run `migrate host-setup HOST` to add you to the docker group"
        if "permission denied" not in err.lower():
            hint = "is the docker service running? `migrate host-setup HOST` repairs it"
        checks.append(Check("docker", "warn", f"client {d.client_version or '?'}; {err}", hint))
    else:
        pkg = f" ({d.package})" if d.package else ""
        detail = (f"{d.server_version}{pkg}, {_image_store(d)}, root {d.root_dir}, "
                  f"runtimes {','.join(d.runtimes) or '-'}, default {d.default_runtime}")
        verdict, hint = "ok", ""
        if d.storage_driver == "vfs":
            verdict, hint = "warn", "vfs storage is slow and large; check the data-root filesystem"
        if d.package == "snap":
            verdict, hint = "warn", "snap Docker cannot see the NVIDIA runtime; host-setup replaces it only when asked"
        checks.append(Check("docker", verdict, detail, hint))
    if d.rootless:
        checks.append(Check("docker rootless", "info", "a rootless Docker socket exists for this user",
                            "migrate talks to the system daemon"))

    if facts.gpus:
        driver = facts.gpus[0].driver
        for g in facts.gpus:
            mem = f"{g.memory_mib} MiB" if g.memory_mib else "? MiB"
            checks.append(Check(f"gpu {g.index}", "ok", f"{g.name}, {mem}, {g.uuid}"))
        checks.append(Check("nvidia driver", "ok", driver))
    elif facts.nvidia_smi:
        checks.append(Check("nvidia driver", "warn", "nvidia-smi present but lists no GPU",
                            "driver/library mismatch after an upgrade needs a reboot; check `nvidia-smi`"))
    else:
        checks.append(Check("nvidia driver", "missing", "no nvidia-smi: no NVIDIA driver or no GPU",
                            "host-setup never installs drivers; ask the owner (CPU-only jobs still work)"))
    if "nvidia" in d.runtimes or facts.nvidia_runtime:
        checks.append(Check("nvidia runtime", "ok", facts.nvidia_runtime or "registered in docker"))
    else:
        checks.append(Check("nvidia runtime", "missing", "nvidia-container-toolkit not installed",
                            "run `migrate host-setup HOST` (GPU containers need it)"))
    if "nvidia-docker2" in facts.packages:
        checks.append(Check("nvidia-docker2", "warn", f"legacy package {facts.packages['nvidia-docker2']}",
                            "superseded by nvidia-container-toolkit"))

    checks.append(_disk_line(facts, "home", "home"))
    checks.append(_disk_line(facts, "docker", "/var/lib/docker"))
    checks.append(_disk_line(facts, "tmp", "/tmp"))

    if facts.python_at_least(3, 8):
        checks.append(Check("python3", "ok", facts.python3))
    elif facts.python3:
        checks.append(Check("python3", "warn", facts.python3, "the dispatcher (migrate run) needs python3 >= 3.8"))
    else:
        checks.append(Check("python3", "missing", "not found", "the dispatcher (migrate run) needs python3 >= 3.8"))
    checks.append(Check("rsync", "ok" if facts.rsync else "missing", facts.rsync or "not found",
                        "" if facts.rsync else "push-data falls back to a tar stream over ssh"))
    checks.append(Check("zstd", "ok" if facts.zstd else "info", facts.zstd or "not found",
                        "" if facts.zstd else "push-image compresses per layer with gzip instead"))
    if facts.apptainer:
        checks.append(Check("apptainer", "ok", facts.apptainer))
    if likely_no_sudo(facts) and not facts.docker.access:
        checks.append(plain_user(facts))
    return checks


ADMIN_GROUPS = {"sudo", "wheel", "admin"}


def likely_no_sudo(facts: HostFacts) -> bool:
    """No sudo, or sudo that asks a password of a user in no admin group (sudo asks everyone first)."""
    return facts.sudo == "none" or (facts.sudo == "password" and not ADMIN_GROUPS & set(facts.groups))


def plain_user(facts: HostFacts) -> Check:
    """No sudo and no Docker access: what still works, not only what is missing (pure)."""
    works = ["push-data/pull-data" + ("" if facts.rsync else " (tar over ssh)")]
    if facts.python_at_least(3, 8):
        works += ["push-env (your Python packages in ~/.migrate/envs, no root)",
                  "run --env NAME (process jobs on the GPU dispatcher)", "shell/exec/logs/tunnel"]
    if facts.python_at_least(3, 10):
        works.append("cluster up (Ray in ~/.migrate/ray)")
    if facts.apptainer:
        works.append("push-image --format sif and run --image x.sif (SIF images with apptainer)")
    cannot = "host-setup and Docker jobs (--image) need the owner: root, or you in the docker group"
    return Check("plain user", "info", "works without root: " + "; ".join(works), cannot)


@dataclass
class Diagnosis:
    """A probed host: who it is, what it has, and the verdicts."""

    target: SshTarget
    facts: HostFacts
    checks: list[Check]


def diagnose(host: str, options: ConnectOptions, *, check_sudo: bool) -> Diagnosis:
    """Probe `host` (one SSH round trip, read-only) and assess it; with `check_sudo`, prove sudo works."""
    with connect(host, options) as remote:
        facts = probe(remote)
        if check_sudo and facts.sudo in ("password", "nopasswd", "root"):
            remote.check_sudo()
    return Diagnosis(target=remote.target, facts=facts, checks=assess(facts))
