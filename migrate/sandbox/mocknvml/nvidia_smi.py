#!/usr/bin/env python3
"""migrate sandbox MOCK nvidia-smi: a test double, there is no GPU here.

Like the real one it reads everything through libnvidia-ml.so.1 (here the sandbox's mock NVML
library), so it agrees with pynvml, the dispatcher and `migrate gpus`. It answers the forms
migrate uses: `-L`, `--query-gpu=FIELDS --format=csv[,noheader][,nounits]`, and a plain summary.
Installed on a sandbox host by `migrate sandbox up --gpus N`; plain python3 (3.8+), no imports
beyond the standard library.
"""

import ctypes
import sys

MIB = 1024 * 1024


class Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class Util(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class Proc(ctypes.Structure):  # the v1 struct of the unversioned process call
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong)]


def fail(lib, code):
    msg = lib.nvmlErrorString(code).decode() if lib else "NVML Shared Library Not Found"
    print("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver "
          f"(mock NVML: {msg}).")
    sys.exit(9)


def text(fn, handle, size=96):
    buf = ctypes.create_string_buffer(size)
    ret = fn(handle, buf, ctypes.c_uint(size))
    return buf.value.decode() if ret == 0 else None


def gpus(lib):
    n = ctypes.c_uint(0)
    lib.nvmlDeviceGetCount_v2(ctypes.byref(n))
    buf = ctypes.create_string_buffer(96)
    lib.nvmlSystemGetDriverVersion(buf, ctypes.c_uint(96))
    driver = buf.value.decode()
    out = []
    for i in range(n.value):
        h = ctypes.c_void_p()
        lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(i), ctypes.byref(h))
        g = {"index": str(i), "uuid": text(lib.nvmlDeviceGetUUID, h) or "?", "driver_version": driver}
        g["name"] = text(lib.nvmlDeviceGetName, h)
        if g["name"] is None:
            g.update(name="[GPU requires reset]", lost=True)
            out.append(g)
            continue
        mem, util = Memory(), Util()
        lib.nvmlDeviceGetMemoryInfo(h, ctypes.byref(mem))
        g.update({"memory.total": str(mem.total // MIB), "memory.used": str(mem.used // MIB),
                  "memory.free": str(mem.free // MIB)})
        ok = lib.nvmlDeviceGetUtilizationRates(h, ctypes.byref(util)) == 0
        g["utilization.gpu"] = str(util.gpu) if ok else "[N/A]"
        cnt = ctypes.c_uint(64)
        procs = (Proc * 64)()
        g["processes"] = []
        if lib.nvmlDeviceGetComputeRunningProcesses(h, ctypes.byref(cnt), procs) == 0:
            g["processes"] = [(procs[k].pid, procs[k].usedGpuMemory // MIB) for k in range(cnt.value)]
        out.append(g)
    return driver, out


def main(argv):
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        fail(None, 12)
    lib.nvmlErrorString.restype = ctypes.c_char_p
    ret = lib.nvmlInit_v2()
    if ret != 0:
        fail(lib, ret)
    driver, devices = gpus(lib)
    query = next((a.split("=", 1)[1] for a in argv if a.startswith("--query-gpu=")), None)
    fmt = next((a.split("=", 1)[1] for a in argv if a.startswith("--format=")), "csv")
    if query:
        fields = [f.strip() for f in query.split(",")]
        if "noheader" not in fmt:
            print(", ".join(fields))
        for g in devices:
            print(", ".join(g.get(f, "[N/A]") for f in fields))
    elif "-L" in argv:
        for g in devices:
            print("GPU {}: {} (UUID: {})".format(g["index"], g["name"], g["uuid"]))
    else:
        print(f"NVIDIA-SMI {driver}    (migrate sandbox MOCK: no GPU here)")
        for g in devices:
            if g.get("lost"):
                print("GPU {}  {}  {}  fell off the bus".format(g["index"], g["uuid"], g["name"]))
                continue
            print("GPU {}  {}  {}  {} / {} MiB  {}%".format(g["index"], g["uuid"], g["name"], g["memory.used"],
                                                          g["memory.total"], g["utilization.gpu"]))
            for pid, used in g["processes"]:
                print(f"    process {pid}  {used} MiB")
    lib.nvmlShutdown()
    return 1 if any(g.get("lost") for g in devices) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
