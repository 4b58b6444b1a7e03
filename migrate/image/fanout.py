"""push-image to several hosts: one copy over this machine's link, the others fed host to host.

The seed (the first host that needs layers and whose Docker runs without a password) gets the
image as today (layers it lacks, checkpoints, verification). Every other host that needs layers
and that the seed reaches over the hosts' own network is fed by the seed over `ssh` with a
one-transfer key into `docker load` (the receiver's forced command), and is verified from here
exactly as a direct push (same image ID / layers / tags). Two ways, the first preferred:

- As the bytes arrive (`Convoy`): a receiver whose plan for an image is the seed's (the same layers
  missing, the same archive format and image store) rides the seed's stream: on the seed, the
  archive its `docker load` reads goes through GNU `tee -p` into one `ssh` per rider, step by step
  (checkpoints included), so the riders load while this machine's link is still sending and finish
  with the seed. A rider whose load fails leaves the convoy and is fed the second way.
- After the seed (`relay_images`): `docker save IMAGE` of the seed's copy piped into the receiver's
  load.

Why `docker save` of the seed's image and not the layer spool: after the seed's load nothing of
the stream is kept, and `docker save` is the one export both image stores (classic and
containerd) write and both load, whatever each side's store is; the receiver's store makes its
own IDs as it would from this machine's archive, and `_verify` checks the result the same way.
It sends the whole image (at LAN speed), not only the layers the receiver lacks; a receiver that
already has most layers is better fed directly, so such hosts (a resume point or a shared base
there) are fed from here. A relay that fails for any reason falls back to the direct push, with
its checkpoints (so resume works as always).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

from migrate import ui
from migrate.errors import MigrateError
from migrate.image import remote as rdocker
from migrate.image.local import LocalImage
from migrate.image.plan import SEND, UP_TO_DATE, DiskNeed, ImagePlan, check_disk, plan_image
from migrate.relay import plan as rplan
from migrate.relay.session import Transfer
from migrate.remote import shell

UNATTENDED = ("direct", "group", "sudo")  # Docker access a relay can use (no password to type)
MOSTLY_THERE = 0.5  # a host that has this share of an image's layers is fed directly (only the rest)


def refusal(session, images: Sequence[LocalImage]) -> str:
    """Why this host can take no part in a relay ("" when it can)."""
    if session.facts.access not in UNATTENDED:
        return "its Docker needs a sudo password (a relay runs unattended)"
    for img in images:
        p = session.plans[img.image_id]
        if p.action == SEND and p.first_missing >= MOSTLY_THERE * p.total_layers and p.first_missing:
            return f"it has {p.first_missing} of {p.total_layers} layers of {img.display}: only the rest goes"
    return ""


def plan(sessions: Sequence, images: Sequence[LocalImage], *, relay: bool, sif: bool) -> dict[str, rplan.Feed]:
    """Who feeds whom (read-only probes: where each receiver's sshd listens, whether the seed reaches it;
    a receiver's address is kept on its session as `relay_address`)."""
    by_host = {s.host: s for s in sessions}
    needs = {s.host: any(s.plans[i.image_id].action == SEND for i in images) if not sif else
             any(not s.sif_present.get(i.image_id) for i in images) for s in sessions}
    refuse = {s.host: refusal(s, images) for s in sessions} if not sif else {}
    seed_tee: dict[str, bool] = {}

    def reach(seed: str, host: str) -> str:
        address = address_of(by_host[host])
        if address is None:
            return rplan.NO_SHARED_ADDRESS
        got = rplan.parse_reach(by_host[seed].remote.run(rplan.reach_command([address]), check=False,
                                                          what="check the hosts reach each other").stdout)
        seed_tee[seed] = got.get("tee") == "ok"
        return rplan.reach_verdict(got, address)

    off = "--format sif is sent from here" if sif else "" if relay else "--no-relay"
    feeds = rplan.plan_feeds([s.host for s in sessions], needs, refuse, reach, off=off)
    for seed in {f.source for f in feeds.values() if f.relayed}:  # learnt by reach()
        by_host[seed].can_tee = seed_tee.get(seed, False)
    return feeds


def address_of(session) -> rplan.Address | None:
    """Where this host's sshd answered this machine (from $SSH_CONNECTION), unless through a loopback."""
    if session.relay_address is None:
        res = session.remote.run(rplan.ADDRESS_COMMAND, check=False, what="read the SSH address")
        session.relay_address = rplan.parse_address(res.stdout.strip()) or ""
    return session.relay_address or None


def receive_command(session) -> str:
    """The receiver's forced command: `docker load` with its Docker rights."""
    return rdocker.stream_command(session.facts.access, rdocker.load_script(None))


def start_transfer(seed, receivers: Sequence) -> tuple[Transfer, dict[str, str]]:
    """The transfer key on the seed and its lines on the receivers; why any receiver was left out."""
    transfer = Transfer(seed.remote)
    refused: dict[str, str] = {}
    try:
        transfer.start([s.remote for s in receivers])
        for s in receivers:
            try:
                transfer.admit(s.remote, receive_command(s))
            except MigrateError as exc:
                refused[s.name] = exc.one_line()
    except BaseException:
        transfer.close()
        raise
    return transfer, refused


class Convoy:
    """The receivers that ride the seed's stream (module doc). Used from the seed's thread only, until the
    seed is done; then each receiver's thread reads its `results` (image ID -> result, images it got)."""

    def __init__(self, seed, transfer: Transfer, receivers: Sequence) -> None:
        self.seed = seed
        self.transfer = transfer
        self.riding = list(receivers)
        self.results: dict[str, dict[str, object]] = {s.host: {} for s in receivers}
        self.plans: dict[tuple[str, str], ImagePlan] = {}
        self.sent: dict[str, int] = {}  # bytes the seed passed on to each rider, this image

    def decompress(self, codec) -> str | None:
        """What runs before the tee on the seed: a zstd stream is decompressed there (by its zstd) so the
        riders get the plain archive whatever their engine; `None` leaves the stream as the seed's engine
        reads it."""
        if codec.outer == "zstd" and (codec.remote_decompress or self.seed.facts.zstd):
            return "zstd -dcq"
        return None

    def board(self, img: LocalImage, plan: ImagePlan, need: DiskNeed, codec, *, registry: bool) -> list:
        """The riders of `img`: receivers still riding whose plan for it is the seed's and who have room."""
        if registry or not self.riding:  # the seed pulls some layers: its archive names them so, not a rider's
            return []
        out = []
        for s in self.riding:
            p = plan_image(img, s.facts)
            if why := differs(plan, p, self.seed.facts, s.facts, img):
                ui.debug(f"{s.name}: not fed {img.display} as it arrives at {self.seed.name} ({why})")
                continue
            if codec.outer == "zstd" and self.decompress(codec) is None and not s.facts.engine_at_least(23):
                continue
            try:
                check_disk(need, s.facts, s.name)
            except MigrateError as exc:
                ui.debug(f"{s.name}: not fed {img.display} as it arrives ({exc.one_line()})")
                continue
            self.plans[(s.host, img.image_id)] = p
            self.sent[s.host] = 0
            out.append(s)
        if out:
            ui.info(f"{img.display}: {', '.join(s.name for s in out)} fed by {self.seed.name} as the bytes arrive "
                    "there")
        return out

    def command(self, load: str, riders: Sequence, decompress: str | None = None) -> str:
        """The seed's load (`load`, with its docker rights) behind the tee to `riders`."""
        out = []
        for s in riders:
            address = address_of(s)  # known: the plan found it
            assert address is not None
            out.append(rplan.Rider(self.transfer.alias(s.remote), s.remote.target.user, address))
        return rplan.tee_load_command(load, self.transfer.marker, out, decompress)

    def settle(self, pusher, step, riders: list, res, passed: int):
        """After one step: record each rider's load (leaving those whose load failed); the seed's own
        result, without the riders' lines."""
        own, reports = rplan.parse_reports(res.stdout)
        for s in list(riders):
            rep = reports.get(self.transfer.alias(s.remote))
            why = "" if rep and rep.exit_code == 0 else \
                ((rep.stderr.strip().splitlines() or [f"exit {rep.exit_code}"])[-1] if rep else "no report")
            if not why:
                try:
                    pusher._after_load(s, step, rep)
                except MigrateError as exc:
                    why = exc.one_line()
            if why:
                self.leave(s, riders, f"its load of the stream failed: {why}")
            else:
                self.sent[s.host] += passed
        return dataclasses.replace(res, stdout=own)

    def arrive(self, pusher, img: LocalImage, riders: Sequence, checkpoints: Sequence[str], t0: float) -> None:
        """The seed has `img`: verify each rider's copy as a direct push would; its result."""
        for s in list(riders):
            p = self.plans[(s.host, img.image_id)]
            try:
                pusher._verify(s, img)
                pusher._drop_partials(s, list(checkpoints) + p.partials)
            except MigrateError as exc:
                self.leave(s, list(riders), exc.one_line())
                continue
            self.results[s.host][img.image_id] = pusher._result(
                img, s, "sent", t0, relayed_bytes=self.sent[s.host], layers_sent=p.missing_layers,
                detail=f"{p.missing_layers}/{p.total_layers} layers fed by {self.seed.name} as they arrived there")

    def leave(self, session, riders: list, why: str) -> None:
        ui.warn(f"{session.name}: no longer fed from {self.seed.name}'s stream ({why}); fed after it")
        if session in riders:
            riders.remove(session)
        if session in self.riding:
            self.riding.remove(session)


def differs(seed_plan: ImagePlan, plan: ImagePlan, seed_facts, facts, img: LocalImage) -> str:
    """Why a receiver cannot load the archive the seed loads ("" when it can): the same layers missing,
    the same archive format and image store (and, for an OCI layout, the same layer blobs there)."""
    if plan.action != SEND:
        return "it needs no layers"
    if (plan.first_missing, plan.archive_format) != (seed_plan.first_missing, seed_plan.archive_format):
        return f"it lacks layers from {plan.first_missing + 1} on, the seed from {seed_plan.first_missing + 1}"
    if facts.containerd_store != seed_facts.containerd_store:
        return "another image store"
    if plan.archive_format == "oci-layout":
        mine, seeds = facts.blob_layers(), seed_facts.blob_layers()
        if any((d in mine) != (d in seeds) for d in img.diff_ids):
            return "other layer blobs"
    return ""


def relay_images(pusher, seed, target, transfer: Transfer, images: Sequence[LocalImage],
                 result: Callable) -> list:
    """Feed every image `target` needs from `seed`'s Docker; verify each as a direct push would.
    Raises MigrateError when any image could not be relayed (the caller then pushes directly)."""
    out = []
    address = address_of(target)
    assert address is not None
    for img in images:
        t0 = time.monotonic()
        p = plan_image(img, target.facts)
        if p.action != SEND:  # tags only, or brought by an earlier image: as a direct push does it
            out.append(pusher._push_docker(target, img, None, None, t0))
            continue
        have = seed.facts.image(img.image_id, img.config_digest, img.fingerprint)
        ref = img.tags[0] if img.tags else (have.image_id if have else img.image_id)
        source = rdocker.stream_command(seed.facts.access, shell.join(["docker", "save", ref]))
        cmd = rplan.send_command(source, transfer.marker, transfer.alias(target.remote), target.remote.target.user,
                                 address)
        res = seed.remote.run(cmd, check=False, what=f"feed {target.name} from {seed.name}")
        loaded, sent = rplan.parse_relayed(res.stdout)
        if rplan.SAVE_FAILED in res.stderr:
            raise MigrateError(f"docker save {ref} failed on {seed.name}")
        _, _, errors = rdocker.parse_load_output(loaded, res.stderr)
        if res.exit_code != 0 or errors:
            why = (errors or res.stderr.strip().splitlines() or [f"exit code {res.exit_code}"])[-1]
            raise MigrateError(f"the load on {target.name} fed by {seed.name} failed: {why}")
        pusher._verify(target, img)
        out.append(result(img, target, "sent", t0, relayed_bytes=sent, layers_sent=len(img.diff_ids),
                          detail=f"{p.total_layers} layers fed by {seed.name} (docker save there)"))
    return out


def run(pusher, sessions: Sequence, feeds: dict[str, rplan.Feed], images: Sequence[LocalImage],
        for_each_host: Callable) -> list:
    """Phase 4 with relays: the seed (and every host fed directly) as today, in parallel, the seed's
    stream tee'd to the receivers that can ride it; each relayed host once the seed is done: what it
    did not get as the bytes arrived, from the seed's Docker, falling back to a direct push when that
    fails. Returns the for_each_host outcomes (one list of results per host)."""
    seeds = {f.source for f in feeds.values() if f.relayed}
    seed_name = next(iter(seeds), None)
    by_host = {s.host: s for s in sessions}
    seed = by_host.get(seed_name) if seed_name else None
    relayed = [s for s in sessions if feeds[s.host].relayed]
    transfer = None
    convoy: Convoy | None = None
    if seed is not None and relayed:
        try:
            transfer, refused = start_transfer(seed, relayed)
        except MigrateError as exc:
            transfer, refused = None, {s.name: f"cannot prepare the transfer key on {seed.name}: {exc.one_line()}"
                                       for s in relayed}
        for s in relayed:
            if s.name in refused:
                feeds[s.host] = rplan.Feed(s.host, rplan.LAPTOP, refused[s.name])
        riders = [s for s in relayed if feeds[s.host].relayed]
        if transfer is not None and riders and getattr(seed, "can_tee", False):
            convoy = seed.convoy = Convoy(seed, transfer, riders)
    seed_done = threading.Event()
    seed_ok: list[bool] = [False]

    def work(host: str) -> list:
        session, feed = by_host[host], feeds[host]
        if not feed.relayed:
            try:
                res = pusher.push_host(session)
                if seed is not None and host == seed.host:
                    seed_ok[0] = all(r.status in ("sent", UP_TO_DATE) for r in res)
                return annotate(res, feeds[host])
            finally:
                if seed is not None and host == seed.host:
                    seed.convoy = None
                    seed_done.set()
        seed_done.wait()
        assert transfer is not None and seed is not None
        got = convoy.results.get(host, {}) if convoy is not None else {}
        if not seed_ok[0]:
            return fallback(host, f"{seed.name} did not get the image", got)
        rest = [i for i in images if i.image_id not in got]
        try:
            if rest:
                ui.step(f"{session.name}: fed by {seed.name} over the hosts' network")
            done = relay_images(pusher, seed, session, transfer, rest, pusher._result)
        except MigrateError as exc:
            ui.warn(f"{session.name}: relay from {seed.name} failed ({exc.one_line()}); sending from here")
            return fallback(host, f"relay from {seed.name} failed: {exc.one_line()}", got)
        by_image = dict(zip([i.image_id for i in rest], done))
        return annotate([got.get(i.image_id) or by_image[i.image_id] for i in images], feed)

    def fallback(host: str, why: str, got: dict) -> list:
        feeds[host] = rplan.Feed(host, rplan.LAPTOP, why)
        res = pusher.push_host(by_host[host])  # what it got as the bytes arrived is there: "up to date"
        return annotate([got.get(i.image_id) or r for i, r in zip(images, res)], feeds[host])

    try:
        return for_each_host([s.host for s in sessions], work)
    finally:
        if transfer is not None:
            transfer.close()


def annotate(results: list, feed: rplan.Feed, *, dry_run: bool = False) -> list:
    """Say on each result which way its host was fed and why."""
    for r in results:
        r.fed_via, r.fed_why = feed.source, feed.why
        if dry_run and feed.relayed and r.status == "would send":
            r.detail = (f"from {feed.source} over the hosts' network: the archive {feed.source} loads, as it "
                        "arrives (tee there), where this host lacks the same layers; else docker save there")
    return results
