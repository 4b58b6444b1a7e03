"""Job specs: sizes, --sweep grids, placeholders, names and keys, jobs.yaml with line numbers."""

from __future__ import annotations

import pytest

from migrate.errors import UsageError
from migrate.jobs.spec import (
    DispatcherOptions,
    JobSpec,
    expand,
    fill_placeholders,
    load_jobs_file,
    parse_size_mib,
    parse_sweeps,
)


@pytest.mark.parametrize("text,mib", [("16g", 16384), ("16GiB", 16384), ("500M", 500), ("2048", 2048),
                                      ("1.5G", 1536), ("1T", 1048576), (300, 300)])
def test_sizes(text, mib):
    assert parse_size_mib(text) == mib


@pytest.mark.parametrize("bad", ["lots", "-1g", "1x"])
def test_bad_sizes(bad):
    with pytest.raises(UsageError):
        parse_size_mib(bad)


def test_sweep_grid_expansion_names_and_values():
    base = JobSpec(command="python train.py --lr {lr} --seed {seed} --out ${HOME}/{lr}", name="tr")
    jobs = expand(base, parse_sweeps(["lr=1e-3,1e-4", "seed=0,1"]))
    assert [j.name for j in jobs] == ["tr[lr=1e-3,seed=0]", "tr[lr=1e-3,seed=1]", "tr[lr=1e-4,seed=0]",
                                      "tr[lr=1e-4,seed=1]"]
    assert jobs[3].command == "python train.py --lr 1e-4 --seed 1 --out ${HOME}/1e-4"
    jobs[0].env["X"] = "1"
    assert "X" not in jobs[1].env  # copies, not shared


def test_sweep_errors():
    for items in (["lr"], ["1x=2"], ["lr=1,", "x=2"], ["lr=1", "lr=2"]):
        with pytest.raises(UsageError):
            parse_sweeps(items)
    with pytest.raises(UsageError, match="does not use {seed}"):
        expand(JobSpec(command="python t.py --lr {lr}"), {"lr": ["1"], "seed": ["0"]})


def test_unknown_placeholders_and_shell_braces_stay():
    assert fill_placeholders("echo {a} {b} ${c} {1,2}", {"a": "x"}) == "echo x {b} ${c} {1,2}"


def test_keys_stay_unique_across_the_grid_and_experiments():
    jobs = expand(JobSpec(command="run {experiment} {k}", key="pb"), {"k": ["1", "2"]}, experiments=["a", "b"])
    assert len({j.key for j in jobs}) == 4
    assert [j.name for j in jobs][:2] == ["a[k=1]", "a[k=2]"]
    assert jobs[2].command == "run b 1" and jobs[2].env["MIGRATE_EXPERIMENT"] == "b"


def test_payload_takes_options_defaults_unless_the_job_says():
    opts = DispatcherOptions(gpu_pool=["2", "3"], allow_shared=True)
    assert JobSpec(command="x").payload(opts)["gpu_pool"] == ["2", "3"]
    assert JobSpec(command="x").payload(opts)["allow_shared"] is True
    p = JobSpec(command="x", gpu_pool=["0"], allow_shared=False, min_free_mem_mib=10).payload(opts)
    assert p["gpu_pool"] == ["0"] and p["allow_shared"] is False and p["min_free_mem_mib"] == 10
    assert "image" not in p and "mounts" not in p


def test_jobs_file_with_defaults_and_sweeps(tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text("""
defaults:
  gpus: 2
  env: {A: "1"}
jobs:
  - command: python train.py --lr {lr}
    name: sweep
    sweep: {lr: [0.1, 0.01]}
    env: {B: "2"}
  - command: python eval.py
    gpus: 0
    min_free_mem: 10g
  - echo plain string job
""")
    jobs = load_jobs_file(f)
    assert [j.name for j in jobs] == ["sweep[lr=0.1]", "sweep[lr=0.01]", None, None]
    assert jobs[0].gpus == 2 and jobs[0].env == {"A": "1", "B": "2"}
    assert jobs[2].gpus == 0 and jobs[2].min_free_mem_mib == 10240
    assert jobs[3].command == "echo plain string job"


@pytest.mark.parametrize("text,needle", [
    ("jobs:\n  - command: x\n    gpu: 2\n", ":3: unknown key 'gpu'"),
    ("jobs:\n  - command: x\n    gpus: two\n", ":3: 'gpus' must be an integer"),
    ("jobs:\n  - name: no-command\n", ":2: a job needs a command"),
    ("jobs: []\n", "expected a non-empty list"),
    ("jobz: []\n", "unknown top-level key 'jobz'"),
    ("jobs:\n  - command: [unclosed\n", "not valid YAML"),
    ("- command: x {y}\n  sweep: {z: [1]}\n", "does not use {z}"),
])
def test_jobs_file_errors_point_at_the_line(tmp_path, text, needle):
    f = tmp_path / "jobs.yaml"
    f.write_text(text)
    with pytest.raises(UsageError) as exc:
        load_jobs_file(f)
    assert needle in exc.value.one_line()


def test_jobs_file_suggests_the_right_key(tmp_path):
    f = tmp_path / "j.yaml"
    f.write_text("- command: x\n  retires: 2\n")
    with pytest.raises(UsageError) as exc:
        load_jobs_file(f)
    assert "did you mean 'retries'" in exc.value.one_line()


def test_api_contract_for_migrate_apply():
    """The names and fields `migrate apply` relies on (issue 6's API contract)."""
    import dataclasses
    import inspect

    from migrate.jobs import submit

    fields = {f.name for f in dataclasses.fields(submit.JobSpec)}
    assert {"command", "name", "cwd", "env", "gpus", "min_free_mem_mib", "priority", "retries", "image", "mounts",
            "shm_size", "ports", "key"} <= fields
    assert [f.name for f in dataclasses.fields(submit.SubmittedJob)] == ["id", "key", "name", "status"]
    params = inspect.signature(submit.submit_jobs).parameters
    assert list(params)[:4] == ["host", "conn", "jobs", "options"]
    # later parameters are keyword-only and optional (apply passes `remote`, its open connection)
    assert all(p.kind is p.KEYWORD_ONLY and p.default is None for p in list(params.values())[4:])
    assert list(inspect.signature(submit.job_statuses).parameters) == ["host", "conn"]
    assert submit.JobSpec(command="x").gpus == 1 and submit.DispatcherOptions().gpu_backend is None


# -- image references (issue 12.11) --------------------------------------------------------------
GOOD_IMAGES = ["ubuntu", "ubuntu:22.04", "nvcr.io/nvidia/pytorch:24.05-py3", "localhost:5000/team/train:v2",
               "registry.example.com:443/a/b/c", "[::1]:5000/x:y", "a__b", "a---b", "my.image_name-1",
               "Registry.Example.com/x", "busybox@sha256:" + "a" * 64, "busybox:1.36@sha256:" + "0" * 64]
BAD_IMAGES = [("x;touch /tmp/p", "';' is not allowed"), ("a b", "' ' is not allowed"), ("-it", "starts with '-'"),
              ("MyLab/Train:v2", "must be lowercase"), ("Ubuntu", "must be lowercase"), ("a:", "not [registry"),
              ("a//b", "not [registry"), ("a..b", "not [registry"), ("a::b", "not [registry"),
              ("a/", "not [registry"), ("ubuntu:" + "t" * 129, "not [registry"), ("x" * 256, "longer than 255"),
              ("x@sha256:abc", "not [registry"), ("$(id)", "'$' is not allowed"), ("", "empty")]


@pytest.mark.parametrize("ref", GOOD_IMAGES)
def test_valid_image_references_pass(ref):
    from migrate.agent.imageref import image_ref_problem
    from migrate.jobs.spec import check_image

    assert image_ref_problem(ref) is None and check_image(ref) == ref


@pytest.mark.parametrize("ref,needle", BAD_IMAGES)
def test_bad_image_references_are_usage_errors_in_the_client_and_refused_by_the_agent(ref, needle):
    from migrate.agent.main import AgentError, validate_spec
    from migrate.jobs.spec import check_image

    with pytest.raises(UsageError) as exc:
        check_image(ref)
    assert exc.value.message.startswith("bad image reference") and needle in exc.value.message
    assert "\n" not in exc.value.message and "[registry[:port]/]path[:tag][@digest]" in exc.value.hint
    with pytest.raises(AgentError) as agent_exc:  # jobs from playbooks and other clients are checked too
        validate_spec({"command": "x", "image": ref}, 0)
    assert "bad image reference" in agent_exc.value.message and needle in agent_exc.value.message


def test_jobs_file_image_error_points_at_the_image_line(tmp_path):
    p = tmp_path / "jobs.yaml"
    p.write_text("jobs:\n  - command: train\n    image: 'x;touch /tmp/p'\n")
    with pytest.raises(UsageError) as exc:
        load_jobs_file(p)
    assert exc.value.message.startswith(f"{p}:3: bad image reference 'x;touch /tmp/p'")


def test_submit_jobs_refuses_a_bad_image_before_connecting():
    from migrate.jobs.client import submit_jobs
    from migrate.remote.hosts import ConnectOptions

    with pytest.raises(UsageError, match="bad image reference"):  # a connection attempt would fail differently
        submit_jobs("nosuch.invalid", ConnectOptions(), [JobSpec(command="x", image="Bad Image")], DispatcherOptions())


def test_jobs_yaml_and_playbooks_share_one_yaml_validator(tmp_path):
    """One line-aware loader (migrate.yamlfile): the same key, the same mistake, the same words and line."""
    from migrate.playbook.loader import parse_playbook

    f = tmp_path / "jobs.yaml"
    f.write_text("jobs:\n  - command: x\n    priority: -5\n    retries: lots\n    sweep: {lr: [1e-3, 0.10]}\n"
                 "    command2: y\n")
    with pytest.raises(UsageError) as exc:
        load_jobs_file(f)
    text = exc.value.one_line()
    assert "2 problems" in text and ":4: 'retries' must be an integer" in text and ":6: unknown key 'command2'" in text
    with pytest.raises(UsageError) as pb:
        parse_playbook("hosts: [a]\nrun:\n  command: x\n  retries: lots\n", tmp_path / "p.yml")
    assert "p.yml:4: 'run.retries' must be an integer" in pb.value.one_line()
    f.write_text("- command: x {lr}\n  priority: -5\n  sweep: {lr: [1e-3, 0.10]}\n")
    assert [(j.priority, j.command) for j in load_jobs_file(f)] == [(-5, "x 1e-3"), (-5, "x 0.10")]  # as written
    parse_playbook("hosts: [a]\nrun: {command: x, priority: -5}\n", tmp_path / "p.yml")  # the table's range
