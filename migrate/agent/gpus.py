"""The GPU view: one interface, two backends.

- `NvmlBackend`: the real thing, through the pure-Python `pynvml` module (nvidia-ml-py, pinned in
  `_vendor/`, shipped in the zipapp). Memory comes from the v2 API when the driver has it (its `used` excludes the
  driver's reservation, ~480 MiB on an idle H100 with v1), compute AND graphics processes are
  listed, MIG instances are expanded as leaf devices, and an error on one GPU marks only that
  GPU (`GpuDevice.error`) instead of failing the whole view.
- `FakeBackend`: a clearly labelled TEST DOUBLE that reads a JSON state file (GPUs with UUID,
  memory, utilisation, foreign processes, injected NVML errors). Tests edit the file to simulate
  other people's processes and driver faults on machines without a GPU. It is used only when
  explicitly selected with `--gpu-backend fake:PATH`; nothing ever picks it automatically.

A failure of the whole view (no driver, "Unknown Error", driver/library mismatch) raises
`GpuBackendError` with a hint; the dispatcher keeps running jobs, admits no GPU job and retries
with backoff.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MIB = 1024 * 1024
FAKE_LABEL = "migrate FAKE GPU state: a test double, there is no GPU behind it"


class GpuBackendError(Exception):
    """The GPU view as a whole is unavailable."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


@dataclass
class GpuProcess:
    pid: int
    used_mib: int | None = None
    kind: str = "compute"  # compute | graphics | mps


@dataclass
class GpuDevice:
    """One schedulable device (a GPU, or a MIG instance) or a MIG-enabled parent GPU."""

    index: str  # "0", or "0:1" for MIG instance 1 of GPU 0
    uuid: str
    name: str = ""
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_reserved_mib: int | None = None
    memory_api: str = ""  # "v2" (used excludes the driver's reservation), "v1" (includes it), "" (fake)
    utilization: int | None = None
    processes: list = field(default_factory=list)  # of GpuProcess
    mig_mode: bool = False  # MIG enabled: the instances are the leaves, not this GPU
    parent_uuid: str | None = None
    error: str | None = None

    @property
    def is_mig(self) -> bool:
        return self.parent_uuid is not None

    @property
    def free_mib(self) -> int | None:
        if self.memory_total_mib is None or self.memory_used_mib is None:
            return None
        return max(0, self.memory_total_mib - self.memory_used_mib)

    @property
    def sort_index(self) -> tuple:
        parts = []
        for p in self.index.split(":"):
            parts.append(int(p) if p.isdigit() else 0)
        return tuple(parts)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["free_mib"] = self.free_mib
        d["is_mig"] = self.is_mig
        return d


@dataclass
class GpuSnapshot:
    backend: str
    driver: str = ""
    devices: list = field(default_factory=list)  # of GpuDevice
    fake: bool = False
    taken_at: float = 0.0

    def leaves(self) -> list:
        """Devices a job can be given: GPUs without MIG, and MIG instances."""
        return [d for d in self.devices if not d.mig_mode]

    def to_dict(self) -> dict:
        return {"backend": self.backend, "driver": self.driver, "fake": self.fake, "taken_at": self.taken_at,
                "devices": [d.to_dict() for d in self.devices]}


# -- error explanations (shared by both backends) -------------------------------------------------
ERROR_HINTS = (
    ("unknown error", "NVML 'Unknown Error': in containers this follows `systemctl daemon-reload` on cgroup v2 "
                      "hosts (recreate the container; on the host: sudo nvidia-ctk system "
                      "create-dev-char-symlinks --create-all, or use CDI); otherwise check `nvidia-smi`"),
    ("mismatch", "driver/library version mismatch: the NVIDIA driver was upgraded under a running kernel "
                 "module; the host needs a reboot (ask the owner)"),
    ("gpu is lost", "the GPU fell off the bus (Xid 79): only a reset or reboot brings it back; other GPUs "
                    "keep working"),
    ("not found", "no NVIDIA driver library (libnvidia-ml.so.1): only CPU jobs (--gpus-per-job 0) can run"),
    ("driver not loaded", "the NVIDIA kernel driver is not loaded: only CPU jobs can run until it is"),
    ("insufficient permissions", "NVML refused access: check permissions of /dev/nvidia*"),
)


def hint_for(message: str) -> str:
    low = message.lower()
    for needle, hint in ERROR_HINTS:
        if needle in low:
            return hint
    return "check `nvidia-smi` on the host"


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# -- NVML -----------------------------------------------------------------------------------------
class NvmlBackend:
    """GPUs through NVML (pynvml). `module` lets unit tests inject a stand-in."""

    spec = "nvml"
    fake = False

    def __init__(self, module: Any = None) -> None:
        self._nv = module
        self._ready = False

    def _module(self) -> Any:
        if self._nv is None:
            try:
                from ._vendor import pynvml  # nvidia-ml-py, pinned (see _vendor/__init__.py)
            except ImportError as exc:
                raise GpuBackendError(f"the pynvml module is not available: {exc}",
                                      "the agent zipapp ships it; rerun `migrate run` to reinstall the agent") from None
            self._nv = pynvml
        return self._nv

    def _error(self, exc: Exception) -> GpuBackendError:
        message = f"NVML: {str(exc) or type(exc).__name__}"
        return GpuBackendError(message, hint_for(message))

    def close(self) -> None:
        if self._ready:
            try:
                self._nv.nvmlShutdown()
            except Exception:
                pass
            self._ready = False

    def snapshot(self) -> GpuSnapshot:
        nv = self._module()
        if not self._ready:
            try:
                nv.nvmlInit()
            except nv.NVMLError as exc:
                raise self._error(exc) from None
            self._ready = True
        try:
            count = nv.nvmlDeviceGetCount()
            driver = _text(nv.nvmlSystemGetDriverVersion())
        except nv.NVMLError as exc:
            self.close()
            raise self._error(exc) from None
        devices = []  # type: list
        for i in range(count):
            devices.extend(self._device(nv, i))
        return GpuSnapshot(backend="nvml", driver=driver, devices=devices, taken_at=time.time())

    def _device(self, nv: Any, i: int) -> list:
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(nv.nvmlDeviceGetUUID(handle))
        except nv.NVMLError as exc:
            return [GpuDevice(index=str(i), uuid=f"unknown-gpu-{i}", error=f"NVML: {exc}")]
        dev = GpuDevice(index=str(i), uuid=uuid)
        try:
            dev.name = _text(nv.nvmlDeviceGetName(handle))
            self._fill(nv, handle, dev)
        except nv.NVMLError as exc:
            dev.error = f"NVML: {exc}"
            return [dev]
        out = [dev]
        try:
            current, _pending = nv.nvmlDeviceGetMigMode(handle)
            dev.mig_mode = current == getattr(nv, "NVML_DEVICE_MIG_ENABLE", 1)
        except (nv.NVMLError, AttributeError):
            dev.mig_mode = False
        if dev.mig_mode:
            try:
                slots = nv.nvmlDeviceGetMaxMigDeviceCount(handle)
            except nv.NVMLError as exc:
                dev.error = f"NVML (MIG): {exc}"
                return out
            for j in range(slots):
                try:
                    mh = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, j)
                except nv.NVMLError:
                    continue  # empty slot
                mig = GpuDevice(index=f"{i}:{j}", uuid="", parent_uuid=uuid, name=dev.name + " MIG")
                try:
                    mig.uuid = _text(nv.nvmlDeviceGetUUID(mh))
                    self._fill(nv, mh, mig)
                except nv.NVMLError as exc:
                    mig.uuid = mig.uuid or f"unknown-mig-{i}-{j}"
                    mig.error = f"NVML: {exc}"
                out.append(mig)
        return out

    def _fill(self, nv: Any, handle: Any, dev: GpuDevice) -> None:
        mem = None
        v2 = getattr(nv, "nvmlMemory_v2", None)
        if v2 is not None:
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(handle, version=v2)
                dev.memory_reserved_mib = int(getattr(mem, "reserved", 0)) // MIB
                dev.memory_api = "v2"
            except (nv.NVMLError, TypeError):
                mem = None
        if mem is None:
            mem = nv.nvmlDeviceGetMemoryInfo(handle)
            dev.memory_api = "v1"
        dev.memory_total_mib = int(mem.total) // MIB
        dev.memory_used_mib = int(mem.used) // MIB
        try:
            dev.utilization = int(nv.nvmlDeviceGetUtilizationRates(handle).gpu)
        except nv.NVMLError:
            dev.utilization = None  # not supported on MIG instances
        seen = {}  # type: dict
        for kind, fn_name in (("compute", "nvmlDeviceGetComputeRunningProcesses"),
                              ("graphics", "nvmlDeviceGetGraphicsRunningProcesses"),
                              ("mps", "nvmlDeviceGetMPSComputeRunningProcesses")):
            try:
                procs = running_processes(nv, handle, fn_name)
            except nv.NVMLError:
                if kind == "compute":
                    raise
                continue
            for p in procs:
                used = getattr(p, "usedGpuMemory", None)
                used_mib = int(used) // MIB if isinstance(used, int) and 0 <= used < (1 << 62) else None
                if p.pid not in seen:
                    seen[p.pid] = GpuProcess(pid=int(p.pid), used_mib=used_mib, kind=kind)
        dev.processes = list(seen.values())


def function_not_found(nv: Any, exc: BaseException) -> bool:
    """Is this NVML's "the driver's library has no such function" (the call is newer than the driver)?

    nvidia-ml-py 12 raises NVMLError_FunctionNotFound; 13 turns it into NVMLLibraryMismatchError
    (not an NVMLError) for the unversioned names.
    """
    for name in ("NVMLError_FunctionNotFound", "NVMLLibraryMismatchError"):
        cls = getattr(nv, name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return isinstance(exc, nv.NVMLError) and getattr(exc, "value", None) == getattr(
        nv, "NVML_ERROR_FUNCTION_NOT_FOUND", 13)


def running_processes(nv: Any, handle: Any, fn_name: str) -> list:
    """The processes on a device through the newest call the driver has.

    nvidia-ml-py >= 12 maps `nvmlDeviceGet*RunningProcesses` to the `_v3` symbols, which drivers
    R470 and older lack: then `_v2`, then v1 (the unversioned symbol, which libnvidia-ml keeps with
    the v1 struct) are tried. Other NVML errors are raised as they are; when no version exists the
    result is NVMLError(FUNCTION_NOT_FOUND).
    """
    calls = [getattr(nv, fn_name, None), getattr(nv, fn_name + "_v2", None),
             lambda h: _processes_v1(nv, fn_name, h)]
    for fn in calls:
        if fn is None:
            continue
        try:
            return fn(handle)
        except Exception as exc:
            if not function_not_found(nv, exc):
                raise
    raise nv.NVMLError(getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND", 13))


def _processes_v1(nv: Any, symbol: str, handle: Any) -> list:
    """The v1 call (struct: pid, usedGpuMemory) through pynvml's function lookup, for old drivers."""
    import ctypes
    from types import SimpleNamespace

    lookup = getattr(nv, "_nvmlGetFunctionPointer", None)
    if lookup is None:  # not the real pynvml: nothing older to try
        raise nv.NVMLError(getattr(nv, "NVML_ERROR_FUNCTION_NOT_FOUND", 13))

    class ProcessInfoV1(ctypes.Structure):
        _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]

    fn = lookup(symbol)
    count = ctypes.c_uint(0)
    ret = fn(handle, ctypes.byref(count), None)
    if ret == nv.NVML_SUCCESS:
        return []
    if ret != nv.NVML_ERROR_INSUFFICIENT_SIZE:
        raise nv.NVMLError(ret)
    count.value = count.value * 2 + 5
    infos = (ProcessInfoV1 * count.value)()
    ret = fn(handle, ctypes.byref(count), infos)
    if ret != nv.NVML_SUCCESS:
        raise nv.NVMLError(ret)
    out = []
    for i in range(count.value):
        used = infos[i].usedGpuMemory
        out.append(SimpleNamespace(pid=int(infos[i].pid), usedGpuMemory=None if used >= (1 << 64) - 1 else used))
    return out


# -- FAKE (test double) ---------------------------------------------------------------------------
class FakeBackend:
    """TEST DOUBLE: GPUs described by a JSON file (see `fake_state`). Never chosen automatically."""

    fake = True

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(os.path.expanduser(path))
        self.spec = "fake:" + self.path

    def close(self) -> None:
        pass

    def snapshot(self) -> GpuSnapshot:
        try:
            with open(self.path) as fh:
                data = json.load(fh)
        except (OSError, ValueError) as exc:
            raise GpuBackendError(f"FAKE GPU state {self.path} unreadable: {exc}",
                                  "write it with migrate.agent.gpus.fake_state() (test double)") from None
        if data.get("error"):
            message = "NVML (fake): {}".format(data["error"])
            raise GpuBackendError(message, hint_for(message))
        devices = []
        for i, g in enumerate(data.get("gpus", [])):
            dev = _fake_device(str(i), g)
            devices.append(dev)
            migs = g.get("mig") or []
            if migs:
                dev.mig_mode = True
                for j, m in enumerate(migs):
                    child = _fake_device(f"{i}:{j}", m)
                    child.parent_uuid = dev.uuid
                    devices.append(child)
        return GpuSnapshot(backend=self.spec, driver=str(data.get("driver", "fake")), devices=devices,
                           fake=True, taken_at=time.time())


def _fake_device(index: str, g: dict) -> GpuDevice:
    return GpuDevice(
        index=index, uuid=str(g["uuid"]), name=str(g.get("name", "FAKE GPU")),
        memory_total_mib=g.get("memory_total_mib", 81559), memory_used_mib=g.get("memory_used_mib", 0),
        utilization=g.get("utilization", 0), error=g.get("error"),
        processes=[GpuProcess(pid=int(p["pid"]), used_mib=p.get("used_mib"), kind=p.get("kind", "compute"))
                   for p in g.get("processes", [])])


def fake_uuid(i: int) -> str:
    return f"GPU-fa4e0000-0000-4000-8000-{i:012d}"


def fake_state(count: int, memory_total_mib: int = 81559) -> dict:
    """A fresh FAKE state: `count` idle GPUs. Edit and write it as JSON to simulate usage/faults."""
    return {"fake": FAKE_LABEL, "driver": "fake", "error": None,
            "gpus": [{"uuid": fake_uuid(i), "name": "FAKE H100 80GB (test double)",
                      "memory_total_mib": memory_total_mib, "memory_used_mib": 0, "utilization": 0,
                      "error": None, "processes": []} for i in range(count)]}


def open_backend(spec: str) -> Any:
    """'nvml' -> NvmlBackend; 'fake:PATH' -> FakeBackend (the test double)."""
    spec = (spec or "nvml").strip()
    if spec == "nvml":
        return NvmlBackend()
    if spec.startswith("fake:") and len(spec) > 5:
        return FakeBackend(spec[5:])
    raise ValueError(f"unknown GPU backend {spec!r} (use 'nvml' or 'fake:PATH')")
