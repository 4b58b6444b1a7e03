"""push-image to several hosts: one copy over this machine's link, the others fed host to host.

The seed (the first host that needs layers and whose Docker runs without a password) gets the
image as today (layers it lacks, checkpoints, verification). Every other host that needs layers
and that the seed reaches over the hosts' own network then gets `docker save IMAGE` of the seed's
copy, piped over `ssh` with a one-transfer key into `docker load` (the receiver's forced command),
and is verified from here exactly as a direct push (same image ID / layers / tags).

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

import threading
import time
from collections.abc import Callable, Sequence

from migrate import ui
from migrate.errors import MigrateError
from migrate.image import remote as rdocker
from migrate.image.local import LocalImage
from migrate.image.plan import SEND, UP_TO_DATE, plan_image
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
    seed_check: dict[str, str] = {}

    def reach(seed: str, host: str) -> str:
        address = address_of(by_host[host])
        if address is None:
            return "no address the hosts share (this machine reaches it through a tunnel or a forward)"
        got = rplan.parse_reach(by_host[seed].remote.run(rplan.reach_command([address]), check=False,
                                                          what="check the hosts reach each other").stdout)
        if got.get("ssh", "no python3") != "ok":
            seed_check[seed] = got.get("ssh", "no python3 there")
            return seed_check[seed]
        return got.get(str(address), "no answer")

    off = "--format sif is sent from here" if sif else "" if relay else "--no-relay"
    return rplan.plan_feeds([s.host for s in sessions], needs, refuse, reach, off=off)


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
    """Phase 4 with relays: the seed (and every host fed directly) as today, in parallel; each relayed
    host once the seed is done, from the seed, falling back to a direct push when its relay fails.
    Returns the for_each_host outcomes (one list of results per host)."""
    seeds = {f.source for f in feeds.values() if f.relayed}
    seed_name = next(iter(seeds), None)
    by_host = {s.host: s for s in sessions}
    seed = by_host.get(seed_name) if seed_name else None
    relayed = [s for s in sessions if feeds[s.host].relayed]
    transfer = None
    if seed is not None and relayed:
        try:
            transfer, refused = start_transfer(seed, relayed)
        except MigrateError as exc:
            transfer, refused = None, {s.name: f"cannot prepare the transfer key on {seed.name}: {exc.one_line()}"
                                       for s in relayed}
        for s in relayed:
            if s.name in refused:
                feeds[s.host] = rplan.Feed(s.host, rplan.LAPTOP, refused[s.name])
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
                    seed_done.set()
        seed_done.wait()
        assert transfer is not None and seed is not None
        if not seed_ok[0]:
            return fallback(host, f"{seed.name} did not get the image")
        ui.step(f"{session.name}: fed by {seed.name} over the hosts' network")
        try:
            return annotate(relay_images(pusher, seed, session, transfer, images, pusher._result), feed)
        except MigrateError as exc:
            ui.warn(f"{session.name}: relay from {seed.name} failed ({exc.one_line()}); sending from here")
            return fallback(host, f"relay from {seed.name} failed: {exc.one_line()}")

    def fallback(host: str, why: str) -> list:
        feeds[host] = rplan.Feed(host, rplan.LAPTOP, why)
        return annotate(pusher.push_host(by_host[host]), feeds[host])

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
            r.detail = f"docker save on {feed.source} | ssh | docker load here (the whole image, host to host)"
    return results
