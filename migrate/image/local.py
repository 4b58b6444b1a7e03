"""The local Docker daemon: which images exist, their layers, and one `docker save` for all of them."""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from migrate import local, ui
from migrate.errors import LocalCommandError, MigrateError
from migrate.image import refs
from migrate.image.archive import ArchiveError, SavedArchive, spool_archive
from migrate.image.identity import fingerprint_of_inspect


@dataclass
class LocalImage:
    """An image the user named, as the local daemon (or an archive file) describes it."""

    ref: str
    image_id: str
    diff_ids: list[str]
    arch: str = ""
    os: str = "linux"
    size: int = 0
    repo_tags: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)  # the tags to give it on the remote
    fingerprint: str = ""  # identity across image stores (image/identity.py)
    # the config digest, when it differs from image_id (a local containerd store names images by their
    # manifest digest); learnt from `docker save`'s output, '' until then
    config_digest: str = ""

    @property
    def display(self) -> str:
        return self.tags[0] if self.tags else self.ref

    @property
    def archive_id(self) -> str:
        """The ID of this image inside an archive: its config digest."""
        return self.config_digest or self.image_id


def _docker(args: Sequence[str], *, check: bool = True, what: str | None = None,
            timeout: float | None = 120) -> subprocess.CompletedProcess:
    return local.run(["docker", *args], check=check, what=what or f"docker {args[0]}", timeout=timeout,
                     hint="is the local Docker daemon running (docker info)?")


def local_image_names() -> list[str]:
    """`repo:tag` of every local image (for close matches)."""
    proc = _docker(["image", "ls", "--format", "{{.Repository}}:{{.Tag}}"], check=False)
    return [n for n in proc.stdout.split() if "<none>" not in n]


def image_exists(ref: str) -> bool:
    """True when the local daemon knows `ref` (name, tag, ID or digest)."""
    return _docker(["image", "inspect", "--format", "{{.Id}}", ref], check=False).returncode == 0


def inspect_images(names: Sequence[str]) -> list[LocalImage]:
    """Inspect every named image; a missing one raises with the close matches."""
    local.require("docker")
    out: list[LocalImage] = []
    for ref in names:
        proc = _docker(["image", "inspect", "--format", "{{json .}}", ref], check=False)
        if proc.returncode != 0:
            if "no such image" not in proc.stderr.lower():
                raise LocalCommandError(f"docker image inspect {ref} failed: {proc.stderr.strip()}",
                                        argv=["docker", "image", "inspect", ref], exit_code=proc.returncode,
                                        hint="is the local Docker daemon running (docker info)?")
            matches = refs.close_matches(ref, local_image_names())
            hint = ("did you mean " + ", ".join(matches) + "?") if matches else "list local images with `docker images`"
            raise MigrateError(f"image {ref} not found locally", hint=hint)
        data = json.loads(proc.stdout)
        tag = refs.tag_for(ref, data.get("RepoTags") or [])
        layers = list((data.get("RootFS") or {}).get("Layers") or [])
        image = LocalImage(ref=ref, image_id=data["Id"], diff_ids=layers, arch=data.get("Architecture", ""),
                           os=data.get("Os", "linux"), size=int(data.get("Size") or 0),
                           repo_tags=list(data.get("RepoTags") or []), tags=[tag] if tag else [],
                           fingerprint=fingerprint_of_inspect(data))
        out.append(image)
    return merge_same_images(out)


def merge_same_images(images: Sequence[LocalImage]) -> list[LocalImage]:
    """Two names for one image ID become one image with both tags (sent once)."""
    merged: dict[str, LocalImage] = {}
    for img in images:
        if img.image_id in merged:
            for t in img.tags:
                if t not in merged[img.image_id].tags:
                    merged[img.image_id].tags.append(t)
        else:
            merged[img.image_id] = img
    return list(merged.values())


def local_driver() -> tuple[str, str, bool]:
    """(storage driver, DockerRootDir, containerd store?) of the local daemon."""
    proc = _docker(["info", "--format", "{{.Driver}}|{{.DockerRootDir}}|{{json .DriverStatus}}"], check=False)
    driver, _, rest = proc.stdout.strip().partition("|")
    root, _, status = rest.partition("|")
    return driver, root, "io.containerd.snapshotter" in status


@functools.lru_cache(maxsize=1)
def local_engine_major() -> int:
    """The local engine's major version (0 when unknown): from 25 on `docker save` writes an OCI index."""
    proc = _docker(["version", "--format", "{{.Server.Version}}"], check=False)
    try:
        return int(proc.stdout.strip().split(".", 1)[0])
    except ValueError:
        return 0


def save_images(image_ids: Sequence[str], spool: Path, *, total: int,
                progress: Callable[[int], None] | None = None) -> SavedArchive:
    """One `docker save` of all images, unpacked into `spool` (the daemon spools it anyway)."""
    argv = ["docker", "save", *image_ids]
    local.require("docker")
    ui.debug("$ " + " ".join(argv), level=2)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        archive = spool_archive(proc.stdout, spool, progress)
    except ArchiveError:
        proc.kill()
        proc.wait()
        err = proc.stderr.read().decode(errors="replace").strip()
        if err:
            raise LocalCommandError(f"docker save failed: {err.splitlines()[-1]}", argv=argv, exit_code=1,
                                    hint="check free space on this machine's Docker data-root and tmp") from None
        raise
    finally:
        proc.stdout.close()
    rc = proc.wait()
    err = proc.stderr.read().decode(errors="replace").strip()
    proc.stderr.close()
    if rc != 0:
        raise LocalCommandError(f"docker save failed: {err.splitlines()[-1] if err else f'exit code {rc}'}",
                                argv=argv, exit_code=rc, stderr=err,
                                hint=f"docker save needs about {ui.human_bytes(total)} free in the daemon's tmp")
    return archive
