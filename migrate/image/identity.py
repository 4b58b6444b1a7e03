"""Telling whether two daemons hold the same image, whatever their image store.

A classic (graph driver) store names an image by its config digest; the containerd image store
names it by its manifest digest, and `docker image inspect <config digest>` finds nothing there.
The manifest digest depends on how the image got into the store (a pull, a build, a load of a
docker-save or an OCI archive), so neither ID can be compared across stores.

What both stores report alike is the config's content, through `docker image inspect`: the layer
DiffIDs, the creation time (to the nanosecond), the platform and the run settings. Their digest,
the *fingerprint*, is what push-image compares when the IDs differ. Pure.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

# Config keys that change what a container does; inspect's other keys differ between engines
# (empty fields printed or omitted), so only these count, with empty values dropped.
RUN_SETTINGS = ("Cmd", "Entrypoint", "Env", "WorkingDir", "User", "Labels", "ExposedPorts", "Volumes",
                "StopSignal", "Shell", "Healthcheck", "OnBuild")


def _present(value: Any) -> bool:
    return value not in (None, "", [], {})


def fingerprint(created: str, arch: str, os_name: str, diff_ids: Sequence[str], config: dict | None) -> str:
    """A digest of what `docker image inspect` shows of an image's config (see the module docstring)."""
    settings = {k: (config or {}).get(k) for k in RUN_SETTINGS}
    data = {"created": created, "arch": arch, "os": os_name or "linux", "layers": list(diff_ids),
            "config": {k: v for k, v in settings.items() if _present(v)}}
    return "fp:" + hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def fingerprint_of_inspect(data: dict) -> str:
    """The fingerprint of one `docker image inspect` JSON object."""
    layers = (data.get("RootFS") or {}).get("Layers") or []
    return fingerprint(str(data.get("Created") or ""), data.get("Architecture", ""), data.get("Os", ""), layers,
                       data.get("Config"))


def containerd_name(tag: str) -> str:
    """`app:1` -> `docker.io/library/app:1`, `me/app:1` -> `docker.io/me/app:1`: the fully qualified name
    the containerd image store keys images by (a familiar name there is not found by inspect)."""
    first, sep, _ = tag.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return tag
    return f"docker.io/{tag}" if sep else f"docker.io/library/{tag}"
