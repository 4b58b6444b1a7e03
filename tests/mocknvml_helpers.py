"""The sandbox's mock NVML library, compiled here, for tests that run the real pynvml against it.

`MockNvml(tmp)` compiles the three driver generations (skips the test cleanly when gcc is missing),
keeps a state file and a call log, and gives the environment a process needs so that pynvml's
`CDLL("libnvidia-ml.so.1")` loads the mock: LD_LIBRARY_PATH to a directory holding the chosen
variant under the soname.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from migrate.sandbox import mocknvml
from migrate.sandbox.mocknvml import state as mstate

BUILD_CACHE = Path(os.environ.get("MIGRATE_TEST_MOCKNVML_CACHE", "/tmp/migrate-test-mocknvml"))


def built_libraries() -> dict:
    """{variant: .so path}; skips the calling test when gcc is missing."""
    if shutil.which("gcc") is None:
        import pytest

        pytest.skip("gcc is not installed, so the mock NVML library cannot be compiled "
                    "(scripts/bootstrap installs gcc and libc6-dev)")
    return mocknvml.build(BUILD_CACHE)


class MockNvml:
    """One mock world in a directory: state file, call log, the library under its soname."""

    def __init__(self, root: Path, gpus: int = 2, variant: str = "v3") -> None:
        self.root = Path(root)
        self.libs = built_libraries()
        self.libdir = self.root / "lib"
        self.libdir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / "mock-nvml.state"
        self.log_path = self.root / "mock-nvml.calls"
        self.write(mstate.fresh(gpus, variant))

    def write(self, st: mstate.MockState) -> None:
        """Write the state and install the library variant it names (atomically, as the host does)."""
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(mstate.render(st))
        tmp.replace(self.state_path)
        lib = self.libdir / "libnvidia-ml.so.1"
        tmp_lib = self.libdir / ".libnvidia-ml.so.1.tmp"
        shutil.copyfile(self.libs[st.variant], tmp_lib)
        tmp_lib.replace(lib)

    def read(self) -> mstate.MockState:
        return mstate.parse(self.state_path.read_text())

    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = str(self.libdir) + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
        env["MIGRATE_MOCK_NVML_STATE"] = str(self.state_path)
        env["MIGRATE_MOCK_NVML_LOG"] = str(self.log_path)
        return env

    def calls(self) -> list:
        """The function names the library logged, in order."""
        try:
            return [ln.split(" ", 1)[1] for ln in self.log_path.read_text().splitlines() if " " in ln]
        except OSError:
            return []
