"""What to do for one image on one host, and the checks that refuse before a byte moves. Pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from migrate import ui
from migrate.errors import MigrateError
from migrate.image.archive import PARTIAL_REPO, chain_ids, short_id
from migrate.image.local import LocalImage
from migrate.image.remote import RemoteDocker
from migrate.remote.probe import normalize_arch

UP_TO_DATE = "up to date"
TAG = "tag"
SEND = "send"


@dataclass
class ImagePlan:
    """One image on one host: nothing, only tags, or layers from `first_missing` on."""

    image_id: str
    display: str
    action: str
    total_layers: int
    first_missing: int = 0
    tags_to_add: list[str] = field(default_factory=list)
    tag_moves: list[tuple[str, str]] = field(default_factory=list)  # (tag, old image id)
    note: str = ""
    partials: list[str] = field(default_factory=list)  # leftover checkpoint tags of this image
    remote_id: str = ""  # the image's ID on the host when it is there (the manifest digest on containerd)
    archive_format: str = "docker-archive"  # or "oci-layout" (what a containerd image store loads trimmed)

    @property
    def missing_layers(self) -> int:
        return self.total_layers - self.first_missing if self.action == SEND else 0


def plan_image(image: LocalImage, facts: RemoteDocker) -> ImagePlan:
    """Compare the local image with the remote inventory.

    The same image is found by ID, config digest or fingerprint (a containerd store reports other IDs,
    see image/identity.py); layers are matched by ChainID, which both stores key their layers by."""
    present = facts.image(image.image_id, image.config_digest, image.fingerprint)
    tag_moves = [(t, owner.image_id) for t in image.tags
                 if (owner := facts.tag_owner(t)) is not None and owner is not present]
    partials = sorted(t for img in facts.images for t in img.tags
                      if t.startswith(f"{PARTIAL_REPO}:{short_id(image.archive_id)}-"))
    fmt = "oci-layout" if facts.containerd_store else "docker-archive"
    if present is not None:
        missing_tags = [t for t in image.tags if t not in present.tags]
        return ImagePlan(image.image_id, image.display, TAG if missing_tags else UP_TO_DATE, len(image.diff_ids),
                         len(image.diff_ids), tags_to_add=missing_tags, tag_moves=tag_moves, partials=partials,
                         remote_id=present.image_id, archive_format=fmt)
    have = facts.chain_set()
    first_missing = 0
    for i, chain in enumerate(chain_ids(image.diff_ids)):
        if chain not in have:
            break
        first_missing = i + 1
    return ImagePlan(image.image_id, image.display, SEND, len(image.diff_ids), first_missing, tag_moves=tag_moves,
                     partials=partials, archive_format=fmt)


def check_arch(image: LocalImage, facts: RemoteDocker, host: str, *, force: bool) -> None:
    """Refuse an image built for another CPU (docker load accepts it silently; it fails at run time)."""
    if image.os and facts.os_type and image.os != facts.os_type:
        raise MigrateError(f"{image.display} is a {image.os} image but the Docker on {host} runs "
                           f"{facts.os_type} containers")
    want = normalize_arch(image.arch or "")
    have = facts.docker_arch
    if want and have and want != have and not force:
        raise MigrateError(f"{image.display} is built for {want} but {host} is {have}",
                           hint=f"rebuild it for {have} (docker buildx build --platform linux/{have}), "
                                "or pass --force-arch if the host emulates it")


CONTAINERD_STORE_MIN_ENGINE = 24  # the first engine whose containerd image store loads OCI layouts


def check_store(facts: RemoteDocker, host: str) -> None:
    """Refuse an image store we cannot load into, before a byte moves."""
    if facts.containerd_store and facts.engine and not facts.engine_at_least(CONTAINERD_STORE_MIN_ENGINE):
        raise MigrateError(f"Docker {facts.engine} on {host} keeps images in the (experimental) containerd store, "
                           f"which loads image layouts only from Docker {CONTAINERD_STORE_MIN_ENGINE} on",
                           hint="upgrade Docker there (`migrate host-setup HOST --docker-source official "
                                "--force-source`), or turn the containerd-snapshotter feature off in daemon.json")


def check_access(facts: RemoteDocker, host: str) -> None:
    """A one-line error when we cannot use Docker on the host."""
    if facts.access == "none":
        raise MigrateError(f"Docker is not installed on {host}",
                           hint="install it with `migrate host-setup HOST`, or push with --format sif to a host "
                                "with apptainer")
    if facts.access == "down":
        raise MigrateError(f"the Docker daemon on {host} does not answer: {facts.error}",
                           hint="start it (sudo systemctl start docker) or run `migrate doctor HOST`")
    if facts.access == "denied":
        raise MigrateError(f"no access to Docker on {host}: {facts.error}",
                           hint="ask the owner to add you to the docker group (or for sudo)")
    if facts.inventory_error:
        raise MigrateError(f"cannot list the images on {host}: {facts.inventory_error}")


@dataclass
class DiskNeed:
    """Bytes a load needs on the remote: the layers themselves, the daemon's temporary copy, and (the
    containerd image store) the blobs its content store keeps besides the unpacked layers."""

    layers: int
    tmp: int
    blobs: int = 0


def disk_need(step_archive_sizes: Sequence[int], layer_bytes: int, *, containerd: bool = False,
              blob_bytes: int | None = None) -> DiskNeed:
    """Classic-store `docker load` untars each archive into <data-root>/tmp, then registers its layers.
    The containerd store writes each blob it gets (`blob_bytes`, default the layers) into its content
    store and unpacks each missing layer into a snapshot, both under containerd's root; no temporary copy."""
    if containerd:
        return DiskNeed(layers=layer_bytes, tmp=0, blobs=layer_bytes if blob_bytes is None else blob_bytes)
    return DiskNeed(layers=layer_bytes, tmp=max(step_archive_sizes, default=0))


C8D_ROOT_HINT = ("free space there (docker image prune), or ask the owner to move containerd's root "
                 "(`root` in /etc/containerd/config.toml)")


def _check_containerd_disk(need: DiskNeed, facts: RemoteDocker, host: str) -> bool:
    """The containerd store's check, on the filesystems of its content store and snapshots (under
    containerd's root, often not Docker's data-root); False when the host did not report them."""
    content, snaps = facts.disks.get("c8d_content"), facts.disks.get("c8d_snapshots")
    if not facts.c8d_root or content is None or snaps is None:
        return False
    root = facts.c8d_root
    if content[1] == snaps[1]:
        parts = [(need.blobs + need.layers, content, f"containerd's root {root}")]
    else:
        parts = [(need.blobs, content, f"containerd's content store {root}/io.containerd.content.v1.content"),
                 (need.layers, snaps, f"containerd's snapshots {root}/io.containerd.snapshotter.v1.*")]
    for bytes_needed, (free_kib, mount), where in parts:
        if bytes_needed > free_kib * 1024:
            raise MigrateError(
                f"not enough disk on {host}: the containerd image store needs ~{ui.human_bytes(bytes_needed)} "
                f"({ui.human_bytes(need.blobs)} of blobs + {ui.human_bytes(need.layers)} of unpacked layers) in "
                f"{where} ({mount}), only {ui.human_bytes(free_kib * 1024)} free", hint=C8D_ROOT_HINT)
    return True


def check_disk(need: DiskNeed, facts: RemoteDocker, host: str) -> None:
    """Refuse when the data-root (and tmp), or containerd's root for its image store, cannot hold the
    load, with the numbers."""
    if facts.containerd_store and _check_containerd_disk(need, facts, host):
        return
    need = DiskNeed(layers=need.layers + need.blobs, tmp=need.tmp)
    root_free = facts.free_kib("docker_root")
    root_mount = facts.disks.get("docker_root", (0, facts.root_dir))[1]
    if facts.tmp_same_fs or "docker_tmp" not in facts.disks:
        if root_free is not None and need.layers + need.tmp > root_free * 1024:
            raise MigrateError(
                f"not enough disk on {host}: loading needs ~{ui.human_bytes(need.layers + need.tmp)} "
                f"({ui.human_bytes(need.layers)} of layers + {ui.human_bytes(need.tmp)} temporary copy) on "
                f"{facts.root_dir or 'the Docker data-root'} ({root_mount}), "
                f"only {ui.human_bytes(root_free * 1024)} free",
                hint="free space there (docker image prune), or ask the owner to move Docker's data-root")
        return
    tmp_free = facts.free_kib("docker_tmp")
    tmp_mount = facts.disks["docker_tmp"][1]
    if root_free is not None and need.layers > root_free * 1024:
        raise MigrateError(
            f"not enough disk on {host}: the layers need ~{ui.human_bytes(need.layers)} on "
            f"{facts.root_dir} ({root_mount}), only {ui.human_bytes(root_free * 1024)} free",
            hint="free space there (docker image prune), or ask the owner to move Docker's data-root")
    if tmp_free is not None and need.tmp > tmp_free * 1024:
        raise MigrateError(
            f"not enough disk on {host}: docker load needs ~{ui.human_bytes(need.tmp)} of temporary space in "
            f"{facts.tmp_dir} ({tmp_mount}), only {ui.human_bytes(tmp_free * 1024)} free",
            hint="free space there, or ask the owner to point DOCKER_TMPDIR at a larger disk")


# paths at the top of an unpacked docker-save archive (<layer dir>/layer.tar, <config>.json,
# manifest.json; OCI: blobs/, index.json): `docker load` unpacks those into its temporary directory
_IMPORT_PATH = re.compile(r" /(?:[0-9a-f]{64}(?:/|\.json)|manifest\.json|repositories|blobs/|index\.json|oci-layout)")


_ANY_PATH = re.compile(r"(?:^|\s)/[^\s:]+")


def disk_full_hint(error: str, facts: RemoteDocker) -> str:
    """What to free when `docker load` ran out of space: the filesystem the error is about (pure).

    `docker load` first unpacks the stream into a temporary directory (DOCKER_TMPDIR, else
    <data-root>/tmp), then registers the layers in the data-root. When the preflight found the two on
    different filesystems, the error's path says which one filled up (the archive's own layout, or
    a path under DOCKER_TMPDIR: the temporary copy; any other path: a layer's file in the
    data-root); without a path both are named. `docker image prune` only helps the data-root.
    """
    root = facts.root_dir or "the Docker data-root"
    root_mount = facts.disks.get("docker_root", (0, ""))[1]
    root_fs = f"{root} ({root_mount})" if root_mount else root
    on_root = f"free space on the host's Docker data-root {root_fs} (docker image prune) and rerun"
    if facts.containerd_store and facts.c8d_root:
        mount = facts.disks.get("c8d_content", (0, ""))[1]
        return (f"free space in containerd's root {facts.c8d_root}{f' ({mount})' if mount else ''}, where the "
                "containerd image store keeps blobs and layers (docker image prune), and rerun")
    if facts.tmp_same_fs or "docker_tmp" not in facts.disks or facts.containerd_store:
        return on_root  # one filesystem, or the containerd store (no temporary copy: see disk_need)
    tmp_dir = facts.tmp_dir or f"{root}/tmp"
    tmp_fs = f"{tmp_dir} ({facts.disks['docker_tmp'][1]})"
    on_tmp = (f"docker load's temporary copy filled DOCKER_TMPDIR {tmp_fs}: free space there or ask the owner to "
              "point DOCKER_TMPDIR at a larger disk, then rerun (docker image prune frees the data-root, not this)")
    if tmp_dir in error or "docker-import" in error or _IMPORT_PATH.search(error):
        return on_tmp
    if (facts.root_dir and facts.root_dir in error) or _ANY_PATH.search(error):
        return on_root  # any other path is a file of a layer being registered in the data-root
    return (f"free space in DOCKER_TMPDIR {tmp_fs} (docker load's temporary copy) or on the data-root {root_fs} "
            "(docker image prune), then rerun")
