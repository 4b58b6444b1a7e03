from pathlib import Path

import pytest

from migrate.playbook.loader import PlaybookError, expand_sweep, load_playbook, parse_playbook

FULL = """\
hosts: [alice@gpu-box]            # or ssh_config aliases
setup:   {docker_source: mirror:tuna, nvidia: true, default_runtime: nvidia, registry_mirrors: []}
images:  [mylab/pytorch:1.10]
data:
  - {src: ./datasets/cifar10, dest: /data/cifar10, exclude: ["*.tmp"]}
run:
  image: mylab/pytorch:1.10
  workdir: /workspace
  mounts: ["/data:/data"]
  shm_size: 16g
  gpus_per_job: 1
  command: python train.py --lr {lr} --seed {seed}
  sweep: {lr: [1e-3, 1e-4], seed: [0, 1]}
"""


def parse(text: str, name: str = "exp.yml"):
    return parse_playbook(text, Path("/plays") / name)


def test_the_issue_example_parses_with_defaults():
    pb = parse(FULL)
    assert pb.name == "exp" and pb.hosts == ["alice@gpu-box"]
    assert pb.setup["docker_source"] == "mirror:tuna" and pb.setup["nvidia"] is True
    assert pb.setup["data_root"] is None and pb.setup["force"] is False
    assert [i.name for i in pb.images] == ["mylab/pytorch:1.10"] and pb.images[0].build is None
    assert pb.data[0].src == "/plays/datasets/cifar10" and pb.data[0].exclude == ["*.tmp"]
    assert pb.run["sweep"] == {"lr": ["1e-3", "1e-4"], "seed": ["0", "1"]}
    assert pb.run["gpus_per_job"] == 1 and pb.run["retries"] == 0 and pb.run["env"] == {}
    assert pb.stages() == ["setup", "images", "data", "run"]


def test_sweep_keeps_literal_values_and_expands_the_grid():
    jobs = expand_sweep("python t.py --lr {lr} --seed {seed}", {"lr": ["1e-3", "1e-4"], "seed": ["0", "1"]})
    assert [c for _, c in jobs] == [
        "python t.py --lr 1e-3 --seed 0", "python t.py --lr 1e-3 --seed 1",
        "python t.py --lr 1e-4 --seed 0", "python t.py --lr 1e-4 --seed 1"]
    assert jobs[0][0] == {"lr": "1e-3", "seed": "0"}
    assert expand_sweep("echo hi", {}) == [({}, "echo hi")]


@pytest.mark.parametrize("text,needle", [
    ("hosts: [a]\nimagse: [x]\n", "exp.yml:2: unknown key 'imagse' (did you mean 'images'?)"),
    ("hosts: [a]\nrun:\n  command: x\n  gpus_per_job: one\n", "exp.yml:4: 'run.gpus_per_job' must be an integer"),
    ("hosts: [a]\nrun:\n  comand: x\n", "exp.yml:3: unknown key 'run.comand' (did you mean 'command'?)"),
    ("hosts: [a]\nrun:\n  image: x\n", "exactly one of 'run.command' and 'run.compose'"),
    ("hosts: [a]\nrun: {command: x, compose: c.yml}\n", "exactly one of"),
    ("hosts: [a]\nrun: {compose: c.yml, image: x}\n", "no run.sweep or run.image"),
    ("images: [x]\n", "missing required key 'hosts'"),
    ("hosts: a\nsetup: {nvidia: maybe}\n", "exp.yml:2: 'setup.nvidia' must be true or false"),
    ("hosts: [a]\ndata:\n  - {src: x}\n", "missing required key 'data[0].dest'"),
    ("hosts: [a]\ndata: {src: x}\n", "exp.yml:2: 'data' must be a list of mappings"),
    ("hosts: [a]\nrun: {command: 'x {lr}'}\n", "run.command uses {lr} but run.sweep has no 'lr'"),
    ("hosts: [a]\nrun: {command: x, sweep: {lr: [1]}}\n", "run.sweep.lr is never used"),
    ("hosts: [a]\nhosts: [b]\n", "exp.yml:2: duplicate key 'hosts'"),
    ("hosts: []\n", "'hosts' must name at least one host"),
    ("hosts: [a\n", "not valid YAML"),
    ("- just\n- a list\n", "must be a mapping"),
    ("hosts: [a]\nrun: {command: x, retries: -1}\n", "must be an integer from 0 to 100, got -1"),
])
def test_mistakes_are_reported_with_line_numbers(text, needle):
    with pytest.raises(PlaybookError) as exc:
        parse(text)
    assert needle in exc.value.message
    assert exc.value.exit_code == 2


def test_every_problem_is_reported_at_once():
    with pytest.raises(PlaybookError) as exc:
        parse("hosts: [a]\nfoo: 1\nbar: 2\nrun: {command: x, priority: high}\n")
    msg = exc.value.message
    assert msg.startswith("3 problems") and ":2:" in msg and ":3:" in msg and ":4:" in msg


def test_hosts_may_be_a_single_string_and_images_mappings(tmp_path):
    pb = parse("hosts: gpu\nimages:\n  - name: lab/env:1\n    build: envdir\n    build_args: {PY: '3.11'}\n")
    assert pb.hosts == ["gpu"]
    assert pb.images[0].build == "/plays/envdir" and pb.images[0].build_args == {"PY": "3.11"}
    assert pb.stages() == ["images"]


def test_empty_setup_means_setup_with_defaults():
    pb = parse("hosts: [a]\nsetup:\n")
    assert pb.setup is not None and pb.setup["docker_source"] == "official"
    assert pb.stages() == ["setup"]


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(PlaybookError, match="not found"):
        load_playbook(tmp_path / "nope.yml")
    (tmp_path / "empty.yml").write_text("")
    with pytest.raises(PlaybookError, match="empty"):
        load_playbook(tmp_path / "empty.yml")


def test_missing_local_paths_are_named_with_their_line_before_any_remote_work(tmp_path):
    (tmp_path / "present").mkdir()
    text = ("hosts: [h]\n"
            "images:\n  - {name: a:1, build: ./nobuild}\n"
            "data:\n  - {src: ./present, dest: d}\n  - {src: ./absent, dest: e}\n"
            "run: {command: 'true'}\n")
    pb = parse_playbook(text, tmp_path / "p.yml")
    play = tmp_path / "p.yml"
    assert pb.missing_local_paths() == [f"{play}:6: data[1].src: {tmp_path / 'absent'} not found",
                                        f"{play}:3: images[0].build: {tmp_path / 'nobuild'} not found"]
    assert pb.missing_local_paths(["run"]) == []  # --only run needs none of them
    assert pb.missing_local_paths(["images"]) == [f"{play}:3: images[0].build: {tmp_path / 'nobuild'} not found"]


DEEP = "hosts: [gpu]\nrun:\n  command: " + "[" * 500 + "]" * 500 + "\n"


def test_yaml_nested_hundreds_of_levels_deep_is_one_line_naming_the_file(tmp_path):
    """Issue 20.6: a playbook nested ~500 levels deep was a RecursionError traceback; jobs.yaml and compose
    files are read by the same PyYAML."""
    from migrate.errors import UsageError
    from migrate.jobs.compose import plan_compose
    from migrate.jobs.spec import load_jobs_file
    from tests.conftest import run_cli

    path = tmp_path / "deep.yml"
    path.write_text(DEEP)
    for read in (load_playbook, load_jobs_file, lambda p: plan_compose(str(p))):
        with pytest.raises(UsageError, match=f"^{path}:3: nested more than 100 levels deep$"):
            read(path)
    res = run_cli("apply", str(path), "--dry-run")
    assert res.code == 2 and "Traceback" not in res.output, res.output
    assert res.stderr.startswith(f"error: {path}:3: nested more than") and res.stderr.count("\n") == 1
    # 100 levels (2 mappings, 98 lists) are read, and refused for what they are: a list where a command goes
    with pytest.raises(PlaybookError, match="run.command"):
        parse_playbook("hosts: [gpu]\nrun:\n  command: " + "[" * 98 + "]" * 98 + "\n", path)
