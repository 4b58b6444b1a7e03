"""The planners: facts + options -> what each step does, exactly (what --dry-run prints)."""

from __future__ import annotations

import copy
import subprocess

import pytest

from migrate.remote.probe import Gpu, HostFacts
from migrate.setup import facts as facts_mod
from migrate.setup import sources
from migrate.setup.facts import SetupFacts, parse_setup_facts
from migrate.setup.options import HostSetupOptions, nvidia_base_url, parse_docker_source
from migrate.setup.plan import (
    AddToGroup,
    AptInstall,
    CheckRestartAllowed,
    DownloadKey,
    MakeDir,
    OfflineSet,
    PlanContext,
    RestartDocker,
    Verify,
    WriteFile,
    plan_docker_group,
    plan_steps,
    render_plan,
    restart_reasons,
)

NOW = 1_800_000_000


def fresh(**host) -> SetupFacts:
    """A fresh Debian 12 host like the sandbox: no docker, passwordless sudo, no GPU."""
    h = HostFacts(os_id="debian", os_version_id="12", os_codename="bookworm",
                  os_pretty="Debian GNU/Linux 12 (bookworm)", arch="x86_64", dpkg_arch="amd64", cgroup_version=1,
                  systemd=True, user="alice", uid=1000,
                  groups=["alice", "sudo"], home="/home/alice", sudo="nopasswd")
    for k, v in host.items():
        setattr(h, k, v)
    return SetupFacts(host=h, now=NOW, keyrings_dir=True, downloader="apt-helper",
                      packages={"ca-certificates": "20230311"})


def installed(f: SetupFacts, package: str = "docker.io", *, daemon: str | None = None, member: bool = True,
              toolkit: bool = False, age: int = 100) -> SetupFacts:
    f = copy.deepcopy(f)
    f.packages[package] = "20.10.24"
    f.host.docker.installed = True
    f.host.docker.package = package
    f.host.docker.access = member
    f.dockerd, f.docker_unit, f.docker_active = "/usr/sbin/dockerd", "yes", "active"
    f.dockerd_age, f.etc_docker = age, True
    f.docker_group = True
    f.docker_group_members = ["alice"] if member else []
    if daemon is not None:
        f.daemon_json_exists, f.daemon_json_text, f.daemon_json_mtime = True, daemon, NOW - 1000
    if toolkit:
        f.packages["nvidia-container-toolkit"] = "1.17.8-1"
        f.runtime_bin = "/usr/bin/nvidia-container-runtime"
        f.hook_ctime = NOW - 5000
    return f


def with_gpu(f: SetupFacts) -> SetupFacts:
    f = copy.deepcopy(f)
    f.host.nvidia_smi, f.host.nvidia_smi_ok = "/usr/bin/nvidia-smi", True
    f.host.gpus = [Gpu(0, "NVIDIA H100", "GPU-1", 81559, "550.54")]
    return f


def ctx(**opts) -> PlanContext:
    o = HostSetupOptions(**opts)
    return PlanContext(options=o, source=parse_docker_source(o.docker_source, o.docker_url),
                       nvidia_base=nvidia_base_url(o), display="alice@gpu")


def plans(f: SetupFacts, **opts) -> dict:
    return {p.name: p for p in plan_steps(f, ctx(**opts))}


def statuses(f: SetupFacts, **opts) -> dict:
    return {k: v.status for k, v in plans(f, **opts).items()}


def test_fresh_host_official_with_gpu_plans_everything_in_order():
    p = plans(with_gpu(fresh()))
    assert [x.status for x in p.values()] == ["ok", "change", "change", "change", "change", "change", "ok", "change",
                                               "check"]
    repo = p["docker-repo"].actions
    assert isinstance(repo[0], DownloadKey) and repo[0].url == "https://download.docker.com/linux/debian/gpg"
    assert repo[0].dest == "/etc/apt/keyrings/docker.asc" and not repo[0].replace
    assert isinstance(repo[1], WriteFile) and repo[1].path == sources.DOCKER_SOURCES_FILE and repo[1].old is None
    engine = p["docker-engine"].actions[0]
    assert isinstance(engine, AptInstall) and engine.packages == tuple(sources.OFFICIAL_DOCKER_PACKAGES)
    nkey = p["nvidia-repo"].actions[0]
    assert nkey.dearmor and nkey.dest == sources.NVIDIA_KEYRING
    assert p["nvidia-toolkit"].actions[0].packages == ("nvidia-container-toolkit",)
    dj = p["daemon-json"].actions
    assert [type(a) for a in dj] == [CheckRestartAllowed, WriteFile, RestartDocker]
    assert '"nvidia"' in dj[1].content and dj[1].old is None and not dj[1].backup
    assert dj[2].rollback == "/etc/docker/daemon.json"
    assert isinstance(p["docker-group"].actions[0], AddToGroup) and not p["docker-group"].actions[0].create
    v = p["verify"].actions[0]
    assert isinstance(v, Verify) and v.expect_runtime == "nvidia" and v.gpu_test


def test_fresh_host_distro_no_nvidia():
    p = plans(fresh(), docker_source="distro", nvidia=False)
    assert p["docker-repo"].status == "skipped" and p["nvidia-repo"].status == "skipped"
    a = p["docker-engine"].actions[0]
    assert a.packages == ("docker.io",) and ("docker-compose-plugin", 0) in a.optional
    assert p["daemon-json"].status == "ok" and "nothing to add" in p["daemon-json"].detail
    assert p["verify"].actions[0].expect_runtime is None


def test_idempotent_host_plans_no_change():
    f = installed(with_gpu(fresh()), "docker-ce", toolkit=True,
                  daemon='{\n    "runtimes": {\n        "nvidia": {\n            "path": "nvidia-container-runtime",'
                         '\n            "args": []\n        }\n    }\n}\n')
    f.files[sources.DOCKER_SOURCES_FILE] = sources.docker_sources("https://download.docker.com", "debian", "bookworm",
                                                                   "amd64")
    f.files[sources.NVIDIA_SOURCES_FILE] = sources.nvidia_sources("https://nvidia.github.io/libnvidia-container")
    f.keyrings = {sources.DOCKER_KEYRING, sources.NVIDIA_KEYRING}
    s = statuses(f)
    assert s == {"host": "ok", "docker-repo": "ok", "docker-engine": "ok", "nvidia-repo": "ok", "nvidia-toolkit": "ok",
                 "daemon-json": "ok", "docker-service": "ok", "docker-group": "ok", "verify": "check"}


def test_no_driver_skips_the_toolkit_with_a_warning_unless_forced():
    p = plans(fresh())
    assert p["nvidia-repo"].status == "skipped" and p["nvidia-toolkit"].status == "skipped"
    assert any("never installs drivers" in w for w in p["nvidia-toolkit"].warnings)
    assert p["daemon-json"].status == "ok"  # no runtime entry for a toolkit that is not there
    forced = plans(fresh(), force=True)
    assert forced["nvidia-toolkit"].status == "change" and forced["nvidia-toolkit"].warnings
    failed = plans(installed(fresh()), default_runtime="nvidia")
    assert failed["daemon-json"].status == "failed" and "--force" in failed["daemon-json"].hint


def test_working_engine_from_another_source_is_kept_unless_force_source():
    f = installed(fresh(), "docker.io")
    p = plans(f)
    assert p["docker-engine"].status == "ok" and "kept" in p["docker-engine"].detail
    assert any("--force-source" in w for w in p["docker-engine"].warnings)
    assert p["docker-repo"].status == "skipped"
    switch = plans(f, force_source=True)
    assert switch["docker-repo"].status == "change" and switch["docker-engine"].status == "change"
    assert any("replaces docker.io" in w for w in switch["docker-engine"].warnings)


def test_conflicting_mix_is_reported_not_replaced():
    f = installed(fresh(), "docker.io")
    f.apt_sources.append(("/etc/apt/sources.list.d/docker.list", "https://download.docker.com/linux/debian"))
    p = plans(f, docker_source="distro")
    assert p["docker-engine"].status == "ok"
    assert any("conflicting mix" in w for w in p["docker-engine"].warnings)


def test_repo_defined_by_the_owner_elsewhere_is_not_duplicated():
    f = fresh()
    f.apt_sources.append(("/etc/apt/sources.list.d/docker.list", "https://download.docker.com/linux/debian"))
    p = plans(f)
    assert p["docker-repo"].status == "ok" and "docker.list" in p["docker-repo"].detail
    assert p["docker-engine"].status == "change"


def test_changed_repo_definition_refreshes_the_key_with_a_backup():
    f = fresh()
    f.keyrings.add(sources.DOCKER_KEYRING)
    f.files[sources.DOCKER_SOURCES_FILE] = sources.docker_sources("https://download.docker.com", "debian", "bookworm",
                                                                   "amd64")
    p = plans(f, docker_source="mirror:aliyun")
    key, src = p["docker-repo"].actions
    assert key.replace and "mirrors.aliyun.com" in key.url
    assert src.backup and src.old is not None and "mirrors.aliyun.com" in src.content


def test_snap_docker_fails_with_nvidia_and_is_kept_without():
    f = installed(fresh(), "docker.io")
    f.packages.pop("docker.io")
    f.host.docker.package = "snap"
    p = plans(f)
    assert p["docker-engine"].status == "failed" and "snap" in p["docker-engine"].detail
    assert all(p[n].status == "skipped" for n in ("nvidia-repo", "daemon-json", "verify"))
    q = plans(f, nvidia=False)
    assert q["docker-engine"].status == "ok" and q["daemon-json"].status == "skipped"


def test_unsupported_os_and_no_sudo_fail_the_host_step():
    assert plans(fresh(os_id="fedora", os_pretty="Fedora 40"))["host"].status == "failed"
    p = plans(fresh(sudo="none"))
    assert p["host"].status == "failed" and "no sudo" in p["host"].detail
    assert p["docker-engine"].detail == "not run: host failed"


def test_invalid_daemon_json_fails_without_any_action():
    f = installed(fresh(), daemon='{"registry-mirrors": [')
    p = plans(f, docker_source="distro", nvidia=False, registry_mirrors=["https://m"])
    assert p["daemon-json"].status == "failed" and not p["daemon-json"].actions
    assert "/etc/docker/daemon.json is not valid JSON" in p["daemon-json"].detail


def test_daemon_json_existing_file_is_backed_up_keeps_mode_and_validates_when_dockerd_can():
    f = installed(fresh(), daemon='{\n  "data-root": "/data/docker"\n}\n')
    f.daemon_json_mode, f.dockerd_validate = "600", True
    p = plans(f, docker_source="distro", nvidia=False, registry_mirrors=["https://m"])
    w = next(a for a in p["daemon-json"].actions if isinstance(a, WriteFile))
    assert w.backup and w.mode == "600" and w.validate_with == "/usr/sbin/dockerd"
    assert w.content == '{\n  "data-root": "/data/docker",\n  "registry-mirrors": [\n    "https://m"\n  ]\n}\n'
    assert "1 existing key(s) kept" in p["daemon-json"].detail


def test_daemon_json_flag_conflict_fails_before_writing():
    f = installed(fresh())
    f.exec_start = "{ path=/usr/bin/dockerd ; argv[]=/usr/bin/dockerd -H fd:// --registry-mirror https://x ; }"
    p = plans(f, docker_source="distro", nvidia=False, registry_mirrors=["https://m"])
    assert p["daemon-json"].status == "failed" and "--registry-mirror" in p["daemon-json"].detail


def test_restart_needed_when_toolkit_or_daemon_json_is_newer_than_dockerd():
    with_runtime = '{"runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}}'
    f = installed(fresh(), toolkit=True, age=10, daemon=with_runtime)
    assert restart_reasons(f) == []
    f.hook_ctime = NOW - 5  # installed after dockerd started 10 s ago
    assert "hook" in restart_reasons(f)[0]
    assert restart_reasons(f, nvidia=False) == []
    p = plans(f, force=True)
    assert p["daemon-json"].status == "ok" and p["docker-service"].status == "change"
    assert isinstance(p["docker-service"].actions[-1], RestartDocker)
    assert plans(f, nvidia=False)["docker-service"].status == "ok"
    g = installed(fresh(), daemon="{}", age=10)
    g.daemon_json_mtime = NOW - 2
    assert restart_reasons(g) == ["daemon.json changed after dockerd started"]
    g.docker_active = "inactive"
    assert restart_reasons(g) == ["docker is inactive"]
    assert plans(g, nvidia=False)["docker-service"].detail.startswith("start docker")


def test_one_restart_when_toolkit_and_daemon_json_change_together():
    p = plans(with_gpu(installed(fresh(), "docker.io")), docker_source="distro")
    assert p["nvidia-toolkit"].status == "change" and p["daemon-json"].status == "change"
    assert p["docker-service"].status == "ok"  # the daemon-json restart covered the hook
    restarts = [a for x in p.values() for a in x.actions if isinstance(a, RestartDocker)]
    assert len(restarts) == 1


def test_group_step():
    f = installed(fresh(), member=False)
    p = plans(f, nvidia=False)
    assert p["docker-group"].status == "change" and any("root-equivalent" in w for w in p["docker-group"].warnings)
    f.docker_group = False
    assert plans(f, nvidia=False)["docker-group"].actions[0].create
    assert plans(fresh(uid=0, user="root"), nvidia=False)["docker-group"].status == "skipped"


def test_missing_dirs_are_created_and_journalled():
    f = fresh()
    f.keyrings_dir = False
    p = plans(f, registry_mirrors=["https://m"])
    assert isinstance(p["docker-repo"].actions[0], MakeDir) and p["docker-repo"].actions[0].path == "/etc/apt/keyrings"
    assert p["daemon-json"].status == "change"  # predicted: docker installed by then


def test_offline_plans_use_the_directory_and_no_repositories():
    off = OfflineSet("/debs", engine=[("docker.io", "/debs/docker.io_1_amd64.deb"),
                                      ("runc", "/debs/runc_1_amd64.deb")],
                     nvidia=[("nvidia-container-toolkit", "/debs/nvidia-container-toolkit_1_amd64.deb")],
                     target="ubuntu:22.04")
    c = ctx(force=True, offline=None)
    c.offline = off
    p = {x.name: x for x in plan_steps(fresh(), c)}
    assert p["docker-repo"].status == "skipped" and p["nvidia-repo"].status == "skipped"
    assert p["docker-engine"].actions[0].offline_files == ("/debs/docker.io_1_amd64.deb", "/debs/runc_1_amd64.deb")
    assert p["nvidia-toolkit"].actions[0].packages == ("nvidia-container-toolkit",)
    assert any("downloaded for ubuntu:22.04" in w for w in p["host"].warnings)


def test_dpkg_busy_and_docker_host_warnings():
    f = fresh()
    f.dpkg_busy, f.docker_host_env = "1234 /usr/bin/unattended-upgrade", "unix:///run/user/1000/docker.sock"
    w = plans(f)["host"].warnings
    assert any("apt will wait up to 300s" in x for x in w) and any("DOCKER_HOST" in x for x in w)


def test_render_plan_shows_exact_commands_and_diffs():
    lines = [f"{h} {t}" for _, h, t in render_plan(plan_steps(fresh(), ctx(docker_source="distro", nvidia=False,
                                                                             registry_mirrors=["https://m"])))]
    text = "\n".join(lines)
    assert "[root] $ env DEBIAN_FRONTEND=noninteractive" in text and "install docker.io" in text
    assert "--- /etc/docker/daemon.json (absent)" in text and '+    "registry-mirrors": [' in text
    assert "[root] $ usermod -aG docker alice" in text
    assert "would change" in text and "would check" in text


def test_setup_probe_runs_under_plain_sh_and_parses(tmp_path):
    """The probe is POSIX sh: run it here (read-only) and parse whatever this machine has."""
    out = subprocess.run(["sh", "-c", facts_mod.combined_script()], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path)})
    assert out.returncode == 0, out.stderr
    f = parse_setup_facts(out.stdout)
    assert f.now > 1_600_000_000 and f.host.arch


def test_parse_setup_facts_from_probe_lines():
    text = "\n".join([
        "os.id=ubuntu", "os.codename=noble", "dpkg_arch=amd64", "user=alice", "sudo=password",
        "hs.now=1800000000", "hs.daemon_json.exists=yes", "hs.daemon_json.mode=600", "hs.daemon_json.readable=no",
        "hs.apt_source=/etc/apt/sources.list.d/docker.list|https://download.docker.com/linux/ubuntu",
        f"hs.file={sources.DOCKER_SOURCES_FILE}|VHlwZXM6IGRlYgo=", f"hs.keyring={sources.DOCKER_KEYRING}",
        "hs.docker_group=docker:x:999:bob,alice", "hs.pkg=docker-ce|5:28.3.0-1", "hs.docker_unit=yes",
        "hs.docker_active=active", "hs.dockerd=/usr/bin/dockerd", "hs.dockerd_validate=yes", "hs.dockerd_age=60",
        "hs.hook_ctime=1799999999", "hs.downloader=apt-helper", "hs.journal_entries=4",
        "hs.dpkg_busy=99 apt-get install x;",
    ])
    f = parse_setup_facts(text)
    assert f.host.os_family == "ubuntu" and f.host.sudo == "password"
    assert f.daemon_json_exists and not f.daemon_json_readable and f.daemon_json_mode == "600"
    assert f.apt_sources == [("/etc/apt/sources.list.d/docker.list", "https://download.docker.com/linux/ubuntu")]
    assert f.files[sources.DOCKER_SOURCES_FILE] == "Types: deb\n" and sources.DOCKER_KEYRING in f.keyrings
    assert f.docker_group_members == ["bob", "alice"] and f.user_in_docker_group()
    assert f.docker_package == "docker-ce" and f.dockerd_validate and f.dockerd_started == 1_799_999_940
    assert f.journal_entries == 4 and f.dpkg_busy == "99 apt-get install x"


@pytest.mark.parametrize("opts", [{}, {"docker_source": "distro"}, {"force": True}, {"nvidia": False}])
def test_plans_are_deterministic(opts):
    f = with_gpu(fresh())
    assert plan_steps(f, ctx(**opts)) == plan_steps(f, ctx(**opts))


@pytest.mark.gpu
def test_probe_sees_the_real_gpus_that_nvml_sees(tmp_path):
    """On a machine with an NVIDIA GPU: the setup probe finds the driver and every GPU NVML lists,
    so the toolkit is planned without --force and verify plans the GPU container check."""
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pytest.skip("NVML not available (no NVIDIA driver/GPU here)")
    try:
        count = pynvml.nvmlDeviceGetCount()
        names = [pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i)) for i in range(count)]
    finally:
        pynvml.nvmlShutdown()
    out = subprocess.run(["sh", "-c", facts_mod.combined_script()], capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "HOME": str(tmp_path)})
    f = parse_setup_facts(out.stdout)
    assert f.has_driver and len(f.host.gpus) == count
    assert [g.name for g in f.host.gpus] == [n.decode() if isinstance(n, bytes) else n for n in names]
    p = {x.name: x for x in plan_steps(f, ctx())}
    assert p["nvidia-toolkit"].status in ("change", "ok") and "no NVIDIA driver" not in p["nvidia-toolkit"].detail


def test_https_repositories_get_the_ca_bundle_first_on_minimal_hosts():
    minimal = with_gpu(fresh())
    minimal.packages.clear()
    p = plans(minimal)
    first = p["docker-repo"].actions[0]
    assert isinstance(first, AptInstall) and first.packages == ("ca-certificates",)
    assert not any(isinstance(a, AptInstall) for a in p["nvidia-repo"].actions)  # predicted: installed by then
    assert not isinstance(plans(with_gpu(fresh()))["docker-repo"].actions[0], AptInstall)
    bare = fresh()
    bare.packages.clear()
    plain_http = plans(bare, docker_url="http://10.0.0.1/docker")
    assert not isinstance(plain_http["docker-repo"].actions[0], AptInstall)


def trixie_without_cli(f: SetupFacts) -> SetupFacts:
    """docker.io on Debian 13 installed without its Recommends: a running daemon, no `docker` command."""
    f = installed(f)
    f.host.os_version_id, f.host.os_codename = "13", "trixie"
    f.host.docker.installed, f.host.docker.path, f.host.docker.dockerd = False, "", "/usr/sbin/dockerd"
    return f


def test_fresh_distro_install_adds_docker_cli_where_packaged():
    a = plans(fresh(), docker_source="distro", nvidia=False)["docker-engine"].actions[0]
    assert a.packages == ("docker.io",) and a.if_packaged == (sources.DISTRO_CLI_PACKAGE,)
    assert any("<docker-cli, if packaged>" in line for line in a.describe())


def test_engine_without_cli_installs_the_cli_and_never_blames_the_group():
    p = plans(trixie_without_cli(fresh()), docker_source="distro", nvidia=False)
    engine = p["docker-engine"]
    assert engine.status == "change" and "`docker` command is missing" in engine.detail
    assert [a.packages for a in engine.actions] == [("docker-cli",)]
    assert p["docker-group"].status == "ok" and p["verify"].status == "check"
    ce = trixie_without_cli(fresh())
    ce.packages = {"docker-ce": "5:29.0.0"}
    assert plans(ce, nvidia=False)["docker-engine"].actions[0].packages == ("docker-ce-cli",)


def test_group_step_fails_on_a_missing_cli_with_the_right_cause():
    f = trixie_without_cli(fresh())
    ctx_ = ctx(docker_source="distro", nvidia=False)
    p = plan_docker_group(copy.deepcopy(f), ctx_)
    assert p.status == "failed" and "`docker` command is missing" in p.detail and "group" not in p.detail


def test_the_undo_command_in_the_root_equivalent_warning_is_one_the_cli_takes(monkeypatch):
    """Issue 20: the summary said `migrate host-setup hx1, hx2 --undo`, itself a usage error."""
    import re
    import shlex

    from migrate.commands.host_setup import command
    from migrate.remote.hosts import HostSpec
    from migrate.setup import orchestrator
    from migrate.setup.options import HostSetupReport, StepResult

    said: list[str] = []
    monkeypatch.setattr(orchestrator.ui, "warn", said.append)
    monkeypatch.setattr(orchestrator.ui, "table", lambda *a, **k: None)
    warning = plans(installed(fresh(), member=False), nvidia=False)["docker-group"].warnings[0]
    reports = [HostSetupReport(host=h, steps=[StepResult("docker-group", "changed", "", [warning])])
               for h in ("hx1", "bob@hx2")]
    orchestrator.print_reports(reports)
    (line,) = [w for w in said if "root-equivalent" in w]
    assert "root-equivalent on hx1, bob@hx2" in line
    argv = shlex.split(re.search(r"`migrate (host-setup [^`]*)`", line).group(1))[1:]
    params = command.make_context("host-setup", argv).params
    assert params["hosts"] == ("hx1", "bob@hx2") and params["undo"]
    assert [str(HostSpec.parse(h)) for h in params["hosts"]] == ["hx1", "bob@hx2"]
