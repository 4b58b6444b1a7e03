"""The GPU view: the NVML backend against a stand-in pynvml module (faults included), the FAKE backend."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from migrate.agent.gpus import FakeBackend, GpuBackendError, NvmlBackend, fake_state, open_backend

MIB = 1024 * 1024


class NVMLError(Exception):
    pass


class StandInNvml:
    """Just enough of pynvml's surface, with scripted faults (unit tests only)."""

    NVMLError = NVMLError
    NVML_DEVICE_MIG_ENABLE = 1
    nvmlMemory_v2 = object()

    def __init__(self, gpus, init_error=None, v2=True):
        self.gpus = gpus
        self.init_error = init_error
        self.v2 = v2
        self.inits = 0

    def nvmlInit(self):
        self.inits += 1
        if self.init_error:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlSystemGetDriverVersion(self):
        return b"580.159.04"

    def nvmlDeviceGetHandleByIndex(self, i):
        g = self.gpus[i]
        if g.get("handle_error"):
            raise NVMLError(g["handle_error"])
        return g

    def nvmlDeviceGetUUID(self, h):
        return h["uuid"]

    def nvmlDeviceGetName(self, h):
        if h.get("error"):
            raise NVMLError(h["error"])
        return h.get("name", "NVIDIA H100 80GB HBM3")

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        if version is not None:
            if not self.v2:
                raise TypeError("version")
            return SimpleNamespace(total=h["total"] * MIB, used=h["used_v2"] * MIB, reserved=h["reserved"] * MIB)
        return SimpleNamespace(total=h["total"] * MIB, used=(h["used_v2"] + h["reserved"]) * MIB)

    def nvmlDeviceGetUtilizationRates(self, h):
        if h.get("mig_child"):
            raise NVMLError("Not Supported")
        return SimpleNamespace(gpu=h.get("util", 0))

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.get("compute", [])]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.get("graphics", [])]

    def nvmlDeviceGetMigMode(self, h):
        if "migs" not in h:
            raise NVMLError("Not Supported")
        return [1, 1]

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, j):
        if j >= len(h["migs"]):
            raise NVMLError("Not Found")
        return h["migs"][j]


def h100(i, **kw):
    return {"uuid": f"GPU-{i}", "total": 81559, "used_v2": 3, "reserved": 477, **kw}


def test_lists_gpus_with_uuid_v2_memory_and_processes():
    nv = StandInNvml([h100(0), h100(1, used_v2=20480, compute=[(4242, 20480 * MIB)], graphics=[(77, None)])])
    snap = NvmlBackend(nv).snapshot()
    assert snap.driver == "580.159.04" and not snap.fake
    d0, d1 = snap.devices
    assert (d0.uuid, d0.memory_total_mib, d0.memory_used_mib, d0.memory_reserved_mib) == ("GPU-0", 81559, 3, 477)
    assert d0.memory_api == "v2"
    assert [(p.pid, p.used_mib, p.kind) for p in d1.processes] == [(4242, 20480, "compute"), (77, None, "graphics")]


def test_falls_back_to_v1_memory():
    snap = NvmlBackend(StandInNvml([h100(0)], v2=False)).snapshot()
    assert snap.devices[0].memory_used_mib == 480  # v1 includes the reservation; the policy threshold allows it
    assert snap.devices[0].memory_api == "v1"


def test_one_broken_gpu_does_not_hide_the_others():
    nv = StandInNvml([h100(0), h100(1, error="GPU is lost"), h100(2, handle_error="Unknown Error")])
    devices = NvmlBackend(nv).snapshot().devices
    assert devices[0].error is None
    assert devices[1].error == "NVML: GPU is lost" and devices[1].uuid == "GPU-1"
    assert devices[2].error == "NVML: Unknown Error"


@pytest.mark.parametrize("message,hint", [
    ("Unknown Error", "nvidia-ctk"),
    ("RM has detected an NVML/RM version mismatch.", "reboot"),
    ("Driver/library version mismatch", "reboot"),
    ("NVML Shared Library Not Found", "only CPU jobs"),
])
def test_init_failures_raise_with_hints_and_are_retried(message, hint):
    nv = StandInNvml([h100(0)], init_error=message)
    backend = NvmlBackend(nv)
    with pytest.raises(GpuBackendError) as exc:
        backend.snapshot()
    assert message in exc.value.message and hint in exc.value.hint
    nv.init_error = None
    assert len(backend.snapshot().devices) == 1 and nv.inits == 2  # recovers on the next try


def test_mig_instances_become_leaf_devices():
    child = {"uuid": "MIG-a", "total": 9856, "used_v2": 0, "reserved": 0, "mig_child": True, "compute": [(9, MIB)]}
    nv = StandInNvml([h100(0, migs=[child])])
    parent, mig = NvmlBackend(nv).snapshot().devices
    assert parent.mig_mode and not mig.mig_mode
    assert (mig.index, mig.uuid, mig.parent_uuid, mig.utilization) == ("0:0", "MIG-a", "GPU-0", None)
    assert mig.processes[0].pid == 9


class NVMLError_FunctionNotFound(NVMLError):  # noqa: N801 (pynvml's name)
    value = 13


class NVMLLibraryMismatchError(Exception):  # nvidia-ml-py 13: not an NVMLError
    pass


class OldDriverNvml(StandInNvml):
    """A driver of R470 or older under nvidia-ml-py >= 12: the unversioned process calls go to `_v3`,
    which the driver lacks; `_v2` exists (issue 12.16)."""

    NVMLError_FunctionNotFound = NVMLError_FunctionNotFound
    NVMLLibraryMismatchError = NVMLLibraryMismatchError
    NVML_ERROR_FUNCTION_NOT_FOUND = 13

    def __init__(self, gpus, missing=NVMLError_FunctionNotFound):
        super().__init__(gpus)
        self.missing = missing

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        raise self.missing()

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        raise self.missing()

    def nvmlDeviceGetComputeRunningProcesses_v2(self, h):
        return StandInNvml.nvmlDeviceGetComputeRunningProcesses(self, h)

    def nvmlDeviceGetGraphicsRunningProcesses_v2(self, h):
        return StandInNvml.nvmlDeviceGetGraphicsRunningProcesses(self, h)


@pytest.mark.parametrize("missing", [NVMLError_FunctionNotFound, NVMLLibraryMismatchError])
def test_old_driver_without_v3_process_calls_falls_back_to_v2(missing):
    nv = OldDriverNvml([h100(0, compute=[(4242, 20480 * MIB)], graphics=[(77, None)]), h100(1)], missing)
    d0, d1 = NvmlBackend(nv).snapshot().devices
    assert d0.error is None and d1.error is None  # not every GPU marked as errored
    assert [(p.pid, p.used_mib, p.kind) for p in d0.processes] == [(4242, 20480, "compute"), (77, None, "graphics")]


def test_no_process_call_at_all_marks_only_that_gpu():
    class NoProcessCalls(OldDriverNvml):
        def nvmlDeviceGetComputeRunningProcesses_v2(self, h):
            raise NVMLError_FunctionNotFound()

    (d0,) = NvmlBackend(NoProcessCalls([h100(0)])).snapshot().devices
    assert d0.error and d0.error.startswith("NVML:")  # v1 is not reachable in a stand-in: an error, no crash


class OldLibnvidiaMl:
    """Stands in for an old driver's libnvidia-ml.so under the REAL pinned pynvml: only the symbols
    given exist; each behaves like the C call (count first, then fill the array)."""

    def __init__(self, pynvml, symbols, procs):
        self.nv = pynvml
        for name in symbols:
            setattr(self, name, self._call)
        self.procs = procs

    def _call(self, handle, count_ref, array):
        count = count_ref._obj
        if array is None:
            count.value = len(self.procs)
            return self.nv.NVML_ERROR_INSUFFICIENT_SIZE if self.procs else self.nv.NVML_SUCCESS
        for i, (pid, used) in enumerate(self.procs):
            array[i].pid, array[i].usedGpuMemory = pid, used
        count.value = len(self.procs)
        return self.nv.NVML_SUCCESS


@pytest.mark.parametrize("symbols", [
    ["nvmlDeviceGetComputeRunningProcesses_v2"],  # R470: no _v3
    ["nvmlDeviceGetComputeRunningProcesses"],  # older: only the v1 symbol
])
def test_the_pinned_pynvml_falls_back_on_a_driver_without_v3(monkeypatch, symbols):
    from migrate.agent._vendor import pynvml
    from migrate.agent.gpus import running_processes

    monkeypatch.setattr(pynvml, "nvmlLib", OldLibnvidiaMl(pynvml, symbols, [(4242, 20480 * MIB)]))
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    with pytest.raises(Exception) as plain:  # what the agent called before: the unversioned (= _v3) call
        pynvml.nvmlDeviceGetComputeRunningProcesses("handle")
    assert "FunctionNotFound" in type(plain.value).__name__ or "Mismatch" in type(plain.value).__name__
    (p,) = running_processes(pynvml, "handle", "nvmlDeviceGetComputeRunningProcesses")
    assert (p.pid, p.usedGpuMemory) == (4242, 20480 * MIB)
    monkeypatch.setattr(pynvml, "nvmlLib", OldLibnvidiaMl(pynvml, [], []))
    monkeypatch.setattr(pynvml, "_nvmlGetFunctionPointer_cache", {})
    with pytest.raises(pynvml.NVMLError_FunctionNotFound):  # no version at all: an NVML error, marks that GPU
        running_processes(pynvml, "handle", "nvmlDeviceGetComputeRunningProcesses")


def test_fake_backend_reads_state_and_injected_faults(tmp_path):
    path = tmp_path / "fake.json"
    state = fake_state(2)
    state["gpus"][1]["processes"] = [{"pid": 4242, "used_mib": 1000}]
    state["gpus"][0]["mig"] = [{"uuid": "MIG-x", "memory_total_mib": 9856}]
    path.write_text(json.dumps(state))
    backend = open_backend(f"fake:{path}")
    assert isinstance(backend, FakeBackend) and backend.spec == f"fake:{path}"
    snap = backend.snapshot()
    assert snap.fake and "FAKE" in snap.devices[0].name
    assert [d.index for d in snap.devices] == ["0", "0:0", "1"]
    assert snap.devices[0].mig_mode and snap.devices[2].processes[0].pid == 4242
    state["error"] = "Driver/library version mismatch"
    path.write_text(json.dumps(state))
    with pytest.raises(GpuBackendError, match="mismatch") as exc:
        backend.snapshot()
    assert "reboot" in exc.value.hint


def test_backend_selection_is_explicit():
    assert isinstance(open_backend("nvml"), NvmlBackend)
    assert isinstance(open_backend(""), NvmlBackend)  # the default is the real thing, never the fake
    for bad in ("fake", "fake:", "cuda"):
        with pytest.raises(ValueError):
            open_backend(bad)
