"""The `docker save` archive format: chain IDs, spooling a save, and emitting the archives we load.

`docker load` (classic store) reads `manifest.json`, and for each layer looks up its ChainID first:
a layer whose ChainID already exists on the daemon is skipped and its file is never opened. So an
archive that simply leaves those layer files out loads fine and gives the identical image ID (the
ID is the sha256 of the config, which we send unchanged). That is how `push-image` sends only the
missing layers with nothing installed on the remote.

For resume, a long run of missing layers is loaded in steps: each step is a synthetic "prefix
image" (the real config cut to the first k layers, history dropped, tagged `migrate-partial:...`)
so every finished step is committed on the remote and survives a broken connection.

Everything here is pure or works on local files; nothing talks to a daemon or a host.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import posixpath
import tarfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, Callable

from migrate.errors import MigrateError
from migrate.image.identity import containerd_name

CHUNK = 1 << 20
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# what containerd names a layer of a docker-save archive (by its compression), for an OCI layer type
DOCKER_LAYER_TYPES = {OCI_LAYER: "application/vnd.docker.image.rootfs.diff.tar",
                      OCI_LAYER + "+gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip"}
PARTIAL_REPO = "migrate-partial"
PARTIAL_LABEL = "migrate.partial-of"
# on a checkpoint: the content store got every layer blob of it (so a resumed push need not send them)
PARTIAL_BLOBS_LABEL = "migrate.partial-blobs"


class ArchiveError(MigrateError):
    """A docker-save archive is malformed or not what we expected."""


def sha256_digest(data: bytes) -> str:
    """`sha256:<hex>` of some bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """ChainIDs of a layer list: ChainID(L0)=DiffID(L0); ChainID(Ln)=sha256(ChainID(Ln-1) + ' ' + DiffID(Ln))."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(sha256_digest(f"{out[-1]} {diff_id}".encode()))
    return out


def short_id(image_id: str) -> str:
    """`sha256:abcdef...` -> `abcdef123456`."""
    return image_id.split(":", 1)[-1][:12]


# -- tar emission --------------------------------------------------------------------------------
@dataclass
class Member:
    """One regular file of an archive we emit: in-memory bytes, or a file opened when it is streamed."""

    name: str
    size: int
    data: bytes | None = None
    opener: Callable[[], BinaryIO] | None = None
    chunks: Callable[[], Iterator[bytes]] | None = None

    def reader(self) -> BinaryIO:
        """The content as a readable file object."""
        if self.opener is not None:
            return self.opener()
        if self.chunks is not None:
            return ChunkReader(self.chunks())  # type: ignore[return-value]
        return io.BytesIO(self.data or b"")

    @classmethod
    def from_bytes(cls, name: str, data: bytes) -> Member:
        return cls(name=name, size=len(data), data=data)

    @classmethod
    def from_file(cls, name: str, path: Path) -> Member:
        return cls(name=name, size=path.stat().st_size, opener=lambda: open(path, "rb"))


class ChunkReader(io.RawIOBase):
    """A read-only file object over an iterator of byte chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def _padding(size: int) -> int:
    return (-size) % 512


def tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file owned by root, mode 0644, mtime 0."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = 0
    info.type = tarfile.REGTYPE
    return info.tobuf(format=tarfile.PAX_FORMAT if len(name) > 99 else tarfile.USTAR_FORMAT)


def tar_size(members: Iterable[Member]) -> int:
    """Exact byte length of `tar_stream(members)`."""
    return sum(len(tar_header(m.name, m.size)) + m.size + _padding(m.size) for m in members) + 1024


def tar_stream(members: Iterable[Member], chunk: int = CHUNK) -> Iterator[bytes]:
    """The tar archive of `members`, as chunks (files are read lazily, `chunk` bytes at a time)."""
    for m in members:
        yield tar_header(m.name, m.size)
        if m.data is not None:
            yield m.data
        elif m.chunks is not None:
            sent = 0
            for block in m.chunks():
                sent += len(block)
                yield block
            if sent != m.size:
                raise ArchiveError(f"{m.name} is {sent} bytes, {m.size} were announced")
        else:
            assert m.opener is not None
            remaining = m.size
            with m.opener() as fh:
                while remaining:
                    block = fh.read(min(chunk, remaining))
                    if not block:
                        raise ArchiveError(f"{m.name} is shorter than announced ({remaining} bytes missing)")
                    remaining -= len(block)
                    yield block
        pad = _padding(m.size)
        if pad:
            yield b"\0" * pad
    yield b"\0" * 1024


# -- what one `docker load` gets -----------------------------------------------------------------
@dataclass
class LoadStep:
    """One archive for one `docker load`: a config (real or a checkpoint prefix), its tags, and which
    layer files ride along (the others are already on the remote)."""

    config: bytes
    diff_ids: list[str]
    send: list[int]
    tags: list[str] = field(default_factory=list)
    checkpoint: bool = False
    # left-out layers the host got from a registry: DiffID -> that registry's (media type, digest, size)
    registry_layers: dict[str, tuple[str, str, int]] = field(default_factory=dict)
    # OCI layout only: layer blob digests the host's content store holds (those need not ride along)
    blobs_present: set[str] = field(default_factory=set)
    manifest_style: str = "oci"  # or "docker": the manifest containerd makes of a docker-save archive
    # the local engine's own index.json entry and index/manifest blobs for this image (SavedArchive.target)
    target: tuple[dict, list[tuple[str, bytes]]] | None = None
    # the file this step is staged in on the host, resumable inside a layer (image/staged.py); "": streamed
    stage: str = ""

    @property
    def image_id(self) -> str:
        return sha256_digest(self.config)

    def layer_name(self, index: int) -> str:
        return f"{self.diff_ids[index].split(':', 1)[-1]}/layer.tar"

    def oci_members(self, layer_member: Callable[[str, str], Member],
                    descriptor: Callable[[str], tuple[str, str, int]]) -> list[Member]:
        """The same load as an OCI image layout, the format the containerd image store loads with layers
        left out (a trimmed docker-save archive fails there: `layer "…/layer.tar" not found`).

        Every layer is described in full by `descriptor(diff_id)` -> (media type, blob digest, size), so
        the manifest (whose digest is the image ID there) depends on the image alone, never on what the
        host had or where an earlier push stopped. A layer's blob rides along unless it is in
        `blobs_present` (the host's content store has it); a layer left out only because the host
        has its snapshot would leave the content store without it, and `docker save` or `docker push`
        there would export nothing. With `manifest_style` "docker" the manifest is the one containerd
        builds when it loads a docker-save archive without an OCI index (Engine <= 24), so the ID is the
        one `docker save | docker load` gives. The config is sent unchanged."""
        docker = self.manifest_style == "docker"
        layers = []
        blobs: list[Member] = []
        seen: set[str] = set()
        for i, diff_id in enumerate(self.diff_ids):
            if diff_id in self.registry_layers:  # pulled: the content store holds the registry's blob
                media, digest, size = self.registry_layers[diff_id]
            else:
                media, digest, size = descriptor(diff_id)
                if (i in self.send or digest not in self.blobs_present) and digest not in seen:
                    seen.add(digest)
                    blobs.append(layer_member(oci_blob_name(digest), diff_id))
            layers.append({"mediaType": DOCKER_LAYER_TYPES.get(media, media) if docker else media,
                           "digest": digest, "size": size})
        manifest_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        config_type = DOCKER_CONFIG if docker else OCI_CONFIG
        manifest = json.dumps({"schemaVersion": 2, "mediaType": manifest_type,
                               "config": {"mediaType": config_type, "digest": self.image_id, "size": len(self.config)},
                               "layers": layers}, separators=(",", ":")).encode()
        entry: dict[str, Any] = {"mediaType": manifest_type, "digest": sha256_digest(manifest), "size": len(manifest)}
        meta = [Member.from_bytes(oci_blob_name(entry["digest"]), manifest)]
        if self.target is not None and _names_these_layers(self.target[1][-1][1], self.image_id, layers):
            entry = self.target[0]  # the local engine's own manifest (or index): its ID, unchanged
            meta = [Member.from_bytes(oci_blob_name(d), raw) for d, raw in self.target[1]]
        entries = [dict(entry, annotations={"io.containerd.image.name": containerd_name(tag),
                                            "org.opencontainers.image.ref.name": tag.rsplit(":", 1)[-1]})
                   for tag in self.tags] or [entry]
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries},
                           separators=(",", ":")).encode()
        return [Member.from_bytes("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
                Member.from_bytes(oci_blob_name(self.image_id), self.config),
                *meta,
                *blobs,
                Member.from_bytes("index.json", index)]

    def oci_blobs(self, descriptor: Callable[[str], tuple[str, str, int]]) -> dict[str, int]:
        """The layer blobs this step's OCI layout carries (see `oci_members`): digest -> size."""
        out: dict[str, int] = {}
        for i, diff_id in enumerate(self.diff_ids):
            if diff_id not in self.registry_layers:
                _, digest, size = descriptor(diff_id)
                if i in self.send or digest not in self.blobs_present:
                    out[digest] = size
        return out

    def members(self, layer_member: Callable[[str, str], Member]) -> list[Member]:
        """Archive members: manifest, config, then the layer files to send (`layer_member(name, diff_id)`)."""
        config_name = f"{self.image_id.split(':', 1)[-1]}.json"
        manifest = [{"Config": config_name, "RepoTags": self.tags or None,
                     "Layers": [self.layer_name(i) for i in range(len(self.diff_ids))]}]
        out = [Member.from_bytes("manifest.json", json.dumps(manifest).encode()),
               Member.from_bytes(config_name, self.config)]
        seen: set[str] = set()
        for i in self.send:
            name = self.layer_name(i)
            if name not in seen:  # the same layer twice in one image is stored once
                seen.add(name)
                out.append(layer_member(name, self.diff_ids[i]))
        return out


def _names_these_layers(manifest: bytes, config_digest: str, layers: Sequence[dict]) -> bool:
    """Whether a manifest points at this config and these layer blobs (digest and size, in order)."""
    try:
        data = json.loads(manifest)
        theirs = [(str(x["digest"]), int(x["size"])) for x in data["layers"]]
        return data["config"]["digest"] == config_digest and theirs == [(x["digest"], x["size"]) for x in layers]
    except (ValueError, KeyError, TypeError):
        return False


def oci_blob_name(digest: str) -> str:
    """`sha256:ab…` -> `blobs/sha256/ab…` (where an OCI image layout keeps that blob)."""
    algo, _, hexpart = digest.partition(":")
    return f"blobs/{algo}/{hexpart}"


def archive_members(images: Sequence[tuple[bytes, Sequence[str], Sequence[str]]],
                    layer_member: Callable[[str, str], Member]) -> list[Member]:
    """A whole docker-save style archive of several images (config, diff_ids, tags), layers stored once."""
    manifest = []
    members: list[Member] = []
    seen: set[str] = set()
    for config, diff_ids, tags in images:
        step = LoadStep(config=config, diff_ids=list(diff_ids), send=[], tags=list(tags))
        config_name = f"{step.image_id.split(':', 1)[-1]}.json"
        manifest.append({"Config": config_name, "RepoTags": list(tags) or None,
                         "Layers": [step.layer_name(i) for i in range(len(diff_ids))]})
        members.append(Member.from_bytes(config_name, config))
        for i, diff_id in enumerate(diff_ids):
            name = step.layer_name(i)
            if name not in seen:
                seen.add(name)
                members.append(layer_member(name, diff_id))
    return [Member.from_bytes("manifest.json", json.dumps(manifest).encode()), *members]


def partial_tag(image_id: str, upto: int, total: int) -> str:
    """Tag of the checkpoint image holding the first `upto` of `total` layers of `image_id`."""
    return f"{PARTIAL_REPO}:{short_id(image_id)}-{upto}of{total}"


def checkpoint_config(config: bytes, upto: int, *, plain_blobs: bool = True) -> bytes:
    """The image config cut to its first `upto` layers (history dropped, labelled as ours).

    moby refuses configs with more non-empty history entries than layers, so history goes.
    `plain_blobs`: its load carries (or the host holds) every layer as a plain-tar blob, which
    PARTIAL_BLOBS_LABEL tells later pushes.
    """
    cfg = json.loads(config)
    image_id = sha256_digest(config)
    cfg["rootfs"] = dict(cfg.get("rootfs") or {}, diff_ids=list(cfg["rootfs"]["diff_ids"][:upto]))
    cfg.pop("history", None)
    inner = dict(cfg.get("config") or {})
    labels = dict(inner.get("Labels") or {})
    labels[PARTIAL_LABEL] = image_id
    if plain_blobs:
        labels[PARTIAL_BLOBS_LABEL] = "all"
    inner["Labels"] = labels
    cfg["config"] = inner
    return json.dumps(cfg, sort_keys=True, separators=(",", ":")).encode()


def plan_load_steps(config: bytes, diff_ids: Sequence[str], tags: Sequence[str], first_missing: int,
                    layer_sizes: Sequence[int], *, step_bytes: int) -> list[LoadStep]:
    """The loads that bring a host from `first_missing` committed layers to the whole image.

    Layers are grouped into steps of at least `step_bytes`; every step but the last is a checkpoint
    prefix image. When every layer is present (only the config differs) one config-only load remains.
    """
    n = len(diff_ids)
    image_id = sha256_digest(config)
    groups: list[list[int]] = []
    current: list[int] = []
    acc = 0
    for i in range(first_missing, n):
        current.append(i)
        acc += layer_sizes[i]
        if acc >= step_bytes and i < n - 1:
            groups.append(current)
            current, acc = [], 0
    groups.append(current)
    steps: list[LoadStep] = []
    for group in groups[:-1]:
        upto = group[-1] + 1
        steps.append(LoadStep(config=checkpoint_config(config, upto), diff_ids=list(diff_ids[:upto]), send=group,
                              tags=[partial_tag(image_id, upto, n)], checkpoint=True))
    steps.append(LoadStep(config=config, diff_ids=list(diff_ids), send=groups[-1], tags=list(tags)))
    return steps


# -- reading a saved archive ---------------------------------------------------------------------
@dataclass
class SavedImage:
    """One image inside a docker-save archive."""

    image_id: str
    config: bytes
    diff_ids: list[str]
    tags: list[str]
    layer_paths: list[str]

    @property
    def config_data(self) -> dict:
        return json.loads(self.config)


def parse_config(config: bytes) -> tuple[list[str], str, str]:
    """(diff_ids, architecture, os) of an image config."""
    try:
        data = json.loads(config)
        return list(data["rootfs"]["diff_ids"]), data.get("architecture", ""), data.get("os", "")
    except (ValueError, KeyError, TypeError) as exc:
        raise ArchiveError(f"malformed image config: {exc}") from exc


class SavedArchive:
    """A docker-save archive unpacked in a directory: configs and layer files by DiffID."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.images: dict[str, SavedImage] = {}
        self._layers: dict[str, Path] = {}
        manifest_path = root / "manifest.json"
        if not manifest_path.is_file():
            raise ArchiveError("not a docker-save archive (no manifest.json)",
                               hint="make it with `docker save` or `migrate push-image --to-file`")
        try:
            manifest = json.loads(manifest_path.read_bytes())
        except ValueError as exc:
            raise ArchiveError(f"malformed manifest.json: {exc}") from exc
        for entry in manifest:
            config = self._file(entry["Config"]).read_bytes()
            diff_ids, _, _ = parse_config(config)
            layers = list(entry.get("Layers") or [])
            if len(layers) != len(diff_ids):
                raise ArchiveError(f"manifest lists {len(layers)} layers but the config has {len(diff_ids)}")
            image = SavedImage(image_id=sha256_digest(config), config=config, diff_ids=diff_ids,
                               tags=list(entry.get("RepoTags") or []), layer_paths=layers)
            self.images[image.image_id] = image
            for diff_id, path in zip(diff_ids, layers):
                candidate = self._file(path, must_exist=False)
                if candidate.is_file():
                    self._layers.setdefault(diff_id, candidate)
        # Engine >= 25 also writes an OCI index: on a containerd store the image ID the daemon reports is
        # the digest of a manifest (or index) listed there, which points at the config.
        self.manifest_configs: dict[str, str] = {}
        # config digest -> (the index.json entry naming it, the index/manifest blobs down to its manifest)
        self.targets: dict[str, tuple[dict, list[tuple[str, bytes]]]] = {}
        index = root / "index.json"
        if index.is_file():
            try:
                for desc in json.loads(index.read_bytes()).get("manifests") or []:
                    self._walk_index(desc, None, [])
            except (ValueError, AttributeError, TypeError):
                self.manifest_configs, self.targets = {}, {}

    def _walk_index(self, desc: dict, top: dict | None, chain: list[tuple[str, bytes]]) -> None:
        digest = str(desc.get("digest") or "")
        try:
            path = self._file(oci_blob_name(digest), must_exist=False)
        except ArchiveError:
            return
        if not digest or not path.is_file():
            return
        raw = path.read_bytes()
        data = json.loads(raw)
        top = top or desc
        chain = [*chain, (digest, raw)]
        if isinstance(data.get("manifests"), list):  # an index (several platforms): its manifests
            for child in data["manifests"]:
                self._walk_index(child, top, chain)
        elif isinstance(data.get("config"), dict):
            config = str(data["config"].get("digest") or "")
            if config in self.images:
                self.manifest_configs[digest] = config
                self.manifest_configs.setdefault(str(top.get("digest")), config)
                entry = {k: top[k] for k in ("mediaType", "digest", "size") if k in top}
                self.targets.setdefault(config, (entry, chain))

    def target(self, config_digest: str) -> tuple[dict, list[tuple[str, bytes]]] | None:
        """How this archive names the image (its ID on the engine that saved it, a containerd store's
        manifest or index digest) and those blobs, so a load elsewhere can give the very same ID."""
        return self.targets.get(config_digest)

    def config_digest_of(self, image_id: str, diff_ids: Sequence[str], tags: Sequence[str] = ()) -> str:
        """The config digest (archive ID) of the image the daemon calls `image_id`: itself on a classic
        store, through index.json on a containerd store, else the one image with these layers (and tags)."""
        if image_id in self.images:
            return image_id
        if image_id in self.manifest_configs:
            return self.manifest_configs[image_id]
        same = [i for i in self.images.values() if i.diff_ids == list(diff_ids)]
        tagged = [i for i in same if set(tags) & set(i.tags)]
        for candidates in (tagged, same):
            if len(candidates) == 1:
                return candidates[0].image_id
        raise ArchiveError(f"image {short_id(image_id)} is not in the saved archive",
                           hint="rerun with -vv and report the `docker save` layout of this engine")

    def layer_descriptor(self, diff_id: str) -> tuple[str, str, int]:
        """(media type, blob digest, size) of a layer file as an OCI blob: a plain tar is its own DiffID;
        a compressed blob (a containerd store keeps pulled layers compressed) is named by its own digest."""
        path = self.layer_path(diff_id)
        size = path.stat().st_size
        with open(path, "rb") as fh:
            kind = detect_compression(fh.read(6))
        if kind == "none":
            return OCI_LAYER, diff_id, size
        if kind not in ("gzip", "zstd"):
            raise ArchiveError(f"layer {short_id(diff_id)} is {kind}-compressed, which an OCI layout cannot carry")
        if path.parent.name == "sha256" and path.parent.parent.name == "blobs":
            digest = "sha256:" + path.name
        else:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(CHUNK), b""):
                    h.update(block)
            digest = "sha256:" + h.hexdigest()
        return f"{OCI_LAYER}+{kind}", digest, size

    def _file(self, name: str, must_exist: bool = True) -> Path:
        path = (self.root / safe_member_name(name)).resolve()
        if must_exist and not path.is_file():
            raise ArchiveError(f"archive member {name} is missing")
        return path

    def has_layer(self, diff_id: str) -> bool:
        return diff_id in self._layers

    def layer_path(self, diff_id: str) -> Path:
        try:
            return self._layers[diff_id]
        except KeyError:
            raise ArchiveError(f"layer {short_id(diff_id)} is not in the archive") from None

    def layer_size(self, diff_id: str) -> int:
        return self.layer_path(diff_id).stat().st_size

    def layer_member(self, name: str, diff_id: str) -> Member:
        return Member.from_file(name, self.layer_path(diff_id))

    def config(self, image_id: str) -> bytes:
        return self.images[image_id].config


def safe_member_name(name: str) -> str:
    """A member name as a relative path that cannot leave the extraction directory."""
    norm = posixpath.normpath("/" + name).lstrip("/")
    if not norm or norm.startswith(".."):
        raise ArchiveError(f"unsafe path in archive: {name!r}")
    return norm


MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2", b"\xfd7zXZ": "xz"}


def detect_compression(head: bytes) -> str:
    """'gzip', 'zstd', 'bzip2', 'xz' or 'none' from the first bytes of a file."""
    for magic, name in MAGIC.items():
        if head.startswith(magic):
            return name
    return "none"


def open_maybe_compressed(path: Path) -> BinaryIO:
    """Open a (possibly gzip/zstd/bzip2/xz compressed) file for reading its plain bytes."""
    with open(path, "rb") as fh:
        kind = detect_compression(fh.read(6))
    if kind == "gzip":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if kind == "bzip2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)  # type: ignore[return-value]
    return open(path, "rb")


def spool_archive(stream: IO[bytes], root: Path, progress: Callable[[int], None] | None = None) -> SavedArchive:
    """Unpack a docker-save tar stream into `root` (regular files only, paths checked) and parse it."""
    root.mkdir(parents=True, exist_ok=True)
    links: list[tuple[str, str]] = []
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                name = safe_member_name(info.name)
                if info.isdir():
                    (root / name).mkdir(parents=True, exist_ok=True)
                elif info.isfile():
                    dest = root / name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(info)
                    assert src is not None
                    with open(dest, "wb") as out:
                        while True:
                            block = src.read(CHUNK)
                            if not block:
                                break
                            out.write(block)
                            if progress:
                                progress(len(block))
                elif info.issym() or info.islnk():
                    target = info.linkname if info.islnk() else posixpath.join(posixpath.dirname(name), info.linkname)
                    links.append((name, safe_member_name(target)))
    except tarfile.TarError as exc:
        raise ArchiveError(f"cannot read the image archive: {exc}") from exc
    for name, target in links:  # docker >= 25 may link legacy layer paths to blobs/
        dest, linked = root / name, root / target
        if linked.is_file() and not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(linked, dest)
    return SavedArchive(root)
