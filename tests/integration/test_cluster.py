"""migrate cluster on three sandbox hosts (issue 14): real Ray from pushed wheels, the sandbox's mock GPUs
(libnvidia-ml.so.1 read through the real pynvml by the agent, the polite wrapper and Ray), no --gpu-backend.

One cluster for the module, in order: up from pushed wheels (offline path) and an idempotent rerun;
a 12-job sweep over several nodes; a playbook with `cluster:` applied twice; a polite job waiting for
a GPU another user took; a 2-node job whose ranks meet; a failing rank stops the others; `exec` and
`shell` inside a running job on its node, and in rank 1 of a 2-node job (issue 15); a node's Ray
killed -> its jobs failed -> `retry` finishes them elsewhere; down leaves no Ray process; a worker
that cannot reach the head is one clear line. About 2.5 minutes on 2 cores.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import sys
import threading
import time

import pytest

from migrate.cluster import plan as cplan
from migrate.remote.connection import connect
from tests.conftest import assert_one_line_error, run_cli, wait_until
from tests.integration.conftest import TEST_PREFIX

pytestmark = pytest.mark.slow

NAME = f"{TEST_PREFIX}itlab"
RAY = "~/.migrate/ray/2.55.1/bin/ray"

RENDEZVOUS = """\
import os, socket, time
rank, n = int(os.environ["NODE_RANK"]), int(os.environ["NNODES"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(n)
    s.settimeout(60)
    peers = []
    for _ in range(n - 1):
        c, _ = s.accept()
        peers.append(c.recv(64).decode())
        c.sendall(b"welcome")
        c.close()
    print("OK rank 0 met", sorted(peers), "world", os.environ["WORLD_SIZE"])
else:
    for _ in range(120):
        try:
            c = socket.create_connection((addr, port), 2)
            break
        except OSError:
            time.sleep(0.5)
    c.sendall(("rank%d" % rank).encode())
    assert c.recv(64) == b"welcome"
    print("OK rank", rank, "met rank 0 at", addr)
"""


def sh(alias: str, command: str, stdin: str | None = None) -> str:
    with connect(alias) as r:
        return r.run(command, check=False, stdin=stdin, timeout=120).stdout


def sandbox_gpu(env: dict, alias: str, *args: str) -> dict:
    """`migrate sandbox gpu ALIAS ARGS --json`: change (or read) the host's mock GPUs."""
    res = run_cli("sandbox", "gpu", alias, *args, "--json", env=env)
    assert res.code == 0, res.output
    return json.loads(res.stdout)


def ray_processes(alias: str) -> str:
    return sh(alias, "ps -eo pid,args | grep -F .migrate/ray/ | grep -v grep || true").strip()


@pytest.fixture(scope="module")
def cluster(dedicated_sandbox):
    hosts = dedicated_sandbox("cluster", 3, gpus=4)
    env = hosts[0]["env"]
    aliases = [h["alias"] for h in hosts]
    run_cli("cluster", "down", NAME, env=env)
    for a in aliases:   # a fresh start: no Ray of ours, no venv (the offline install must run)
        sh(a, f"[ -x {RAY} ] && {RAY} stop --force >/dev/null 2>&1; rm -rf ~/.migrate/ray ~/cluster-fast; true")
        sandbox_gpu(env, a, "--reset")          # 4 idle mock GPUs
    yield aliases, env
    run_cli("cluster", "down", NAME, env=env)


def status(env: dict) -> list[dict]:
    res = run_cli("status", NAME, "--json", "--all", env=env)
    assert res.code == 0, res.output
    return json.loads(res.stdout)["jobs"]


def wait_for(env: dict, ids: set[str], states: tuple[str, ...], timeout: float) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = {j["id"]: j for j in status(env) if j["id"] in ids}
        if len(jobs) == len(ids) and all(j["state"] in states for j in jobs.values()):
            return jobs
        if time.monotonic() > deadline:
            pytest.fail(f"jobs not {states} after {timeout} s: {[(j['id'], j['state']) for j in jobs.values()]}")
        time.sleep(2)


def submit(env: dict, *args: str) -> list[str]:
    res = run_cli("run", NAME, "--json", *args, env=env)
    assert res.code == 0, res.output
    return [j["id"] for j in json.loads(res.stdout)["jobs"]]


def test_up_from_pushed_wheels_then_rerun_is_a_no_op(cluster):
    aliases, env = cluster
    t0 = time.monotonic()
    res = run_cli("cluster", "up", NAME, *aliases, "--offline", "--json", env=env,
                  timeout=600)
    assert res.code == 0, res.output
    rec = json.loads(res.stdout)
    assert rec["action"] == "started" and [n["gpus"] for n in rec["nodes"]] == [["0", "1", "2", "3"]] * 3
    assert "from pushed wheels" in res.stderr
    print(f"cluster up from pushed wheels: {time.monotonic() - t0:.1f} s")
    for a in aliases:
        assert "raylet" in ray_processes(a)
        assert sh(a, "cat ~/.migrate/ray/2.55.1/migrate-ray-version").strip() == "2.55.1"
    again = run_cli("cluster", "up", NAME, *aliases, "--offline", env=env)
    assert again.code == 0 and "already up" in again.stderr and "installing" not in again.stderr, again.output
    st = run_cli("cluster", "status", NAME, "--json", env=env)
    nodes = json.loads(st.stdout)["nodes"]
    assert [n["state"] for n in nodes] == ["alive"] * 3 and nodes[0]["role"] == "head"


def test_ray_and_the_launcher_answer_only_with_the_clusters_token(cluster):
    """Another user of the head (bob) reaches 127.0.0.1 too: without the token Ray's job API refuses
    him, he cannot even connect to the launcher's socket, and the token is in no command line and in
    no output of ours."""
    aliases, env = cluster
    token = sh(aliases[0], "cat ~/.migrate/ray/auth-token").strip()
    assert len(token) >= 32
    probe = ("import socket, sys, urllib.request as u, urllib.error as e\n"
             "try:\n    u.urlopen('http://127.0.0.1:28265/api/jobs/', timeout=10); print('open')\n"
             "except e.HTTPError as x:\n    print(x.code)\n"
             "s = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as x:\n    print(type(x).__name__)\n")
    sock = f"/home/alice/.migrate/ray/sock/{NAME}.sock"
    assert sh(aliases[0], f"cd /tmp && sudo -n -u bob python3 - {sock}", stdin=probe).split() == [
        "401", "PermissionError"]
    assert sh(aliases[0], "stat -c %a ~/.migrate/ray/sock").strip() == "700"
    for a in aliases:
        assert sh(a, "stat -c %a ~/.migrate/ray/auth-token").strip() == "600"
        assert token not in sh(a, "ps -eo args")
    res = run_cli("cluster", "up", NAME, *aliases, "--offline", "--json", env=env)
    assert res.code == 0 and token not in res.output
    st = run_cli("cluster", "status", NAME, "--json", env=env)
    assert st.code == 0 and token not in st.output


def test_a_second_cluster_or_other_options_on_the_same_hosts_are_refused_and_change_nothing(cluster):
    """Issue 20 item 2: Ray's processes and token file are the user's, so a second cluster on a node
    of this one is refused before anything changes (it overwrote the token and its `down` killed
    this cluster's raylets). Issue 25 item 6: other options for this cluster name the difference."""
    aliases, env = cluster
    before = {a: (sh(a, "sha256sum ~/.migrate/ray/auth-token"), sh(a, "pgrep -u alice -x raylet | sort"))
              for a in aliases[1:]}
    assert all(pids.strip() for _, pids in before.values()), before     # each node runs its raylet
    res = run_cli("cluster", "up", f"{NAME}b", *aliases[1:], "--port-base", "27379", "--offline", env=env, timeout=300)
    assert_one_line_error(res, f"already a node of cluster {NAME}", f"migrate cluster down {NAME}")
    assert {a: (sh(a, "sha256sum ~/.migrate/ray/auth-token"), sh(a, "pgrep -u alice -x raylet | sort"))
            for a in aliases[1:]} == before
    assert run_cli("cluster", "down", f"{NAME}b", env=env).code == 0           # no record: nothing to stop
    other = run_cli("cluster", "up", NAME, *aliases, "--port-base", "27379", "--offline", env=env)
    assert other.code == 2 and "Traceback" not in other.output, other.output     # a usage error
    (line,) = [ln for ln in other.stderr.splitlines() if ln.startswith("error: ")]
    assert "--port-base 26379 -> 27379" in line and f"migrate cluster down {NAME} &&" in line
    nodes = json.loads(run_cli("cluster", "status", NAME, "--json", env=env).stdout)["nodes"]
    assert [n["state"] for n in nodes] == ["alive"] * 3


def test_sweep_of_twelve_lands_on_several_nodes(cluster):
    aliases, env = cluster
    ids = submit(env, "--sweep", "i=" + ",".join(map(str, range(1, 13))), "--", "sleep 2; echo job {i}")
    assert len(ids) == 12
    jobs = wait_for(env, set(ids), ("done",), timeout=180)
    assert len({j["node"] for j in jobs.values()}) > 1, jobs
    logs = run_cli("logs", NAME, ids[0], env=env)
    assert "job 1" in logs.stdout and f"[migrate] job {ids[0]} started" in logs.stdout


def test_run_env_pushes_the_environment_to_every_node_first(cluster, tmp_path):
    """Issue 21: the env was pushed to the head only; `run NAME --env E` pushes the same SOURCE to the
    other nodes (offline wheels) before submitting, and the job runs in it wherever Ray puts it."""
    aliases, env = cluster
    name = f"{NAME}env"
    req = tmp_path / "requirements.txt"
    req.write_text("six==1.16.0\n")
    res = run_cli("push-env", aliases[0], str(req), "--name", name, "--offline", "--json", env=env, timeout=300)
    assert res.code == 0 and json.loads(res.stdout)[0]["status"] == "installed", res.output
    try:
        (job,) = submit(env, "--env", name, "--",
                        "python -c 'import six, sys; print(\"in\", six.__version__, sys.prefix)'")
        jobs = wait_for(env, {job}, ("done", "failed"), timeout=180)
        assert jobs[job]["state"] == "done", jobs
        out = run_cli("logs", NAME, job, env=env).stdout
        assert f"in 1.16.0 /home/alice/.migrate/envs/{name}" in out, out
        for a in aliases:   # every node got it, whichever one Ray chose
            assert sh(a, f"cat ~/.migrate/envs/{name}/migrate-lock.txt").strip() == "six==1.16.0"
    finally:
        run_cli("push-env", NAME, "--name", name, "--delete", "--yes", env=env)


def test_jobs_start_through_the_launcher_and_outlive_its_restart(cluster):
    aliases, env = cluster
    head = aliases[0]
    st = run_cli("cluster", "status", NAME, "--json", env=env)
    assert st.code == 0 and json.loads(st.stdout)["launcher"] is True, st.output
    (first,) = submit(env, "--", "echo via-launcher")
    wait_for(env, {first}, ("done",), timeout=60)
    table = f"~/.migrate/ray/launcher-{NAME}.json"
    assert sh(head, f"stat -c %a {table}").strip() == "600"
    assert f'"{NAME}-{first}"' in sh(head, f"cat {table}")          # a launcher job, not a Ray job
    assert "via-launcher" in run_cli("logs", NAME, first, env=env).stdout

    (orphan,) = submit(env, "--", "sleep 298")
    wait_for(env, {orphan}, ("running",), timeout=60)
    sh(head, "pkill -f 'migrate-ray-launche[r].py'; sleep 1")
    deadline = time.monotonic() + 30      # Ray kills the dead driver's task workers; the watcher the rest
    while any(sh(a, "ps -eo args | grep 'sleep 298' | grep -v grep || true").strip() for a in aliases):
        assert time.monotonic() < deadline, "a job of the killed launcher still runs"
        time.sleep(1)
    st = run_cli("cluster", "status", NAME, env=env)
    assert st.code == 0 and "launcher is not answering" in st.stderr, st.output
    (plain,) = submit(env, "--", "echo as-a-ray-job")                  # still works, as a plain Ray job
    wait_for(env, {plain}, ("done",), timeout=120)
    assert f'"{NAME}-{plain}"' not in sh(head, f"cat {table}")
    assert "as-a-ray-job" in run_cli("logs", NAME, plain, env=env).stdout

    up = run_cli("cluster", "up", NAME, *aliases, "--offline", env=env, timeout=300)
    assert up.code == 0 and "launcher was started again" in up.stderr, up.output
    assert json.loads(run_cli("cluster", "status", NAME, "--json", env=env).stdout)["launcher"] is True
    jobs = {j["id"]: j for j in status(env)}
    assert jobs[first]["state"] == "done" and jobs[plain]["state"] == "done"   # both lists, one table
    assert jobs[orphan]["state"] == "failed" and "launcher restarted" in jobs[orphan]["reason"], jobs[orphan]


def test_the_launcher_retries_a_failed_job_at_once_without_a_status_call(cluster):
    aliases, env = cluster
    (jid,) = submit(env, "--retries", "2", "--", '[ "$MIGRATE_JOB_ATTEMPT" = 2 ] || exit 3; echo attempt-2-ran')
    table = f"~/.migrate/ray/launcher-{NAME}.json"
    deadline = time.monotonic() + 60
    while True:     # read the launcher's own table: a `status` call would retry lazily itself
        book = {j["submission_id"]: j for j in json.loads(sh(aliases[0], f"cat {table}") or "[]")}
        if book.get(f"{NAME}-{jid}.2", {}).get("status") == "SUCCEEDED":
            break
        assert time.monotonic() < deadline, book
        time.sleep(0.5)
    first = book[f"{NAME}-{jid}"]
    assert first["status"] == "FAILED" and first["driver_exit_code"] == 3 and "retrying" in first["message"]
    assert f"{NAME}-{jid}.3" not in book
    (job,) = [j for j in status(env) if j["id"] == jid]
    assert job["state"] == "done" and job["attempt"] == 2 and job["retries_left"] == 1, job
    assert "attempt-2-ran" in run_cli("logs", NAME, jid, env=env).stdout


def test_from_template_copies_to_every_host_and_each_job_runs_in_its_copy(cluster, tmp_path):
    aliases, env = cluster
    src = tmp_path / "ctpl"
    src.mkdir()
    (src / "note.txt").write_text("note-from-template\n")
    (src / "skip.ckpt").write_text("x")
    ids = submit(env, "--from-template", str(src), "--experiments", "ea,eb", "--ignore", "*.ckpt", "--",
                 'echo "cwd=$PWD exp={experiment}"; cat note.txt')
    jobs = wait_for(env, set(ids), ("done",), timeout=60)
    for jid, exp in zip(ids, ("ea", "eb")):
        out = run_cli("logs", NAME, jid, env=env).stdout
        assert f"cwd=/home/alice/.migrate/runs/ctpl/{exp} exp={exp}" in out and "note-from-template" in out, out
    for a in aliases:   # Ray may start a job on any node: every host has every copy, without the ignored file
        assert sh(a, "ls ~/.migrate/runs/ctpl/ea ~/.migrate/runs/ctpl/eb").split() == [
            "/home/alice/.migrate/runs/ctpl/ea:", "note.txt", "/home/alice/.migrate/runs/ctpl/eb:", "note.txt"]
    shown = run_cli("status", NAME, "--json", "--state", "done", "--last", "0", env=env)
    assert {j["id"] for j in json.loads(shown.stdout)["jobs"]} >= set(jobs)
    none = json.loads(run_cli("status", NAME, "--json", "--last", "0", env=env).stdout)
    assert not set(ids) & {j["id"] for j in none["jobs"]} and none["hidden_finished"] >= 2


def test_a_big_template_crosses_this_machines_link_once(cluster, tmp_path):
    """A template of relay.files.MIN_BYTES or more: the first host gets it from here and feeds the others
    over the hosts' network (a one-copy key, removed after); every host has the same files."""
    from migrate.relay import plan as rplan

    aliases, env = cluster
    src = tmp_path / "bigtpl"
    src.mkdir()
    (src / "weights.bin").write_bytes(os.urandom(9 << 20))
    res = run_cli("run", NAME, "--json", "--from-template", str(src), "--experiments", "x1", "--",
                  "sha256sum weights.bin", env=env, timeout=300)
    assert res.code == 0, res.output
    assert res.stderr.count(f"template fed by alice@{aliases[0]}") == len(aliases) - 1, res.stderr
    sums = {sh(a, "sha256sum ~/.migrate/runs/bigtpl/x1/weights.bin").split()[0] for a in aliases}
    assert len(sums) == 1 and sums.pop() == hashlib.sha256((src / "weights.bin").read_bytes()).hexdigest()
    for a in aliases:  # no transfer key, line or archive left anywhere
        left = sh(a, f"grep -c {rplan.PREFIX} ~/.ssh/authorized_keys; ls ~/{rplan.RELAY_DIR} ~/.migrate/tmp "
                     "2>/dev/null | grep -c template-")
        assert left.split() == ["0", "0"], (a, left)
    wait_for(env, {j["id"] for j in json.loads(res.stdout)["jobs"]}, ("done",), timeout=60)


def test_apply_with_cluster_submits_the_sweep_once(cluster, tmp_path):
    aliases, env = cluster
    pb = tmp_path / "exp.yml"
    pb.write_text(f"hosts: [{', '.join(aliases)}]\ncluster: {NAME}\n"
                  "run: {command: 'echo from-apply {n}', sweep: {n: [1, 2, 3, 4]}}\n")
    first = run_cli("apply", str(pb), env=env, timeout=300)
    assert first.code == 0, first.output
    assert "already up" in first.stderr and "4 submitted to cluster" in first.output
    again = run_cli("apply", str(pb), env=env, timeout=300)
    assert again.code == 0 and "0 submitted to cluster" in again.output and "4 already there" in again.output
    mine = {j["id"] for j in status(env) if j["name"].startswith("exp[")}
    assert len(mine) == 4
    wait_for(env, mine, ("done",), timeout=120)


def test_a_job_waits_instead_of_sharing_a_gpu_another_user_took(cluster):
    """Issue 25 item 4: GPUs another user takes after `cluster up` (bob's processes, through the mock
    NVML library) are waited for, with a line in the job's log; the job starts once they are gone."""
    aliases, env = cluster
    taken = [(a, sandbox_gpu(env, a, "--take", str(g), "--mib", "30000")["started_pid"])
             for a in aliases for g in range(4)]
    try:
        [jid] = submit(env, "-e", "MIGRATE_POLITE_POLL_S=1", "--", "echo polite-ran; echo gpus=$CUDA_VISIBLE_DEVICES")
        wait_until(lambda: "waiting, not sharing" in run_cli("logs", NAME, jid, env=env).stdout, timeout=60,
                   interval=1, what="the job to say it waits")
        log = run_cli("logs", NAME, jid, env=env).stdout
        assert "of user bob runs on it" in log and "polite-ran" not in log.splitlines()
    finally:
        for a, pid in taken:
            sandbox_gpu(env, a, "--release", str(pid))
    wait_for(env, {jid}, ("done",), timeout=60)
    log = run_cli("logs", NAME, jid, env=env).stdout
    assert "polite-ran" in log.splitlines() and "gpus=GPU-" in log     # a UUID, as on one host


def test_two_node_job_ranks_meet(cluster):
    aliases, env = cluster
    for a in aliases:
        sh(a, "cat > ~/rdv.py", stdin=RENDEZVOUS)
    res = run_cli("run", NAME, "--nodes", "2", "--gpus-per-node", "1", "-f", "--", "python3 rdv.py", env=env,
                  timeout=180)
    assert res.code == 0, res.output
    assert "OK rank 0 met ['rank1'] world 2" in res.stdout and "OK rank 1 met rank 0" in res.stdout


def test_a_failing_rank_stops_the_others_and_fails_the_job(cluster):
    aliases, env = cluster
    res = run_cli("run", NAME, "--nodes", "2", "--gpus-per-node", "1", "-f", "--",
                  'if [ "$NODE_RANK" = 1 ]; then sleep 2; exit 3; fi; sleep 301', env=env, timeout=180)
    assert res.code == 3, res.output
    assert "rank 1 exited 3; stopping the other ranks" in res.stdout
    time.sleep(2)
    for a in aliases:
        assert not sh(a, "ps -eo args | grep 'sleep 301' | grep -v grep || true").strip()


def exec_when_started(env: dict, *args: str, timeout: float = 30):
    """`migrate exec NAME ARGS`, again while the job's command has not started yet (the polite wrapper's
    GPU check comes before it; Ray says `running` already)."""
    deadline = time.monotonic() + timeout
    while True:
        res = run_cli("exec", NAME, *args, env=env)
        if "has no running command" not in res.stderr or time.monotonic() > deadline:
            return res
        time.sleep(0.5)


def test_exec_and_shell_inside_a_running_cluster_job_on_its_node(cluster):
    from tests.integration.test_shell import drive_pty

    aliases, env = cluster
    for a in aliases:
        sh(a, "mkdir -p ~/cexec-work")
    [jid] = submit(env, "--name", "cexec", "-e", "MYVAR=x", "--cwd", "~/cexec-work", "--", "sleep 298")
    node = wait_for(env, {jid}, ("running",), timeout=60)[jid]["node"]
    t0 = time.monotonic()
    res = exec_when_started(env, jid, "--", "sh", "-c",
                            'echo "$PWD|$CUDA_VISIBLE_DEVICES|$MYVAR|$(uname -n)|${RAY_ADDRESS-none}"; exit 3')
    print(f"exec in a cluster job: {time.monotonic() - t0:.1f} s")
    assert res.code == 3, res.output
    pwd, gpus, myvar, hostname, ray = res.stdout.strip().splitlines()[-1].split("|")
    assert (pwd, myvar, ray) == ("/home/alice/cexec-work", "x", "none")
    assert gpus.startswith("GPU-") and "," not in gpus and hostname == sh(node, "uname -n").strip()   # a UUID
    assert not sh(node, "find ~/.migrate/ray/run -perm /077 -print").strip()       # private record
    code, out = drive_pty([sys.executable, "-m", "migrate", "shell", NAME, jid],
                          {**os.environ, "COLUMNS": "200", **env},
                          [b"echo in=$PWD:$MYVAR; tty >/dev/null && echo tty-ok; exit 7\n"])
    assert code == 7 and "in=/home/alice/cexec-work:x" in out and "tty-ok" in out, out
    assert run_cli("cancel", NAME, jid, env=env).code == 0
    wait_for(env, {jid}, ("cancelled",), timeout=60)
    gone = run_cli("exec", NAME, jid, "--", "true", env=env)
    assert_one_line_error(gone, f"job {jid} (cexec) on cluster {NAME} was cancelled", "its processes are gone")
    assert f"migrate logs {NAME} {jid}" in gone.stderr
    # the record goes with the command: the wrapper removes it on its way out (give a loaded machine a
    # moment); one left behind (Ray SIGKILLed the wrapper first) must name a process that is gone
    record = f"~/.migrate/ray/run/{NAME}-{jid}-0.json"
    deadline = time.monotonic() + 20
    while sh(node, f"ls {record} 2>/dev/null || true").strip() and time.monotonic() < deadline:
        time.sleep(0.5)
    left = sh(node, f"cat {record} 2>/dev/null || true").strip()
    if left:
        pid = json.loads(left)["pid"]
        assert sh(node, f"kill -0 {pid} 2>/dev/null && echo alive || echo gone").strip() == "gone", left


def test_exec_rank_one_of_a_two_node_job_runs_on_that_ranks_node(cluster):
    aliases, env = cluster
    [jid] = submit(env, "--nodes", "2", "--gpus-per-node", "1", "--", "sleep 297")
    wait_for(env, {jid}, ("running",), timeout=60)
    try:
        deadline = time.monotonic() + 60
        while "nodes reserved" not in run_cli("logs", NAME, jid, env=env).stdout:
            assert time.monotonic() < deadline
            time.sleep(1)
        ips = run_cli("logs", NAME, jid, env=env).stdout.split("nodes reserved: ")[1].splitlines()[0].split(", ")
        res = exec_when_started(env, jid, "--rank", "1", "--", 'echo "$NODE_RANK $MASTER_ADDR $MIGRATE_NODE_IP"')
        assert res.code == 0, res.output
        assert res.stdout.strip().splitlines()[-1].split() == ["1", ips[0], ips[1]]
        too_far = run_cli("exec", NAME, jid, "--rank", "2", "--", "true", env=env)
        assert too_far.code == 2 and "ranks 0 to 1" in too_far.stderr
        nodes = {n["ip"]: n for n in json.loads(run_cli("cluster", "status", NAME, "--json", env=env).stdout)["nodes"]}
        assert [nodes[ip]["gpus_used"] for ip in ips] == [1, 1], nodes     # on the ranks' nodes, not the driver's
        assert sum(n["gpus_used"] for n in nodes.values()) == 2
    finally:
        run_cli("cancel", NAME, jid, env=env)
    wait_for(env, {jid}, ("cancelled",), timeout=60)


def test_killed_node_fails_its_jobs_a_rerun_repairs_it_and_keeps_the_others_running(cluster):
    """Issue 20 item 4: `cluster up` again with one node dead restarts only that node; the jobs that
    run elsewhere keep running, with their ids; `retry` then finishes the failed ones."""
    aliases, env = cluster
    ids = submit(env, "--sweep", "i=" + ",".join(map(str, range(1, 9))), "--",
                 "[ -e ~/cluster-fast ] && exit 0; sleep 300 # {i}")
    jobs = wait_for(env, set(ids), ("running",), timeout=120)
    victim_host = next(j["node"] for j in jobs.values() if j["node"] != aliases[0])
    victims = {i for i, j in jobs.items() if j["node"] == victim_host}
    sh(victim_host, f"{RAY} stop --force >/dev/null 2>&1")
    failed = wait_for(env, victims, ("failed",), timeout=120)
    assert all(j["node"] == victim_host for j in failed.values())
    up = run_cli("cluster", "up", NAME, *aliases, "--offline", env=env, timeout=300)
    assert up.code == 0 and f"{victim_host} are gone" in up.stderr and "running jobs are kept" in up.stderr, \
        up.output
    survivors = set(ids) - victims
    assert {i: j["state"] for i, j in wait_for(env, survivors, ("running",), timeout=10).items()} == \
        dict.fromkeys(survivors, "running")
    nodes = json.loads(run_cli("cluster", "status", NAME, "--json", env=env).stdout)["nodes"]
    assert [n["state"] for n in nodes] == ["alive"] * 3
    assert run_cli("cancel", NAME, "--all", env=env).code == 0          # the others, to free their GPUs
    wait_for(env, survivors, ("cancelled",), timeout=60)
    for a in aliases:
        sh(a, "touch ~/cluster-fast")
    res = run_cli("retry", NAME, *sorted(victims), env=env)
    assert res.code == 0, res.output
    done = wait_for(env, victims, ("done",), timeout=120)
    assert all(j["attempt"] == 2 for j in done.values()), done
    for a in aliases:   # the killed node's jobs and the cancelled ones left nothing running
        assert not sh(a, "ps -eo args | grep 'sleep 300' | grep -v grep || true").strip()


BOB_LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # past the TIME_WAITs Ray's dashboard left
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
with open(sys.argv[2], "ab") as out:
    while True:
        c, _ = s.accept()
        c.settimeout(5)
        try:
            out.write(c.recv(65536) or b"(connected)")
        except OSError:
            out.write(b"(connected)")
        out.flush()
        c.close()
"""


def test_another_user_holding_the_job_api_port_never_receives_the_token(cluster):
    """Issue 20 item 1: Ray's dashboard on the head dies and bob binds its port: run, status and
    cluster status refuse with one line, bob receives nothing; `cluster up --restart` brings the
    cluster back (a plain rerun names the flag), and job ids go on."""
    aliases, env = cluster
    head = aliases[0]
    token = sh(head, "cat ~/.migrate/ray/auth-token").strip()
    last_id = max(int(j["id"]) for j in status(env))
    sh(head, "pkill -u alice -f 'ray/dashboard/dashboard.py'")
    deadline = time.monotonic() + 30
    port_open = "python3 -c 'import socket; print(socket.socket().connect_ex((\"127.0.0.1\", 28265)))'"
    while sh(head, port_open).strip() == "0":
        assert time.monotonic() < deadline, "Ray's dashboard did not let go of its port"
        time.sleep(0.5)
    got = "/tmp/bob-got"
    sh(head, f"sudo -n rm -f {got} /tmp/bob-listener.log")
    listener = threading.Thread(target=sh, daemon=True, args=(   # lives as long as this SSH command
        head, f"cd /tmp && sudo -n -u bob python3 -c {shlex.quote(BOB_LISTENER)} 28265 {got} "
              ">/tmp/bob-listener.log 2>&1"))
    listener.start()
    deadline = time.monotonic() + 15
    while "listening" not in sh(head, "cat /tmp/bob-listener.log 2>/dev/null"):
        assert time.monotonic() < deadline, "bob's listener did not start: " + sh(head, "cat /tmp/bob-listener.log")
        time.sleep(0.2)
    try:
        for args in (("status", NAME), ("run", NAME, "--", "echo hi"), ("cluster", "status", NAME)):
            res = run_cli(*args, env=env)
            assert res.code != 0 and token not in res.output, res.output
            assert "held by another user's process" in res.output, res.output
        # Ray's dashboard agent posts new lines of the session's event files to the dashboard's address,
        # token attached (a node's death in CI did it): a line appears, and bob still gets nothing in
        # three of the agent's default scan intervals (2 s each)
        events = f"{cplan.TEMP_DIR}/session_latest/logs/events"
        sh(head, f"mkdir -p ~/{events} && echo '{{\"label\": \"TEST\"}}' >> ~/{events}/event_GCS.log")
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and not sh(head, f"cat {got} 2>/dev/null"):
            time.sleep(0.5)
        assert sh(head, f"cat {got} 2>/dev/null") == ""          # not a byte, let alone the token
    finally:
        sh(head, f"sudo -n pkill -u bob -f bob-got; sudo -n rm -f {got} /tmp/bob-listener.log; true")
    again = run_cli("cluster", "up", NAME, *aliases, "--offline", env=env)
    assert_one_line_error(again, "does not answer", "--restart")
    res = run_cli("cluster", "up", NAME, *aliases, "--offline", "--restart", env=env,
                  timeout=300)
    assert res.code == 0 and "is up" in res.stderr, res.output
    (jid,) = submit(env, "--", "echo back")
    assert int(jid) > last_id
    wait_for(env, {jid}, ("done",), timeout=120)


def test_down_leaves_no_ray_process_anywhere(cluster):
    aliases, env = cluster
    res = run_cli("cluster", "down", NAME, env=env, timeout=300)
    assert res.code == 0, res.output
    for a in aliases:
        assert ray_processes(a) == ""
        assert not sh(a, "ps -eo args | grep 'sleep 300' | grep -v grep || true").strip()
    assert run_cli("cluster", "down", NAME, env=env).code == 0      # idempotent
    gone = run_cli("status", NAME, env=env)
    assert gone.code != 0       # NAME is no cluster any more: it is taken for a host, which does not resolve


def test_worker_that_cannot_reach_the_head_is_one_clear_line(cluster):
    aliases, env = cluster
    for _ in range(2):   # issue 20 item 8: the check's listener is gone at once, so a retry says the same
        res = run_cli("cluster", "up", f"{NAME}x", *aliases[:2], "--head-address", "10.255.255.1", "--offline",
                      env=env, timeout=120)
        assert_one_line_error(res, "cannot reach the head", "per-host queues")
    assert ray_processes(aliases[0]) == "" and ray_processes(aliases[1]) == ""
