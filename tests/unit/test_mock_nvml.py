"""The mock NVML library through the agent's pinned pynvml and `NvmlBackend`, in a subprocess.

Each check runs a fresh python with LD_LIBRARY_PATH pointing at one compiled driver generation,
so the real ctypes structures, the v1/v2/v3 process calls, the INSUFFICIENT_SIZE protocol, MIG
handles and NVML error codes all execute; the library's own call log shows which functions ran.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from migrate.sandbox.mocknvml import state as mstate
from tests.mocknvml_helpers import MockNvml

SNAPSHOT = """
import json
from migrate.agent.gpus import NvmlBackend, GpuBackendError
try:
    print(json.dumps(NvmlBackend().snapshot().to_dict()))
except GpuBackendError as exc:
    print(json.dumps({"error": exc.message, "hint": exc.hint}))
"""


def run(mock: MockNvml, code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=mock.env(), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture
def mock(tmp_path):
    return MockNvml(tmp_path, gpus=2)


@pytest.fixture
def holder():
    """A live process to list on a mock GPU (the library drops PIDs that have exited)."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def test_idle_gpus_are_loudly_mock_and_read_through_v2_memory(mock):
    snap = run(mock, SNAPSHOT)
    assert snap["driver"] == mstate.DRIVER and "mock" in snap["driver"]
    devs = snap["devices"]
    assert [d["uuid"] for d in devs] == [mstate.mock_uuid(0), mstate.mock_uuid(1)]
    assert all(d["name"].endswith("(sandbox mock)") for d in devs)
    assert devs[0]["memory_total_mib"] == mstate.TOTAL_MIB and devs[0]["memory_used_mib"] == 0
    assert devs[0]["memory_api"] == "v2" and devs[0]["processes"] == [] and devs[0]["error"] is None
    calls = mock.calls()
    for fn in ("nvmlInitWithFlags", "nvmlSystemGetDriverVersion", "nvmlDeviceGetCount_v2",
               "nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetName", "nvmlDeviceGetUUID",
               "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetUtilizationRates",
               "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetGraphicsRunningProcesses_v3",
               "nvmlDeviceGetMPSComputeRunningProcesses_v3", "nvmlDeviceGetMigMode"):
        assert fn in calls, fn


@pytest.mark.parametrize("variant, process_call, memory_api", [
    ("v3", "nvmlDeviceGetComputeRunningProcesses_v3", "v2"),
    ("v2", "nvmlDeviceGetComputeRunningProcesses_v2", "v1"),
    ("v1", "nvmlDeviceGetComputeRunningProcesses", "v1"),
])
def test_each_driver_generation_lists_processes_through_its_newest_call(tmp_path, holder, variant, process_call,
                                                                        memory_api):
    mock = MockNvml(tmp_path, gpus=2, variant=variant)
    st = mock.read()
    st.gpus[1].reserved_mib = 480
    mstate.add_process(st, "1", holder.pid, 3000)
    mstate.add_process(st, "0", holder.pid + 10**6, 5)  # no such process: the driver would not list it
    mock.write(st)
    snap = run(mock, SNAPSHOT)
    gpu0, gpu1 = snap["devices"]
    assert gpu0["processes"] == []
    assert gpu1["processes"] == [{"pid": holder.pid, "used_mib": 3000, "kind": "compute"}]
    assert gpu1["memory_api"] == memory_api
    # v1 memory counts the driver's reservation in `used`, v2 keeps it apart
    assert gpu1["memory_used_mib"] == (3000 if memory_api == "v2" else 3480)
    calls = mock.calls()
    assert process_call in calls
    # the INSUFFICIENT_SIZE protocol: asked once for the size, once with the buffer
    assert calls.count(process_call) >= 2
    if variant != "v3":
        assert "nvmlDeviceGetComputeRunningProcesses_v3" not in calls  # not exported: FUNCTION_NOT_FOUND path


def test_graphics_and_mps_processes_are_listed_with_their_kind(mock, holder):
    st = mock.read()
    mstate.add_process(st, "0", holder.pid, 100, kind="graphics")
    mock.write(st)
    (gpu0, _) = run(mock, SNAPSHOT)["devices"]
    assert gpu0["processes"] == [{"pid": holder.pid, "used_mib": 100, "kind": "graphics"}]


def test_a_process_that_exits_leaves_the_list_and_frees_its_memory(mock):
    proc = subprocess.Popen(["sleep", "600"])
    st = mock.read()
    mstate.add_process(st, "0", proc.pid, 2000)
    mock.write(st)
    assert run(mock, SNAPSHOT)["devices"][0]["memory_used_mib"] == 2000
    proc.kill()
    proc.wait()
    gpu0 = run(mock, SNAPSHOT)["devices"][0]
    assert gpu0["processes"] == [] and gpu0["memory_used_mib"] == 0


def test_a_lost_gpu_marks_only_that_gpu(mock):
    st = mock.read()
    mstate.set_lost(st, "1")
    mock.write(st)
    gpu0, gpu1 = run(mock, SNAPSHOT)["devices"]
    assert gpu0["error"] is None
    assert gpu1["uuid"] == mstate.mock_uuid(1) and gpu1["error"] == "NVML: GPU is lost"


def test_mig_instances_are_leaves_with_their_own_processes(mock, holder):
    st = mock.read()
    mstate.set_mig(st, "0", 2)
    mstate.add_process(st, "0:1", holder.pid, 700)
    mock.write(st)
    devs = run(mock, SNAPSHOT)["devices"]
    assert [d["index"] for d in devs] == ["0", "0:0", "0:1", "1"]
    parent, mig0, mig1, _ = devs
    assert parent["mig_mode"] and not mig0["mig_mode"]
    assert mig1["uuid"] == mstate.mock_uuid(0, 1) and mig1["parent_uuid"] == parent["uuid"]
    assert mig1["processes"] == [{"pid": holder.pid, "used_mib": 700, "kind": "compute"}]
    assert mig0["processes"] == [] and mig1["utilization"] is None  # NOT_SUPPORTED on instances
    assert "nvmlDeviceGetMigDeviceHandleByIndex" in mock.calls()


@pytest.mark.parametrize("code, words", [(999, "Unknown Error"), (9, "Driver Not Loaded"),
                                         (18, "mismatch")])
def test_init_errors_come_back_as_nvml_error_strings_with_hints(mock, code, words):
    st = mock.read()
    st.error = code
    mock.write(st)
    out = run(mock, SNAPSHOT)
    assert words in out["error"] and out["hint"]


def test_no_state_file_reads_as_no_driver(mock):
    mock.state_path.unlink()
    out = run(mock, SNAPSHOT)
    assert "Driver Not Loaded" in out["error"]


def test_raw_pynvml_protocol_details(mock, holder):
    """What the backend does not use directly: sizes, uninitialised calls, bad handles, empty slots."""
    st = mock.read()
    mstate.add_process(st, "0", holder.pid, 64)
    mock.write(st)
    out = run(mock, """
        import ctypes, json
        from migrate.agent._vendor import pynvml as nv
        r = {}
        try:
            nv.nvmlInit(); nv.nvmlShutdown(); nv.nvmlDeviceGetCount()
        except nv.NVMLError as exc:
            r["after_shutdown"] = str(exc)
        nv.nvmlInit()
        h = nv.nvmlDeviceGetHandleByIndex(0)
        fn = nv._nvmlGetFunctionPointer("nvmlDeviceGetComputeRunningProcesses_v3")
        n = ctypes.c_uint(0)
        r["size_query"] = [fn(h, ctypes.byref(n), None), n.value]
        try:
            nv.nvmlDeviceGetHandleByIndex(5)
        except nv.NVMLError as exc:
            r["bad_index"] = exc.value
        try:
            nv.nvmlDeviceGetMigDeviceHandleByIndex(h, 0)
        except nv.NVMLError as exc:
            r["mig_off"] = exc.value
        r["mig_mode"] = nv.nvmlDeviceGetMigMode(h)
        buf = ctypes.create_string_buffer(4)
        r["name_short_buffer"] = nv._nvmlGetFunctionPointer("nvmlDeviceGetName")(h, buf, ctypes.c_uint(4))
        print(json.dumps(r))
    """)
    assert out["after_shutdown"] == "Uninitialized"
    assert out["size_query"] == [7, 1]  # NVML_ERROR_INSUFFICIENT_SIZE and the count needed
    assert out["bad_index"] == 2 and out["mig_off"] == 3 and out["mig_mode"] == [0, 0]
    assert out["name_short_buffer"] == 7


def test_state_round_trips_and_changes_are_checked():
    st = mstate.fresh(2)
    mstate.set_mig(st, "1", 3)
    mstate.add_process(st, "1:2", 4242, 10, kind="mps")
    mstate.add_process(st, "0", 4243, 20)
    mstate.set_utilization(st, "0", 55)
    st.error = 999
    assert mstate.parse(mstate.render(st)) == st
    with pytest.raises(mstate.StateError):
        mstate.add_process(st, "1", 1, 1)  # MIG on: processes go on instances
    with pytest.raises(mstate.StateError):
        mstate.device(st, "2")
    assert mstate.remove_process(st, 4242) and not mstate.remove_process(st, 4242)


def test_sandbox_gpu_changes_apply_in_order():
    from migrate.sandbox.gpu import GpuChanges, apply

    st = mstate.fresh(2)
    mstate.add_process(st, "0", 11, 5)
    ch = GpuChanges(reset=True, driver="v2", nvml_error=999, utilization=[("1", 80)], lose=["0"], mig=[("1", 2)],
                    take="1:1", take_mib=300)
    out = apply(st, ch, gpus=2, pid=4242)
    assert out.variant == "v2" and out.error == 999 and out.gpus[0].lost and out.gpus[0].processes == []
    assert out.gpus[1].migs[1].processes == [mstate.MockProcess(4242, 300, "compute")]
    assert GpuChanges().empty and not ch.empty
    with pytest.raises(mstate.StateError):
        apply(mstate.fresh(1), GpuChanges(utilization=[("3", 10)]), gpus=1)


def test_gpus_runs_the_agent_from_memory_and_writes_nothing(mock, tmp_path):
    """`migrate gpus` on a host without the agent: sent on stdin, run from memory, nothing left behind."""
    import base64

    from migrate.jobs.bundle import build_agent
    from migrate.jobs.client import in_memory_command

    home = tmp_path / "home"
    home.mkdir()
    env = mock.env()
    env["HOME"] = str(home)
    proc = subprocess.run(["sh", "-c", in_memory_command(["gpus"])], input=base64.b64encode(build_agent().data),
                          env=env, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert data["ok"] and data["backend"] == "nvml" and len(data["devices"]) == 2
    assert data["devices"][0]["verdict"] == "free"
    assert list(home.iterdir()) == []


def test_a_fault_after_init_fails_the_view_and_it_comes_back(mock):
    st = mock.read()
    out = run(mock, f"""
        import json
        from migrate.agent.gpus import NvmlBackend, GpuBackendError
        from migrate.sandbox.mocknvml import state as ms
        b = NvmlBackend()
        r = [len(b.snapshot().devices)]
        st = ms.parse(open({str(mock.state_path)!r}).read())
        st.error = 999
        open({str(mock.state_path)!r}, "w").write(ms.render(st))
        try:
            b.snapshot()
        except GpuBackendError as exc:
            r.append(exc.message)
        st.error = 0
        open({str(mock.state_path)!r}, "w").write(ms.render(st))
        r.append(len(b.snapshot().devices))
        print(json.dumps(r))
    """)
    assert out == [2, "NVML: Unknown Error", 2] and len(st.gpus) == 2
