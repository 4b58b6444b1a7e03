"""push-data orchestration: per host, probe -> mapping -> preflight (nothing moves before all of it
passes) -> a `HostPlan` (printed by --dry-run, which stops there) -> deletion check -> transfer (rsync,
parallel rsync shards, or tar streams) with one progress bar per source.

Hosts are reached through a `Reach` (an OpenSSH session, a paramiko `Remote` when sudo needs a
password, the local transfer runners); tests pass `tests/fakehost.py: FakeHost` for all three.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

from migrate import ui
from migrate.data import filelist, known
from migrate.data.fanout import DataRelay, relayed_one
from migrate.data.mapping import Mapping, normalize_local_path, normalize_remote_path, resolve_mapping
from migrate.data.plan import (
    FAR_ROUND_TRIP_S,
    METHODS,
    SPACE_MARGIN_BYTES,
    STREAM_MIN_AVG_BYTES,
    DataPushResult,
    HostPlan,
    PlannedTransfer,
    PushDataOptions,
    RemoteChange,
    bwlimit_kib,
    choose_method,
    destination_dirs,
    is_far,
    normalize_bwlimit,
    refuse_delete_with,
    resume_in_place,
    rsync_supports_zstd,
    should_compress,
    single_rsync_options,
    space_refusal,
)
from migrate.data.remote import (
    DestFacts,
    GuardRefused,
    dest_probe_command,
    file_stream_command,
    guarded_rsync_path,
    held_probe_command,
    make_dirs_words,
    parse_dest_probe,
    parse_partial_probe,
    partial_probe_command,
    tar_extract_command,
)
from migrate.data.rsync import RsyncOptions, rsh_join, rsync_argv
from migrate.data.transfer import (
    HeldProbe,
    LocalTransfers,
    RunOutcome,
    StreamItem,
    local_has_zstd,
    require_local_tools,
    stream_items,
)
from migrate.errors import MigrateError, UsageError
from migrate.remote import shell
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions, HostSpec
from migrate.remote.parallel import for_each_host

if TYPE_CHECKING:
    from migrate.remote.openssh import SessionPool

# a guarded re-sync (known.py) plans with --mkpath, so its rsync must have it on the host too
GUARD_MIN_RSYNC = (3, 2, 3)
INSTALL_RSYNC = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q -o DPkg::Lock::Timeout=120 rsync"


@dataclass
class Reach:
    """How push-data and pull-data reach a host: `session(host)` for commands and streams (OpenSSH),
    `root(host)` for root commands when sudo asks a password (paramiko's prompt), `transfers` for the
    local rsync/tar runners. `Reach.ssh(conn)` is the real thing; tests build one around a FakeHost."""

    session: Callable[[str], AbstractContextManager[Host]]
    root: Callable[[str], Host]
    transfers: Any = field(default_factory=LocalTransfers)
    fan_out: bool = False   # several hosts: the first may feed the others (real hosts only)

    @classmethod
    def ssh(cls, conn: ConnectOptions, sessions: SessionPool | None = None) -> Reach:
        """OpenSSH sessions: new ones, closed after each host's push, or `sessions`' (apply: the run
        stage reuses the connection)."""
        from migrate.remote.openssh import OpenSshSession

        def root(host: str) -> Host:
            # paramiko and Fabric cost ~0.1 s to import: only a password-sudo host needs them
            from migrate.remote.connection import connect
            return connect(host, conn)

        def fresh(host: str) -> OpenSshSession:
            from migrate import early  # the login this process may have started before its imports

            return early.adopt(host, conn) or OpenSshSession(host, conn)

        session = sessions.borrow if sessions else fresh
        return cls(session=session, root=root, fan_out=True)


@dataclass
class _Source:
    """One local source as typed and as rsync needs it."""

    typed: str
    path: str
    is_dir: bool
    real_name: str


def _local_sources(sources: list[str]) -> list[_Source]:
    out = []
    for s in sources:
        if not os.path.lexists(s):
            raise MigrateError(f"source {s!r} not found", hint="check the path; nothing was sent")
        if not os.access(s, os.R_OK):
            raise MigrateError(f"source {s!r} is not readable")
        real = os.path.basename(os.path.abspath(s.rstrip("/") or "/"))
        out.append(_Source(typed=s, path=normalize_local_path(s), is_dir=os.path.isdir(s), real_name=real))
    return out


def remote_spec(remote: Host, path: str) -> str:
    """rsync's `HOST:PATH` for this session (`[v6]:PATH` when the alias has a colon)."""
    host = remote.target.alias
    return f"[{host}]:{path}" if ":" in host else f"{host}:{path}"


class HostPush:
    """One host's push: preflight and plan, then transfer, reporting through `progress`."""

    def __init__(self, host: str, sources: list[_Source], dest: str, reach: Reach,
                 options: PushDataOptions, progress: ProgressBoard, relay: DataRelay | None = None,
                 listings: dict[str, filelist.EarlyListing] | None = None, *,
                 sizes: Future[dict[str, tuple[int, int]]]) -> None:
        self.host, self.sources, self.dest, self.reach, self.o = host, sources, dest, reach, options
        self.transfers = reach.transfers
        self.progress = progress
        self.relay = relay  # several hosts: the seed feeds the others (data/fanout.py)
        self.listings = listings or {}  # source path -> its listing, started early (push_data)
        # source path -> (files, bytes), counted while the connection is set up (push_data starts it)
        self.early_sizes = sizes
        self.round_trip: float | None = None  # the link's, when a choice depended on it (seconds)
        self.compress_tar = False
        self.held: HeldProbe | None = None  # the probe's exec, while a file stream may still use it
        self.first_copy = False  # DEST is new or empty (set by the preflight)
        self.described = False  # the mapping lines were printed (a refused guard plans again)
        self.guard_tools: tuple[str, ...] = ()  # what a plan made before any probe took of the host's tools

    def run(self) -> list[DataPushResult]:
        results: list[DataPushResult] = []
        try:
            with self.reach.session(self.host) as remote:
                try:
                    results = self._run(remote)
                finally:
                    if self.held is not None:
                        self.held.reap()
                if not self.o.dry_run and results and all(r.status != "failed" for r in results):
                    known.remember(self._dest_key(remote))
                return results
        finally:
            if self.relay is not None and self.host == self.relay.seed:
                self.relay.seed_finished(results)

    def _probe(self, remote: Host) -> DestFacts:
        """The destination's facts. Where a file stream may follow, the probe's exec is held open to
        become it (`HeldProbe`): a far first copy of big files then costs one exec in all."""
        o = self.o
        sudo = o.sudo or o.install_rsync  # only these run anything as root
        if o.method in ("auto", "stream") and not o.sudo and not o.dry_run and self.held is None:
            remote.open()
            self.held = self.transfers.hold_probe(remote.openssh_argv(), held_probe_command(self.dest, sudo=sudo))
            return parse_dest_probe(self.held.text)
        return parse_dest_probe(remote.run(dest_probe_command(self.dest, sudo=sudo),
                                           what="inspect destination").stdout)

    def _dest_key(self, remote: Host) -> str:
        t = remote.target
        return known.key(t.user, t.hostname, t.port, self.dest)

    def _host_key(self, remote: Host) -> str:
        t = remote.target
        return known.host_key(t.user, t.hostname, t.port)

    def _expectation(self, remote: Host) -> tuple[str, DestFacts] | None:
        """What DEST is expected to be (remote.GUARD_WANTS) and the facts to plan from, where the plan
        needs no probe first; else None. Every source must be a directory (so the mapping does not
        depend on DEST), and no option may ask for facts first (a dry run, --delete, --sudo,
        --install-rsync, --drop-partial, a relay). "resync": a push from here to DEST completed. Else a
        first copy: for --method rsync, "fresh" where it would go by --inplace (small files), "any"
        where the plan is the same whatever DEST holds; for auto, "fresh" where the host's tools are
        known (known.host_tools), the link's round trip too where the choice depends on it (the
        login's timing), and every source would go by rsync."""
        o = self.o
        if o.dry_run or o.delete or o.sudo or o.install_rsync or o.drop_partial or self.relay is not None \
                or o.method not in ("auto", "rsync") or not all(s.is_dir for s in self.sources) \
                or self.transfers.rsync_version() < GUARD_MIN_RSYNC:
            return None
        tools = known.host_tools(self._host_key(remote))
        if tools is not None and tools["rsync_version"] < GUARD_MIN_RSYNC:
            return None
        here = self.transfers.rsync_xxh128()
        known_tools = {"rsync_version": GUARD_MIN_RSYNC, "xxh128": here} if tools is None else \
            {**tools, "xxh128": tools["xxh128"] and here}

        def expected(want: str) -> tuple[str, DestFacts]:
            return want, DestFacts(kind="none" if want == "fresh" else "dir", existing=self.dest, writable=True,
                                   empty=want == "fresh", **known_tools)

        if known.pushed_before(self._dest_key(remote)):
            return expected("resync")
        sizes = self.early_sizes.result()
        if o.method == "rsync":
            inplace = any(single_rsync_options(RsyncOptions(), is_dir=True, files=files, size=size,
                                               first_copy=True).inplace for files, size in sizes.values())
            return expected("fresh" if inplace else "any")
        if tools is None:
            return None
        want, facts = expected("fresh")
        round_trip = remote.login_round_trip()
        relied: set[str] = set()
        for src in self.sources:
            files, size = sizes[src.path]
            choose = self._chooser(facts, src, files, size, first_copy=True)
            method = choose(round_trip=0.0)[0]
            if method != choose(round_trip=FAR_ROUND_TRIP_S)[0]:  # the link decides: is it clearly timed?
                if round_trip is None or FAR_ROUND_TRIP_S <= round_trip < 2 * FAR_ROUND_TRIP_S:
                    return None
                self.round_trip = round_trip
                method = choose(round_trip=round_trip)[0]
            if method != "rsync":
                return None
            links = [self.round_trip] if self.round_trip is not None else [0.0, FAR_ROUND_TRIP_S]
            for tool, flipped in (("zstd", dataclasses.replace(facts, zstd=not facts.zstd)),
                                  ("gnu_head", dataclasses.replace(facts, gnu_head=not facts.gnu_head)),
                                  ("python3", dataclasses.replace(facts, python3=not facts.python3))):
                other = self._chooser(flipped, src, files, size, True)  # had the host (not) had it
                if any(other(round_trip=rt)[0] != choose(round_trip=rt)[0] for rt in links):
                    relied.add(tool if getattr(facts, tool) else f"!{tool}")
        self.guard_tools = tuple(sorted(relied))  # the guard checks them: tools change (known.HOST_TOOLS_TTL_S)
        return want, facts

    def _chooser(self, facts: DestFacts, src: _Source, files: int, size: int,
                 first_copy: bool) -> Callable[..., tuple[str, str]]:
        """`choose_method` for one source on this host, waiting for the link's `round_trip`."""
        o = self.o
        return functools.partial(choose_method, o.method, remote_rsync=facts.has_rsync, dest_empty=first_copy,
                                 files=files, avg_size=size / files if files else 0, delete=o.delete,
                                 checksum=o.checksum, is_dir=src.is_dir, bwlimit=bool(o.bwlimit),
                                 tar_streams=self._tar_streams(facts) if src.is_dir else 1,
                                 tar_zstd=self._tar_zstd(facts),
                                 file_stream=facts.gnu_head or facts.python3, small_files_stream=facts.python3)

    def _tar_streams(self, facts: DestFacts) -> int:
        """How many tar streams a directory would go as: --streams, at most one per remote core."""
        return max(1, min(self.o.streams, facts.cpus or 1))

    def _tar_zstd(self, facts: DestFacts) -> bool:
        """Whether tar streams can go through zstd (on both sides, not refused by --compress none)."""
        return self.o.compress != "none" and facts.zstd and local_has_zstd()

    def _run(self, remote: Host) -> list[DataPushResult]:
        """Probe, plan, send. A push whose plan needs no facts first (`_expectation`: a re-sync of a
        destination pushed before, a first copy by rsync) plans first and checks DEST on the rsync's
        own exec (remote.DEST_GUARD: one exec, not two); where DEST is not as planned, the check
        changes nothing and the plan is made again from what it saw."""
        remote.open()  # the login: the sources are counted meanwhile
        expectation = self._expectation(remote)
        if expectation is None:
            return self._planned_run(remote, self._probe(remote))
        expect, expected = expectation
        try:
            return self._planned_run(remote, expected, guard=expect)
        except GuardRefused as refused:
            known.forget(self._dest_key(remote))
            ui.debug(f"{remote.target.alias}: {self.dest} is not as planned ({expect}): planning from what the "
                     "check saw (nothing was sent)")
            return self._planned_run(remote, refused.facts)

    def _planned_run(self, remote: Host, facts: DestFacts, guard: str | None = None) -> list[DataPushResult]:
        """Plan from `facts` and send. `guard`: the facts are expected, not probed: the first rsync checks
        them there first (GuardRefused when they do not hold; nothing has changed then)."""
        o = self.o
        plan = self.plan = HostPlan(host=self.host, where=f"{remote.target.alias}:")
        self.sizes = self.early_sizes.result()
        mappings = resolve_mapping([(s.typed, s.is_dir, s.real_name) for s in self.sources], self.dest,
                                   into=o.into, dest_is_dir=facts.kind == "dir")
        for m in mappings if not self.described else []:
            ui.info(f"{remote.target.alias}: {m.describe(plan.where)}")
        self.described = True
        if facts.kind == "file" and any(m.source_is_dir for m in mappings) and not o.into:
            raise MigrateError(f"{remote.target.alias}:{self.dest} is a file; a directory cannot become it",
                               hint="choose another DEST, or --into a directory")
        rsync_path = None
        if o.sudo:
            if facts.sudo == "password":
                raise MigrateError(f"--sudo needs passwordless sudo on {remote.target.alias} (rsync cannot answer "
                                   "a password prompt)", hint="write somewhere you own, or ask for NOPASSWD sudo")
            if facts.sudo == "none":
                raise MigrateError(f"{remote.target.user} has no sudo on {remote.target.alias}")
            if facts.sudo == "nopasswd":
                rsync_path = shell.SUDO_NOPASSWD_PREFIX + "rsync"
        elif not facts.writable:
            raise MigrateError(f"{remote.target.alias}:{facts.existing} is not writable by {remote.target.user}, "
                               f"so {self.dest} cannot be created there",
                               hint="choose a directory you own (e.g. under ~), or pass --sudo")
        if not facts.has_rsync and o.install_rsync:
            install = f"{INSTALL_RSYNC} || (apt-get update -q && {INSTALL_RSYNC})"
            if o.dry_run:  # a dry run changes nothing: it says what it would install, and plans without it
                plan.changes.append(RemoteChange(install, root=True, why="--install-rsync; the transfers below "
                                                 "are what runs without rsync"))
            else:
                ui.step(f"{remote.target.alias}: installing rsync (apt-get install rsync)")
                self._as_root(remote, facts, install, "install rsync", timeout=900)
                facts = self._probe(remote)
        local_version = self.transfers.rsync_version()
        both_zstd = rsync_supports_zstd(local_version) and rsync_supports_zstd(facts.rsync_version)
        compress = should_compress(o.compress, remote.target.hostname, both_zstd)
        if o.compress == "zstd" and not both_zstd:
            raise MigrateError("--compress zstd needs rsync >= 3.2 on both sides", hint="use --compress auto")
        rsh = rsh_join(remote.openssh_argv()[:-1])
        mkpath = local_version >= (3, 2, 3) and facts.rsync_version >= (3, 2, 3)
        base_opts = RsyncOptions(excludes=list(o.exclude), exclude_from=list(o.exclude_from), delete=o.delete,
                                 bwlimit=o.bwlimit, checksum=o.checksum, compress=compress, mkpath=mkpath,
                                 rsync_path=rsync_path, protect_args=local_version < (3, 2, 4), timeout=o.timeout,
                                 checksum_choice="xxh128" if facts.xxh128 and self.transfers.rsync_xxh128() else None)
        # preflight: methods and space, for every mapping, before anything moves
        plans = []
        need = 0
        if guard is None:
            known.note_host_tools(self._host_key(remote), facts)  # probed (or seen by a refused guard)
        self.tar_streams = self._tar_streams(facts)
        first_copy = self.first_copy = facts.kind == "none" or (facts.kind == "dir" and facts.empty)
        for src, m in zip(self.sources, mappings):
            summary = None
            files, size = self.sizes[src.path]  # upper bound: before excludes
            choose = self._chooser(facts, src, files, size, first_copy)
            method, reason = choose(round_trip=self.round_trip)
            if o.method == "auto" and self.round_trip is None and \
                    choose(round_trip=0.0) != choose(round_trip=FAR_ROUND_TRIP_S):
                # near, CPU bounds this copy; far, bytes and round trips do (the method, or tar's zstd, differs):
                # how far is the host? (measured once per host)
                self.round_trip = self._link_round_trip(remote)
                method, reason = choose(round_trip=self.round_trip)
            if method in ("tar", "parallel") and not src.is_dir and facts.has_rsync:
                method, reason = "rsync", "a single file: rsync"
            early = self.listings.get(src.path)
            if method in ("tar", "parallel", "stream") and src.is_dir:
                # the same filters as rsync
                summary = early.result() if early else filelist.list_source(src.path, o.exclude, o.exclude_from)
                files, size = summary.files, summary.bytes
                if method == "stream":
                    method, reason = self._streamable(src, summary, method, reason)
            elif early:
                early.not_needed()
            plans.append((src, m, summary, files, size, method, reason))
            need += size
        # tar streams go through zstd where it pays: --compress zstd, or auto on a far link
        self.compress_tar = self._tar_zstd(facts) and (o.compress == "zstd" or is_far(self.round_trip))
        self._check_space(remote, facts, need, rsh, base_opts, plans)
        parents = destination_dirs([(m, method) for _, m, _, _, _, method, _ in plans], mkpath=mkpath)
        mkdirs = " && ".join(f"mkdir -p {shell.quote(p)}" for p in parents)
        if parents:
            plan.changes.append(RemoteChange(mkdirs, root=o.sudo, why="destination directories"))
        if self.held is not None and not any(p[5] == "stream" for p in plans):
            self.held.close()  # nothing will stream into it
        for src, m, _summary, files, size, method, reason in plans:
            plan.transfers.append(self._planned(remote, facts, rsh, base_opts, src, m, _summary, files, size, method,
                                                reason))
        if o.dry_run:
            for line in plan.lines():
                ui.info(f"{remote.target.alias}: {line}")
        elif parents:
            if o.sudo:
                self._as_root(remote, facts, mkdirs, "create destination directories")
            else:
                remote.run(mkdirs, what="create destination directories")
        results = []
        one = self._one if self.relay is None else \
            functools.partial(relayed_one, self, self.relay, direct=self._one)
        first_opts = base_opts
        if guard is not None:  # the first rsync checks DEST before anything changes
            assert not parents and all(p[5] == "rsync" for p in plans), "a guarded plan changes nothing first"
            first_opts = dataclasses.replace(base_opts, rsync_path=guarded_rsync_path(
                self.dest, want=guard, need_bytes=need + need // 100 + SPACE_MARGIN_BYTES,
                min_version=GUARD_MIN_RSYNC,
                tools=(*(("xxh128",) if base_opts.checksum_choice else ()), *self.guard_tools)))
        for i, (src, m, summary, files, size, method, reason) in enumerate(plans):
            results.append(one(remote, facts, rsh, first_opts if i == 0 else base_opts, src, m, summary, files,
                               size, method, reason))
        return results

    def _streamable(self, src: _Source, summary: filelist.SourceSummary, method: str,
                    reason: str) -> tuple[str, str]:
        """A file stream carries files and directories only: with links (or devices) in the tree, auto
        falls back to rsync and --method stream is refused."""
        odd = [e.path for e in summary.entries if e.kind not in ("f", "d")]
        if not odd:
            return method, reason
        if self.o.method == "stream":
            raise UsageError(f"--method stream sends files and directories only, not symlinks or devices: "
                             f"{src.typed} holds {len(odd)} (e.g. {odd[0]!r})", hint="use --method rsync")
        return "rsync", reason.split(": ")[0] + ": one rsync (the tree has symlinks, which a file stream skips)"

    def _link_round_trip(self, remote: Host) -> float:
        """The link's round trip: as the login timed it, where that is clearly near or clearly far (no
        round trip spent); else measured, and a far-looking first sample checked once more (a busy
        machine here can slow one sample down, never speed one up), keeping the smaller."""
        timed = remote.login_round_trip()
        if timed is not None and (timed < FAR_ROUND_TRIP_S or timed >= 2 * FAR_ROUND_TRIP_S):
            ui.debug(f"{remote.target.alias}: round trip {timed * 1000:.1f} ms (timed by the login)")
            return timed
        held = self.held
        if held is not None and not held.used:
            sample = held.round_trip  # over the probe's open session: one round trip, nothing else
        else:
            sample = functools.partial(self.transfers.link_round_trip, remote.openssh_argv())
        rt = sample() if timed is None else min(timed, sample())
        if is_far(rt) and rt < 2 * FAR_ROUND_TRIP_S:
            rt = min(rt, sample())
        ui.debug(f"{remote.target.alias}: round trip {rt * 1000:.1f} ms")
        return rt

    def _as_root(self, remote: Host, facts: DestFacts, command: str, what: str,
                 timeout: float | None = None) -> None:
        """Root commands go over the OpenSSH session; a sudo password needs the paramiko layer's prompt."""
        if facts.sudo == "password":
            with self.reach.root(self.host) as r:
                r.run(command, sudo=True, what=what, timeout=timeout)
        else:
            remote.run(command, sudo=True, sudo_mode=facts.sudo, what=what, timeout=timeout)

    def _check_space(self, remote: Host, facts: DestFacts, need: int, rsh: str, opts: RsyncOptions,
                     plans: list) -> None:
        if self.o.dry_run:
            if self.o.drop_partial and facts.kind != "none":
                stale = [p for p, _ in self._partials(remote, plans)]
                if stale:
                    self.plan.changes.append(RemoteChange(shell.join(["rm", "-rf", "--", *stale]), root=self.o.sudo,
                                                          why="--drop-partial"))
            return
        partials = self._partials(remote, plans) if self.o.drop_partial and facts.kind != "none" else []
        if facts.free_bytes is None:
            if partials:
                self._drop_partials(remote, facts, partials)
            return
        free = facts.free_bytes
        if partials:
            free += sum(size for _, size in partials)  # what deleting them gives back
        margin = need // 100 + SPACE_MARGIN_BYTES
        if need + margin > free and facts.has_rsync and not (facts.kind == "none" or facts.empty):
            # much may already be there: ask rsync for the exact bytes it would send
            need = 0
            for src, m, *_ in plans:
                need += self.transfers.rsync_dry_run(lambda x, src=src, m=m: rsync_argv(
                    [src.path.rstrip("/") + "/" if src.is_dir else src.path], remote_spec(remote, m.dest_arg),
                    rsh, x, stats=True), opts).transferred_size
            margin = need // 100 + SPACE_MARGIN_BYTES
        if need + margin <= free:
            if partials:
                self._drop_partials(remote, facts, partials)
            return
        in_place = resume_in_place(self.transfers.rsync_version(), facts.rsync_version)
        if not self.o.drop_partial and facts.kind != "none" and facts.has_rsync:
            # an interrupted transfer (a full disk, say) keeps its unfinished files in .migrate-partial/
            partials = self._partials(remote, plans)
            held = sum(size for _, size in partials)
            if partials and in_place and need + margin <= free + held:
                ui.info(f"{remote.target.alias}: resuming {ui.human_bytes(held)} of unfinished files in "
                        f"{partials[0][0]}" + (f" and {len(partials) - 1} more" if len(partials) > 1 else "")
                        + " in place: only the rest needs space")
                return
        message, hint = space_refusal(f"{remote.target.alias}:{facts.existing}", need, margin, facts.free_bytes,
                                      partials, alias=remote.target.alias, dropping=self.o.drop_partial,
                                      in_place=in_place)
        raise MigrateError(message, hint=hint)

    def _partials(self, remote: Host, plans: list) -> list[tuple[str, int]]:
        """Kept partial dirs (unfinished files of an interrupted rsync) where these mappings land."""
        trees = [m.landing for _, m, *_ in plans if m.source_is_dir]
        dirs = [os.path.dirname(m.landing.rstrip("/")) or "." for _, m, *_ in plans if not m.source_is_dir]
        out = remote.run(partial_probe_command(trees, dirs), what="look for partial files").stdout
        return parse_partial_probe(out)

    def _drop_partials(self, remote: Host, facts: DestFacts, partials: list[tuple[str, int]]) -> None:
        for path, size in partials:
            ui.info(f"{remote.target.alias}: --drop-partial: deleting {path} ({ui.human_bytes(size)} of unfinished "
                    "files); they are sent whole")
        command = shell.join(["rm", "-rf", "--", *(p for p, _ in partials)])
        if self.o.sudo:
            self._as_root(remote, facts, command, "delete partial files")
        else:
            remote.run(command, what="delete partial files")

    def _one(self, remote: Host, facts: DestFacts, rsh: str, opts: RsyncOptions, src: _Source, m: Mapping,
             summary: filelist.SourceSummary | None, files: int, size: int, method: str,
             reason: str) -> DataPushResult:
        o = self.o
        alias = remote.target.alias
        src_arg = self._source_arg(src)
        dest_spec = remote_spec(remote, m.dest_arg)

        def build(x: RsyncOptions) -> list[str]:
            return rsync_argv([src_arg], dest_spec, rsh, x, stats=True)

        result = DataPushResult(host=self.host, source=src.typed, dest=m.landing, status="changed", method=method)
        if o.dry_run or o.delete:
            if not facts.has_rsync:
                ui.info(f"{alias}: would stream {files} file(s), {ui.human_bytes(size)} with tar ({reason})")
                result.status, result.files_transferred, result.bytes_sent = "dry run", files, size
                return result
            stats = self.transfers.rsync_dry_run(build, opts)
            if o.dry_run:
                ui.info(f"{alias}: would transfer {stats.regular_files_transferred} of {stats.files} file(s), "
                        f"{ui.human_bytes(stats.transferred_size)} via {method} ({reason})"
                        + (f"; would delete {len(stats.deleted)}" if stats.deleted else ""))
                for name in stats.deleted[:50]:
                    ui.info(f"  would delete {m.landing.rstrip('/')}/{name}")
                result.status = "dry run"
                result.files_transferred, result.bytes_sent = stats.regular_files_transferred, stats.transferred_size
                return result
            if stats.deleted:
                self._confirm_delete(alias, m, stats.deleted)
        if method == "rsync" and not is_far(self.round_trip):
            ui.debug(f"{alias}: {reason}")  # the usual way: said only with -v
        else:
            ui.info(f"{alias}: {reason}")
        task = self.progress.add(f"{alias} {os.path.basename(src.typed.rstrip('/')) or src.typed}", size)
        cb = self.progress.callback(task)
        if method == "tar":
            outcome = self._tar(remote, facts, src, m, summary, cb)
        elif method == "stream":
            outcome = self._file_stream(remote, facts, src, m, summary, cb)
        elif method == "parallel":
            assert summary is not None
            outcome = self.transfers.run_parallel_rsync(src.path, dest_spec, rsh, opts, summary.entries,
                                                        max(1, o.streams), on_progress=cb)
        else:
            try:
                outcome = self.transfers.run_rsync(build(self._single_rsync(opts, src, files, size)),
                                                   total_bytes=size, on_progress=cb, what=f"rsync to {alias}")
            except GuardRefused:
                self.progress.remove(task)  # nothing was sent: the plan is made again
                raise
        self.progress.finish(task)
        result.files_transferred = outcome.stats.regular_files_transferred
        result.bytes_sent = outcome.stats.transferred_size
        result.wire_bytes = outcome.stats.sent_bytes
        result.seconds = outcome.seconds
        result.status = "changed" if outcome.stats.regular_files_transferred or outcome.stats.deleted \
            or method == "tar" else "up to date"
        return result

    def _stream_command(self, facts: DestFacts, src: _Source, m: Mapping, *, compressed: bool = False,
                        make_dirs: list[str] | None = None) -> str:
        """What a tar stream (a directory; `compressed`: through zstd; `make_dirs`: `mkdir -p` them first)
        or a cat stream (one file, when the host has no rsync) runs there."""
        sudo_prefix = self._sudo_prefix(facts)
        if src.is_dir:
            return tar_extract_command(m.landing, decompress="zstd" if compressed else None, sudo_prefix=sudo_prefix,
                                       make_dirs=make_dirs)
        parent = self._stream_into(src, m)
        tmp = f"{parent}/.migrate-partial-{os.path.basename(m.landing)}"
        mode = oct(os.stat(src.path).st_mode & 0o7777)[2:]
        mtime = int(os.stat(src.path).st_mtime)
        q = shell.quote
        return (f"{sudo_prefix}mkdir -p {q(parent)} && {sudo_prefix}sh -c 'cat > \"$1\"' sh {q(tmp)} && "
                f"{sudo_prefix}chmod {mode} {q(tmp)} && {sudo_prefix}touch -d @{mtime} {q(tmp)} && "
                f"{sudo_prefix}mv -f {q(tmp)} {q(m.landing)}")

    def _file_stream(self, remote: Host, facts: DestFacts, src: _Source, m: Mapping,
                     summary: filelist.SourceSummary | None, cb) -> RunOutcome:
        """Over the held probe's exec when it is still free, else an exec of its own."""
        items = self._stream_items(src, m, summary)
        limit = bwlimit_kib(self.o.bwlimit)
        if self.held is not None and not self.held.used:
            return self.held.stream(self._stream_into(src, m), items, on_progress=cb, bwlimit_kib=limit,
                                    python=self._by_python(facts, src))
        return self.transfers.run_file_stream(items, remote.openssh_argv(), self._file_stream_command(facts, src, m),
                                              on_progress=cb, bwlimit_kib=limit)

    @staticmethod
    def _stream_into(src: _Source, m: Mapping) -> str:
        """The directory a stream lands in: DEST (a directory), or the one the file lands in."""
        return m.landing if src.is_dir else (os.path.dirname(m.landing.rstrip("/")) or ".")

    def _file_stream_command(self, facts: DestFacts, src: _Source, m: Mapping) -> str:
        """What a file stream runs there: it lands in DEST (a directory) or next to the file (a file)."""
        return file_stream_command(self._stream_into(src, m), sudo_prefix=self._sudo_prefix(facts),
                                   python=self._by_python(facts, src))

    def _by_python(self, facts: DestFacts, src: _Source) -> bool:
        """Whether python3 there writes this file stream (agent/receive.py): for small files on average
        (the shell receiver spends a few processes per file), or where the host has no GNU head."""
        files, size = self.sizes[src.path]
        return facts.python3 and (not facts.gnu_head or size < STREAM_MIN_AVG_BYTES * max(files, 1))

    def _sudo_prefix(self, facts: DestFacts) -> str:
        """`sudo -n ` before a stream's remote commands under --sudo (passwordless sudo there), else ''."""
        return shell.SUDO_NOPASSWD_PREFIX if self.o.sudo and facts.sudo == "nopasswd" else ""

    @staticmethod
    def _stream_items(src: _Source, m: Mapping, summary: filelist.SourceSummary | None) -> list[StreamItem]:
        if not src.is_dir:
            return [StreamItem(src.path, os.path.basename(m.landing.rstrip("/")))]
        if summary is None:
            raise MigrateError(f"{src.typed} was not listed before its stream (a migrate bug)")
        return stream_items(src.path, summary.entries)

    def _planned(self, remote: Host, facts: DestFacts, rsh: str, opts: RsyncOptions, src: _Source, m: Mapping,
                 summary: filelist.SourceSummary | None, files: int, size: int, method: str,
                 reason: str) -> PlannedTransfer:
        if method == "tar":
            command = self._tar_files_command(facts, src, m, summary)[0] if src.is_dir and summary else \
                self._stream_command(facts, src, m)
            return PlannedTransfer(m, method, reason, remote.openssh_argv(), command, files, size)
        if method == "stream":
            if self.o.dry_run and not self.o.sudo:
                reason += " (run on the destination probe's own exec, held open)"
            return PlannedTransfer(m, method, reason, remote.openssh_argv(), self._file_stream_command(facts, src, m),
                                   files, size)
        if method == "rsync":
            opts = self._single_rsync(opts, src, files, size)
        argv = rsync_argv([self._source_arg(src)], remote_spec(remote, m.dest_arg), rsh, opts, stats=True)
        if method == "parallel":
            reason += f" ({max(1, self.o.streams)} streams, each with --files-from one shard)"
        return PlannedTransfer(m, method, reason, argv, files=files, bytes=size)

    def _single_rsync(self, opts: RsyncOptions, src: _Source, files: int, size: int) -> RsyncOptions:
        """The options of a source's one rsync (the run and its --dry-run plan alike)."""
        return single_rsync_options(opts, is_dir=src.is_dir, files=files, size=size, first_copy=self.first_copy)

    @staticmethod
    def _source_arg(src: _Source) -> str:
        return (src.path.rstrip("/") or "/") + ("/" if src.is_dir and src.path.rstrip("/") else "")

    def _tar(self, remote: Host, facts: DestFacts, src: _Source, m: Mapping,
             summary: filelist.SourceSummary | None, cb) -> RunOutcome:
        ssh = remote.openssh_argv()
        cmd = self._stream_command(facts, src, m)
        if not src.is_dir:
            return self.transfers.stream_file(src.path, ssh, cmd, on_progress=cb)
        if summary is None:
            summary = filelist.list_source(src.path, self.o.exclude, self.o.exclude_from)
        files_cmd, make = self._tar_files_command(facts, src, m, summary)
        return self.transfers.run_tar_streams(src.path, summary.entries, ssh, cmd, self.tar_streams,
                                              on_progress=cb, bwlimit_kib=bwlimit_kib(self.o.bwlimit),
                                              files_command=files_cmd, compress=self.compress_tar,
                                              files_make_dirs=make is not None)

    def _tar_files_command(self, facts: DestFacts, src: _Source, m: Mapping,
                           summary: filelist.SourceSummary) -> tuple[str, list[str] | None]:
        """What each tar stream of files runs there (it makes every directory first where they fit one
        command line), and those directories (None: a stream of directories goes first instead)."""
        make = make_dirs_words(m.landing, [e.path for e in summary.entries if e.kind == "d"])
        return self._stream_command(facts, src, m, compressed=self.compress_tar, make_dirs=make), make

    def _confirm_delete(self, alias: str, m: Mapping, deleted: list[str]) -> None:
        listing = [f"{m.landing.rstrip('/')}/{d}" for d in deleted]
        ui.warn(f"{alias}: --delete would remove {len(listing)} file(s) that are not in {m.source}:")
        for line in listing[:50]:
            ui.info(f"  {line}")
        if len(listing) > 50:
            ui.info(f"  ... and {len(listing) - 50} more")
        if self.o.yes:
            return
        if not sys.stdin.isatty():
            raise MigrateError(f"refusing to delete {len(listing)} file(s) on {alias} without confirmation",
                               hint="review the list above, then rerun with --yes")
        if not click.confirm(f"Delete these {len(listing)} file(s) on {alias}?", default=False, err=True):
            raise MigrateError("deletion not confirmed; nothing was changed")


class ProgressBoard:
    """One progress bar per transfer, shared by all hosts (thread-safe through rich)."""

    def __init__(self, progress) -> None:
        self.p = progress

    def add(self, label: str, total: int) -> int:
        return self.p.add_task(label, total=max(total, 1)) if self.p else 0

    def callback(self, task: int):
        def cb(done: int, total: int) -> None:
            if self.p:
                self.p.update(task, completed=done, total=max(total, 1))
        return cb

    def remove(self, task: int) -> None:
        if self.p:
            self.p.remove_task(task)

    def finish(self, task: int) -> None:
        if self.p:
            t = self.p.tasks[[x.id for x in self.p.tasks].index(task)]
            self.p.update(task, completed=t.total)


def push_data(sources: list[str], hosts: list[str], dest: str, conn: ConnectOptions,
              options: PushDataOptions, *, reach: Reach | None = None) -> list[DataPushResult]:
    """Push SOURCES to DEST on every host (in parallel); one failing host never stops the others.
    Usage errors raise; a host's failure is its result's `status="failed"` (the caller picks the exit code)."""
    reach = reach or Reach.ssh(conn)
    relay = DataRelay(hosts, conn, options) if reach.fan_out and len(hosts) > 1 else None
    if options.method not in METHODS:
        raise UsageError(f"unknown --method {options.method!r}", hint=f"one of {', '.join(METHODS)}")
    refuse_delete_with(options.method, options.delete)  # before any host is asked
    if options.compress not in ("auto", "none", "zstd"):
        raise UsageError(f"unknown --compress {options.compress!r}", hint="auto, none or zstd")
    normalize_bwlimit(options)
    for path in options.exclude_from:
        if not os.path.isfile(path):
            raise MigrateError(f"--exclude-from file {path!r} not found")
    require_local_tools()
    srcs = _local_sources(sources)
    dest = normalize_remote_path(dest)
    for h in hosts:
        HostSpec.parse(h)
    listings: dict[str, filelist.EarlyListing] = {}
    sizes = filelist.early_sizes([s.path for s in srcs])  # every host's space check shares one count
    try:
        if relay is not None:
            relay.plan()
            if not options.dry_run:
                relay.start()
        # a directory that may go as tar or parallel streams is listed while the connections are set up
        may_stream = options.method in ("auto", "tar", "parallel") and not options.delete and not options.checksum
        for s in srcs:
            if s.is_dir and may_stream:
                listings[s.path] = filelist.EarlyListing(s.path, options.exclude, options.exclude_from,
                                                         users=len(hosts))
        with ui.transfer_progress() as progress:
            board = ProgressBoard(progress if not options.dry_run else None)
            outcomes = for_each_host(hosts, lambda h: HostPush(h, srcs, dest, reach, options, board, relay,
                                                               listings, sizes=sizes).run())
    finally:
        for listing in listings.values():
            listing.close()
        if relay is not None:
            relay.close()
    results: list[DataPushResult] = []
    for out in outcomes:
        if out.ok:
            results.extend(out.value or [])
        else:
            results.append(DataPushResult(host=out.host, source=", ".join(sources), dest=dest, status="failed",
                                          error=out.error))
    return results


