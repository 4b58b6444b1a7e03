"""One table of job fields (migrate/agent/fields.py) feeds the agent, jobs.yaml, playbooks, `run` and the docs."""

from __future__ import annotations

import re
import time
from dataclasses import fields
from pathlib import Path

import pytest

from migrate.agent.fields import JOB_FIELDS, SPEC_KEYS
from migrate.agent.main import AgentError, validate_spec
from migrate.commands.run import command as run_command
from migrate.errors import UsageError
from migrate.jobs.spec import (
    FIELDS_BEGIN,
    FIELDS_END,
    JOB_FILE_KEYS,
    JobSpec,
    expand,
    grid,
    job_fields_markdown,
    load_jobs_file,
)
from migrate.playbook.jobs import plan_jobs
from migrate.playbook.loader import PlaybookError, parse_playbook
from migrate.playbook.schema import RUN_KEYS

ROOT = Path(__file__).resolve().parents[2]


def test_the_table_is_every_field_of_a_job_and_of_the_agent():
    assert {f.name for f in fields(JobSpec)} == SPEC_KEYS == {f.name for f in JOB_FIELDS}
    assert len(JOB_FIELDS) == len(SPEC_KEYS)


def test_the_agent_checks_the_integer_ranges_of_the_table():
    for f in JOB_FIELDS:
        if f.lo is None:
            continue
        spec = {"command": "true", f.name: f.hi + 1}
        with pytest.raises(AgentError, match=f"{f.name} must be an integer from {f.lo} to {f.hi}"):
            validate_spec(spec, 0)
        assert validate_spec({"command": "true", f.name: f.hi}, 0)[f.name] == f.hi


def test_jobs_yaml_and_playbooks_accept_every_field():
    assert {f.yaml for f in JOB_FIELDS} <= set(JOB_FILE_KEYS)
    assert {f.playbook for f in JOB_FIELDS} <= {k.name for k in RUN_KEYS}


def test_run_has_the_flag_of_every_field():
    opts = {o for p in run_command.params for o in p.opts}
    missing = [f.flag for f in JOB_FIELDS if f.flag and f.flag not in opts]
    assert not missing, missing


def test_run_flags_take_their_type_range_and_default_from_the_table():
    by_flag = {o: p for p in run_command.params for o in p.opts}
    for f in JOB_FIELDS:
        if not f.flag:
            continue
        param = by_flag[f.flag]
        if f.kind == "int":
            assert (param.type.min, param.type.max, param.default) == (f.lo, f.hi, f.default), f.name
        assert param.is_flag == (f.kind == "bool"), f.name
        assert param.multiple == (f.kind in ("str_list", "str_map") and f.name != "gpu_pool"), f.name


def test_docs_run_md_names_every_flag_and_jobs_yaml_key():
    text = (ROOT / "docs" / "run.md").read_text()
    keys_line = re.search(r"^Keys: (.*?)\. Unknown", text, re.M | re.S)
    assert keys_line, "docs/run.md: the jobs.yaml section lists its keys after 'Keys:'"
    listed = set(re.findall(r"`([a-z_]+)`", keys_line.group(1)))
    assert set(JOB_FILE_KEYS) == listed, set(JOB_FILE_KEYS) ^ listed
    missing = [f.flag for f in JOB_FIELDS if f.flag and f"`{f.flag}" not in text and f", {f.flag}" not in text]
    assert not missing, missing


def test_docs_run_md_has_the_generated_table_of_job_fields():
    text = (ROOT / "docs" / "run.md").read_text()
    start, end = text.find(FIELDS_BEGIN), text.find(FIELDS_END)
    assert 0 <= start < end, "docs/run.md: the job fields table is missing"
    assert text[start:end + len(FIELDS_END)] == job_fields_markdown(), \
        "regenerate the table in docs/run.md from migrate.jobs.spec.job_fields_markdown()"
    assert "an integer from 0 to 64" in job_fields_markdown()  # integer checks come from the agent's ranges


def test_a_playbook_takes_the_fields_it_lacked_and_sends_them():
    pb = parse_playbook("""hosts: [a]
run:
  command: python serve.py
  image: lab/torch:1
  ports: ["16006:6006"]
  gpu_pool: ["2", "3"]
  allow_shared: true
  min_free_mem: 1000
  key: serve
""", Path("exp.yml"))
    [job] = plan_jobs(pb.name, pb.run, pb.hosts)
    assert job.key.startswith("serve:default:")
    spec = JobSpec(command=job.command, name=job.name, key=job.key,
                   **{k: v for k, v in job.spec.items() if v is not None})
    payload = spec.payload()
    assert payload["ports"] == ["16006:6006"] and payload["gpu_pool"] == ["2", "3"]
    assert payload["allow_shared"] is True and payload["min_free_mem_mib"] == 1000
    assert validate_spec(payload, 0)["ports"] == ["16006:6006"]


def test_a_playbook_field_of_the_wrong_type_is_reported_with_its_line():
    with pytest.raises(PlaybookError, match=r"exp.yml:4: 'run.allow_shared' must be true or false"):
        parse_playbook("hosts: [a]\nrun:\n  command: x\n  allow_shared: maybe\n", Path("exp.yml"))


def test_older_playbooks_keep_their_job_keys():
    """The fields playbooks gained do not enter the hash unless set: a re-apply finds its jobs."""
    pb = parse_playbook("""hosts: [a]
run:
  command: python t.py --lr {lr}
  image: lab/torch:1
  workdir: /w
  mounts: [/data:/data]
  env: {A: "1"}
  gpus_per_job: 2
  min_free_mem: 100
  sweep: {lr: [1e-3]}
""", Path("exp.yml"))
    assert [j.key for j in plan_jobs(pb.name, pb.run, pb.hosts)] == ["exp:lr=1e-3:833ea58705"]  # as before


def test_jobs_yaml_fills_every_field(tmp_path):
    f = tmp_path / "jobs.yaml"
    f.write_text("""jobs:
  - command: python serve.py
    name: s
    cwd: /w
    env: {A: 1}
    gpus: 2
    min_free_mem: 1g
    priority: 3
    retries: 1
    image: lab/torch:1
    mounts: [/d:/d]
    shm_size: 8g
    ports: [6006]
    key: k
    allow_shared: true
    gpu_pool: [0]
""")
    [job] = load_jobs_file(f)
    assert job == JobSpec(command="python serve.py", name="s", cwd="/w", env={"A": "1"}, gpus=2,
                          min_free_mem_mib=1024, priority=3, retries=1, image="lab/torch:1", mounts=["/d:/d"],
                          shm_size="8g", ports=["6006"], key="k", allow_shared=True, gpu_pool=["0"])


# -- the one sweep expander ----------------------------------------------------------------------
def test_the_grid_is_counted_before_anything_is_built():
    huge = {f"p{i}": [str(v) for v in range(10)] for i in range(12)}  # 10**12 combinations
    start = time.monotonic()
    with pytest.raises(UsageError, match="the limit is 10000"):
        next(grid(" ".join(f"{{{n}}}" for n in huge), huge, "run.sweep"))
    assert time.monotonic() - start < 1


def test_one_expander_for_run_jobs_yaml_and_playbooks(tmp_path):
    sweep = {"lr": ["1e-3", "1e-4"], "seed": ["0", "1"]}
    command = "python t.py --lr {lr} --seed {seed} {x,y}"
    want = [c for _, c in grid(command, sweep)]
    assert [j.command for j in expand(JobSpec(command=command), sweep)] == want
    (tmp_path / "jobs.yaml").write_text(f"- command: '{command}'\n  sweep: {{lr: [1e-3, 1e-4], seed: [0, 1]}}\n")
    assert [j.command for j in load_jobs_file(tmp_path / "jobs.yaml")] == want
    pb = parse_playbook(f"hosts: [a]\nrun:\n  command: '{command}'\n  sweep: {{lr: [1e-3, 1e-4], seed: [0, 1]}}\n",
                        Path("p.yml"))
    assert [j.command for j in plan_jobs(pb.name, pb.run, pb.hosts)] == want
    assert want[1] == "python t.py --lr 1e-3 --seed 1 {x,y}"


def test_fixed_values_win_over_sweep_values_of_the_same_name():
    assert list(grid("{experiment}-{a}", {"a": ["1"]}, fixed={"experiment": "base"})) == [({"a": "1"}, "base-1")]


def test_jobs_yaml_and_playbooks_accept_each_others_spellings(tmp_path):
    """`workdir`/`gpus_per_job` (playbook) and `cwd`/`gpus` (jobs.yaml) are one field each, in both files."""
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("defaults: {gpus_per_job: 2}\njobs:\n  - {command: a, workdir: /data}\n  - {command: b, gpus: 0}\n")
    a, b = load_jobs_file(jobs)
    assert (a.cwd, a.gpus, b.gpus) == ("/data", 2, 0)
    jobs.write_text("jobs:\n  - {command: a, cwd: /x, workdir: /y}\n")
    with pytest.raises(UsageError, match="are the same field: give one"):
        load_jobs_file(jobs)
    pb = parse_playbook("hosts: [a]\nrun:\n  command: python t.py\n  cwd: /data\n  gpus: 2\n", Path("p.yml"))
    assert (pb.run["workdir"], pb.run["gpus_per_job"]) == ("/data", 2)
    [job] = plan_jobs(pb.name, pb.run, pb.hosts)
    assert (job.spec["cwd"], job.spec["gpus"]) == ("/data", 2)
    with pytest.raises(PlaybookError, match="'run.gpus' and 'run.gpus_per_job' are the same field: give one"):
        parse_playbook("hosts: [a]\nrun:\n  command: x\n  gpus_per_job: 1\n  gpus: 2\n", Path("p.yml"))


def test_one_validator_for_the_agent_the_cli_the_cluster_and_jobs_yaml(tmp_path):
    from migrate.agent.validate import CHECKS
    from migrate.cluster.jobs import check_cluster_spec
    from migrate.jobs.spec import check_specs

    assert set(CHECKS) >= SPEC_KEYS  # every field of the table has its check
    bad = JobSpec(command="x", image="a:1", env={"CUDA_VISIBLE_DEVICES": "0"})
    for refuse in (lambda: check_specs([bad]), lambda: check_cluster_spec(bad)):
        with pytest.raises(UsageError, match="CUDA_VISIBLE_DEVICES is set by the dispatcher"):
            refuse()
    with pytest.raises(AgentError, match="CUDA_VISIBLE_DEVICES is set by the dispatcher"):
        validate_spec(bad.payload(), 0)
    jobs = tmp_path / "jobs.yaml"
    jobs.write_text("- command: x\n  image: a:1\n  env: {CUDA_VISIBLE_DEVICES: '0'}\n")
    with pytest.raises(UsageError, match=r"jobs.yaml:3: CUDA_VISIBLE_DEVICES is set by the dispatcher"):
        load_jobs_file(jobs)
    # what only the host can know is checked there: a process job's cwd, a mount's source
    away = JobSpec(command="x", cwd=str(tmp_path / "not-here"))
    check_specs([away])
    with pytest.raises(AgentError, match="does not exist on this host"):
        validate_spec(away.payload(), 0)
    with pytest.raises(UsageError, match="--shm-size needs a container image"):
        check_specs([JobSpec(command="x", shm_size="1g")])


def test_a_playbook_job_is_checked_by_the_same_validator_with_its_line(tmp_path):
    text = "hosts: [a]\nrun:\n  command: x\n  image: a:1\n  env: {CUDA_VISIBLE_DEVICES: '0'}\n"
    with pytest.raises(PlaybookError, match=r"pb.yml:5: run.env: CUDA_VISIBLE_DEVICES is set by the dispatcher"):
        parse_playbook(text, tmp_path / "pb.yml")
    parse_playbook("hosts: [a]\nrun:\n  command: x\n  image: a:1\n  mounts: ['~/d:/d']\n", tmp_path / "pb.yml")
