"""Installing the pinned Ray into a private venv on a host, with no root and nothing outside ~/.migrate/ray.

Two paths, one venv:
- online: the host reaches the package index; `uv pip install 'ray[default]==V'` there.
- offline (default when the index is unreachable, or `--offline`): `pip download` here, for the host's
  python and machine, into migrate's cache (once per platform), the wheels pushed over the host's ssh
  (a tar stream), then `uv pip install --no-index --find-links`.
Either way the `uv` binary (from the `uv` wheel, also cached here) is pushed first: borrowed hosts
often lack python3-venv and pip. The venv is done when its marker file holds the version, so a rerun
does nothing.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

from migrate import paths, ui
from migrate.cluster import plan
from migrate.errors import MigrateError
from migrate.remote import shell
from migrate.remote.host import Host

PLATFORMS = {"x86_64": "manylinux2014_x86_64", "aarch64": "manylinux2014_aarch64"}
MARKER = "migrate-ray-version"
_CACHE_LOCK = threading.Lock()   # `up` installs hosts in parallel: one download per platform, not one per host


def cache_dir() -> Path:
    return paths.cache_root() / "ray-wheels"


def wheel_dir(python_tag: str, machine: str, version: str = plan.RAY_VERSION) -> Path:
    """Where the wheels for one host platform are cached: <cache>/ray-wheels/<V>/<cp311>-<x86_64>."""
    return cache_dir() / version / f"{python_tag}-{machine}"


def uv_path(machine: str) -> Path:
    return cache_dir() / f"uv-{plan.UV_VERSION}-{machine}" / "uv"


def pip_download_argv(dest: Path, python: str, machine: str, requirement: str, *, deps: bool = True) -> list[str]:
    """`pip download` for another platform and python (binary wheels only)."""
    argv = [sys.executable, "-m", "pip", "download", requirement, "--only-binary=:all:",
            "--platform", PLATFORMS[machine], "--python-version", python, "--implementation", "cp",
            "-d", str(dest), "--disable-pip-version-check", "-q"]
    return argv if deps else [*argv, "--no-deps"]


def _pip(argv: list[str], what: str) -> None:
    ui.debug("$ " + " ".join(argv))
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip() or res.stdout.strip() or "?").splitlines()[-1]
        raise MigrateError(f"downloading {what} here failed: {last}",
                           hint="the offline path needs this machine to reach the package index once")


def ensure_wheels(python: str, machine: str, version: str = plan.RAY_VERSION) -> Path:
    """The cached wheels for `ray[default]==version` on (python, machine), downloading them once."""
    tag = "cp" + python.replace(".", "")
    dest = wheel_dir(tag, machine, version)
    done = dest / ".complete"
    with _CACHE_LOCK:
        if done.exists():
            return dest
        dest.mkdir(parents=True, exist_ok=True)
        ui.step(f"downloading ray[default]=={version} wheels for {tag} {machine} into {dest} (once)")
        _pip(pip_download_argv(dest, python, machine, f"ray[default]=={version}"), f"Ray {version} wheels")
        done.write_text(version + "\n")
    return dest


def ensure_uv(machine: str) -> Path:
    """The static `uv` binary for `machine`, taken out of the uv wheel (cached)."""
    with _CACHE_LOCK:
        return _ensure_uv(machine)


def _ensure_uv(machine: str) -> Path:
    out = uv_path(machine)
    if out.exists():
        return out
    tmp = out.parent / "wheel"
    tmp.mkdir(parents=True, exist_ok=True)
    ui.step(f"downloading uv {plan.UV_VERSION} for {machine} (once)")
    _pip(pip_download_argv(tmp, "3.11", machine, f"uv=={plan.UV_VERSION}", deps=False), "uv")
    wheel = next(tmp.glob("uv-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(".data/scripts/uv"))
        data = z.read(member)
    part = out.with_suffix(".part")
    part.write_bytes(data)
    part.chmod(0o755)
    part.rename(out)
    return out


def bundle_tar(uv: Path, wheels: Path | None) -> bytes:
    """The tar stream pushed to a host: bin/uv and (offline) wheels/<V>/*.whl."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(uv), arcname="bin/uv")
        if wheels is not None:
            for w in sorted(wheels.glob("*.whl")):
                tar.add(str(w), arcname=f"wheels/{plan.RAY_VERSION}/{w.name}")
    return buf.getvalue()


def unpack_command() -> str:
    """On the host: unpack the pushed tar stream into ~/.migrate/ray."""
    return (f"cd && {shell.mkdir_private('.migrate')} && {shell.mkdir_private(plan.RAY_DIR)} && "
            f"tar -xf - -C {shell.home_path(plan.RAY_DIR)}")


def install_command(python_path: str, *, offline: bool, version: str = plan.RAY_VERSION, index_url: str = "") -> str:
    """Create the venv with uv and install ray[default]; the marker file is written last. Online, from
    `index_url` when the user set a mirror (`migrate mirror`; UV_NO_CONFIG keeps uv from reading it)."""
    venv = shell.home_path(plan.venv_dir(version))
    uv = shell.home_path(plan.UV_BIN)
    source = (["--no-index", "--find-links", "__WHEELS__"] if offline else
              ["--index-url", index_url] if index_url else [])
    words = " ".join(shell.home_path(f"{plan.WHEELS_DIR}/{version}") if a == "__WHEELS__" else shell.quote(a)
                     for a in source)
    env = "UV_PYTHON_DOWNLOADS=never UV_NO_CONFIG=1 "
    return (f"cd && rm -rf {venv} && {env}{uv} venv -q --no-cache --python {shell.quote(python_path)} {venv} && "
            f"{env}{uv} pip install -q --no-cache --python {venv}/bin/python {words} "
            f"{shell.quote(f'ray[default]=={version}')} && "
            f"printf '%s\\n' {shell.quote(version)} > {venv}/{MARKER}")


def push_bundle(remote: Host, data: bytes) -> None:
    """Stream the tar to the host over OpenSSH (the same settings as every verb)."""
    remote.stream_in(unpack_command(), data, what="pushing Ray's wheels")
