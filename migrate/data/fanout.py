"""push-data to several hosts: one copy over this machine's link, the others fed host to host.

The seed (the first host) gets each source as today. Every other host the seed reaches gets each
directory source from the seed's copy: `tar` of exactly the files this machine would send (rsync's
own file list here, with the same excludes) piped over `ssh` with a one-transfer key whose only
allowed command is `tar -x` into that host's landing directory. Then the usual rsync runs from
here: it finds every file there (same size and mtime) and sends nothing, which checks the relay,
and sends whatever the relay missed (so a broken relay resumes from here). A single-file source,
a DEST that already has files (a rerun: rsync from here sends only what differs), --sudo and
--delete go from here (said in the result's fed_via/fed_why).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from migrate import ui
from migrate.data import filelist
from migrate.data.plan import DataPushResult, PushDataOptions
from migrate.data.remote import tar_extract_command
from migrate.errors import MigrateError
from migrate.relay import plan as rplan
from migrate.relay.session import Transfer
from migrate.remote import shell
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host

if TYPE_CHECKING:   # paramiko and Fabric are imported only when several hosts are relayed
    from migrate.remote.connection import Remote


def refusal(options: PushDataOptions) -> str:
    """Why no host is relayed ("" when they may be)."""
    if not options.relay:
        return "--no-relay"
    if options.sudo:
        return "--sudo is sent from here"
    if options.delete:
        return "--delete is sent from here"
    return ""


class DataRelay:
    """The hosts' feeds, the transfer key, the seed's landings, and the feeding of one source."""

    def __init__(self, hosts: Sequence[str], conn: ConnectOptions, options: PushDataOptions) -> None:
        self.hosts, self.conn, self.o = list(hosts), conn, options
        self.feeds: dict[str, rplan.Feed] = {}
        self.remotes: dict[str, Remote] = {}
        self.addresses: dict[str, rplan.Address | None] = {}
        self.seed_done = threading.Event()
        self.seed_landings: dict[str, str] = {}  # source as typed -> where the seed has it
        self.transfer: Transfer | None = None
        self._lock = threading.Lock()
        self._lists = 0

    @property
    def seed(self) -> str:
        return self.hosts[0]

    def plan(self) -> dict[str, rplan.Feed]:
        """Who feeds whom: read-only probes (where each host's sshd listens, whether the seed reaches it)."""
        off = refusal(self.o)
        needs = dict.fromkeys(self.hosts, True)
        if off or len(self.hosts) < 2:
            self.feeds = rplan.plan_feeds(self.hosts, needs, {}, lambda s, h: "", off=off)
            return self.feeds
        from migrate.remote.connection import connect

        outcomes = for_each_host(self.hosts, lambda h: connect(h, self.conn))
        refuse = {}
        for o in outcomes:
            if o.ok and o.value is not None:
                self.remotes[o.host] = o.value
            else:
                refuse[o.host] = f"not reached for the relay: {o.error}"

        def reach(seed: str, host: str) -> str:
            res = self.remotes[host].run(rplan.ADDRESS_COMMAND, check=False, what="read the SSH address")
            address = self.addresses[host] = rplan.parse_address(res.stdout.strip())
            if address is None:
                return rplan.NO_SHARED_ADDRESS
            got = rplan.parse_reach(self.remotes[seed].run(rplan.reach_command([address]), check=False,
                                                           what="check the hosts reach each other").stdout)
            return rplan.reach_verdict(got, address)

        self.feeds = rplan.plan_feeds(self.hosts, needs, refuse, reach)
        return self.feeds

    def start(self) -> None:
        """The transfer key on the seed (its lines come per source, when each landing is known)."""
        relayed = [h for h, f in self.feeds.items() if f.relayed]
        if not relayed:
            return
        transfer = Transfer(self.remotes[self.seed])
        try:
            transfer.start([self.remotes[h] for h in relayed])
        except MigrateError as exc:
            transfer.close()
            for h in relayed:
                self.feeds[h] = rplan.Feed(h, rplan.LAPTOP, f"cannot prepare the transfer key: {exc.one_line()}")
            return
        self.transfer = transfer

    def close(self) -> None:
        if self.transfer is not None:
            self.transfer.close()
        for r in self.remotes.values():
            r.close()

    def seed_finished(self, results: list[DataPushResult]) -> None:
        for r in results:
            if r.status in ("changed", "up to date"):
                self.seed_landings[r.source] = r.dest
        self.seed_done.set()

    def feed(self, host: str, source_path: str, typed: str, landing: str) -> int:
        """Feed one directory source to `host` from the seed; the bytes the seed sent."""
        self.seed_done.wait()
        transfer, seed_landing = self.transfer, self.seed_landings.get(typed)
        if transfer is None or seed_landing is None:
            raise MigrateError(f"{self.seed} did not get {typed}")
        remote, address = self.remotes[host], self.addresses[host]
        assert address is not None
        entries = filelist.list_source(source_path, self.o.exclude, self.o.exclude_from).entries
        with self._lock:
            self._lists += 1
            n = self._lists
        name = transfer.put(filelist.files_from_bytes(entries), f"list-{n}")
        transfer.admit(remote, tar_extract_command(landing, decompress=None))
        source = send_tar_source(seed_landing, name)
        res = transfer.sender.run(rplan.send_command(source, transfer.marker, transfer.alias(remote),
                                                     remote.target.user, address),
                                  check=False, what=f"feed {host} from {self.seed}")
        out, sent = rplan.parse_relayed(res.stdout)
        if res.exit_code != 0 or rplan.SAVE_FAILED in res.stderr:
            why = (res.stderr.strip().splitlines() or [out or f"exit code {res.exit_code}"])[-1]
            raise MigrateError(f"the relay from {self.seed} failed: {why}")
        return sent


def send_tar_source(seed_landing: str, list_file: str) -> str:
    """On the seed: tar exactly the listed entries (NUL-separated, relative to the landing)."""
    return (f"cd {shell.quote(seed_landing)} && tar -cf - --null --no-recursion "
            f"-T \"$HOME\"/{shell.quote(list_file)}")


def relayed_one(push: Any, relay: DataRelay, remote: Any, facts: Any, rsh: str, opts: Any, src: Any, m: Any,
                summary: Any, files: int, size: int, method: str, reason: str, direct) -> DataPushResult:
    """A relayed host's source: fed from the seed, then the usual rsync from here (which checks it and
    sends what is missing); a failed relay is only a note, the rsync from here then sends it all."""
    feed = relay.feeds[push.host]
    if feed.relayed and not src.is_dir:
        feed = rplan.Feed(push.host, rplan.LAPTOP, "a single file is sent from here")
    elif feed.relayed and not (facts.kind == "none" or facts.empty):  # a rerun, or data already there
        feed = rplan.Feed(push.host, rplan.LAPTOP, "DEST has files: rsync from here sends only what differs")
    if not feed.relayed or push.o.dry_run:
        result = direct(remote, facts, rsh, opts, src, m, summary, files, size, method, reason)
        return annotate(result, feed, push.o.dry_run)
    sent = 0
    try:
        ui.step(f"{remote.target.alias}: fed by {relay.seed} over the hosts' network")
        sent = relay.feed(push.host, src.path, src.typed, m.landing)
    except MigrateError as exc:
        ui.warn(f"{remote.target.alias}: {exc.one_line()}; sending from here")
        feed = rplan.Feed(push.host, rplan.LAPTOP, exc.one_line())
    if sent and not facts.has_rsync:
        result = DataPushResult(host=push.host, source=src.typed, dest=m.landing, status="changed", method="relay",
                                files_transferred=files)
    else:
        result = direct(remote, facts, rsh, opts, src, m, summary, files, size, "rsync" if sent else method,
                        "after the relay: only what differs" if sent else reason)
        if sent:
            result.method = "relay+rsync"
            result.status = "changed"
    result.relayed_bytes = sent
    return annotate(result, feed, False)


def annotate(result: DataPushResult, feed: rplan.Feed, dry_run: bool) -> DataPushResult:
    """Say on the result which way its host was fed and why."""
    if dry_run and feed.relayed:
        result.method = f"relay from {feed.source}, then rsync"
    result.fed_via, result.fed_why = feed.source, feed.why
    return result
