"""$MIGRATE_SUDO_PASSWORD: an empty value is no password; the wrong-password hint names the real cause."""

from __future__ import annotations

import io

import pytest

from migrate.errors import SudoError
from migrate.remote import connection as C
from migrate.remote.hosts import ConnectOptions, SshTarget


def _remote() -> C.Remote:
    target = SshTarget(alias="gpu", hostname="10.0.0.5", port=22, user="bob")
    return C.Remote(target, configs=None, options=ConnectOptions())  # type: ignore[arg-type]


def test_empty_variable_is_no_password():
    assert C.sudo_password_from_env({}) == (None, False)
    assert C.sudo_password_from_env({"MIGRATE_SUDO_PASSWORD": ""}) == (None, True)
    assert C.sudo_password_from_env({"MIGRATE_SUDO_PASSWORD": "pw"}) == ("pw", True)


def test_empty_variable_without_terminal_says_it_is_empty(monkeypatch):
    monkeypatch.setenv("MIGRATE_SUDO_PASSWORD", "")
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    with pytest.raises(SudoError, match="MIGRATE_SUDO_PASSWORD is set but empty") as exc:
        _remote()._password()
    assert "no terminal" in exc.value.message


def test_empty_variable_on_a_terminal_asks(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setenv("MIGRATE_SUDO_PASSWORD", "")
    monkeypatch.setattr("sys.stdin", Tty(""))
    monkeypatch.setattr(C.getpass, "getpass", lambda prompt: "typed")
    assert _remote()._password() == "typed"


def test_wrong_password_hint_names_where_it_came_from():
    assert "fix or unset" in C.wrong_password_hint(True)
    assert "set MIGRATE_SUDO_PASSWORD" in C.wrong_password_hint(False)
    assert "set MIGRATE_SUDO_PASSWORD" not in C.wrong_password_hint(True)
