"""The mock NVML library's state file: what the sandbox's fake GPUs look like right now.

One module writes and reads it (the C side, mocknvml.c, only reads). The format is line-based so
the C parser stays small; see mocknvml.c for the grammar. Everything here is pure: `migrate
sandbox gpu` reads the file from a host, changes it with these functions and writes it back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PATH = "/etc/migrate-sandbox/mock-nvml.state"  # the library's default (MIGRATE_MOCK_NVML_STATE overrides)
CALL_LOG = "/var/log/migrate-mock-nvml.calls"  # appended to when it exists (MIGRATE_MOCK_NVML_LOG overrides)
DRIVER = "550.54.15-mock"
NAME = "NVIDIA H100 80GB HBM3 (sandbox mock)"
TOTAL_MIB = 81559
KINDS = {"compute": "c", "graphics": "g", "mps": "m"}
VARIANTS = ("v1", "v2", "v3")  # driver generations: which process-list calls the library has


class StateError(ValueError):
    """A change that does not fit the state (no such GPU, bad value)."""


@dataclass
class MockProcess:
    pid: int
    used_mib: int = 0
    kind: str = "compute"  # compute | graphics | mps


@dataclass
class MockMig:
    uuid: str
    memory_total_mib: int
    memory_used_mib: int = 0
    processes: list = field(default_factory=list)  # of MockProcess


@dataclass
class MockGpu:
    uuid: str
    name: str = NAME
    memory_total_mib: int = TOTAL_MIB
    memory_used_mib: int = 0  # used by nobody listed (processes add theirs)
    reserved_mib: int = 0  # the driver's reservation: in v1 `used`, apart in v2
    utilization: int = 0
    lost: bool = False  # fell off the bus: NVML_ERROR_GPU_IS_LOST
    mig: bool = False
    migs: list = field(default_factory=list)  # of MockMig
    processes: list = field(default_factory=list)  # of MockProcess


@dataclass
class MockState:
    driver: str = DRIVER
    variant: str = "v3"
    error: int = 0  # every call fails with this NVML code (999 Unknown Error, 9 Driver Not Loaded...)
    gpus: list = field(default_factory=list)  # of MockGpu

    def to_dict(self) -> dict:
        return asdict(self)


def mock_uuid(i: int, mig: int | None = None) -> str:
    """A fixed, recognisable UUID: GPU-c0ffee00-... (MIG-c0ffee00-... for instance `mig`)."""
    if mig is None:
        return f"GPU-c0ffee00-0000-4000-8000-{i:012d}"
    return f"MIG-c0ffee00-{i:04d}-4000-8000-{mig:012d}"


def fresh(count: int, variant: str = "v3") -> MockState:
    """`count` idle GPUs."""
    return MockState(variant=variant, gpus=[MockGpu(uuid=mock_uuid(i)) for i in range(count)])


def render(state: MockState) -> str:
    """The state file's text."""
    lines = ["# migrate sandbox MOCK NVML state: no GPU behind it. Change it with `migrate sandbox gpu`.",
             f"variant {state.variant}", f"driver {state.driver}"]
    if state.error:
        lines.append(f"error {int(state.error)}")
    procs = []
    for g in state.gpus:
        lines.append(f"gpu {g.uuid} {g.memory_total_mib} {g.memory_used_mib} {g.reserved_mib} {g.utilization} "
                     f"{int(g.lost)} {int(g.mig)} {g.name}")
        for m in g.migs:
            lines.append(f"mig {m.uuid} {m.memory_total_mib} {m.memory_used_mib}")
            procs += [(m.uuid, p) for p in m.processes]
        procs += [(g.uuid, p) for p in g.processes]
    lines += [f"proc {u} {p.pid} {p.used_mib} {KINDS[p.kind]}" for u, p in procs]
    return "\n".join(lines) + "\n"


def parse(text: str) -> MockState:
    """The state from a file's text (the inverse of `render`)."""
    state = MockState(driver="", gpus=[])
    by_uuid = {}  # type: dict
    kinds = {v: k for k, v in KINDS.items()}
    for line in text.splitlines():
        key, _, rest = line.partition(" ")
        if key == "variant":
            state.variant = rest.strip()
        elif key == "driver":
            state.driver = rest
        elif key == "error":
            state.error = int(rest)
        elif key == "gpu":
            uuid, total, used, reserved, util, lost, mig, name = rest.split(" ", 7)
            g = MockGpu(uuid=uuid, name=name, memory_total_mib=int(total), memory_used_mib=int(used),
                        reserved_mib=int(reserved), utilization=int(util), lost=lost == "1", mig=mig == "1")
            state.gpus.append(g)
            by_uuid[uuid] = g
        elif key == "mig" and state.gpus:
            uuid, total, used = rest.split()
            m = MockMig(uuid=uuid, memory_total_mib=int(total), memory_used_mib=int(used))
            state.gpus[-1].migs.append(m)
            by_uuid[uuid] = m
        elif key == "proc":
            uuid, pid, used, kind = rest.split()
            if uuid in by_uuid:
                by_uuid[uuid].processes.append(MockProcess(pid=int(pid), used_mib=int(used), kind=kinds[kind]))
    return state


# -- changes (what `migrate sandbox gpu` does) ---------------------------------------------------
def device(state: MockState, spec: str) -> MockGpu | MockMig:
    """GPU `k`, or MIG instance `k:j`."""
    gpu_part, _, mig_part = str(spec).partition(":")
    if not gpu_part.isdigit() or int(gpu_part) >= len(state.gpus):
        raise StateError(f"no mock GPU {spec!r} (the host has {len(state.gpus)}: 0..{len(state.gpus) - 1})")
    g = state.gpus[int(gpu_part)]
    if not mig_part:
        return g
    if not mig_part.isdigit() or int(mig_part) >= len(g.migs):
        raise StateError(f"GPU {gpu_part} has no MIG instance {mig_part!r} ({len(g.migs)} instances)")
    return g.migs[int(mig_part)]


def add_process(state: MockState, spec: str, pid: int, used_mib: int, kind: str = "compute") -> None:
    """A process of someone else's holding `used_mib` on GPU/instance `spec`."""
    if kind not in KINDS:
        raise StateError(f"unknown process kind {kind!r} (compute, graphics or mps)")
    dev = device(state, spec)
    if isinstance(dev, MockGpu) and dev.mig:
        raise StateError(f"GPU {spec} is in MIG mode: put the process on an instance ({spec}:0)")
    remove_process(state, pid)
    dev.processes.append(MockProcess(pid=int(pid), used_mib=int(used_mib), kind=kind))


def remove_process(state: MockState, pid: int) -> bool:
    """Take `pid` off every device; True when it was listed."""
    found = False
    for g in state.gpus:
        for dev in [g, *g.migs]:
            keep = [p for p in dev.processes if p.pid != int(pid)]
            found = found or len(keep) != len(dev.processes)
            dev.processes = keep
    return found


def set_utilization(state: MockState, spec: str, pct: int) -> None:
    if not 0 <= int(pct) <= 100:
        raise StateError(f"utilisation {pct} is not a percentage")
    dev = device(state, spec)
    if not isinstance(dev, MockGpu):
        raise StateError("utilisation is per GPU (NVML does not report it for MIG instances)")
    dev.utilization = int(pct)


def set_unlisted(state: MockState, spec: str, mib: int) -> None:
    """Memory in use by processes NVML does not list (another container, a leak)."""
    if int(mib) < 0:
        raise StateError(f"{mib} MiB is negative")
    device(state, spec).memory_used_mib = int(mib)


def set_lost(state: MockState, spec: str, lost: bool = True) -> None:
    dev = device(state, spec)
    if not isinstance(dev, MockGpu):
        raise StateError("a whole GPU falls off the bus, not a MIG instance")
    dev.lost = lost


def set_mig(state: MockState, spec: str, instances: int) -> None:
    """MIG on with `instances` equal instances (1..7), or off with 0; the GPU's processes go."""
    g = device(state, spec)
    if not isinstance(g, MockGpu):
        raise StateError("MIG mode is per GPU")
    if not 0 <= int(instances) <= 7:
        raise StateError(f"{instances} MIG instances: choose 0 (off) to 7")
    i = state.gpus.index(g)
    g.processes = []
    g.mig = int(instances) > 0
    g.migs = [MockMig(uuid=mock_uuid(i, j), memory_total_mib=g.memory_total_mib // 8)
              for j in range(int(instances))]


def set_variant(state: MockState, variant: str) -> None:
    if variant not in VARIANTS:
        raise StateError(f"unknown driver generation {variant!r} (choose {', '.join(VARIANTS)})")
    state.variant = variant


def pids(state: MockState) -> list:
    """Every listed process id."""
    return [p.pid for g in state.gpus for dev in [g, *g.migs] for p in dev.processes]
