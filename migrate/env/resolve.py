"""uv here: the exact lock for a host's python and platform, and the local wheel cache (pip download).

The uv binary is the one `cluster up` ships (migrate.cluster.install.ensure_uv, cached once per
machine); it resolves here, so the host needs no index to know what to install. Wheels for hosts
that reach no index are downloaded once per (python, machine, manylinux level) into
<cache>/env-wheels/ and reused by every later push.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from migrate import paths, ui
from migrate.cluster import install
from migrate.env import plan
from migrate.env.source import Source
from migrate.errors import MigrateError

_LOCK = threading.Lock()   # hosts are pushed in parallel: one download per platform, not one per host


def local_uv() -> Path:
    """A uv that runs here: the cached static binary on Linux, else one on PATH."""
    machine = platform.machine()
    if sys.platform.startswith("linux") and machine in install.PLATFORMS:
        return install.ensure_uv(machine)
    found = shutil.which("uv")
    if not found:
        raise MigrateError("push-env needs uv here", hint="pip install uv")
    return Path(found)


def _run(argv: list[str], what: str, *, cwd: Path | None = None, hint: str | None = None) -> str:
    ui.debug("$ " + " ".join(argv))
    env = {**os.environ, **plan.UV_ENV}
    res = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env)
    if res.returncode != 0:
        lines = [x for x in (res.stderr.strip() or res.stdout.strip() or "?").splitlines() if x.strip()]
        why = next((x.strip() for x in lines if "error" in x.lower() or "because" in x.lower()), lines[-1].strip())
        raise MigrateError(f"{what} failed: {why}", hint=hint)
    return res.stdout


def requirements_of(src: Source, uv: Path, work: Path) -> Path:
    """The requirements file uv compiles from: the source itself, uv's export of its lock, or a venv's freeze."""
    if src.kind in ("requirements", "pyproject"):
        return src.path
    out = work / "input.txt"
    if src.kind == "uv.lock":
        _run([str(uv), "export", "--frozen", "--no-hashes", "--no-emit-project", "--no-header",
              "--format", "requirements-txt", "--project", str(src.path.parent), "-o", str(out), "-q"],
             f"reading {src.path.parent / 'uv.lock'}", hint="`uv lock` in the project refreshes an outdated lock")
        return out
    if src.kind == "venv":
        text = _run([str(uv), "pip", "freeze", "--exclude-editable", "--python", str(src.path / "bin" / "python")],
                    f"listing the packages of {src.path}")
        kept = [x for x in text.splitlines() if x.strip() and "==" in x and " @ " not in x]
        skipped = len([x for x in text.splitlines() if x.strip()]) - len(kept)
        if skipped:
            ui.warn(f"{skipped} package(s) of {src.path} installed from a path or URL are not pushed")
        out.write_text("\n".join(kept) + "\n")
        return out
    raise MigrateError(f"{src.kind} environments are not supported by push-env yet",
                       hint="push a requirements.txt or pyproject.toml")


def compile_lock(src: Source, python: str, machine: str, glibc: str) -> str:
    """The exact lock (`name==version` lines) for this python and platform, resolved here by uv."""
    uv = local_uv()
    with tempfile.TemporaryDirectory(prefix="migrate-env-") as tmp:
        work = Path(tmp)
        req = requirements_of(src, uv, work)
        out = work / "lock.txt"
        _run([str(uv), "pip", "compile", str(req), "--python-version", python,
              "--python-platform", plan.uv_platform(machine, glibc), "--no-header", "--no-annotate",
              "--only-binary", ":all:", "-q", "-o", str(out)],
             f"resolving {src.path} for python {python} on {machine}",
             hint=f"the host's python is {python}; --python picks another python the host has")
        return out.read_text()


def cache_dir(python: str, machine: str, glibc: str) -> Path:
    """<cache>/env-wheels/<cp311>-<manylinux_2_36_x86_64>: one wheel cache per host platform."""
    return paths.cache_root() / "env-wheels" / f"cp{python.replace('.', '')}-{plan.pip_platform(machine, glibc)}"


def cached_wheels(directory: Path) -> dict[tuple[str, str], Path]:
    return {plan.wheel_key(p.name): p for p in directory.glob("*.whl")} if directory.is_dir() else {}


def pip_download_argv(dest: Path, python: str, machine: str, glibc: str, requirements: Path) -> list[str]:
    """`pip download` of exact pins for another platform and python: wheels only, no dependencies
    (the lock already lists every package)."""
    tag = "cp" + python.replace(".", "")
    return [sys.executable, "-m", "pip", "download", "-r", str(requirements), "--no-deps", "--only-binary=:all:",
            *(w for p in plan.pip_platforms(machine, glibc) for w in ("--platform", p)),
            "--python-version", python, "--implementation", "cp",
            "--abi", tag, "--abi", "abi3", "--abi", "none", "-d", str(dest), "--disable-pip-version-check", "-q"]


def ensure_wheels(pins: list[tuple[str, str]], python: str, machine: str, glibc: str) -> list[Path]:
    """The wheel of every pin, from the local cache, downloading the missing ones (once per platform)."""
    dest = cache_dir(python, machine, glibc)
    with _LOCK:
        have = cached_wheels(dest)
        missing = [p for p in pins if p not in have]
        if missing:
            paths.private_dir(dest)
            ui.step(f"downloading {len(missing)} wheel(s) for cp{python.replace('.', '')} {machine} "
                    f"into {dest} (once)")
            with tempfile.TemporaryDirectory(prefix="migrate-env-") as tmp:
                req = Path(tmp) / "missing.txt"
                req.write_text("".join(f"{n}=={v}\n" for n, v in missing))
                _run(pip_download_argv(dest, python, machine, glibc, req), "downloading wheels here",
                     hint="a package without a wheel for the host's platform cannot be pushed; "
                          "hosts that reach an index build it there")
            have = cached_wheels(dest)
        still = [f"{n}=={v}" for n, v in pins if (n, v) not in have]
        if still:
            raise MigrateError(f"no wheel found for {', '.join(still[:3])}",
                               hint="pin a version that has a wheel for the host's python and platform")
        return [have[p] for p in pins]
