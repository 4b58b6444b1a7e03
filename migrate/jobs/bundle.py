"""The agent as a self-contained, versioned zipapp, built at runtime from `migrate/agent/`.

The zip holds the agent package (as `migrate_agent`, relative imports only) with the pinned
pure-Python `pynvml` copied from the installed nvidia-ml-py (`migrate_agent/_vendor/`, see
`migrate/agent/_vendor/__init__.py`), a generated `_build.py` with the
version, and a `__main__.py` that refuses python3 < 3.8 with a clear message. The version is
`<migrate version>-<hash of the contents>`, so any change to the agent ships a new file and
restarts the dispatcher, and an unchanged one is reused. The zip is deterministic (fixed
timestamps, sorted entries), so the same sources always give the same version.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from migrate import __version__
from migrate.agent._vendor import DISTRIBUTION, PYNVML_VERSION
from migrate.errors import MigrateError

AGENT_DIR = Path(__file__).resolve().parent.parent / "agent"
ZIP_PACKAGE = "migrate_agent"
VENDOR_DIR = "_vendor"  # pinned third-party modules (pynvml), shipped as migrate_agent/_vendor/
ZIP_MAIN = """import os
import sys
if sys.version_info < (3, 8):
    sys.stdout.write('{"ok": false, "error": "python3 %d.%d is too old for the migrate agent", '
                     '"hint": "the dispatcher needs python3 >= 3.8 on the host"}\\n' % sys.version_info[:2])
    sys.exit(1)
os.umask(0o077)
ZIPAPP = os.path.abspath(sys.argv[0])
# Python cannot cache bytecode inside a zip, so every call would compile the agent again (~0.2 s).
# Unpack once next to the zipapp (private, versioned like it) and import from there instead.
cache = ZIPAPP[:-4] + ".d" if ZIPAPP.endswith(".pyz") else None
if cache and not os.path.exists(os.path.join(cache, ".complete")):
    import shutil
    import zipfile
    tmp = "%s.tmp%d" % (cache, os.getpid())
    try:
        with zipfile.ZipFile(ZIPAPP) as zf:
            zf.extractall(tmp)
        open(os.path.join(tmp, ".complete"), "w").close()
        os.rename(tmp, cache)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
if cache and os.path.exists(os.path.join(cache, ".complete")):
    sys.path.insert(0, cache)
os.environ["MIGRATE_AGENT_ZIPAPP"] = ZIPAPP
from migrate_agent.main import main
sys.exit(main())
"""
_EPOCH = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class AgentBundle:
    """The built zipapp: its bytes, version and file name."""

    data: bytes
    version: str

    @property
    def filename(self) -> str:
        return f"migrate-agent-{self.version}.pyz"

    @property
    def remote_relpath(self) -> str:
        """Path under the remote $HOME."""
        return f".migrate/agent/{self.filename}"


def installed_pynvml() -> bytes:
    """The bytes of `pynvml.py` from the installed nvidia-ml-py distribution, which must be the pinned one.

    Looked up through the distribution's file list, not `import pynvml`, so another `pynvml` first
    on sys.path (the old `pynvml` project, a checkout) is never what ships.
    """
    pin = f"{DISTRIBUTION}=={PYNVML_VERSION}"
    hint = f"reinstall migrate (it pins {pin}), or `pip install '{pin}'`"
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise MigrateError(f"{DISTRIBUTION} is not installed: the agent cannot be built", hint) from None
    if dist.version != PYNVML_VERSION:
        raise MigrateError(f"{DISTRIBUTION} {dist.version} is installed but migrate pins {PYNVML_VERSION}: "
                           "the agent would differ from other laptops'", hint)
    for f in dist.files or ():
        if str(f) == "pynvml.py":
            return Path(str(dist.locate_file(f))).read_bytes()
    raise MigrateError(f"the installed {DISTRIBUTION} has no pynvml.py", hint)


def agent_sources() -> dict[str, bytes]:
    """Archive name -> content of every file that goes into the zipapp (except the version).

    The agent package from migrate's source tree, and `pynvml.py` from the installed, pinned
    nvidia-ml-py (`installed_pynvml`): the same pin gives the same bytes, so every laptop with the
    same migrate ships the same agent (and the same version hash).
    """
    files = {f"{ZIP_PACKAGE}/{p.name}": p.read_bytes() for p in sorted(AGENT_DIR.glob("*.py"))
             if p.name != "__main__.py"}
    for p in sorted((AGENT_DIR / VENDOR_DIR).glob("*.py")):
        files[f"{ZIP_PACKAGE}/{VENDOR_DIR}/{p.name}"] = p.read_bytes()
    files[f"{ZIP_PACKAGE}/{VENDOR_DIR}/pynvml.py"] = installed_pynvml()
    files["__main__.py"] = ZIP_MAIN.encode()
    return files


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name])
    return buf.getvalue()


@functools.lru_cache(maxsize=1)
def build_agent() -> AgentBundle:
    """Build (once per process) the agent zipapp."""
    files = agent_sources()
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    version = f"{__version__}-{digest.hexdigest()[:10]}"
    files[f"{ZIP_PACKAGE}/_build.py"] = f'BUILD_VERSION = "{version}"\n'.encode()
    return AgentBundle(data=_zip(files), version=version)
