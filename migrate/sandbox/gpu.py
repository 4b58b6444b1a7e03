"""`migrate sandbox gpu HOST`: change what a sandbox host's mock GPUs show, as other people would.

Reads the host's mock NVML state (`mocknvml/state.py`) through `docker exec`, applies the changes
(pure functions of `state`), writes it back atomically and, for another driver generation,
installs that build of the library as libnvidia-ml.so.1. A "foreign process" is a real process:
one started as user bob on the host (`sleep`, named migrate-mock-gpu-holder), or any PID given;
like the driver, the library stops listing it once it has exited.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from migrate.errors import MigrateError, UsageError
from migrate.sandbox import recipe
from migrate.sandbox.manager import Sandbox, _docker
from migrate.sandbox.mocknvml import state as mstate

HOLDER = "migrate-mock-gpu-holder"

# Prints the state, a line "--", then the listed PIDs that are alive.
READ = r"""
st=/etc/migrate-sandbox/mock-nvml.state
[ -r "$st" ] || { echo "no mock GPU state at $st" >&2; exit 3; }
cat "$st"; echo --
for p in $(sed -n 's/^proc [^ ]* \([0-9]*\) .*/\1/p' "$st"); do [ -d /proc/$p ] && echo $p; done
exit 0
"""

# stdin: the new state; $VARIANT: the library build to install when it changed.
WRITE = r"""
set -eu
st=/etc/migrate-sandbox/mock-nvml.state
old=$(sed -n 's/^variant //p' "$st")
cat > "$st.tmp"; chmod 644 "$st.tmp"; mv "$st.tmp" "$st"
if [ "$old" != "$VARIANT" ]; then
  libdir=/usr/lib/$(uname -m)-linux-gnu; [ -d "$libdir" ] || libdir=/usr/lib
  cp "$MOCK_LIB_DIR/libnvidia-ml-$VARIANT.so" "$libdir/.libnvidia-ml.so.1.tmp"
  chmod 755 "$libdir/.libnvidia-ml.so.1.tmp"; mv "$libdir/.libnvidia-ml.so.1.tmp" "$libdir/libnvidia-ml.so.1"
  ldconfig
fi
"""

START_HOLDER = f"(exec -a {HOLDER} sleep 2147483647) </dev/null >/dev/null 2>&1 & echo $!"

# Ends the given PIDs that are holders this command started (never anything else).
STOP_HOLDERS = rf"""
for p in "$@"; do
  if tr '\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -q '^{HOLDER} '; then kill $p; fi
done
exit 0
"""


@dataclass
class GpuChanges:
    """What to change, in the order applied (see `apply`)."""

    reset: bool = False
    driver: str | None = None
    nvml_error: int | None = None  # 0: none
    utilization: list = field(default_factory=list)  # of (gpu spec, pct)
    unlisted: list = field(default_factory=list)  # of (gpu spec, MiB)
    lose: list = field(default_factory=list)
    restore: list = field(default_factory=list)
    mig: list = field(default_factory=list)  # of (gpu spec, instances)
    release: list = field(default_factory=list)  # of pid
    take: str | None = None  # gpu spec
    take_mib: int = 1024
    take_pid: int | None = None
    take_kind: str = "compute"

    @property
    def empty(self) -> bool:
        return self == GpuChanges()


def apply(st: mstate.MockState, ch: GpuChanges, gpus: int, pid: int | None = None) -> mstate.MockState:
    """The state after the changes (pure; `pid` is the process to list for `take`)."""
    if ch.reset:
        st = mstate.fresh(gpus, st.variant)
    if ch.driver:
        mstate.set_variant(st, ch.driver)
    if ch.nvml_error is not None:
        st.error = ch.nvml_error
    for spec, pct in ch.utilization:
        mstate.set_utilization(st, spec, pct)
    for spec, mib in ch.unlisted:
        mstate.set_unlisted(st, spec, mib)
    for spec in ch.lose:
        mstate.set_lost(st, spec, True)
    for spec in ch.restore:
        mstate.set_lost(st, spec, False)
    for spec, n in ch.mig:
        mstate.set_mig(st, spec, n)
    for p in ch.release:
        mstate.remove_process(st, p)
    if ch.take is not None and pid is not None:
        mstate.add_process(st, ch.take, pid, ch.take_mib, ch.take_kind)
    return st


class SandboxGpus:
    """The mock GPUs of one sandbox host."""

    def __init__(self, host: str, sandbox: Sandbox | None = None) -> None:
        self.sb = sandbox or Sandbox()
        self.host = host
        hosts = {h["alias"]: h for h in self.sb.describe()}
        if host not in hosts:
            names = ", ".join(hosts) or "none (run `migrate sandbox up --gpus N`)"
            raise UsageError(f"{host} is not a host of sandbox '{self.sb.s.name}'", hint=f"its hosts: {names}")
        self.container = hosts[host]["container"]
        self.gpus = int(hosts[host].get("fake_gpus") or 0)
        if hosts[host]["state"] != "running":
            raise MigrateError(f"{host} is {hosts[host]['state']}", hint="`migrate sandbox up` starts it")

    def _exec(self, script: str, *args: str, input: str | None = None, env: dict | None = None) -> str:
        argv = ["exec", "-i"] if input is not None else ["exec"]
        for k, v in (env or {}).items():
            argv += ["-e", f"{k}={v}"]
        proc = _docker(*argv, self.container, "sh", "-c", script, "sh", *args, input=input, check=False,
                       what=f"change the mock GPUs of {self.host}")
        if proc.returncode != 0:
            raise MigrateError(f"{self.host}: {(proc.stderr or proc.stdout).strip() or 'failed'}",
                               hint=f"`migrate sandbox up --gpus N` installs mock GPUs on {self.host}")
        return proc.stdout

    def read(self) -> tuple:
        """(state with exited processes dropped, as the library shows it; the dropped PIDs)."""
        out = self._exec(READ)
        text, _, alive = out.rpartition("--\n")
        st = mstate.parse(text)
        live = {int(p) for p in alive.split()}
        gone = [p for p in mstate.pids(st) if p not in live]
        for p in gone:
            mstate.remove_process(st, p)
        return st, gone

    def start_holder(self, user: str = "bob") -> int:
        """A real process of `user` on the host to stand for someone else's GPU job."""
        out = _docker("exec", "-u", user, self.container, "bash", "-c", START_HOLDER,
                      what=f"start a process as {user} on {self.host}").stdout
        return int(out.strip().splitlines()[-1])

    def change(self, ch: GpuChanges) -> dict:
        """Apply the changes; {host, state, started_pid, dropped}."""
        import copy

        st, gone = self.read()
        gpus = self.gpus or len(st.gpus)
        started = None
        try:
            if ch.take is not None:  # check everything before starting a process
                mstate.device(apply(copy.deepcopy(st), ch, gpus), ch.take)
                started = ch.take_pid if ch.take_pid is not None else self.start_holder()
            new = apply(st, ch, gpus, started)
        except mstate.StateError as exc:
            if started is not None and ch.take_pid is None:
                self._exec(STOP_HOLDERS, str(started))
            raise UsageError(str(exc)) from None
        self._exec(WRITE, input=mstate.render(new), env={"VARIANT": new.variant, "MOCK_LIB_DIR": recipe.MOCK_LIB_DIR})
        stop = list(ch.release) + (mstate.pids(st) if ch.reset else [])
        if stop:
            self._exec(STOP_HOLDERS, *[str(p) for p in stop])
        return {"host": self.host, "state": new.to_dict(), "started_pid": started, "dropped": gone}
