"""Container jobs and priorities on a cluster (migrate/cluster/container.py, jobs.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from migrate.cluster import container, jobs, plan, state
from migrate.cluster.state import ClusterRecord, Node
from migrate.errors import UsageError
from migrate.jobs.spec import JobSpec

WRAPPER = os.path.join(os.path.dirname(plan.__file__), "shipped", "job_wrapper.py")


def record(name: str = "lab") -> ClusterRecord:
    return ClusterRecord(name=name, ray_version=plan.RAY_VERSION, ports=plan.Ports(), gpu_backend="fake:/f.json",
                         agent="~/.migrate/agent/a.pyz",
                         nodes=[Node("gpu1", "10.0.0.1", ["0", "1"], 8, head=True), Node("gpu2", "10.0.0.2", ["3"], 8)])


# -- the docker run line: the single-host builder, node-only values as expansions ---------------------------
def test_docker_run_line_is_the_agents_builder_with_the_clusters_labels():
    spec = JobSpec(command="python t.py --lr 1e-3", gpus=2, image="mylab/torch:2.3", mounts=["/data:/data:ro"],
                   ports=["8888"], cwd="/work", shm_size="8g")
    assert container.docker_run_line(record(), spec, "3") == (
        'run --name "$MIGRATE_CONTAINER" --init --rm --label migrate.cluster=lab '
        '--label "migrate.attempt=${MIGRATE_JOB_ATTEMPT:-1}" --label migrate.job=3 --label migrate.token=cluster-lab-3 '
        '--label "migrate.user=$(id -un)" --env-file "$MIGRATE_ENV_FILE" '
        '--gpus "\\"device=$CUDA_VISIBLE_DEVICES\\"" --shm-size 8g -u "$(id -u):$(id -g)" -v /data:/data:ro '
        "-p 8888 -w /work mylab/torch:2.3 sh -c 'python t.py --lr 1e-3'")


def test_cpu_only_container_gets_no_gpu_and_host_ipc():
    line = container.docker_run_line(record(), JobSpec(command="hostname", gpus=0, image="alpine:3"), "4")
    assert "--gpus" not in line and "-e NVIDIA_VISIBLE_DEVICES=void --ipc=host" in line
    assert line.endswith("alpine:3 sh -c hostname")


def test_container_name_is_cluster_job_attempt():
    assert container.container_name("lab", "12") == 'migrate-lab-12-"${MIGRATE_JOB_ATTEMPT:-1}"'


def test_container_job_payload_runs_the_script_through_the_wrapper_in_home():
    spec = JobSpec(command="python t.py", gpus=1, image="mylab/torch:2.3", cwd="/work", env={"A": "b c"})
    body = jobs.payload(record(), spec, "5")
    assert "migrate-ray-job.py --cwd '~' -- " in body["entrypoint"]  # the host's cwd; /work is the container's
    assert "docker version" in body["entrypoint"] and "-w /work" in body["entrypoint"]
    assert "b c" not in body["entrypoint"]  # values travel in Ray's env, then a 0600 env file
    assert body["entrypoint_num_gpus"] == 1 and body["metadata"]["migrate_image"] == "mylab/torch:2.3"
    assert body["metadata"]["migrate_command"] == "python t.py"
    env = body["runtime_env"]["env_vars"]
    assert env["A"] == "b c" and env["MIGRATE_JOB_ATTEMPT"] == "1"
    again = jobs.again({**body, "status": "FAILED"})
    assert again["runtime_env"]["env_vars"]["MIGRATE_JOB_ATTEMPT"] == "2" and again["entrypoint"] == body["entrypoint"]
    assert body["runtime_env"]["env_vars"]["MIGRATE_JOB_ATTEMPT"] == "1"  # the first attempt's body is untouched


def test_cluster_accepts_image_mount_publish_priority_and_still_refuses_per_job_gpu_rules():
    jobs.check_cluster_spec(JobSpec(command="x", image="a:1", mounts=["/d:/d"], ports=["80"], priority=5))
    with pytest.raises(UsageError, match="--gpu-pool is not supported per job on a cluster"):
        jobs.check_cluster_spec(JobSpec(command="x", gpu_pool=["0"]))


def test_gang_with_image_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    with pytest.raises(UsageError, match="--nodes with --image"):
        jobs.run_on_cluster("lab", None, [JobSpec(command="x", image="a:1")], dry_run=True, as_json=True,
                            follow=False, nodes=2, gpus_per_node=1)


# -- the script, run for real through the polite wrapper with a stand-in `docker` ----------------------------
FAKE_DOCKER = """#!/bin/sh
log={log}
case "$1" in
  version) exit 0;;
  stop) echo "stop $*" >> "$log"; exit 0;;
  run) shift
       for a in "$@"; do printf '%s\\n' "$a"; done > {log}.argv
       cp "$(printf '%s\\n' "$@" | sed -n '/^--env-file$/{{n;p;}}')" {log}.env
       echo started >> "$log"
       trap 'echo "run got TERM" >> "$log"; exit 143' TERM
       while :; do sleep 0.1; done;;
esac
"""


def fake_docker(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.log"
    (bindir / "docker").write_text(FAKE_DOCKER.format(log=log))
    (bindir / "docker").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MIGRATE_AGENT",)}
    env.update(PATH=f"{bindir}:{env['PATH']}", CUDA_VISIBLE_DEVICES="", MIGRATE_JOB_ID="5",
               MIGRATE_JOB_ATTEMPT="2", MIGRATE_CLUSTER="lab", A="b c", TMPDIR=str(tmp_path))
    return env, log


def wait_for(path, text, timeout=15):
    end = time.time() + timeout
    while time.time() < end:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.1)
    raise AssertionError(f"{text!r} not in {path}: {path.read_text() if path.exists() else '(none)'}")


def test_script_starts_the_container_and_cancel_stops_it(tmp_path):
    env, log = fake_docker(tmp_path)
    script = container.container_command(record(), JobSpec(command="echo hi", gpus=0, image="alpine:3",
                                                           env={"A": "x"}), "5")
    proc = subprocess.Popen([sys.executable, WRAPPER, "--", script], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(log, "started")
        argv = (tmp_path / "docker.log.argv").read_text().splitlines()
        assert argv[:3] == ["--name", "migrate-lab-5-2", "--init"] and "migrate.attempt=2" in argv
        assert "NVIDIA_VISIBLE_DEVICES=void" in argv and argv[-3:] == ["sh", "-c", "echo hi"]
        assert (tmp_path / "docker.log.env").read_text().splitlines() == [
            "A=b c", "MIGRATE_JOB_ID=5", "MIGRATE_JOB_ATTEMPT=2", "MIGRATE_CLUSTER=lab", "CUDA_DEVICE_ORDER=PCI_BUS_ID"]
        os.killpg(proc.pid, signal.SIGTERM)  # what Ray does to a stopped job's process group
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    wait_for(log, "stop stop -t 10 migrate-lab-5-2")
    assert "run got TERM" in log.read_text()
    assert "migrate: container migrate-lab-5-2 (alpine:3) via direct, gpus=none" in out
    assert proc.returncode == 143
    assert not list(tmp_path.glob("migrate-env.*"))  # the env file is gone


def test_script_passes_ray_gpus_to_docker(tmp_path):
    env, log = fake_docker(tmp_path)
    env["CUDA_VISIBLE_DEVICES"] = "1,3"
    script = container.container_command(record(), JobSpec(command="x", gpus=2, image="a:1"), "6")
    proc = subprocess.Popen(["/bin/sh", "-c", script], env=env, start_new_session=True)
    try:
        wait_for(log, "started")
        argv = (tmp_path / "docker.log.argv").read_text().splitlines()
        assert argv[argv.index("--gpus") + 1] == '"device=1,3"'
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


def test_script_without_docker_access_says_so(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("docker", "sudo"):
        (bindir / tool).write_text("#!/bin/sh\nexit 1\n")
        (bindir / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}
    script = container.container_command(record(), JobSpec(command="x", gpus=0, image="a:1"), "7")
    res = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 125 and "cannot use Docker on" in res.stderr


# -- priorities: the order of submission within one run ----------------------------------------------------
class FakeApi:
    def __init__(self):
        self.bodies = []

    def submit(self, body):
        self.bodies.append(body)

    def jobs(self):
        return []


def test_higher_priority_is_submitted_first_ties_keep_their_order(tmp_path, monkeypatch):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    specs = [JobSpec(command=c, priority=p) for c, p in (("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", -1))]
    assert [s.command for s in jobs.submission_order(specs)] == ["b", "d", "a", "c", "e"]
    api = FakeApi()
    submitted, _ = jobs.submit_specs(api, record(), specs)
    assert [b["metadata"]["migrate_command"] for b in api.bodies] == ["b", "d", "a", "c", "e"]
    assert [b["metadata"]["migrate_id"] for b in api.bodies] == ["2", "4", "1", "3", "5"]  # ids: the given order
    assert [j["id"] for j in submitted] == ["2", "4", "1", "3", "5"]


def test_dry_run_json_lists_the_submission_order_and_the_image_push(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MIGRATE_STATE_DIR", str(tmp_path))
    state.save(record())
    specs = [JobSpec(command="a", image="img:1"), JobSpec(command="b", priority=2, image="img:1")]
    assert jobs.run_on_cluster("lab", None, specs, dry_run=True, as_json=True, follow=False) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images_to_push"] == ["img:1"] and out["hosts"] == ["gpu1", "gpu2"]
    assert [j["metadata"]["migrate_command"] for j in out["jobs"]] == ["b", "a"]


def test_container_spec_checks_and_home_mounts(tmp_path):
    with pytest.raises(UsageError, match="must be absolute"):
        jobs.check_cluster_spec(JobSpec(command="x", image="a:1", cwd="work"))
    with pytest.raises(UsageError, match=r"mount source 'data' must be an absolute path \(or ~/...\)"):
        jobs.check_cluster_spec(JobSpec(command="x", image="a:1", mounts=["data:/data"]))
    with pytest.raises(UsageError, match="invalid environment variable name"):
        jobs.check_cluster_spec(JobSpec(command="x", image="a:1", env={"A}; x": "1"}))
    with pytest.raises(UsageError, match="CUDA_VISIBLE_DEVICES is set by the dispatcher"):
        jobs.check_cluster_spec(JobSpec(command="x", image="a:1", env={"CUDA_VISIBLE_DEVICES": "1"}))
    with pytest.raises(UsageError, match="need a container image"):
        jobs.check_cluster_spec(JobSpec(command="x", mounts=["/d:/d"]))
    with pytest.raises(UsageError, match="--shm-size needs a container image"):
        jobs.check_cluster_spec(JobSpec(command="x", shm_size="1g"))
    line = container.docker_run_line(record(), JobSpec(command="x", gpus=0, image="a:1",
                                                       mounts=["~/data:/data:ro"]), "1")
    assert "-v \"$HOME\"/data:/data:ro" in line
    script = container.container_command(record(), JobSpec(command="x", gpus=0, image="a:1",
                                                           mounts=[f"{tmp_path}/missing:/m"]), "1")
    env = {**os.environ, "PATH": f"{fake_docker(tmp_path)[0]['PATH']}"}
    res = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 125 and f"mount source {tmp_path}/missing does not exist" in res.stderr


def test_down_removes_the_clusters_containers(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "docker.log"
    (bindir / "docker").write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$1" in version) exit 0;; ps) printf 'aaa\\nbbb\\n';; esac
""")
    (bindir / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
    res = subprocess.run(["/bin/sh", "-c", container.remove_containers_command("lab")], env=env,
                         capture_output=True, text=True, timeout=30)
    assert res.stdout.strip() == "2"
    assert log.read_text().splitlines()[1:] == ["ps -aq --filter label=migrate.cluster=lab", "rm -f aaa bbb"]
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "sh").symlink_to("/bin/sh")
    no_docker = subprocess.run(["/bin/sh", "-c", container.remove_containers_command("lab")],
                               env={**os.environ, "PATH": str(bare)}, capture_output=True, text=True)
    assert no_docker.returncode == 0 and no_docker.stdout == ""
