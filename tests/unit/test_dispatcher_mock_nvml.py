"""The dispatcher on THIS machine through the real NVML backend and pynvml, over the mock library.

No GPU and no FAKE backend: the agent runs with `--backend nvml`, pynvml loads the mock
libnvidia-ml.so.1 (LD_LIBRARY_PATH), and other people's processes are real `sleep` processes
listed in the mock's state, which the library stops listing once they exit, as the driver does.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from migrate.sandbox.mocknvml import state as mstate
from tests.agent_helpers import LocalAgent
from tests.mocknvml_helpers import MockNvml

PROCESS_CALLS = {"v3": "nvmlDeviceGetComputeRunningProcesses_v3",
                 "v2": "nvmlDeviceGetComputeRunningProcesses_v2",
                 "v1": "nvmlDeviceGetComputeRunningProcesses"}


class World:
    def __init__(self, root, gpus: int, variant: str = "v3") -> None:
        self.mock = MockNvml(root / "mock", gpus=gpus, variant=variant)
        self.agent = LocalAgent(root / "home", backend="nvml")
        self.agent.home.mkdir()
        self.agent.env = self.mock.env(self.agent.env)
        self.holders = []  # type: list

    def hold(self, gpu: str, mib: int = 20480) -> subprocess.Popen:
        """Someone else's process on `gpu`."""
        proc = subprocess.Popen(["sleep", "600"])
        self.holders.append(proc)
        st = self.mock.read()
        mstate.add_process(st, gpu, proc.pid, mib)
        self.mock.write(st)
        return proc

    def change(self, fn, *args) -> None:
        st = self.mock.read()
        fn(st, *args)
        self.mock.write(st)

    def submit(self, *commands: str, gpus: int = 1) -> list:
        return [j["id"] for j in self.agent.submit([{"command": c, "gpus": gpus} for c in commands])]

    def close(self) -> None:
        for p in self.holders:
            p.kill()
            p.wait()
        self.agent.cleanup()


@pytest.fixture
def world_factory(tmp_path):
    made = []

    def make(gpus: int, variant: str = "v3") -> World:
        w = World(tmp_path / f"w{len(made)}", gpus, variant)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()


def started_at(agent: LocalAgent, job_id: int) -> float:
    return float(agent.job(job_id)["started_at"])


@pytest.mark.parametrize("variant", ["v3", "v2", "v1"])
def test_a_job_waits_for_a_foreign_process_and_starts_within_a_second_after_it_leaves(world_factory, variant):
    w = world_factory(1, variant)
    holder = w.hold("0")
    (job,) = w.submit("echo got $CUDA_VISIBLE_DEVICES")
    w.agent.wait(lambda js: f"in use by pid {holder.pid}" in js[0]["reason"], timeout=20)
    # the process list came through this driver generation's newest call, and no newer one worked
    assert PROCESS_CALLS[variant] in w.mock.calls()
    time.sleep(0.3)  # the holder is watched, not just polled: free it between two polls
    freed = time.time()
    holder.kill()
    holder.wait()
    w.agent.wait_final([job], timeout=20)
    assert started_at(w.agent, job) - freed < 1.0
    assert f"got {mstate.mock_uuid(0)}" in w.agent.log_of(job)


def test_twenty_jobs_on_four_mock_gpus_never_double_book(world_factory, tmp_path):
    w = world_factory(4)
    trace = tmp_path / "trace"
    cmd = f'echo "start $CUDA_VISIBLE_DEVICES $(date +%s.%N)" >> {trace}; sleep 0.3; ' \
          f'echo "end $CUDA_VISIBLE_DEVICES $(date +%s.%N)" >> {trace}'
    ids = w.submit(*[cmd] * 20)
    done = w.agent.wait_final(ids, timeout=90)
    assert all(j["state"] == "done" for j in done.values())
    spans = {}  # type: dict
    for line in trace.read_text().splitlines():
        what, gpu, t = line.split()
        spans.setdefault(gpu, []).append((what, float(t)))
    assert set(spans) <= {mstate.mock_uuid(i) for i in range(4)} and len(spans) == 4
    for events in spans.values():  # on each GPU: start, end, start, end... never two at once
        events.sort(key=lambda e: e[1])
        assert [e[0] for e in events] == ["start", "end"] * (len(events) // 2)


def test_a_gpu_lost_mid_job_stops_new_jobs_there_and_the_job_runs_on(world_factory):
    w = world_factory(2)
    (long_job,) = w.submit("sleep 3; echo survived")
    w.agent.wait(lambda js: js[0]["state"] == "running", timeout=20)
    lost = next(i for i in range(2) if mstate.mock_uuid(i) == w.agent.job(long_job)["gpu_uuids"][0])
    w.change(mstate.set_lost, str(lost))
    w.hold(str(1 - lost))  # the other GPU is taken by someone: nowhere to go
    (second,) = w.submit("true")
    w.agent.wait(lambda js: "GPU is lost" in (next(j for j in js if j["id"] == second)["reason"] or "")
                 or "in use by" in (next(j for j in js if j["id"] == second)["reason"] or ""), timeout=20)
    assert w.agent.job(second)["state"] == "queued"
    final = w.agent.wait_final([long_job], timeout=30)
    assert final[long_job]["state"] == "done" and "survived" in w.agent.log_of(long_job)
    w.change(mstate.set_lost, str(lost), False)
    assert w.agent.wait_final([second], timeout=20)[second]["gpu_uuids"] == [mstate.mock_uuid(lost)]


def test_mig_instances_are_scheduled_one_job_each(world_factory):
    w = world_factory(1)
    w.change(mstate.set_mig, "0", 2)
    holder = w.hold("0:1", mib=100)
    release = w.agent.home / "release-a"
    # job a holds instance 0 until released, so b can only start on instance 1 (not on 0 after a ends,
    # which a loaded machine made happen when a merely slept a second)
    a, b = w.submit(f"echo on $CUDA_VISIBLE_DEVICES; while [ ! -e {release} ]; do sleep 0.1; done",
                    "echo on $CUDA_VISIBLE_DEVICES")
    w.agent.wait(lambda js: any(j["state"] in ("running", "done") for j in js), timeout=20)
    first = next(j for j in w.agent.jobs() if j["state"] in ("running", "done"))
    assert first["id"] == a and first["gpu_uuids"] == [mstate.mock_uuid(0, 0)]  # instance 1 is someone else's
    assert w.agent.job(b)["state"] == "queued"
    holder.kill()
    holder.wait()
    w.agent.wait_final([b], timeout=30)
    release.touch()
    done = w.agent.wait_final([a, b], timeout=30)
    assert sorted(j["gpu_uuids"][0] for j in done.values()) == [mstate.mock_uuid(0, 0), mstate.mock_uuid(0, 1)]


def test_more_gpus_than_the_host_has_is_refused_at_submit_in_one_line(world_factory):
    import json

    w = world_factory(2)
    w.change(mstate.set_mig, "1", 2)  # MIG or lost GPUs may come back: they still count as offered
    res = w.agent.call("submit", "--backend", "nvml", "--mode", "setsid", ok=False,
                       stdin=json.dumps({"jobs": [{"command": "true", "gpus": 3, "name": "big"}]}))
    assert not res["ok"]
    assert res["error"] == ("job 'big' needs 3 GPUs; this host offers 2: 0, 1 "
                            "(NVIDIA H100 80GB HBM3 (sandbox mock))")
    assert w.agent.jobs() == []
    # two whole GPUs exist but one is in MIG mode: it may leave it, so the job waits with the reason
    (job,) = w.submit("true", gpus=2)
    w.agent.wait(lambda js: "cannot start: needs 2 GPUs, 1 on this host" in (js[0]["reason"] or ""), timeout=20)


def test_foreign_processes_are_watched_by_pidfd_and_python38_falls_back_to_the_poll(monkeypatch):
    import os
    import select
    from types import SimpleNamespace

    from migrate.agent.daemon import Daemon

    if not hasattr(os, "pidfd_open"):
        pytest.skip("this python has no os.pidfd_open")
    d = SimpleNamespace(watched={})
    proc = subprocess.Popen(["sleep", "600"])
    try:
        Daemon.watch_gpu_processes(d, [proc.pid, 2**22 + 12345])  # the second is not visible here: not watched
        assert list(d.watched) == [proc.pid]
        fd = d.watched[proc.pid]
        assert select.select([fd], [], [], 0)[0] == []
        proc.kill()
        assert select.select([fd], [], [], 5)[0] == [fd]  # the exit wakes a sleeper at once
    finally:
        proc.kill()
        proc.wait()
    Daemon.watch_gpu_processes(d, [])
    assert d.watched == {}
    monkeypatch.delattr(os, "pidfd_open")  # python 3.8: nothing is watched, the 1 s poll notices
    Daemon.watch_gpu_processes(d, [os.getpid()])
    assert d.watched == {}
