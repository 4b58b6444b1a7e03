"""One transfer's key on the hosts: installed before the bytes move, removed after, dead runs' reaped.

The thin layer that runs relay/plan.py's commands on `Remote`s: the sending host gets a 0700
directory with the private key and a known_hosts of the receivers' host keys (as this machine
verified them); each receiving host gets one marked, restricted authorized_keys line.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING

from migrate import ui
from migrate.errors import MigrateError
from migrate.relay import plan
from migrate.remote import shell
from migrate.remote.reap import machine, pid_alive

if TYPE_CHECKING:   # paramiko and Fabric stay out of push-data's start (one host needs neither)
    from migrate.remote.connection import Remote


def reap(remote: Remote) -> list[plan.Marker]:
    """Remove the authorized_keys lines and key directories that dead runs left on `remote`."""
    res = remote.run(plan.list_markers_command(), check=False, what="list relay keys")
    now = time.time()
    stale = [m for m in plan.parse_markers(res.stdout)
             if plan.is_stale(m, now=now, machine=machine(), pid=os.getpid(), alive=pid_alive)]
    if stale:
        remote.run(plan.remove_lines_command(stale), what="remove a dead run's relay key")
        remote.run(plan.remove_dirs_command(stale), check=False, what="remove a dead run's relay key directory")
        ui.debug(f"{remote.name}: removed {len(stale)} relay key(s) a dead run left")
    return stale


def host_key(remote: Remote) -> tuple[str, str]:
    """(type, base64) of the host key this connection verified."""
    key = remote.connection.transport.get_remote_server_key()
    return key.get_name(), key.get_base64()


class Transfer:
    """A key made for one transfer: its private half on `sender`, its public half authorised on each
    receiver for one forced command. `close()` removes both (also after a failure)."""

    def __init__(self, sender: Remote) -> None:
        self.sender = sender
        self.marker = plan.new_marker(machine(), os.getpid(), uuid.uuid4().hex[:16], time.time())
        from migrate.relay.keys import new_key_pair  # cryptography: only when a relay runs

        self._key = new_key_pair()
        self._receivers: list[Remote] = []
        self._aliases: dict[str, str] = {}
        self._lock = threading.Lock()
        self._started = False

    def start(self, receivers: Sequence[Remote]) -> None:
        """Write the key and a known_hosts of every receiver's host key (as this machine verified it) on
        the sender, after removing what dead runs left there."""
        reap(self.sender)
        self.sender.run(shell.and_then(shell.mkdir_private(plan.RELAY_DIR), shell.mkdir_private(self.marker.key_dir)),
                        what="create the relay key directory")
        self._started = True
        keys = []
        for n, remote in enumerate(receivers):
            alias = plan.host_alias(n)
            keys.append((alias, *host_key(remote)))
            self._aliases[remote.name] = alias
        self.put(self._key.private_openssh, "key")
        self.put(plan.known_hosts_text(keys).encode(), "known_hosts")

    def put(self, data: bytes, name: str) -> str:
        """Write a 0600 file into the transfer's directory on the sender; its path (relative to $HOME).
        One at a time: the connection's one SFTP session must not be shared by threads."""
        path = f"{self.marker.key_dir}/{name}"
        with self._lock:
            self.sender.put_bytes(data, path, mode=0o600)
        return path

    def admit(self, remote: Remote, command: str) -> None:
        """Authorise the key on `remote` for `command` only (one marked line; a receiver may get several,
        one per command); the first time, remove what dead runs left there."""
        with self._lock:
            first = remote not in self._receivers
            if first:
                self._receivers.append(remote)
        if first:
            reap(remote)
        line = plan.authorized_line(self._key.public, command, self.marker)
        res = remote.run(plan.add_line_command(line), check=False, what="authorise the relay key")
        if not res.ok:
            why = (res.stderr.strip().splitlines() or [f"exit {res.exit_code}"])[-1]
            raise MigrateError(f"cannot authorise a transfer key on {remote.name}: {why}")

    def alias(self, receiver: Remote) -> str:
        return self._aliases[receiver.name]

    def close(self) -> None:
        """Remove the key's lines from every receiver and its directory from the sender (best effort,
        each host on its own: a host that cannot be reached now is cleaned by the next run)."""
        with self._lock:
            receivers, self._receivers = self._receivers, []
        for remote in receivers:
            try:
                remote.run(plan.remove_lines_command([self.marker]), what="remove the relay key")
            except MigrateError as exc:
                ui.warn(f"{remote.name}: could not remove this run's relay key ({exc.one_line()}); "
                        "the next run removes it")
        if self._started:
            try:
                self.sender.run(plan.remove_dirs_command([self.marker]), what="remove the relay key directory")
            except MigrateError as exc:
                ui.warn(f"{self.sender.name}: could not remove this run's relay key directory ({exc.one_line()})")

    def __enter__(self) -> Transfer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
