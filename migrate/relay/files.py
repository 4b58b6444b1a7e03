"""One file the first host has, copied to the other hosts over their own network (a cluster's template).

The same transfer as push-image's and push-data's relays (relay/plan.py, relay/session.py): a key made
for this copy, authorised on each receiver for one forced command only (`cat` into the one path the
file goes to there), the receiver's host key as this machine verified it, everything removed at the
end. Each copy is checked here by its sha256 on the receiver before it is used; a receiver that the
seed cannot reach, or whose copy fails or differs, is left to the caller (which sends it from here).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from migrate.errors import MigrateError
from migrate.relay import plan as rplan
from migrate.relay.session import Transfer
from migrate.remote import shell

if TYPE_CHECKING:
    from migrate.remote.connection import Remote

# below this, one upload per host from here costs less than the transfer key's round trips
MIN_BYTES = 8 << 20


def receive_command(path: str) -> str:
    """The receiver's forced command: stdin into `path` (0600), nothing else."""
    return shell.sh_c(f"umask 077 && cat > {shell.quote(path)}")


def digest_command(path: str) -> str:
    return f"sha256sum {shell.quote(path)} 2>/dev/null || true"


def feed_file(seed: Remote, seed_path: str, receivers: Sequence[tuple[Remote, str]], digest: str) -> dict[str, str]:
    """Copy `seed_path` on `seed` to each (receiver, absolute path) host to host. Returns, per receiver
    name, "" when its copy is there with `digest` (sha256 hex), else why not (the caller sends it)."""
    why: dict[str, str] = {}
    fed: list[tuple[Remote, str, rplan.Address]] = []
    for r, path in receivers:
        address = rplan.parse_address(r.run(rplan.ADDRESS_COMMAND, check=False, what="read the SSH address")
                                      .stdout.strip())
        if address is None:
            why[r.name] = "no address the hosts share (reached through a tunnel or a forward)"
        else:
            fed.append((r, path, address))
    if fed:
        got = rplan.parse_reach(seed.run(rplan.reach_command([a for _, _, a in fed]), check=False,
                                         what="check the hosts reach each other").stdout)
        for r, _, address in fed:
            verdict = rplan.reach_verdict(got, address)
            if verdict != "ok":
                why[r.name] = f"{seed.name} cannot reach it: {verdict}"
        fed = [f for f in fed if f[0].name not in why]
    if not fed:
        return why
    transfer = Transfer(seed)
    try:
        transfer.start([r for r, _, _ in fed])
        for r, path, _ in fed:
            transfer.admit(r, receive_command(path))

        def send(item: tuple[Remote, str, rplan.Address]) -> str:
            r, path, address = item
            cmd = rplan.send_command(f"cat {shell.quote(seed_path)}", transfer.marker, transfer.alias(r),
                                     r.target.user, address)
            res = seed.run(cmd, check=False, what=f"feed {r.name} from {seed.name}")
            if res.exit_code != 0 or rplan.SAVE_FAILED in res.stderr:
                return (res.stderr.strip().splitlines() or [f"exit code {res.exit_code}"])[-1]
            there = r.run(digest_command(path), check=False, what="check the copy").stdout.split()
            return "" if there[:1] == [digest] else "the copy there is not the file sent"

        with ThreadPoolExecutor(max_workers=len(fed)) as pool:
            for (r, _, _), verdict in zip(fed, pool.map(send, fed)):
                why[r.name] = verdict
    except MigrateError as exc:
        why.update({r.name: exc.one_line() for r, _, _ in fed if why.get(r.name) != ""})
    finally:
        transfer.close()
    return why
