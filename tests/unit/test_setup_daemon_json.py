import json

import pytest

from migrate.setup import daemon_json as dj


def test_missing_or_blank_file_is_empty_config():
    assert dj.parse(None) == {}
    assert dj.parse("  \n") == {}


def test_invalid_json_error_names_the_file_and_the_parse_error():
    with pytest.raises(dj.DaemonJsonError) as exc:
        dj.parse('{"registry-mirrors": [\n', "/etc/docker/daemon.json")
    msg = exc.value.message
    assert "/etc/docker/daemon.json is not valid JSON" in msg and "line" in msg and "untouched" in msg


def test_non_object_is_refused():
    with pytest.raises(dj.DaemonJsonError):
        dj.parse("[1, 2]")


def test_merge_keeps_every_key_in_order_and_adds_the_runtime():
    current = {"registry-mirrors": ["https://m1"], "data-root": "/data/docker", "features": {"buildkit": True},
               "x-unknown": {"deep": [1, 2]}, "runtimes": {"crun": {"path": "/usr/bin/crun"}}}
    m = dj.merge(current, nvidia_runtime=True)
    assert list(m.config) == list(current)
    for key in ("registry-mirrors", "data-root", "features", "x-unknown"):
        assert m.config[key] == current[key]
    assert m.config["runtimes"] == {"crun": {"path": "/usr/bin/crun"}, "nvidia": dj.NVIDIA_RUNTIME}
    assert "default-runtime" not in m.config
    assert m.changes == ["add runtimes.nvidia"] and m.keys == {"runtimes"}
    assert current["runtimes"] == {"crun": {"path": "/usr/bin/crun"}}  # input untouched


def test_merge_is_idempotent():
    first = dj.merge({}, nvidia_runtime=True, default_runtime="nvidia", registry_mirrors=["https://m"],
                     data_root="/data/docker")
    again = dj.merge(first.config, nvidia_runtime=True, default_runtime="nvidia", registry_mirrors=["https://m/"],
                     data_root="/data/docker/")
    assert again.changes == [] and again.config == first.config


def test_existing_nvidia_runtime_with_args_is_left_alone():
    current = {"runtimes": {"nvidia": {"path": "/usr/bin/nvidia-container-runtime", "runtimeArgs": ["--debug"]}}}
    m = dj.merge(current, nvidia_runtime=True)
    assert m.changes == [] and m.config == current
    odd = dj.merge({"runtimes": {"nvidia": {"path": "/opt/other"}}}, nvidia_runtime=True)
    assert odd.changes == [] and odd.warnings


def test_registry_mirrors_are_appended_not_replaced():
    m = dj.merge({"registry-mirrors": ["https://a"]}, registry_mirrors=["https://a/", "https://b"])
    assert m.config["registry-mirrors"] == ["https://a", "https://b"]


def test_default_runtime_and_data_root_changes_are_described():
    m = dj.merge({"default-runtime": "runc", "graph": "/old"}, default_runtime="nvidia", data_root="/data/docker")
    assert m.config["default-runtime"] == "nvidia"
    assert m.config["data-root"] == "/data/docker" and "graph" not in m.config
    assert any("was runc" in c for c in m.changes) and m.warnings


@pytest.mark.parametrize("current", [{"runtimes": []}, {"registry-mirrors": "https://x"}])
def test_wrong_types_are_refused(current):
    with pytest.raises(dj.DaemonJsonError):
        dj.merge(current, nvidia_runtime=True, registry_mirrors=["https://m"])


def test_render_keeps_the_files_indent_and_ends_with_newline():
    text = '{\n  "a": 1\n}\n'
    out = dj.render({"a": 1, "b": [2]}, like=text)
    assert out.endswith("\n") and '\n  "b": [\n    2\n  ]' in out
    assert json.loads(out) == {"a": 1, "b": [2]}
    assert '\n    "a"' in dj.render({"a": 1})


def test_unified_diff_of_a_new_file():
    diff = dj.unified_diff(None, '{\n    "a": 1\n}\n', "/etc/docker/daemon.json")
    assert diff.startswith("--- /etc/docker/daemon.json (absent)\n+++ /etc/docker/daemon.json\n")
    assert '+    "a": 1\n' in diff


def test_flag_conflicts_from_systemd_exec_start():
    exec_start = ("{ path=/usr/bin/dockerd ; argv[]=/usr/bin/dockerd -H fd:// --registry-mirror=https://x "
                  "--data-root /srv/docker ; ignore_errors=no ; start_time=[n/a] }")
    assert dj.flag_conflicts(exec_start, {"registry-mirrors", "data-root", "runtimes"}) == [
        "data-root (dockerd runs with --data-root)", "registry-mirrors (dockerd runs with --registry-mirror)"]
    assert dj.flag_conflicts("/usr/sbin/dockerd -H fd://", {"runtimes"}) == []


def test_journal_explanation_picks_the_failure_line():
    lines = [
        'time="2026-01-01T00:00:00Z" level=info msg="Starting up"',
        'time="2026-01-01T00:00:00Z" level=info msg="stopping event stream following graceful shutdown" error="<nil>"',
        'failed to start daemon: invalid mirror: path, query, or fragment at end of the URI "https://m/x"',
        "docker.service: Main process exited, code=exited, status=1/FAILURE",
        "docker.service: Failed with result 'exit-code'.",
    ]
    assert dj.journal_explanation(lines) == [lines[2]]
    assert dj.journal_explanation(["only", "noise", "here"]) == ["noise", "here"]
