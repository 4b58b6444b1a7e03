"""`push_images`: preflight every host, save once, send each host only what it lacks, verify, clean up.

Phases:
1. local: every image exists (else close matches); one inspect each.
2. preflight, all hosts in parallel, before a byte moves: Docker access (direct / docker group /
   sudo, password asked once), engine, storage driver, arch, the remote's images and layers; a plan
   per image (up to date, tag only, or send layers from N on); tag moves announced.
3. local source, once for all hosts: the layers some host misses (a digest-checked read of the local
   layer store when possible, else one `docker save` spooled to a private cache dir).
4. per host in parallel: disk check with exact numbers, codec by measurement, checkpointed loads over
   one OpenSSH master, verification (image ID and layers), cleanup of checkpoint tags.
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from migrate import ui
from migrate.errors import MigrateError, UsageError
from migrate.image import fanout
from migrate.image import remote as rdocker
from migrate.image.archive import (
    PARTIAL_REPO,
    LoadStep,
    Member,
    SavedArchive,
    archive_members,
    checkpoint_config,
    open_maybe_compressed,
    parse_config,
    plan_load_steps,
    short_id,
    spool_archive,
    tar_size,
    tar_stream,
)
from migrate.image.compress import (
    Codec,
    CompressSpec,
    StreamCompressor,
    choose_codec,
    gzip_file,
    parse_compress,
)
from migrate.image.local import LocalImage, inspect_images, local_engine_major, save_images
from migrate.image.overlap import OverlapMixin, PullJob
from migrate.image.plan import (
    SEND,
    TAG,
    UP_TO_DATE,
    ImagePlan,
    check_access,
    check_arch,
    check_disk,
    check_store,
    disk_full_hint,
    disk_need,
    plan_image,
)
from migrate.image.remote import RemoteDocker, parse_facts
from migrate.image.staged import StagedMixin, display_path, of_image, tags_last
from migrate.image.stream import RateLimiter, StreamBroken, measure_link, stream
from migrate.image.via import MODES as VIA_MODES
from migrate.image.via import Registries, ViaDecision, announce, decide_for_host, registry_layers, result_fields
from migrate.paths import cache_root, private_dir
from migrate.remote import shell
from migrate.remote.connection import Remote, connect
from migrate.remote.hosts import ConnectOptions, HostSpec
from migrate.remote.openssh import ControlMaster, stream_ciphers
from migrate.remote.parallel import for_each_host
from migrate.remote.reap import reap_spools, spool_prefix

MIB = 1 << 20
CHUNK_SIZE = MIB
STEP_BYTES = 64 * MIB  # resume granularity: committed checkpoint every >= 64 MiB of layers
PROBE_MIN_PAYLOAD = 64 * MIB  # measure the link only when there is enough to send


@dataclass
class PushImageOptions:
    """Options of `migrate push-image` (one field per CLI option)."""

    compress: str = "auto"
    force_arch: bool = False
    dry_run: bool = False
    bwlimit: float | None = None  # bytes per second on the wire
    to_file: str | None = None
    from_file: str | None = None
    format: str = "docker"  # docker | sif
    sif_dir: str = ".migrate/images"
    progress: bool = True
    step_bytes: int = STEP_BYTES
    direct_layers: bool = True
    via: str = "auto"  # auto | push | pull: may the host pull registry layers itself (image/via.py)
    registry_login: str | None = None  # ask for this registry's login once instead of the local store
    relay: bool = True  # several hosts: one copy over this machine's link, the others fed host to host


@dataclass
class ImagePushResult:
    """What happened to one image on one host."""

    image: str
    host: str
    status: str  # "up to date" | "sent" | "failed" | "would send" (dry run)
    bytes_sent: int = 0
    image_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    detail: str = ""
    layers_sent: int = 0
    via: str = ""  # "pull": the host pulled `pulled` from a registry first; "push": SSH carried it all
    via_reason: str = ""
    pulled: str = ""
    relayed_bytes: int = 0  # bytes another host sent it over the hosts' network (image/fanout.py)
    fed_via: str = ""  # "this machine", the host that fed it, or "-" (nothing to send)
    fed_why: str = ""


# -- local sources -------------------------------------------------------------------------------
class LayerCache:
    """Layer files for archives, from one source, with per-layer gzip made once and shared by hosts."""

    def __init__(self, source, workdir: Path, manifest_style: str = "oci") -> None:
        self.source = source
        self.workdir = workdir
        # the manifest a whole `docker save | docker load` of this source gives on a containerd store:
        # "docker" when the save has no OCI index (Engine <= 24), else "oci" (archive.LoadStep.oci_members)
        self.manifest_style = manifest_style
        self._locks: dict[tuple[str, int], threading.Lock] = defaultdict(threading.Lock)
        self._guard = threading.Lock()

    def size(self, diff_id: str) -> int:
        return self.source.layer_size(diff_id)

    def config(self, image_id: str) -> bytes:
        return self.source.config(image_id)

    def descriptor(self, diff_id: str) -> tuple[str, str, int]:
        """(media type, digest, size) of the plain layer as an OCI blob."""
        return self.source.layer_descriptor(diff_id)

    def member(self, name: str, diff_id: str, gzip_level: int | None = None) -> Member:
        plain = self.source.layer_member(name, diff_id)
        if gzip_level is None:
            return plain
        with self._guard:
            lock = self._locks[(diff_id, gzip_level)]
        dest = private_dir(self.workdir / f"gzip{gzip_level}") / diff_id.split(":", 1)[-1]
        with lock:
            if not dest.exists():
                gzip_file(io.BufferedReader(plain.reader(), CHUNK_SIZE), dest, gzip_level)
        return Member.from_file(name, dest)


def _spool_dir() -> Path:
    """This run's private spool, named after its process; first the spools of dead runs go (remote/reap.py)."""
    base = private_dir(cache_root() / "push-image")
    reap_spools(base)
    return Path(tempfile.mkdtemp(prefix=spool_prefix(), dir=base))


def _check_local_space(path: Path, need: int) -> None:
    free = shutil.disk_usage(path).free
    if need > free:
        raise MigrateError(f"not enough disk on this machine: the image spool needs ~{ui.human_bytes(need)} in "
                           f"{path}, only {ui.human_bytes(free)} free",
                           hint="free space, or set MIGRATE_CACHE_DIR to a larger disk")


def local_images_from_archive(archive: SavedArchive, names: Sequence[str]) -> list[LocalImage]:
    """The images of a docker-save archive (all, or those named by tag or ID)."""
    out: list[LocalImage] = []
    for image in archive.images.values():
        _, arch, os_name = parse_config(image.config)
        size = sum(archive.layer_size(d) for d in image.diff_ids if archive.has_layer(d))
        out.append(LocalImage(ref=image.tags[0] if image.tags else short_id(image.image_id), image_id=image.image_id,
                              diff_ids=image.diff_ids, arch=arch, os=os_name or "linux", size=size,
                              repo_tags=image.tags, tags=list(image.tags)))
    if not names:
        return out
    chosen: list[LocalImage] = []
    for name in names:
        want = name if ":" in name.rsplit("/", 1)[-1] or name.startswith("sha256:") else name + ":latest"
        match = [i for i in out if want in i.repo_tags or i.image_id == want or short_id(i.image_id).startswith(name)]
        if not match:
            have = ", ".join(t for i in out for t in i.repo_tags) or "untagged images only"
            raise MigrateError(f"image {name} is not in the archive", hint=f"it holds: {have}")
        img = match[0]
        if want in img.repo_tags:
            img.tags = [want]
        if img not in chosen:
            chosen.append(img)
    return chosen


# -- per-host state ------------------------------------------------------------------------------
@dataclass
class HostSession:
    """One host during a push: its connection, what its Docker has, and the plans."""

    host: str
    remote: Remote
    facts: RemoteDocker
    plans: dict[str, ImagePlan] = field(default_factory=dict)
    sif_present: dict[str, bool] = field(default_factory=dict)
    via: dict[str, ViaDecision] = field(default_factory=dict)  # image ID -> pull or push, and why
    relay_address: object = None  # where other hosts reach its sshd ("" = nowhere; image/fanout.py)
    can_tee: bool = False  # as a seed: it has GNU `tee -p` to feed riders (image/fanout.py's Convoy)
    convoy: fanout.Convoy | None = None  # as a seed, while it is pushed: the receivers riding its stream

    @property
    def name(self) -> str:
        return self.remote.name

    def docker(self, argv: list[str], *, what: str, check: bool = True):
        cmd, sudo = rdocker.docker_command(self.facts.access, argv)
        return self.remote.run(cmd, sudo=sudo, check=check, what=what)


def sif_name(image: LocalImage) -> str:
    """`repo/app:1` -> `repo_app_1.sif`; an untagged image is named by its short ID."""
    base = image.tags[0] if image.tags else short_id(image.image_id)
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base) + ".sif"


def sif_path(options: PushImageOptions, image: LocalImage) -> str:
    return posixpath.join(options.sif_dir, sif_name(image))


def preflight_host(host: str, conn: ConnectOptions, get_images: Callable[[], Sequence[LocalImage]],
                   options: PushImageOptions, registries: Registries | None = None) -> HostSession:
    """Connect and learn everything needed to plan; raise a one-line error for anything that blocks.

    `get_images()` may still be running (the local inspect overlaps the remote round trip)."""
    remote = connect(host, conn)
    try:
        images = get_images()
        want = [i.image_id for i in images]
        facts = parse_facts(remote.run(shell.sh_c(rdocker.with_wanted(rdocker.FACTS_SCRIPT, want)),
                                       what="inspect Docker").stdout)
        session = HostSession(host=host, remote=remote, facts=facts)
        if options.format == "sif":
            if not facts.sif_tool:
                raise MigrateError(f"neither apptainer nor singularity is installed on {remote.name}",
                                   hint="ask the owner to install apptainer, or drop --format sif to push to Docker")
            for img in images:
                check_arch(img, facts, remote.name, force=options.force_arch)
                marker = sif_path(options, img) + ".image-id"
                res = remote.run(f"cat {shell.quote(marker)} 2>/dev/null", check=False)
                session.sif_present[img.image_id] = res.ok and res.stdout.strip() == img.image_id
            return session
        check_access(facts, remote.name)
        if facts.access == "sudo-password":
            remote.check_sudo()  # asks for the password once, proves it
        if not facts.inventoried:
            cmd, sudo = rdocker.script_command(facts.access, rdocker.with_wanted(rdocker.INVENTORY_SCRIPT, want))
            parse_facts(remote.run(cmd, sudo=sudo, what="list remote images").stdout, into=facts)
            check_access(facts, remote.name)
        if facts.inventory_scope == "wanted" and any(
                t not in (facts.image(i.image_id, i.config_digest, i.fingerprint) or i).tags
                for i in images for t in i.tags):
            # a tag must be added: list everything to see whether it moves from another image
            facts.images, facts.inventoried = [], False
            cmd, sudo = rdocker.script_command(facts.access, rdocker.INVENTORY_SCRIPT)
            parse_facts(remote.run(cmd, sudo=sudo, what="list remote images").stdout, into=facts)
        if not facts.inventoried:
            raise MigrateError(f"cannot list the images on {remote.name}", hint="run `migrate doctor HOST`")
        check_store(facts, remote.name)
        if facts.os_type and facts.os_type != "linux":
            raise MigrateError(f"the Docker on {remote.name} runs {facts.os_type} containers; only linux is supported")
        for img in images:
            check_arch(img, facts, remote.name, force=options.force_arch)
            session.plans[img.image_id] = plan_image(img, facts)
        if registries is not None:
            for img in images:  # before a byte moves: a refusal (--via pull, wrong password) stops this host
                decision = decide_for_host(registries, remote, img, session.plans[img.image_id], facts)
                session.via[img.image_id] = decision
                announce(remote.name, img, decision)
        return session
    except BaseException:
        remote.close()
        raise


# -- sending -------------------------------------------------------------------------------------
class Pusher(OverlapMixin, StagedMixin):
    """Runs phase 4 for every host, sharing the local layer source and one progress display."""

    def __init__(self, images: Sequence[LocalImage], layers: LayerCache | None, options: PushImageOptions,
                 progress, registries: Registries | None = None) -> None:
        self.images = images
        self.registries = registries
        self.layers = layers
        self.options = options
        self.progress = progress
        self.spec: CompressSpec = parse_compress(options.compress)

    # one host ---------------------------------------------------------------------------------
    def push_host(self, session: HostSession) -> list[ImagePushResult]:
        results: list[ImagePushResult] = []
        pulls = PullJob(session, self.images, self.registries, self.options.via)  # starts the host's pulls
        need_stream = any(self._needs_stream(session, img) for img in self.images)
        with ExitStack() as stack:
            master: ControlMaster | None = None
            codec: Codec | None = None
            broken: str | None = None
            for img in self.images:
                t0 = time.monotonic()
                if broken:
                    results.append(self._result(img, session, "failed", t0, error=broken))
                    continue
                try:
                    if need_stream and master is None:
                        master = stack.enter_context(self._master(session))
                        codec = self._codec(session, master)
                    if self.options.format == "sif":
                        results.append(self._push_sif(session, img, master, codec, t0))
                    elif pulls.pulls(img.image_id):
                        results.append(self._push_overlapped(session, img, master, codec, t0, pulls))
                    else:
                        results.append(self._push_docker(session, img, master, codec, t0))
                except StreamBroken as exc:
                    broken = exc.one_line()
                    results.append(self._result(img, session, "failed", t0, error=broken))
                except MigrateError as exc:
                    results.append(self._result(img, session, "failed", t0, error=exc.one_line()))
        return results

    def _needs_stream(self, session: HostSession, img: LocalImage) -> bool:
        if self.options.format == "sif":
            return not session.sif_present.get(img.image_id)
        return session.plans[img.image_id].action == SEND

    def _result(self, img: LocalImage, session: HostSession, status: str, t0: float, **kw) -> ImagePushResult:
        return ImagePushResult(image=img.display, host=session.host, status=status, image_bytes=self._image_bytes(img),
                               seconds=round(time.monotonic() - t0, 3), **result_fields(session.via.get(img.image_id)),
                               **kw)

    def _image_bytes(self, img: LocalImage) -> int:
        return img.size

    def _master(self, session: HostSession) -> ControlMaster:
        remote = session.remote
        cipher = stream_ciphers(remote.configs, remote_has_aes=bool(session.facts.aes))
        return ControlMaster(remote.openssh_argv(), alias=remote.target.alias, display=remote.name, cipher=cipher,
                         connect_timeout=remote.target.connect_timeout, before_spawn=remote.configs.openssh_file)

    def _payload(self, session: HostSession) -> int:
        total = 0
        for img in self.images:
            if self.options.format == "sif":
                total += self._image_bytes(img) if not session.sif_present.get(img.image_id) else 0
                continue
            plan = session.plans[img.image_id]
            if plan.action == SEND and self.layers is not None:
                total += sum(self.layers.size(d) for d in img.diff_ids[_first_sent(session, img.image_id):])
        return total

    def _codec(self, session: HostSession, master: ControlMaster) -> Codec:
        facts = session.facts
        payload = self._payload(session)
        engine_zstd = facts.engine_at_least(23) and self.options.format != "sif"
        link = None
        if self.spec.name == "auto" and payload >= PROBE_MIN_PAYLOAD:
            link = measure_link(master)
            if self.options.bwlimit:
                link = min(link, self.options.bwlimit / 1e6)
        elif self.options.bwlimit:
            link = self.options.bwlimit / 1e6
        codec = choose_codec(self.spec, engine_loads_zstd=engine_zstd, remote_zstd=bool(facts.zstd),
                             link_mb_s=link, payload=payload)
        if self.options.format == "sif" and codec.layer_gzip is not None:
            codec = Codec(reason="sif: plain archive")
        ui.debug(f"{session.name}: compression {codec.label} ({codec.reason})")
        return codec

    def _blobs_for_steps(self, session: HostSession, img: LocalImage, steps: Sequence[LoadStep]) -> int:
        """Which layer blobs each OCI layout carries: all but those the host's content store is known to
        hold (the blobs of complete images of ours, and of earlier steps of this run), so that every
        layer's blob is in the content store after the load (`docker save`/`docker push` there work).
        Returns the bytes of blobs sent."""
        layers = self.layers
        assert layers is not None
        known = session.facts.blob_layers()
        present = {d for d in img.diff_ids if d in known}
        sent: dict[str, int] = {}
        plain = self._plain_blobs(session, img)
        for step in steps:
            if step.checkpoint and not plain:  # its label would tell later pushes of plain blobs it lacks
                step.config = checkpoint_config(layers.config(img.archive_id), len(step.diff_ids), plain_blobs=False)
            step.manifest_style = layers.manifest_style
            if not step.checkpoint and not step.registry_layers and isinstance(layers.source, SavedArchive):
                step.target = layers.source.target(img.archive_id)
            step.blobs_present = set(present)
            carried = step.oci_blobs(layers.descriptor)
            present |= set(carried)
            sent.update(carried)
        return sum(sent.values())

    def _plain_blobs(self, session: HostSession, img: LocalImage) -> bool:
        """Whether the host's content store gets every layer of `img` as a plain-tar blob (digest = DiffID):
        what RemoteDocker.blob_layers trusts. Not so for compressed blobs (a containerd laptop's, a pull's)."""
        layers = self.layers
        return layers is not None and not registry_layers(session.via.get(img.image_id)) and \
            all(layers.descriptor(d)[1] == d for d in img.diff_ids)

    def _step_members(self, step: LoadStep, codec: Codec | None, oci: bool) -> list[Member]:
        """One load's archive: docker-save layout, or an OCI layout for a containerd image store."""
        layers = self.layers
        assert layers is not None
        if oci:
            return step.oci_members(layers.member, layers.descriptor)
        return step.members(lambda n, d: layers.member(n, d, codec.layer_gzip if codec else None))

    def _stream_steps(self, session: HostSession, img: LocalImage, master: ControlMaster, codec: Codec,
                      steps: list[LoadStep], script: str, oci: bool = False,
                      as_user: bool = False, riders: list | None = None) -> tuple[int, int, list]:
        """Stream each step through `script` on the host; return (wire bytes, layers sent, results).

        `as_user`: run `script` as the login user (no docker rights, no sudo password line, no load check).
        `riders`: receivers fed each step's archive as it arrives (image/fanout.py's Convoy; `script` is
        then the plain load); one whose load fails is dropped from the list."""
        members_per_step = [tags_last(self._step_members(step, None, oci)) if step.stage else
                            self._step_members(step, codec, oci) for step in steps]
        total = sum(tar_size(m) for m in members_per_step)
        task = self.progress.add_task(f"{img.display} → {session.name}", total=total) if self.progress else None
        limiter = RateLimiter(self.options.bwlimit)
        first = (session.remote.sudo_password() + "\n").encode() \
            if session.facts.access == "sudo-password" and not as_user else None
        command = shell.sh_c(script) if as_user else rdocker.stream_command(session.facts.access, script)
        wire = 0
        layers_sent = 0
        outputs = []
        done = 0
        try:
            for step, members in zip(steps, members_per_step):
                done = steps.index(step)
                if step.stage:  # resumable inside its big layer
                    res = self._stream_staged(session, img, master, codec, step, members, limiter, task, riders)
                else:
                    convoy = session.convoy if riders else None
                    decompress = convoy.decompress(codec) if convoy else None
                    step_command = command if not convoy else convoy.command(
                        rdocker.stream_command(session.facts.access, "docker load"), riders or [], decompress)
                    res = stream(master.argv(step_command), tar_stream(members),
                                 StreamCompressor(codec), display=session.name, first_line=first, limiter=limiter,
                                 on_input=(lambda n: self.progress.advance(task, n)) if task is not None else None)
                    if convoy:  # the riders got the archive as the seed's load reads it (decompressed there)
                        passed = tar_size(members) if decompress or codec.outer == "none" else res.wire_bytes
                        res = convoy.settle(self, step, riders or [], res, passed)
                wire += res.wire_bytes
                outputs.append((step, res))
                if res.exit_code != 0:
                    break
                layers_sent += len(step.send)
                if not as_user:
                    self._after_load(session, step, res)
        except StreamBroken as exc:
            note = getattr(exc, "note", "")  # a staged step: how much of it the host keeps, and where
            if exc.display:  # count every step of this image, not only the one that broke
                exc = StreamBroken.lost_after(exc.display, wire + exc.wire_bytes, exc.detail)
            if self.options.format != "sif" and done:
                kept = sum(len(st.send) for st in steps[:done]) + steps[0].send[0]
                exc.message += (f"; {kept} of {len(img.diff_ids)} layers of {img.display} are committed there "
                                f"(kept as {PARTIAL_REPO}:{short_id(img.image_id)}-*)")
            exc.message += note
            raise exc from None
        finally:
            if task is not None:
                self.progress.remove_task(task)
        return wire, layers_sent, outputs

    def _after_load(self, session: HostSession, step: LoadStep, res) -> None:
        """Check one `docker load`: exit code, hidden errors, the loaded ID; record it in the inventory."""
        if self.options.format == "sif":
            return
        tags, ids, errors = rdocker.parse_load_output(res.stdout, res.stderr)
        if errors:
            raise MigrateError(f"docker load on {session.name} reported: {errors[-1]}")
        if step.tags and not set(step.tags) <= set(tags) and step.image_id not in ids:
            raise MigrateError(f"docker load on {session.name} did not load {step.tags[0]}: "
                               f"{(res.stdout.strip().splitlines() or ['no output'])[-1]}")
        session.facts.add_image(ids[-1] if ids else step.image_id, step.tags, step.diff_ids,
                                config_digest=step.image_id)

    def _load_failed(self, session: HostSession, res) -> MigrateError:
        text = (res.stderr.strip() or res.stdout.strip()).splitlines()
        last = text[-1] if text else f"exit code {res.exit_code}"
        hint = None
        if "no space left" in last.lower():
            hint = disk_full_hint(last, session.facts)
        elif "layer.tar" in last and "not found" in last:
            hint = ("this engine refuses an archive with layers left out (a containerd image store that "
                    "`docker info` did not reveal?); run `migrate doctor HOST` and report it")
        elif "invalid tar header" in last.lower():
            hint = "this engine cannot read the stream; try --compress none"
        return MigrateError(f"docker load failed on {session.name}: {last}", hint=hint)

    def _push_docker(self, session: HostSession, img: LocalImage, master: ControlMaster | None, codec: Codec | None,
                     t0: float) -> ImagePushResult:
        plan = plan_image(img, session.facts)  # again: an earlier image may have brought shared layers
        if plan.action in (UP_TO_DATE, TAG):
            ref = plan.remote_id or img.image_id  # the host's own ID for it (a containerd store has another)
            for tag in plan.tags_to_add:
                session.docker(["tag", ref, tag], what=f"tag {tag}")
            session.facts.add_image(ref, plan.tags_to_add, img.diff_ids, image_fingerprint=img.fingerprint)
            self._drop_partials(session, plan.partials)
            self._drop_staged(session, img)
            detail = "tagged " + ", ".join(plan.tags_to_add) if plan.tags_to_add else "already there"
            return self._result(img, session, UP_TO_DATE, t0, detail=detail)
        assert master is not None and codec is not None and self.layers is not None
        sizes = [self.layers.size(d) if i >= plan.first_missing else 0 for i, d in enumerate(img.diff_ids)]
        oci = plan.archive_format == "oci-layout"
        steps = plan_load_steps(self.layers.config(img.archive_id), img.diff_ids, img.tags, plan.first_missing, sizes,
                                step_bytes=self.options.step_bytes)
        for s in steps:  # layers the host pulled from a registry are named as the registry names them
            s.registry_layers = registry_layers(session.via.get(img.image_id))
        blob_bytes = self._blobs_for_steps(session, img, steps) if oci else None
        step_sizes = [tar_size(self._step_members(s, None, oci)) for s in steps]
        need = disk_need(step_sizes, sum(sizes[plan.first_missing:]), containerd=session.facts.containerd_store,
                         blob_bytes=blob_bytes)
        check_disk(need, session.facts, session.name)
        self._plan_staging(session, img, steps, sizes, oci, need)
        convoy = session.convoy
        riders = convoy.board(img, plan, need, codec, registry=bool(steps[0].registry_layers)) if convoy else []
        checkpoints = [s.tags[0] for s in steps if s.checkpoint]
        wire, layers_sent, outputs = self._stream_steps(session, img, master, codec, steps,
                                                        rdocker.load_script(codec.remote_decompress), oci=oci,
                                                        riders=riders)
        step, res = outputs[-1]
        if res.exit_code != 0:
            committed = plan.first_missing + sum(len(s.send) for s, r in outputs if r.exit_code == 0)
            err = self._load_failed(session, res)
            if "no space left" in err.message.lower() and (committed > plan.first_missing or step.stage):
                kept = [f"{committed} of {len(img.diff_ids)} layers as {PARTIAL_REPO}:{short_id(img.archive_id)}-*"
                        ] if committed > plan.first_missing else []
                kept += [f"the staged archive of layers up to {len(step.diff_ids)} in {display_path(step.stage)}"
                         ] if step.stage else []
                err.message += (f" ({' and '.join(kept)} are kept there; once there is space, a rerun sends only "
                                "the rest)")
            else:  # the same load would fail again: nothing to resume, leave no checkpoint behind
                self._drop_partials(session, checkpoints + plan.partials)
            raise err
        self._verify(session, img)
        self._drop_partials(session, checkpoints + plan.partials)
        self._drop_staged(session, img)
        if convoy and riders:
            convoy.arrive(self, img, riders, checkpoints, t0)
        detail = f"{plan.missing_layers}/{plan.total_layers} layers, {codec.label}"
        if oci:
            detail += ", OCI layout"
        if plan.note:
            detail += f"; {plan.note}"
        return self._result(img, session, "sent", t0, bytes_sent=wire, layers_sent=layers_sent, detail=detail)

    def _verify(self, session: HostSession, img: LocalImage) -> None:
        """The remote image is the local one (same config digest on a classic store; same layers and
        fingerprint on a containerd store, which reports the manifest digest as ID) and has every tag."""
        loaded = session.facts.image(img.image_id, img.archive_id)
        ref = img.tags[0] if img.tags else (loaded.image_id if loaded else img.archive_id)
        if not session.facts.containerd_store:
            ref = img.archive_id
        res = session.docker(["image", "inspect", "--format", rdocker.IMAGE_LINE_FORMAT, ref], what="verify the image",
                             check=False)
        if not res.ok:
            raise MigrateError(f"verification failed on {session.name}: {img.display} is not there after the load")
        got = rdocker.parse_image_line(res.stdout.strip().removeprefix("img="),
                                       containerd=session.facts.containerd_store)
        same = got.image_id == img.archive_id or (session.facts.containerd_store and img.fingerprint
                                                  and got.fingerprint == img.fingerprint)
        if not same or got.diff_ids != img.diff_ids:
            raise MigrateError(f"verification failed on {session.name}: got {short_id(got.image_id)}, "
                               f"expected {short_id(img.archive_id)}")
        for tag in [t for t in img.tags if t not in got.tags]:
            session.docker(["tag", got.image_id, tag], what=f"tag {tag}")
        if session.facts.containerd_store and self._plain_blobs(session, img):  # for later pushes: see blob_layers
            session.remote.run(rdocker.record_blobs_command(got.image_id), check=False, what="record the image")
            session.facts.complete_ids.add(got.image_id)
        session.facts.add_image(got.image_id, img.tags, img.diff_ids, image_fingerprint=img.fingerprint,
                                config_digest=img.archive_id)

    def _drop_partials(self, session: HostSession, tags: Sequence[str]) -> None:
        tags = [t for t in dict.fromkeys(tags) if t.startswith(PARTIAL_REPO + ":")]
        if tags:
            session.docker(["image", "rm", *tags], what="remove checkpoint tags", check=False)
            for img in session.facts.images:
                img.tags = [t for t in img.tags if t not in tags]

    def _push_sif(self, session: HostSession, img: LocalImage, master: ControlMaster | None, codec: Codec | None,
                  t0: float) -> ImagePushResult:
        path = sif_path(self.options, img)
        if session.sif_present.get(img.image_id):
            return self._result(img, session, UP_TO_DATE, t0, detail=path)
        assert master is not None and codec is not None and self.layers is not None
        config = self.layers.config(img.archive_id)
        step = LoadStep(config=config, diff_ids=img.diff_ids, send=list(range(len(img.diff_ids))), tags=img.tags)
        tmp = f".migrate/tmp/push-{short_id(img.image_id)}-{uuid.uuid4().hex[:8]}.tar"
        size = self._image_bytes(img)
        home = session.facts.free_kib("home")
        if home is not None and 2 * size > home * 1024:
            raise MigrateError(f"not enough disk on {session.name}: building {sif_name(img)} needs "
                               f"~{ui.human_bytes(2 * size)} in the home directory, "
                               f"only {ui.human_bytes(home * 1024)} free")
        script = rdocker.sif_script(session.facts.sif_tool, tmp, path, codec.remote_decompress)
        script += f" && printf %s {shell.quote(img.image_id)} > {shell.quote(path + '.image-id')}"
        # apptainer builds as the login user: Docker access (and a sudo password for it) plays no part
        wire, _, outputs = self._stream_steps(session, img, master, codec, [step], script, as_user=True)
        res = outputs[-1][1]
        if res.exit_code != 0:
            text = (res.stderr.strip() or res.stdout.strip()).splitlines()
            raise MigrateError(f"{posixpath.basename(session.facts.sif_tool)} build failed on {session.name}: "
                               f"{text[-1] if text else res.exit_code}")
        return self._result(img, session, "sent", t0, bytes_sent=wire, layers_sent=len(img.diff_ids),
                            detail=f"{path}, {codec.label}")


# -- entry points --------------------------------------------------------------------------------
def _progress(options: PushImageOptions):
    if not options.progress or not ui.err.is_terminal:
        return None
    return ui.transfer_progress(transient=True)


def _prepare_source(images: Sequence[LocalImage], needed: Sequence[LocalImage], options: PushImageOptions,
                    spool: Path, archive: SavedArchive | None, progress,
                    needed_from: dict[str, int] | None = None) -> LayerCache | None:
    """The local layer source for the images some host needs (None when nothing is sent).

    `needed_from[image_id]` is the first layer any host lacks: the direct store reads only those."""
    if archive is not None:
        return LayerCache(archive, spool, archive_manifest_style(archive))
    if not needed:
        return None
    cache = _open_source(needed, options, spool, progress, needed_from)
    if isinstance(cache.source, SavedArchive):  # a containerd store names images by manifest digest
        for img in needed:
            img.config_digest = cache.source.config_digest_of(img.image_id, img.diff_ids, img.tags)
    return cache


def _open_source(needed: Sequence[LocalImage], options: PushImageOptions, spool: Path, progress,
                 needed_from: dict[str, int] | None) -> LayerCache:
    """The direct overlay2 read when possible, else one `docker save` of every needed image."""
    if options.direct_layers:
        from migrate.image.layerstore import open_layer_store

        store = open_layer_store(needed, needed_from or {})
        if store is not None:
            ui.debug("reading layers straight from the local overlay2 store (digest-checked)")
            return LayerCache(store, spool, "docker" if local_engine_major() < 25 else "oci")
    total = sum(i.size for i in needed)
    _check_local_space(spool, total)
    task = progress.add_task("docker save (local)", total=total) if progress else None
    try:
        saved = save_images([i.image_id for i in needed], spool / "save", total=total,
                            progress=(lambda n: progress.advance(task, n)) if task is not None else None)
    finally:
        if task is not None:
            progress.remove_task(task)
    return LayerCache(saved, spool, archive_manifest_style(saved))


def archive_manifest_style(archive: SavedArchive) -> str:
    """"oci" when a docker-save archive has an OCI index (Engine >= 25: containerd loads that layout as
    it is), "docker" when it has only manifest.json (containerd makes a Docker manifest of it)."""
    return "oci" if (archive.root / "index.json").is_file() else "docker"


def _load_archive_file(path: str, spool: Path) -> SavedArchive:
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"archive {path} not found", hint="give the file written by --to-file or docker save")
    with open_maybe_compressed(p) as fh:
        return spool_archive(fh, spool / "file")


def push_images(images: list[str], hosts: list[str], conn: ConnectOptions,
                options: PushImageOptions) -> list[ImagePushResult]:
    """Push `images` to every host; one result per (image, host). Raises MigrateError only for problems
    that stop everything (a missing local image, bad options); a failing host fails only its results."""
    parse_compress(options.compress)
    if options.format not in ("docker", "sif"):
        raise UsageError(f"unknown format {options.format!r}", hint="use docker or sif")
    if not hosts and not options.to_file:
        raise UsageError("no host given", hint="migrate push-image IMAGE... HOST...")
    for h in hosts:
        HostSpec.parse(h)  # a malformed host (or one starting with '-') is a usage error before any work
    registries = _registries(options)
    spool = _spool_dir()
    try:
        archive = None
        if options.from_file:
            archive = _load_archive_file(options.from_file, spool)
            local_images = local_images_from_archive(archive, images)
        else:
            if not images:
                raise UsageError("no image given", hint="migrate push-image IMAGE... HOST...")
            if options.to_file:
                local_images = inspect_images(images)
        if options.to_file:
            return [write_archive_file(local_images, options, spool, archive)]
        sessions: dict[str, HostSession] = {}
        results: list[ImagePushResult] = []
        pool = ThreadPoolExecutor(max_workers=1)
        local_future = pool.submit(lambda: local_images) if options.from_file else pool.submit(inspect_images, images)
        pool.shutdown(wait=False)

        def pre(host: str) -> HostSession:
            session = preflight_host(host, conn, local_future.result, options, registries)
            sessions[host] = session
            return session

        try:
            outcomes = for_each_host(hosts, pre)
            local_images = local_future.result()  # a missing local image stops everything, first
            for o in outcomes:
                if not o.ok:
                    results += [ImagePushResult(image=i.display, host=o.host, status="failed", error=o.error,
                                                image_bytes=i.size) for i in local_images]
            for session in sessions.values():
                _announce(session, local_images, options)
                for plan in session.plans.values():
                    for tag, old in plan.tag_moves:
                        ui.warn(f"{session.name}: tag {tag} moves from {short_id(old)} to {short_id(plan.image_id)} "
                                "(the old image stays; untagged if that was its only tag)")
            live = [sessions[h] for h in hosts if h in sessions]
            feeds = fanout.plan(live, local_images, relay=options.relay, sif=options.format == "sif")
            if options.dry_run:
                return results + [fanout.annotate([r], feeds[r.host], dry_run=True)[0]
                                  for r in dry_run_results(local_images, live, options)]
            needed_ids = {i for s in live for i in (
                [x.image_id for x in local_images if not s.sif_present.get(x.image_id)] if options.format == "sif"
                else [p.image_id for p in s.plans.values() if p.action == SEND])}
            needed = [i for i in local_images if i.image_id in needed_ids]
            needed_from = {i.image_id: 0 if options.format == "sif" else min(  # containerd: any layer's blob may go
                0 if s.facts.containerd_store else _first_sent(s, i.image_id)
                for s in live if s.plans[i.image_id].action == SEND) for i in needed}
            if not live:
                return results
            progress = _progress(options)
            with progress if progress is not None else _null():
                layers = _prepare_source(local_images, needed, options, spool, archive, progress, needed_from)
                pusher = Pusher(local_images, layers, options, progress, registries)
                by_host = fanout.run(pusher, live, feeds, local_images, for_each_host)
            for o in by_host:
                if o.ok and o.value is not None:
                    results += o.value
                else:
                    results += [ImagePushResult(image=i.display, host=o.host, status="failed", error=o.error)
                                for i in local_images]
        finally:
            for s in sessions.values():
                s.remote.close()
        order = {h: n for n, h in enumerate(hosts)}
        host_index = {s.name: order[h] for h, s in sessions.items()}
        results.sort(key=lambda r: host_index.get(r.host, order.get(r.host, 0)))
        return results
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _registries(options: PushImageOptions) -> Registries | None:
    """This run's registry knowledge, or None when nothing may be pulled (files, SIF, --via push)."""
    if options.via not in VIA_MODES:
        raise UsageError(f"unknown --via {options.via!r}", hint="use auto, push or pull")
    other = "--to-file" if options.to_file else "--from-file" if options.from_file else \
        "--format sif" if options.format == "sif" else None
    if other:
        if options.via == "pull" or options.registry_login:
            raise UsageError(f"{'--via pull' if options.via == 'pull' else '--registry-login'} cannot be combined "
                             f"with {other}", hint="the host pulls only in a Docker push from the local daemon")
        return None
    if options.via == "push" and options.registry_login:
        raise UsageError("--registry-login has nothing to log in to with --via push",
                         hint="drop one of them: --via push never asks a registry")
    return Registries(options.via, options.registry_login)


def _first_sent(session: HostSession, image_id: str) -> int:
    """The first layer SSH must carry to this host: after what it has and what it will pull."""
    decision = session.via.get(image_id)
    first = session.plans[image_id].first_missing
    return max(first, decision.layers) if decision is not None and decision.pulls else first


def _announce(session: HostSession, images: Sequence[LocalImage], options: PushImageOptions) -> None:
    """One status line per host: what its Docker is and what each image needs (shown on a terminal, -v else)."""
    f = session.facts
    if options.format == "sif":
        line = f"{session.name}: {posixpath.basename(f.sif_tool)}, {f.docker_arch}"
    else:
        parts = []
        for img in images:
            plan = session.plans[img.image_id]
            if plan.action == SEND:
                parts.append(f"{img.display} needs {plan.missing_layers} of {plan.total_layers} layers")
            else:
                parts.append(f"{img.display} {'needs tags' if plan.action == TAG else 'is up to date'}")
        store = "containerd image store" if f.containerd_store else f.storage_driver
        engine = f"Docker {f.engine} ({f.access}), {store}" if f.engine else f"Docker ({f.access})"
        line = f"{session.name}: {engine}, {f.docker_arch}; " + "; ".join(parts)
    if ui.err.is_terminal:
        ui.step(line)
    else:
        ui.debug(line)


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def dry_run_results(images: Sequence[LocalImage], sessions: Sequence[HostSession],
                    options: PushImageOptions) -> list[ImagePushResult]:
    """What a real run would do, from the plans alone (nothing saved or sent)."""
    out: list[ImagePushResult] = []
    for s in sessions:
        for img in images:
            if options.format == "sif":
                present = s.sif_present.get(img.image_id)
                out.append(ImagePushResult(img.display, s.host, UP_TO_DATE if present else "would send",
                                           image_bytes=img.size, detail=sif_path(options, img)))
                continue
            plan = s.plans[img.image_id]
            decision = s.via.get(img.image_id)
            via = result_fields(decision)
            if plan.action == SEND:
                first = _first_sent(s, img.image_id)
                detail = f"{plan.total_layers - first}/{plan.total_layers} layers"
                if decision is not None and decision.pulls:
                    detail = f"the host would pull {decision.ref} ({decision.layers} layers), then {detail} over SSH"
                elif plan.first_missing:
                    detail += f" (first {plan.first_missing} already there)"
                detail += (", as an OCI layout (containerd image store)" if plan.archive_format == "oci-layout"
                           else ", as a docker-save archive")
                detail += f", a resume point every >= {ui.human_bytes(options.step_bytes)}"
                kept = sum(s.facts.staged[n][1] for n in of_image(s.facts.staged, img.archive_id))
                if kept:
                    detail += f" ({ui.human_bytes(kept)} of a big layer already staged there)"
                out.append(ImagePushResult(img.display, s.host, "would send", image_bytes=img.size,
                                           detail=detail + (f"; {plan.note}" if plan.note else ""), **via))
            else:
                detail = ("would tag " + ", ".join(plan.tags_to_add)) if plan.tags_to_add else "already there"
                out.append(ImagePushResult(img.display, s.host, UP_TO_DATE, image_bytes=img.size, detail=detail))
    return out


def write_archive_file(images: Sequence[LocalImage], options: PushImageOptions, spool: Path,
                       archive: SavedArchive | None) -> ImagePushResult:
    """`--to-file`: one docker-load-able archive of every image (compressed by extension or --compress)."""
    dest = Path(options.to_file or "").expanduser()
    if not dest.parent.is_dir():
        raise UsageError(f"directory {dest.parent} does not exist", hint="create it first")
    spec = parse_compress(options.compress)
    name = dest.name.lower()
    if spec.name == "auto":
        if name.endswith((".zst", ".zstd")):
            codec = Codec("zstd", 3)
        elif name.endswith((".gz", ".tgz")):
            codec = Codec("gzip", 6)
        else:
            codec = Codec()
    elif spec.name == "zstd":
        codec = Codec("zstd", spec.level or 3)
    elif spec.name == "gzip":
        codec = Codec("gzip", spec.level or 6)
    else:
        codec = Codec()
    t0 = time.monotonic()
    if options.dry_run:
        return ImagePushResult(", ".join(i.display for i in images), str(dest), "would send",
                               image_bytes=sum(i.size for i in images), detail=codec.label)
    progress = _progress(options)
    with progress if progress is not None else _null():
        layers = _prepare_source(images, images, options, spool, archive, progress)
        assert layers is not None
        members = archive_members([(layers.config(i.archive_id), i.diff_ids, i.tags) for i in images], layers.member)
        total = tar_size(members)
        _check_local_space(dest.parent, total)
        tmp = dest.with_name(dest.name + f".part{os.getpid()}")
        task = progress.add_task(f"writing {dest.name}", total=total) if progress else None
        compressor = StreamCompressor(codec)
        written = 0
        try:
            with open(tmp, "wb") as out:
                for chunk in tar_stream(members):
                    data = compressor.compress(chunk)
                    out.write(data)
                    written += len(data)
                    if task is not None:
                        progress.advance(task, len(chunk))
                tail = compressor.flush()
                out.write(tail)
                written += len(tail)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return ImagePushResult(", ".join(i.display for i in images), str(dest), "sent", bytes_sent=written,
                           image_bytes=total, seconds=round(time.monotonic() - t0, 3), detail=codec.label,
                           layers_sent=len({d for i in images for d in i.diff_ids}))
