"""The dispatcher with REAL NVML on a machine with an NVIDIA GPU (marker `gpu`; skipped cleanly elsewhere).

The agent runs locally (python -m migrate.agent, private MIGRATE_AGENT_HOME) with the NVML backend;
that is exactly what runs on a borrowed server, minus SSH. Run on a GPU machine with:

    .venv/bin/pytest -m gpu tests/gpu -v

Jobs are confined to one GPU with gpu_pool (the first GPU NVML lists) so that other GPUs and their
users are left alone. The torch checks are skipped when torch is not installed.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time

import pytest

from tests.agent_helpers import LocalAgent


def _nvml_gpus() -> list:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                    for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return []


GPUS = _nvml_gpus()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not GPUS, reason="no NVIDIA GPU / NVML on this machine")]


def _torch_cuda() -> bool:
    if not GPUS:
        return False
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120).returncode == 0


TORCH = _torch_cuda()


@pytest.fixture
def agent(tmp_path):
    a = LocalAgent(tmp_path / "home", backend="nvml")
    a.home.mkdir()
    yield a
    a.cleanup()


def _uuid(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def test_nvml_backend_lists_the_gpus_with_uuid_and_memory(agent):
    view = agent.call("gpus")
    assert view["backend"] == "nvml" and not view["fake"] and view["driver"]
    uuids = [d["uuid"] for d in view["devices"] if not d["is_mig"] and not d["mig_mode"]]
    assert set(uuids) <= {_uuid(u) for u in GPUS}
    for d in view["devices"]:
        assert d["uuid"].startswith(("GPU-", "MIG-")) and d["memory_total_mib"] > 1000, d
        assert d["verdict"] in ("free", "busy", "reserved", "error", "mig-parent")
    print("\n" + "\n".join(f"{d['index']} {d['uuid']} {d['name']} {d['memory_used_mib']}/{d['memory_total_mib']} MiB "
                           f"util {d['utilization']}% -> {d['verdict']} {d['reason']}" for d in view["devices"]))


@pytest.mark.skipif(not TORCH, reason="torch with CUDA not installed")
def test_a_torch_job_sees_exactly_the_assigned_gpu(agent):
    code = ("import os, torch; p = torch.cuda.get_device_properties(0); "
            "print('count', torch.cuda.device_count()); print('uuid', getattr(p, 'uuid', '?')); "
            "print('cvd', os.environ['CUDA_VISIBLE_DEVICES'])")
    (job,) = agent.submit([{"command": f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}", "gpu_pool": ["0"]}])
    done = agent.wait_final([job["id"]], timeout=180)[job["id"]]
    log = agent.log_of(job["id"])
    assert done["state"] == "done", log
    assert "count 1" in log
    (assigned,) = done["gpu_uuids"]
    assert f"cvd {assigned}" in log
    if assigned.startswith("GPU-") and "uuid ?" not in log:
        assert f"uuid {assigned[4:]}" in log  # torch prints the UUID without the GPU- prefix


@pytest.mark.skipif(not TORCH, reason="torch with CUDA not installed")
def test_a_foreign_process_holding_memory_blocks_admission(agent):
    target = _uuid(GPUS[0])
    hog = subprocess.Popen([sys.executable, "-c", "import torch, time; x = torch.empty(2 << 30, dtype=torch.uint8, "
                            "device='cuda'); print('holding', flush=True); time.sleep(600)"],
                           env={**agent.env, "CUDA_VISIBLE_DEVICES": target}, stdout=subprocess.PIPE, text=True)
    try:
        assert hog.stdout.readline().strip() == "holding"
        (job,) = agent.submit([{"command": "true", "gpu_pool": [target]}])
        waiting = agent.wait(lambda js: f"pid {hog.pid}" in js[0]["reason"], timeout=30)[0]
        assert waiting["state"] == "queued"
        time.sleep(3)
        assert agent.job(job["id"])["state"] == "queued"
    finally:
        hog.kill()
        hog.wait()
    freed = time.time()
    started = agent.wait(lambda js: js[0]["started_at"] is not None, timeout=30, interval=0.1)[0]["started_at"]
    print(f"\nstarted {started - freed:.2f} s after the foreign process exited")
    assert agent.wait_final([job["id"]])[job["id"]]["state"] == "done"


def test_twenty_short_jobs_on_one_gpu_run_one_at_a_time(agent, tmp_path):
    target = _uuid(GPUS[0])
    trace = tmp_path / "trace"
    cmd = (f'echo "start $(date +%s.%N) $CUDA_VISIBLE_DEVICES" >> {trace}; sleep 0.2; '
           f'echo "end $(date +%s.%N)" >> {trace}')
    jobs = agent.submit([{"command": cmd, "gpu_pool": [target]} for _ in range(20)])
    done = agent.wait_final([j["id"] for j in jobs], timeout=180)
    assert all(j["state"] == "done" for j in done.values())
    lines = trace.read_text().splitlines()
    assert len(lines) == 40
    for i in range(0, 40, 2):  # strictly alternating start/end: never two jobs on the GPU at once
        assert lines[i].startswith("start ") and lines[i].endswith(target) and lines[i + 1].startswith("end ")


def test_the_idle_baseline_is_measured_from_the_real_gpu(agent):
    """The dispatcher learns each idle GPU's 'used' memory and sets its threshold 256 MiB above it."""
    target = _uuid(GPUS[0])
    (job,) = agent.submit([{"command": "true", "gpu_pool": [target]}])
    assert agent.wait_final([job["id"]], timeout=60)[job["id"]]["state"] == "done"
    log = (agent.home / "dispatcher" / "agent.log").read_text()
    learned = [line for line in log.splitlines() if f"GPU {target}: idle baseline" in line]
    assert learned, log[-2000:]
    print("\n" + learned[0])
    view = agent.call("gpus")
    dev = next(d for d in view["devices"] if d["uuid"] == target)
    mib = int(learned[0].split("idle baseline ")[1].split()[0])
    assert mib <= dev["memory_used_mib"] + 64  # the baseline is a low reading of this GPU's own idle level
