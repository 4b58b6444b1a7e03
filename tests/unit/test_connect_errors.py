"""What a failed connection says: the system's reason (refused, no route) and a port that is not SSH
(issue 20: an unused address said "connection refused", a silent port "No existing session")."""

from __future__ import annotations

import errno
import socket
import threading

import pytest
from paramiko.ssh_exception import NoValidConnectionsError

from migrate.remote.connection import unreachable_error
from tests.conftest import assert_one_line_error, run_cli


def _errors(*codes: int) -> NoValidConnectionsError:
    return NoValidConnectionsError({(f"10.0.0.{i}", 22): OSError(c, "x") for i, c in enumerate(codes)})


@pytest.mark.parametrize("codes,said", [
    ((errno.ECONNREFUSED,), "connection refused"),
    ((errno.EHOSTUNREACH,), "no route to host"),
    ((errno.ECONNREFUSED, errno.EHOSTUNREACH), "no route to host"),  # IPv4 unreachable, IPv6 refused
])
def test_the_reason_is_the_systems(codes, said):
    assert unreachable_error("gpu port 22", _errors(*codes)).message == f"cannot connect to gpu port 22: {said}"


class _Listener:
    """A TCP port on loopback that accepts and then closes, greets with something else, or stays silent."""

    def __init__(self, behaviour: str) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.kept: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            if self.behaviour == "close":
                conn.close()
            else:
                if self.behaviour == "http":
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                self.kept.append(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.kept:
            c.close()


@pytest.mark.parametrize("behaviour", ["silent", "close", "http"])
def test_a_port_that_accepts_but_does_not_speak_ssh_says_so(behaviour):
    listener = _Listener(behaviour)
    try:
        res = run_cli("doctor", "127.0.0.1", "--port", str(listener.port), "--connect-timeout", "2")
    finally:
        listener.close()
    assert_one_line_error(res, f"127.0.0.1 port {listener.port} accepted the connection but did not answer as an "
                               "SSH server", "--port")
    assert "No existing session" not in res.output and "banner" not in res.output
