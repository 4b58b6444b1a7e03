"""migrate cluster (issue 14): the pure planners, the job payloads, and orchestration on recording hosts."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from migrate.cluster import install, jobs, ops, plan, state
from migrate.cluster.state import ClusterRecord, Node
from migrate.errors import MigrateError, UsageError
from migrate.jobs.spec import JobSpec
from migrate.remote.hosts import ConnectOptions
from tests.fakehost import FakeHost, FakeTarget, is_mutating

FACTS = {"python": "3.11", "python_path": "/usr/bin/python3", "machine": "x86_64", "free_mib": 50000, "taken": [],
         "installed": "", "home": "/home/alice", "cpus": 8, "index": "no route"}


def facts_json(**kw) -> str:
    return json.dumps({**FACTS, **kw}) + "\n"


def record(name: str = "lab") -> ClusterRecord:
    return ClusterRecord(name=name, ray_version=plan.RAY_VERSION, ports=plan.Ports(), gpu_backend="fake:/f.json",
                         agent="~/.migrate/agent/a.pyz",
                         nodes=[Node("gpu1", "10.0.0.1", ["0", "1"], 8, head=True), Node("gpu2", "10.0.0.2", ["3"], 8)])


# -- plan ------------------------------------------------------------------------------------------------
def test_head_start_offers_only_the_admitted_gpus_and_keeps_the_job_api_on_localhost():
    cmd = plan.head_start_command(plan.Ports(), "10.0.0.1", ["1", "3"], 8)
    assert "CUDA_VISIBLE_DEVICES=1,3" in cmd and "--num-gpus 2" in cmd
    assert "--dashboard-host 127.0.0.1" in cmd and "--dashboard-port 28265" in cmd and "--port 26379" in cmd
    assert "--disable-usage-stats" in cmd and "RAY_JOB_START_TIMEOUT_SECONDS=604800" in cmd
    assert "--min-worker-port 26400 --max-worker-port 26499" in cmd
    assert '--temp-dir "$HOME"/.migrate/ray/tmp' in cmd and '"$HOME"/.migrate/ray/2.55.1/bin/ray start --head' in cmd


def test_worker_start_joins_the_head_and_a_node_without_free_gpus_offers_none():
    cmd = plan.worker_start_command(plan.Ports(), "10.0.0.1", "10.0.0.2", [], 4)
    assert "--address 10.0.0.1:26379" in cmd and "CUDA_VISIBLE_DEVICES='' " in cmd and "--num-gpus 0" in cmd
    assert "--head" not in cmd and "RAY_JOB_START_TIMEOUT_SECONDS" not in cmd


def test_port_base_moves_every_port():
    p = plan.ports_from(30000)
    assert p.gcs == 30000 and p.dashboard == 30000 + 28265 - 26379 and p.max_worker == 30000 + 26499 - 26379


def test_preflight_problems_one_line_each():
    old = plan.parse_preflight("old", facts_json(python="3.7"))
    assert plan.preflight_problems(old, head=False) == ["old: python3 is 3.7, Ray 2.55.1 needs 3.10-3.13"]
    none = plan.parse_preflight("bare", '{"python": ""}')
    assert "python3 is not installed" in plan.preflight_problems(none, head=True)[0]
    busy = plan.parse_preflight("h", facts_json(taken=[26379], free_mib=10))
    text = " | ".join(plan.preflight_problems(busy, head=True))
    assert "26379 already in use on the head" in text and "10 MiB free" in text
    ok = plan.parse_preflight("h", facts_json(installed=plan.RAY_VERSION, free_mib=10))
    assert plan.preflight_problems(ok, head=True) == []          # installed: no space needed


def test_preflight_probe_runs_locally_and_reads_back():
    """The probe's python runs here (it only reads); its JSON parses into facts."""
    cmd = plan.preflight_command([0], check_index=False)
    out = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout
    f = plan.parse_preflight("here", out)
    assert f.python == "{}.{}".format(*sys.version_info[:2]) and f.free_mib > 0 and f.ip
    assert not is_mutating(cmd)


def test_offline_install_uses_pushed_wheels_and_writes_the_marker_last():
    cmd = install.install_command("/usr/bin/python3", offline=True)
    assert '--no-index --find-links "$HOME"/.migrate/ray/wheels/2.55.1' in cmd
    assert "venv -q --no-cache --python /usr/bin/python3" in cmd
    assert cmd.rstrip().endswith('> "$HOME"/.migrate/ray/2.55.1/migrate-ray-version')
    assert "--no-index" not in install.install_command("/usr/bin/python3", offline=False)


def test_pip_download_asks_for_the_hosts_platform():
    argv = install.pip_download_argv(install.wheel_dir("cp313", "aarch64"), "3.13", "aarch64", "ray[default]==1")
    assert argv[argv.index("--platform") + 1] == "manylinux2014_aarch64"
    assert argv[argv.index("--python-version") + 1] == "3.13" and "--only-binary=:all:" in argv


def test_gpu_pool_grammar():
    assert ops.parse_gpu_pool(("0,1",)) == {"": ["0", "1"]}
    assert ops.parse_gpu_pool(("gpu2=3", "alice@h=GPU-ab")) == {"gpu2": ["3"], "alice@h": ["GPU-ab"]}
    with pytest.raises(UsageError):
        ops.parse_gpu_pool(("gpu2=",))


def test_down_commands():
    assert plan.stop_command().endswith("; true") and "stop --force" in plan.stop_command()
    assert plan.purge_command() == 'rm -rf "$HOME"/.migrate/ray'
    assert is_mutating('"$HOME"/.migrate/ray/2.55.1/bin/ray stop --force') and not is_mutating(plan.leftover_command())


# -- state -----------------------------------------------------------------------------------------------
def test_record_round_trip_and_job_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    assert not state.exists("lab")
    state.save(record())
    assert state.exists("lab") and state.load("lab") == record()
    assert state.next_job_ids("lab", 3) == ["1", "2", "3"] and state.next_job_ids("lab", 1) == ["4"]
    assert not state.exists("../etc") and not state.exists("gpu1.example.org")
    with pytest.raises(UsageError, match="no cluster named"):
        state.load("other")


# -- jobs -----------------------------------------------------------------------------------------------
def test_payload_runs_the_command_through_the_polite_wrapper_with_ray_resources():
    body = jobs.payload(record(), JobSpec(command="python train.py --lr 1e-3", gpus=2, env={"A": "b c"},
                                          retries=1, cwd="/data/x"), "7")
    assert body["submission_id"] == "lab-7" and body["entrypoint_num_gpus"] == 2 and body["entrypoint_num_cpus"] == 0
    assert "migrate-ray-job.py --cwd /data/x -- 'python train.py --lr 1e-3'" in body["entrypoint"]
    env = body["runtime_env"]["env_vars"]
    assert env["A"] == "b c" and env["MIGRATE_GPU_BACKEND"] == "fake:/f.json" and env["MIGRATE_AGENT"]
    assert body["metadata"]["migrate_id"] == "7" and body["metadata"]["migrate_retries"] == "1"
    cpu = jobs.payload(record(), JobSpec(command="x", gpus=0), "8")
    assert cpu["entrypoint_num_gpus"] == 0 and cpu["entrypoint_num_cpus"] == 1


def test_gang_payload_reserves_nothing_itself():
    body = jobs.payload(record(), JobSpec(command="torchrun t.py"), "9", nodes=2, gpus_per_node=4)
    assert "migrate-ray-gang.py --nodes 2 --gpus-per-node 4 --master-port 29500" in body["entrypoint"]
    assert body["entrypoint_num_gpus"] == 0 and body["metadata"]["migrate_gpus"] == "8"


def test_retry_is_the_next_attempt_with_the_same_entrypoint():
    first = {**jobs.payload(record(), JobSpec(command="x", gpus=1), "3"), "status": "FAILED"}
    second = jobs.again(first)
    assert second["submission_id"] == "lab-3.2" and second["entrypoint"] == first["entrypoint"]
    assert second["entrypoint_num_gpus"] == 1 and second["metadata"]["migrate_attempt"] == "2"
    latest = jobs.latest_attempts([first, {**second, "status": "RUNNING"}, {"submission_id": "raw", "metadata": {}}])
    assert list(latest) == ["3"] and latest["3"]["status"] == "RUNNING"


def test_job_view_names_the_node():
    j = {**jobs.payload(record(), JobSpec(command="x", gpus=1), "3"), "status": "FAILED", "driver_node_id": "n2",
         "start_time": 1000_000, "end_time": 1010_000, "message": "Job supervisor actor died"}
    v = jobs.job_view(j, jobs.node_hosts(record(), [{"node_id": "n2", "node_ip": "10.0.0.2"}]), now=0)
    assert (v["id"], v["state"], v["node"], v["runtime_s"]) == ("3", "failed", "gpu2", 10.0)
    assert "died" in v["reason"]


def test_cluster_refuses_what_it_cannot_do_yet():
    with pytest.raises(UsageError, match="--gpu-pool is not supported per job on a cluster"):
        jobs.check_cluster_spec(JobSpec(command="x", gpu_pool=["0"]))
    with pytest.raises(UsageError, match="--allow-shared needs --min-free-mem"):
        jobs.check_cluster_spec(JobSpec(command="x", allow_shared=True))


def test_min_free_mem_and_allow_shared_reach_the_wrapper_as_the_jobs_variables():
    body = jobs.payload(record(), JobSpec(command="x", gpus=1, min_free_mem_mib=20000, allow_shared=True), "4")
    env = body["runtime_env"]["env_vars"]
    assert env["MIGRATE_MIN_FREE_MEM_MIB"] == "20000" and env["MIGRATE_ALLOW_SHARED"] == "1"
    plain = jobs.payload(record(), JobSpec(command="x", gpus=1), "5")["runtime_env"]["env_vars"]
    assert "MIGRATE_MIN_FREE_MEM_MIB" not in plain and "MIGRATE_ALLOW_SHARED" not in plain


def test_the_wrapper_admits_as_the_dispatcher_does_with_min_free_mem_and_allow_shared():
    sys.path.insert(0, os.path.dirname(WRAPPER))
    try:
        import job_wrapper
    finally:
        sys.path.pop(0)
    idle = {"index": "0", "verdict": "free", "free_mib": 30000, "processes": []}
    assert job_wrapper.why_not(idle, "alice", 20000) == ""
    assert job_wrapper.why_not(idle, "alice", 40000) == "30000 MiB free, the job needs 40000 MiB (--min-free-mem)"
    shared = {"index": "0", "verdict": "busy", "free_mib": 50000, "processes": [{"pid": 9, "user": "bob"}]}
    assert "user bob" in job_wrapper.why_not(shared, "alice", 20000)          # sharing needs --allow-shared
    assert job_wrapper.why_not(shared, "alice", 20000, allow_shared=True) == ""
    assert "needs 60000" in job_wrapper.why_not(shared, "alice", 60000, allow_shared=True)
    held = {"verdict": "reserved", "reserved_by": 4, "free_mib": 80000}
    assert "dispatcher" in job_wrapper.why_not(held, "alice", 100, allow_shared=True)   # never another job's GPU


# -- orchestration on recording hosts -----------------------------------------------------------------------
def fake_hosts(reach: str = "ok") -> dict[str, FakeHost]:
    hosts = {}
    for i, name in enumerate(("gpu1", "gpu2", "gpu3"), start=1):
        h = FakeHost(target=FakeTarget(alias=name, hostname=f"10.0.0.{i}"))
        h.reply(r"shutil", facts_json(ip=f"10.0.0.{i}")).reply(r"create_connection", reach + "\n")
        hosts[name] = h
    return hosts


def test_cluster_up_dry_run_issues_no_mutating_command(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    hosts = fake_hosts()
    opts = ops.UpOptions(name="lab", hosts=list(hosts), offline=True, dry_run=True)
    report = ops.up(opts, ConnectOptions(), connector=hosts.__getitem__, as_json=True)
    assert report["dry_run"] and report["head_address"] == "10.0.0.1:26379"
    assert [h["install"] for h in report["hosts"]] == ["install from pushed wheels"] * 3
    for h in hosts.values():
        assert h.mutations() == [] and h.streams() == []
        assert not any("ray start" in c or "uv" in c.split() for c in h.commands())
    assert not state.exists("lab")


def test_worker_that_cannot_reach_the_head_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    hosts = fake_hosts(reach="timed out")
    opts = ops.UpOptions(name="lab", hosts=list(hosts), offline=True)
    with pytest.raises(MigrateError) as err:
        ops.up(opts, ConnectOptions(), connector=hosts.__getitem__)
    line = err.value.one_line()
    assert "gpu2 cannot reach the head gpu1 at 10.0.0.1:26379 (timed out)" in line and "per-host queues" in line
    assert "\n" not in line
    for h in hosts.values():
        assert h.mutations() == []


def test_ray_install_streams_the_tar_through_the_host_before_installing(tmp_path, monkeypatch):
    """The wheel push is Host.stream_in (no ssh subprocess, no check for the test double)."""
    monkeypatch.setattr(install, "ensure_uv", lambda machine: tmp_path / "uv")
    (tmp_path / "uv").write_bytes(b"#!uv")
    host = FakeHost()
    facts = plan.parse_preflight("gpu1", facts_json())
    assert ops.ensure_installed(host, facts, offline=False) == "installed"
    stream, install_run = [r for r in host.log if r.kind in ("stream", "run")][:2]
    assert (stream.kind, stream.command) == ("stream", install.unpack_command())
    assert stream.data == install.bundle_tar(tmp_path / "uv", None) and stream.data[257:262] == b"ustar"
    assert install_run.kind == "run" and "uv pip install" in install_run.command
    failing = FakeHost().reply(r"tar -xf -", exit_code=2, stderr="tar: no space left")
    with pytest.raises(MigrateError, match="pushing Ray's wheels to alice@gpu failed: tar: no space left"):
        ops.ensure_installed(failing, facts, offline=False)
    assert failing.commands() == []     # nothing installed after a failed push


def test_too_old_python_stops_before_anything_is_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    hosts = fake_hosts()
    hosts["gpu3"].replies.insert(0, (r"shutil", FakeHost().reply("", facts_json(python="3.8")).replies[0][1]))
    with pytest.raises(MigrateError, match="gpu3: python3 is 3.8, Ray 2.55.1 needs 3.10-3.13"):
        ops.up(ops.UpOptions(name="lab", hosts=list(hosts), offline=True), ConnectOptions(),
               connector=hosts.__getitem__)
    assert all(h.mutations() == [] for h in hosts.values())


def test_down_stops_ray_checks_for_leftovers_and_forgets_the_cluster(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    hosts = {"gpu1": FakeHost(), "gpu2": FakeHost()}
    report = ops.down("lab", ConnectOptions(), purge=True, connector=hosts.__getitem__)
    assert report["action"] == "stopped" and not state.exists("lab")
    for h in hosts.values():
        cmds = h.commands()
        assert "cluster.json" in cmds[0] and "stop --force" in cmds[1] and cmds[-1] == plan.purge_command()
    assert ops.down("lab", ConnectOptions(), connector=hosts.__getitem__)["action"] == "none"   # idempotent


def test_down_keeps_the_record_when_a_ray_process_survives(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    stubborn = FakeHost().reply(r"MIGRATE_CLUSTER=\" \|\| continue;; esac; echo", "42 raylet\n")
    hosts = {"gpu1": FakeHost(), "gpu2": stubborn}
    with pytest.raises(MigrateError, match="gpu2: Ray processes of ours still run: 42 raylet"):
        ops.down("lab", ConnectOptions(), connector=hosts.__getitem__)
    assert state.exists("lab")


# -- the shipped wrapper ------------------------------------------------------------------------------------
WRAPPER = os.path.join(os.path.dirname(plan.__file__), "shipped", "job_wrapper.py")


def test_wrapper_runs_the_command_and_passes_its_exit_code(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "MIGRATE_AGENT")}
    res = subprocess.run([sys.executable, WRAPPER, "--cwd", str(tmp_path), "--", "pwd; exit 3"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 3
    lines = res.stdout.splitlines()
    assert lines[0].startswith("[migrate] job ") and "no GPU (CPU job) [t=" in lines[0] and lines[1] == str(tmp_path)


def test_wrapper_waits_for_a_gpu_another_user_took():
    sys.path.insert(0, os.path.dirname(WRAPPER))
    try:
        import job_wrapper
    finally:
        sys.path.pop(0)
    busy = {"index": "1", "verdict": "busy", "processes": [{"pid": 9, "user": "bob"}]}
    assert job_wrapper.why_not(busy, "alice") == "process 9 of user bob runs on it"
    mine = {"index": "1", "verdict": "busy", "processes": [{"pid": 9, "user": "alice"}]}
    assert job_wrapper.why_not(mine, "alice") == ""
    assert "dispatcher" in job_wrapper.why_not({"verdict": "reserved", "reserved_by": 4}, "alice")


# -- the verbs take a cluster name where a host would be ------------------------------------------------------
def test_run_dry_run_on_a_cluster_connects_to_nothing(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    env = {"MIGRATE_STATE_DIR": str(tmp_path)}
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    res = run_cli("run", "lab", "--dry-run", "--json", "--sweep", "lr=1,2", "--", "python t.py --lr {lr}", env=env)
    assert res.code == 0, res.output
    data = json.loads(res.stdout)
    assert data["cluster"] == "lab" and len(data["jobs"]) == 2
    assert data["jobs"][0]["entrypoint_num_gpus"] == 1 and "--lr 1" in data["jobs"][0]["entrypoint"]
    gang = run_cli("run", "lab", "--dry-run", "--json", "--nodes", "2", "--gpus-per-node", "1", "--", "x", env=env)
    assert gang.code == 0 and "--nodes 2 --gpus-per-node 1" in json.loads(gang.stdout)["jobs"][0]["entrypoint"]
    infeasible = run_cli("run", "lab", "--dry-run", "--gpus-per-job", "3", "--", "x", env=env)
    assert infeasible.code == 2 and "offers gpu1: 2, gpu2: 1 GPU(s)" in infeasible.stderr
    too_many = run_cli("run", "lab", "--dry-run", "--nodes", "3", "--", "x", env=env)
    assert too_many.code == 2 and "cluster lab has 2 nodes" in too_many.stderr


def test_nodes_needs_a_cluster(tmp_path):
    from tests.conftest import run_cli

    res = run_cli("run", "gpu1", "--nodes", "2", "--", "x", env={"MIGRATE_STATE_DIR": str(tmp_path)})
    assert res.code == 2 and "--nodes runs one job across the servers of a cluster" in res.stderr


def test_down_forget_drops_a_cluster_whose_hosts_are_gone(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())

    def gone(host: str):
        raise MigrateError(f"cannot resolve {host}")

    with pytest.raises(MigrateError, match="cannot resolve gpu1") as err:
        ops.down("lab", ConnectOptions(), connector=gone)
    assert "--forget" in err.value.one_line() and state.exists("lab")
    ops.down("lab", ConnectOptions(), forget=True, connector=gone)
    assert not state.exists("lab")


# -- playbooks: `cluster:` ----------------------------------------------------------------------------------
PLAYBOOK = """hosts: [gpu1, gpu2]
cluster: lab
run: {command: "python t.py --lr {lr}", sweep: {lr: [1, 2, 3]}}
"""


class RecordingApi:
    """Stands in for the head's job API: keeps what was submitted."""

    def __init__(self) -> None:
        self.submitted: list[dict] = []

    def jobs(self) -> list[dict]:
        return [{**b, "status": "PENDING"} for b in self.submitted]

    def submit(self, body: dict) -> str:
        self.submitted.append(body)
        return body["submission_id"]


def test_playbook_cluster_key_is_validated():
    from pathlib import Path

    from migrate.playbook.loader import PlaybookError, parse_playbook

    assert parse_playbook(PLAYBOOK, Path("/p/exp.yml")).cluster == "lab"
    with pytest.raises(PlaybookError, match="cluster: bad cluster name"):
        parse_playbook(PLAYBOOK.replace("cluster: lab", "cluster: '../x'"), Path("/p/exp.yml"))


def test_apply_with_cluster_brings_it_up_and_submits_each_job_once(tmp_path, monkeypatch):
    from contextlib import contextmanager
    from pathlib import Path

    from migrate.cluster import jobapi
    from migrate.playbook import apply as apply_mod
    from migrate.playbook.loader import parse_playbook

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    ups = []
    monkeypatch.setattr(ops, "up", lambda opts, conn: ups.append(opts) or state.save(record()))
    api = RecordingApi()

    @contextmanager
    def fake_api(rec, conn):
        yield api

    monkeypatch.setattr(jobapi, "job_api", fake_api)
    pb = parse_playbook(PLAYBOOK, Path("/p/exp.yml"))
    for round_ in (1, 2):
        report = apply_mod.ApplyReport(hosts=pb.hosts, stages=["run"])
        apply_mod._run_stage(pb, pb.hosts, ConnectOptions(), False, report)
        assert [o.hosts for o in ups] == [["gpu1", "gpu2"]] * round_
        assert len(api.submitted) == 3          # the second apply submits nothing new
    assert report.cells[("gpu1", "run")].text == "0 submitted to cluster lab, 3 already there"
    assert "cluster lab" in report.cells[("gpu2", "run")].text
    assert sorted(b["metadata"]["migrate_key"] for b in api.submitted)[0].startswith("exp:lr=1:")
    dry = apply_mod.ApplyReport(hosts=pb.hosts, stages=["run"])
    apply_mod._run_stage(pb, pb.hosts, ConnectOptions(), True, dry)
    assert dry.cells[("gpu1", "run")].text == "up to date, 3 already there"


def test_retries_are_resubmitted_lazily_when_the_jobs_are_read():
    api = RecordingApi()
    failed = {**jobs.payload(record(), JobSpec(command="x", gpus=1, retries=1), "5"), "status": "FAILED"}
    latest = {"5": failed}
    assert jobs.auto_retry(api, latest) == ["5"]
    [again] = api.submitted
    assert again["submission_id"] == "lab-5.2" and again["metadata"]["migrate_retries"] == "0"
    assert latest["5"]["status"] == "PENDING"
    spent = {**again, "status": "FAILED"}
    assert jobs.auto_retry(api, {"5": spent}) == [] and len(api.submitted) == 1


def test_cluster_status_counts_a_gang_jobs_gpus_on_its_ranks_nodes_not_its_drivers():
    jobs_ = [{"submission_id": "lab-1", "status": "RUNNING", "driver_node_id": "n1",
              "metadata": {"migrate_gpus": "1", "migrate_nodes": "0"}},
             {"submission_id": "lab-2", "status": "RUNNING", "driver_node_id": "n1",
              "metadata": {"migrate_gpus": "4", "migrate_nodes": "2"}},
             {"submission_id": "lab-3", "status": "SUCCEEDED", "driver_node_id": "n2",
              "metadata": {"migrate_gpus": "2", "migrate_nodes": "0"}},
             {"submission_id": "lab-4", "status": "RUNNING", "driver_node_id": "n1",
              "metadata": {"migrate_gpus": "2", "migrate_nodes": "2"}}]           # still waiting for its nodes
    logs = {"lab-2": "migrate: 2 nodes reserved: 10.0.0.2, 10.0.0.3\n", "lab-4": "migrate: waiting\n"}
    used = ops.running_jobs_by_ip(jobs_, {"n1": "10.0.0.1", "n2": "10.0.0.2"}, logs)
    assert used == {"10.0.0.1": (1, 1), "10.0.0.2": (2, 1), "10.0.0.3": (2, 1)}


# -- one cluster per user on a host, reruns with other options, corrupt records (issue 20 items 2, 4, 6, 8) --
def test_a_host_that_is_a_node_of_another_cluster_is_refused_before_anything_changes(tmp_path, monkeypatch):
    other = plan.parse_preflight("gpu2", facts_json(cluster_here="A", ray_running=5))
    (line,) = plan.preflight_problems(other, head=False, cluster="B")
    assert "gpu2: already a node of cluster A" in line and "`migrate cluster down A` first" in line
    assert plan.preflight_problems(other, head=False, cluster="A") == []        # its own cluster: a rerun
    stray = plan.parse_preflight("gpu2", facts_json(ray_running=2))
    assert "a Ray not started by `migrate cluster`" in plan.preflight_problems(stray, head=False, cluster="B")[0]
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    hosts = fake_hosts()
    hosts["gpu2"].replies.insert(0, (r"shutil", FakeHost().reply("", facts_json(
        ip="10.0.0.2", cluster_here="A", ray_running=3)).replies[0][1]))
    with pytest.raises(MigrateError, match="gpu2: already a node of cluster A"):
        ops.up(ops.UpOptions(name="B", hosts=list(hosts), offline=True, port_base=27379), ConnectOptions(),
               connector=hosts.__getitem__)
    assert all(h.mutations() == [] for h in hosts.values()) and not state.exists("B")


def test_down_leaves_a_host_that_now_belongs_to_another_cluster_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record("B"))
    hosts = {"gpu1": FakeHost(), "gpu2": FakeHost().reply(r"cluster\.json", "A\n")}
    report = ops.down("B", ConnectOptions(), connector=hosts.__getitem__)
    by = {h["host"]: h for h in report["hosts"]}
    assert by["gpu2"]["left_alone"] == "A" and hosts["gpu2"].commands()[1:] == []    # no ray stop, no rm
    assert any("stop --force" in c for c in hosts["gpu1"].commands())


def test_gpu_pool_names_only_indices_or_uuids():
    with pytest.raises(UsageError, match="'abc' is neither a GPU index nor a GPU UUID"):
        ops.parse_gpu_pool(("abc",))
    assert ops.parse_gpu_pool(("h=MIG-1,0",)) == {"h": ["MIG-1", "0"]}


def test_a_rerun_with_other_options_names_each_difference_and_the_command_that_applies_it():
    old = record()
    old.gpu_pool = {"": ["0"]}
    opts = ops.UpOptions(name="lab", hosts=["gpu1", "gpu2"], gpu_backend="nvml", gpu_pool={"": ["0", "1"]},
                         port_base=27379)
    diff = ops.differences(old, opts, "gpu1", plan.ports_from(27379))
    assert diff == ["--port-base 26379 -> 27379", "--gpu-backend fake:/f.json -> nvml", "--gpu-pool 0 -> 0,1"]
    assert ops.up_command_line(opts) == ("migrate cluster up lab gpu1 gpu2 --gpu-pool 0,1 --port-base 27379 "
                                         "--gpu-backend nvml")
    same = ops.UpOptions(name="lab", hosts=["gpu2", "gpu1"], head="gpu1", gpu_backend="fake:/f.json")
    assert ops.differences(old, same, "gpu1", plan.Ports()) == []
    moved = ops.UpOptions(name="lab", hosts=["gpu1", "gpu3"])
    assert ops.differences(old, moved, "gpu1", plan.Ports())[0] == "hosts gpu1 gpu2 -> gpu1 gpu3"


def test_a_rerun_with_other_options_is_refused_before_connecting(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    with pytest.raises(UsageError) as err:
        ops.up(ops.UpOptions(name="lab", hosts=["gpu1", "gpu2"]), ConnectOptions(),
               connector=lambda h: pytest.fail("connected"))
    assert "--gpu-backend fake:/f.json -> nvml" in err.value.message
    assert "migrate cluster down lab && migrate cluster up lab gpu1 gpu2" in (err.value.hint or "")


def test_a_corrupt_record_is_one_line_and_down_forget_with_hosts_recovers(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    state.record_path("lab").write_text('{"name": "lab", "nodes": [')
    with pytest.raises(state.CorruptRecord) as err:
        state.load("lab")
    assert "record of cluster lab" in err.value.message and "--forget" in err.value.hint
    with pytest.raises(state.CorruptRecord):
        ops.down("lab", ConnectOptions(), connector=lambda h: pytest.fail("connected"))
    hosts = {"gpu1": FakeHost(), "gpu2": FakeHost()}
    report = ops.down("lab", ConnectOptions(), forget=True, hosts=["gpu1", "gpu2"], connector=hosts.__getitem__)
    assert report["action"] == "stopped" and not state.exists("lab")
    assert all(any("stop --force" in c for c in h.commands()) for h in hosts.values())


def test_the_reachability_listener_is_stopped_when_the_check_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    hosts = fake_hosts(reach="timed out")
    hosts["gpu1"].replies.insert(0, (r"nohup python3", FakeHost().reply("", "4242\n").replies[0][1]))
    with pytest.raises(MigrateError):
        ops.up(ops.UpOptions(name="lab", hosts=list(hosts), offline=True), ConnectOptions(),
               connector=hosts.__getitem__)
    assert "kill 4242 2>/dev/null; true" in hosts["gpu1"].commands()


def test_down_removes_the_launcher_socket_and_the_clusters_job_records():
    cmd = plan.cleanup_command("lab")
    assert '"$HOME"/.migrate/ray/sock/lab.sock' in cmd and '"$HOME"/.migrate/ray/run/lab-*.json' in cmd


def test_cluster_logs_show_the_jobs_output_not_rays():
    raw = ("2026-12-06 16:40:01,123\tINFO job_manager.py:531 -- Runtime env is setting up.\n"
           "[migrate] job 5 started 2026-12-06 16:40:02 on 10.0.0.2, GPU 0 (GPU-1) [t=1.000]\n"
           "/home/a/.migrate/ray/2.55.1/lib/python3.11/site-packages/ray/_private/x.py:12: FutureWarning: old\n"
           "  warnings.warn(\n"
           "\x1b[36m(run_rank pid=77)\x1b[0m hello from rank 1\n"
           "2026-12-06 16:40:01,123 INFO is what my program prints too\n")
    assert jobs.clean_log(raw) == ("[migrate] job 5 started 2026-12-06 16:40:02 on 10.0.0.2, GPU 0 (GPU-1) [t=1.000]\n"
                                   "(run_rank pid=77) hello from rank 1\n"
                                   "2026-12-06 16:40:01,123 INFO is what my program prints too\n")
    assert jobs.complete_lines("a\nb", final=False) == "a\n" and jobs.complete_lines("a\nb", final=True) == "a\nb"


def test_the_wrapper_names_the_gpus_by_uuid_as_on_one_host():
    import importlib.util

    spec = importlib.util.spec_from_file_location("wrapper", WRAPPER)
    wrapper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapper)
    view = {"0": {"uuid": "GPU-a"}, "2": {"uuid": "GPU-c"}}
    assert wrapper.uuids_for(["2", "0"], view) == ["GPU-c", "GPU-a"]
    assert wrapper.uuids_for(["1"], view) == [] and wrapper.uuids_for([], view) == []
    line = wrapper.start_line("7", 1.5, "10.0.0.2", ["2"], ["GPU-c"])
    assert line.startswith("[migrate] job 7 started ") and line.endswith("on 10.0.0.2, GPU 2 (GPU-c) [t=1.500]")


def test_a_job_no_node_can_hold_is_refused_at_submit_and_a_queued_one_says_why():
    rec = record()       # gpu1 offers 2 GPUs, gpu2 offers 1
    with pytest.raises(UsageError, match=r"needs 3 GPU\(s\) on one node; cluster lab offers gpu1: 2, gpu2: 1"):
        jobs.check_feasible(rec, [JobSpec(command="x", gpus=3)])
    jobs.check_feasible(rec, [JobSpec(command="x", gpus=2)])
    with pytest.raises(UsageError, match="needs 2 nodes with 2 GPU"):
        jobs.check_feasible(rec, [JobSpec(command="x")], nodes=2, gpus_per_node=2)
    jobs.check_feasible(rec, [JobSpec(command="x")], nodes=2, gpus_per_node=1)
    why = jobs.waiting_reason({"gpus": 2, "nodes": 0}, rec, {"gpu1": 1})
    assert why.startswith("waiting for 2 free GPU(s) on one node (free now: gpu1: 1, gpu2: 1")
    assert jobs.waiting_reason({"gpus": 0, "nodes": 0}, rec, {}) == "waiting for a CPU slot on a node"


def test_cancel_dry_run_on_a_cluster_asks_the_cluster_not_a_host_named_like_it(tmp_path, monkeypatch):
    from tests.conftest import run_cli

    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    rec = record()
    rec.nodes[0].host = "nohost.invalid"
    state.save(rec)
    res = run_cli("cancel", "lab", "1", "--dry-run", "--grace", "30", env={"MIGRATE_STATE_DIR": str(tmp_path)})
    assert res.code == 1 and "head nohost.invalid" in res.stderr, res.output      # the cluster's head, not 'lab'
    assert "cannot resolve host 'lab'" not in res.stderr
