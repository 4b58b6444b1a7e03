import json
import re
from pathlib import Path

from migrate.setup import apt, journal, verify


def test_apt_commands_are_non_interactive_wait_for_the_lock_and_skip_recommends():
    cmd = apt.install_command(["docker.io", "./x y.deb"], 77)
    assert cmd.startswith("env DEBIAN_FRONTEND=noninteractive NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l apt-get ")
    assert "-o DPkg::Lock::Timeout=77" in cmd and "--no-install-recommends" in cmd and " -y " in cmd
    assert "--force-confold" in cmd and "'./x y.deb'" in cmd
    assert "Lock::Timeout=5" in apt.update_command(5) and apt.update_command(5).endswith(" update")
    assert apt.purge_command(["a", "b"], 9).endswith(" purge a b")


def test_parse_installed_and_diff():
    before = apt.parse_installed("ii  bash 5.2\nrc  old 1.0\nii  libc6:amd64 2.36\nhi  held 3\n")
    assert before == {"bash": "5.2", "libc6:amd64": "2.36", "held": "3"}
    after = {"bash": "5.2", "libc6:amd64": "2.37", "docker.io": "20.10"}
    d = apt.diff_installed(before, after)
    assert d.installed == [["docker.io", "20.10"]]
    assert d.upgraded == [["libc6:amd64", "2.36", "2.37"]]
    assert d.removed == [["held", "3"]]
    assert apt.bare_name("libc6:amd64") == "libc6"


def test_optional_compose_choice_from_apt_cache_policy():
    policy = ("docker-compose-v2:\n  Installed: (none)\n  Candidate: (none)\n"
              "docker-compose-plugin:\n  Installed: (none)\n  Candidate: (none)\n"
              "docker-compose:\n  Installed: (none)\n  Candidate: 1.29.2-3\n  Version table:\n")
    cands = apt.parse_candidates(policy)
    assert cands == {"docker-compose": "1.29.2-3"}
    opts = [("docker-compose-v2", 0), ("docker-compose-plugin", 0), ("docker-compose", 2)]
    assert apt.choose_optional(cands, opts) is None  # bookworm: the python 1.x, not a plugin
    assert apt.choose_optional({"docker-compose": "2.26.1-4"}, opts) == "docker-compose"
    assert apt.choose_optional({"docker-compose-v2": "2.27.1"}, opts) == "docker-compose-v2"
    assert apt.major("1:2.3-1") == 2


def test_deb_filename_parts():
    assert apt.deb_filename_parts("containerd.io_1.7.27-1_amd64.deb") == ("containerd.io", "1.7.27-1", "amd64")
    assert apt.deb_filename_parts("docker-ce_5%3a28.3.0-1~debian.12~bookworm_amd64.deb")[1].startswith("5:28")
    assert apt.deb_filename_parts("weird.deb") is None


def test_update_problems():
    err = "W: Failed to fetch http://x/InRelease  404\nE: Some index files failed\nHit:1 ok\n"
    assert apt.update_problems(err) == ["W: Failed to fetch http://x/InRelease  404", "E: Some index files failed"]


# --- journal -------------------------------------------------------------------------------

def test_append_command_quotes_the_entry_and_keeps_files_private():
    e = journal.entry("file", "daemon-json", path="/etc/docker/daemon.json", existed=True, backup="/b'x")
    cmd = journal.append_command(e)
    assert cmd.startswith("umask 077 && mkdir -p \"$HOME\"/.migrate/host-setup && printf")
    assert cmd.endswith('>> "$HOME"/.migrate/host-setup/journal.jsonl')
    assert "'\"'\"'" in cmd  # the single quote in the path is quoted for the shell


def test_parse_reports_broken_lines():
    entries, problems = journal.parse('{"type": "dir", "id": "1"}\nnot json\n\n[1]\n')
    assert len(entries) == 1 and len(problems) == 2


def _e(kind, eid, **kw):
    return {"type": kind, "id": eid, "step": "s", **kw}


def test_undo_plan_reverses_in_order_and_purges_only_what_is_still_installed():
    entries = [
        _e("file", "k", path="/etc/apt/keyrings/docker.asc", existed=False),
        _e("file", "s", path="/etc/apt/sources.list.d/docker.sources", existed=False),
        _e("apt-begin", "b1", before={"bash": "5"}),
        _e("packages", "p1", begin="b1", installed=[["docker.io", "20"], ["runc", "1"], ["libx:amd64", "2"]],
           removed=[["podman-docker", "4"]], upgraded=[["libc6", "1", "2"]], groups_created=["docker"],
           paths_created=["/etc/docker"]),
        _e("file", "d", path="/etc/docker/daemon.json", existed=True, backup="/etc/docker/daemon.json.bak"),
        _e("group-member", "g", group="docker", user="alice"),
    ]
    plan = journal.plan_undo(entries, {"docker.io": "20", "libx": "2", "bash": "5"}, {"docker", "alice"},
                             {"docker": ["alice"]})
    titles = [a.title for a in plan.actions]
    assert titles[0] == "remove alice from group docker"
    assert titles[1].startswith("restore /etc/docker/daemon.json")
    assert titles[2].startswith("purge 2 package(s)") and "runc" not in titles[2]  # runc already gone
    assert plan.actions[2].packages == ["docker.io", "libx:amd64"]
    assert titles[3] == "remove /etc/apt/sources.list.d/docker.sources"
    assert titles[4] == "remove /etc/apt/keyrings/docker.asc"
    # what the packages created goes after every purge; no docker restart since docker is purged
    assert titles[-2].startswith("remove /etc/docker if nothing else") and "key.json" in plan.actions[-2].commands[0]
    assert plan.actions[-1].commands == ["groupdel docker"]
    assert not any(a.kind == "restart" for a in plan.actions)
    assert any("podman-docker" in t for t in plan.not_undoable) and any("libc6" in t for t in plan.not_undoable)


def test_undo_restarts_docker_once_when_it_stays_and_daemon_json_was_restored():
    entries = [_e("file", "d1", path="/etc/docker/daemon.json", existed=True, backup="/x1"),
               _e("file", "d2", path="/etc/docker/daemon.json", existed=True, backup="/x2")]
    plan = journal.plan_undo(entries, {"docker-ce": "28"}, set(), {})
    assert [a.kind for a in plan.actions] == ["run", "run", "restart"]
    assert "mv -f /x2 /etc/docker/daemon.json" in plan.actions[0].commands[0]


def test_undo_skips_reverted_entries_and_handles_an_interrupted_apt_run():
    entries = [_e("file", "d", path="/etc/docker/daemon.json", existed=False),
               _e("reverted", "r", ref="d"),
               _e("apt-begin", "b", before={"bash": "5"})]
    plan = journal.plan_undo(entries, {"bash": "5", "containerd": "1.6", "docker.io": "20"}, set(), {})
    assert len(plan.actions) == 1
    assert plan.actions[0].kind == "purge" and plan.actions[0].packages == ["containerd", "docker.io"]
    assert plan.actions[0].settles == ["b"]


def test_empty_journal_means_nothing_to_undo():
    assert journal.plan_undo([], {}, set(), {}).empty


def test_journal_entries_are_json_lines():
    e = journal.entry("group-member", "docker-group", group="docker", user="alice")
    assert json.loads(json.dumps(e))["type"] == "group-member" and re.fullmatch(r"\d{8}T\d{6}Z", e["time"])


# --- verify --------------------------------------------------------------------------------

KNOWN = {
    'docker: Error response from daemon: could not select device driver "" with capabilities: [[gpu]].':
        "restarted",
    "Failed to initialize NVML: Unknown Error": "cgroupdriver=cgroupfs",
    "nvidia-container-cli: initialization error: load library failed: libnvidia-ml.so.1: cannot open shared object "
    "file: no such file or directory": "driver",
    "nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please update your driver":
        "older CUDA",
    "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock": "newgrp",
}


def test_known_failures_map_to_a_cause_and_a_fix():
    for message, fix_word in KNOWN.items():
        known = verify.explain("some prefix\n" + message)
        assert known is not None, message
        assert fix_word in known.cause + known.fix, (message, known)
    msg, hint = verify.describe_failure("x\nFailed to initialize NVML: Unknown Error\n", "?")
    assert msg.startswith("Failed to initialize NVML") and "->" in msg and "cgroupfs" in hint
    assert verify.describe_failure("boom", "?") == ("boom", "see docs/troubleshooting.md")


def test_troubleshooting_doc_covers_every_known_failure():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "troubleshooting.md").read_text()
    for message in ('could not select device driver "" with capabilities: [[gpu]]',
                    "Failed to initialize NVML: Unknown Error", "libnvidia-ml.so.1", "unsatisfied condition: cuda>=",
                    "permission denied while trying to connect", "unknown or invalid runtime name: nvidia",
                    'exec: "nvidia-container-runtime": executable file not found',
                    "Conflicting values set for option Signed-By", "NO_PUBKEY", "start request repeated too quickly",
                    "docker: command not found"):
        assert message in doc, message
    assert len(verify.KNOWN_FAILURES) >= 4


def test_docker_info_parsing_and_image_choice():
    runtimes, default, version = verify.parse_docker_info('{"runc":{"path":"runc"},"nvidia":{}}|nvidia|28.3.0\n')
    assert runtimes == ["nvidia", "runc"] and default == "nvidia" and version == "28.3.0"
    listing = "busybox:latest\n<none>:<none>\nnvidia/cuda:12.4.1-base\n"
    assert verify.pick_local_image(listing) == "nvidia/cuda:12.4.1-base"
    assert verify.pick_local_image("busybox:latest\n") == "busybox:latest"
    assert verify.pick_local_image("") is None
    assert verify.gpu_test_command("my img") == "docker run --rm --gpus all --entrypoint nvidia-smi 'my img' -L"


def test_interrupted_apt_run_compares_bare_package_names():
    # dpkg-query names multi-arch libraries libc6:amd64; the host's current list is by bare name
    entries = [_e("apt-begin", "b", before={"libc6:amd64": "2.36", "bash": "5"})]
    plan = journal.plan_undo(entries, {"libc6": "2.36", "bash": "5"}, set(), {})
    assert not any(a.kind == "purge" for a in plan.actions)


def test_survive_disconnect_keeps_output_and_exit_code(tmp_path):
    import subprocess

    cmd = apt.survive_disconnect("echo out; echo err >&2; exit 7", "t-1").replace("/var/tmp/", f"{tmp_path}/")
    res = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=30)
    assert res.returncode == 7 and res.stdout.split() == ["out", "err"]
    assert list(tmp_path.iterdir()) == []  # log and status file removed
    ok = apt.survive_disconnect("true", "t-2").replace("/var/tmp/", f"{tmp_path}/")
    assert subprocess.run(["sh", "-c", ok]).returncode == 0


def test_interrupted_apt_run_also_removes_groups_it_created():
    entries = [_e("apt-begin", "b", before={"bash": "5"}, groups=["root", "alice"])]
    plan = journal.plan_undo(entries, {"bash": "5", "docker.io": "20"}, {"root", "alice", "docker"}, {})
    assert [a.kind for a in plan.actions] == ["purge", "run"]
    assert plan.actions[-1].commands == ["groupdel docker"]
