"""Connections to a host: Fabric under the hood, host keys verified, sudo handled, errors translated.

`connect("alice@gpu-box", options)` returns an open `Remote`. Everything that can go wrong while
reaching a host (unknown name, refused port, unknown or changed host key, rejected key, wrong sudo
password, dropped connection) comes out as a `MigrateError` with a one-line message and a hint.

The host is resolved once, by OpenSSH itself (`hosts.resolve`: `ssh -G`), and the same `SshTarget`
feeds this Fabric connection and every `ssh` process (`Remote.openssh_argv`, `OpenSshSession`).

Host keys: every known_hosts file from ssh_config (default ~/.ssh/known_hosts) is read; an
unknown key is refused with its fingerprint unless `--accept-new-host-key` (or
`StrictHostKeyChecking accept-new` in ssh_config) is set, in which case it is appended to the
first known_hosts file exactly like OpenSSH does; a changed key is always refused. (Fabric's own
default is to accept any key silently; we replace that policy.)

sudo: root, passwordless sudo and password sudo are detected. A password is asked once per host
(or read from $MIGRATE_SUDO_PASSWORD), kept in memory only, and given to sudo through Fabric's
prompt responder, never on a command line, in a file or in a log.
"""

from __future__ import annotations

import base64
import errno
import getpass
import hashlib
import io
import logging
import os
import socket
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO

import fabric
import invoke
import paramiko
import paramiko.agent
from paramiko.ssh_exception import NoValidConnectionsError

from migrate import ui
from migrate.errors import ConnectError, HostKeyError, RemoteCommandError, SudoError
from migrate.paths import sandbox_ssh_configs
from migrate.remote import openssh, probe_fragments, roundtrips, shell
from migrate.remote.host import Feed, Progress, put_atomically, read_text_result
from migrate.remote.hosts import (
    ConnectOptions,
    HostSpec,
    SshConfigSet,
    SshTarget,
    openssh_argv,
    parse_jump_hop,
    resolve,
    user_ssh_config_path,
)
from migrate.remote.result import RunResult  # noqa: F401 - re-exported: callers import it from here

SUDO_PASSWORD_ENV = "MIGRATE_SUDO_PASSWORD"

# paramiko logs a traceback from its transport thread when a host drops mid-session; our errors
# already say so on one line, so keep its records away from Python's last-resort stderr handler.
logging.getLogger("paramiko").addHandler(logging.NullHandler())


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH-style SHA256 fingerprint: `SHA256:base64` without padding."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_line(name: str, key: paramiko.PKey) -> str:
    """The line OpenSSH appends to known_hosts for an accepted key."""
    return f"{name} {key.get_name()} {key.get_base64()}\n"


class VerifyingHostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys, or accept-and-record them when the user said so.

    Changed keys never reach this policy: paramiko raises BadHostKeyException for them.
    """

    def __init__(self, target: SshTarget) -> None:
        self.target = target

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        fp = fingerprint(key)
        if not self.target.accept_new_host_key:
            raise HostKeyError(
                f"unknown host key for {self.target.alias} ({hostname}): {key.get_name()} {fp}",
                hint="check the fingerprint with the server's owner, then rerun with --accept-new-host-key",
            )
        path = Path(self.target.writable_known_hosts)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(path, "a") as fh:
            fh.write(known_hosts_line(self.target.known_hosts_name, key))
        path.chmod(0o600)
        client.get_host_keys().add(hostname, key.get_name(), key)
        ui.warn(f"accepted new host key for {hostname}: {key.get_name()} {fp} (saved in {path})")


class _ChunkedInput(io.StringIO):
    """stdin for a remote command, handed over in 64 KiB chunks.

    Invoke asks non-terminal streams for one character at a time and sleeps 10 ms between reads,
    so 11 KB of stdin took about two minutes; reading in chunks makes it immediate.
    """

    def read(self, size: int | None = -1) -> str:
        if size is not None and 0 <= size < 65536:
            size = 65536
        return super().read(size)


def _fabric_connection(target: SshTarget, configs: SshConfigSet,
                       options: ConnectOptions) -> fabric.Connection:
    gateway: fabric.Connection | str | None = None
    if target.proxy_jump:
        # OpenSSH semantics: hop1,hop2 means connect to hop1, through it to hop2, then the target.
        for hop in target.proxy_jump:
            spec, port = parse_jump_hop(hop)
            hop_target = resolve(spec, ConnectOptions(port=port, accept_new_host_key=options.accept_new_host_key),
                                 configs)
            hop_target.proxy_jump = []
            conn = _fabric_connection(hop_target, configs, options)
            if gateway is not None:
                conn.gateway = gateway
            gateway = conn
    elif target.proxy_command:
        gateway = target.proxy_command
    config = fabric.Config(ssh_config=paramiko.SSHConfig(), overrides={"run": {"in_stream": False}})
    connect_kwargs: dict[str, object] = {
        "look_for_keys": not target.identities_only,
        "allow_agent": True,
        "banner_timeout": target.connect_timeout,
        "auth_timeout": max(target.connect_timeout, 15),
    }
    if target.identity_files:
        connect_kwargs["key_filename"] = [p for p in target.identity_files if os.path.exists(p)]
    certified = certified_key(target)
    if certified is not None:
        connect_kwargs["pkey"] = certified
    agent: paramiko.agent.AgentSSH | None = None
    if target.identity_agent == "none":
        connect_kwargs["allow_agent"] = False
    elif target.identity_agent:
        agent = agent_at(target.identity_agent)
        connect_kwargs["allow_agent"] = agent is not None
    conn = fabric.Connection(
        host=target.hostname,
        user=target.user,
        port=target.port,
        config=config,
        gateway=gateway,
        connect_timeout=target.connect_timeout,
        connect_kwargs=connect_kwargs,
    )
    client = conn.client
    if agent is not None:
        # paramiko asks `client._agent` for agent keys and only opens $SSH_AUTH_SOCK when it is None
        client._agent = agent
    known = paramiko.HostKeys()
    for path in target.known_hosts_files:
        if os.path.isfile(path):
            try:
                known.load(path)
            except (OSError, paramiko.SSHException) as exc:
                raise HostKeyError(f"cannot read known_hosts file {path}: {exc}") from exc
    # paramiko looks a key up as `host`/`[host]:port`; with HostKeyAlias, OpenSSH looks up the alias
    # instead, so only the alias's keys are offered, under the name paramiko asks for
    lookup_name = target.hostname if target.port == 22 else f"[{target.hostname}]:{target.port}"
    for key_type, key in (known.lookup(target.known_hosts_name) or {}).items():
        client.get_host_keys().add(lookup_name, key_type, key)
    client.set_missing_host_key_policy(VerifyingHostKeyPolicy(target))
    return conn


class _AgentAt(paramiko.agent.AgentSSH):
    """An ssh-agent reached at a given socket path (ssh_config's IdentityAgent), not $SSH_AUTH_SOCK."""

    def __init__(self, path: str) -> None:
        super().__init__()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        self._connect(sock)

    def close(self) -> None:
        """Close the socket (paramiko's SSHClient.close calls this)."""
        self._close()


def agent_at(path: str) -> paramiko.agent.AgentSSH | None:
    """The agent at `path` (IdentityAgent), or None (with a debug line) when it cannot be reached.

    OpenSSH carries on without the agent in that case, and so do we.
    """
    try:
        return _AgentAt(os.path.expanduser(path))
    except (OSError, paramiko.SSHException) as exc:
        ui.debug(f"IdentityAgent {path} unreachable ({exc}); going on without an agent")
        return None


def certified_key(target: SshTarget) -> paramiko.PKey | None:
    """The first identity file whose key a CertificateFile certifies, loaded with that certificate.

    paramiko finds `<key>-cert.pub` next to a key by itself; a certificate stored anywhere else
    (ssh_config's CertificateFile) is paired here, as OpenSSH does. Keys with a passphrase are
    skipped (OpenSSH would ask; the agent path still works for them).
    """
    for cert in target.certificate_files:
        if not os.path.isfile(cert):
            continue
        for key_path in target.identity_files:
            if not os.path.isfile(key_path):
                continue
            try:
                key = paramiko.PKey.from_path(key_path)
                key.load_certificate(cert)
            except (OSError, ValueError, paramiko.SSHException) as exc:
                ui.debug(f"certificate {cert} does not go with {key_path}: {exc}")
                continue
            if _certifies(key.public_blob.key_blob, key):
                return key
    return None


def _certifies(cert_blob: bytes, key: paramiko.PKey) -> bool:
    """Whether an OpenSSH certificate (type, nonce, then the public key's fields) is for this key."""
    cert = paramiko.Message(cert_blob)
    cert.get_text()
    cert.get_binary()
    plain = paramiko.Message(key.asbytes())
    plain.get_text()
    return cert.get_remainder().startswith(plain.get_remainder())


# paramiko's words when the TCP connection opened but no SSH greeting came: the peer closed it or sent
# something else ("Error reading SSH protocol banner"), or said nothing until the connect timeout, after
# which paramiko goes on to authenticate on a dead transport ("No existing session")
NOT_SSH = ("Error reading SSH protocol banner", "No existing session")


def unreachable_error(where: str, exc: NoValidConnectionsError) -> ConnectError:
    """Why no address of the host took the connection, in the system's words (refused, no route)."""
    codes = {getattr(e, "errno", None) for e in exc.errors.values()}
    if codes == {errno.ECONNREFUSED}:
        return ConnectError(f"cannot connect to {where}: connection refused",
                            hint="is sshd running there, and is the port right (--port)?")
    if errno.EHOSTUNREACH in codes:
        return ConnectError(f"cannot connect to {where}: no route to host",
                            hint="nothing answers at that address: is it right, and is the host up?")
    reasons = sorted({(os.strerror(e.errno) if getattr(e, "errno", None) else str(e)).lower()
                      for e in exc.errors.values()})
    return ConnectError(f"cannot connect to {where}: {'; '.join(reasons)}",
                        hint="check the address and your network")


def _authentication_failed(t: SshTarget) -> ConnectError:
    keys = ", ".join(t.identity_files) or "ssh-agent and default keys"
    if t.identity_agent == "none":
        keys += "; IdentityAgent none"
    return ConnectError(f"authentication failed for {t.user}@{t.alias} (tried {keys})",
                        hint="check the user name, pass the key with -i, or load it into ssh-agent")


def sudo_password_from_env(environ: Mapping[str, str]) -> tuple[str | None, bool]:
    """(password, variable present) from $MIGRATE_SUDO_PASSWORD; an empty value is no password (pure).

    `MIGRATE_SUDO_PASSWORD=` (set but empty) is not a password anyone has: it is treated as unset
    (asked on a terminal), and the no-terminal error says that the variable is empty.
    """
    value = environ.get(SUDO_PASSWORD_ENV)
    if value is None:
        return None, False
    return (value or None), True


def wrong_password_hint(from_env: bool) -> str:
    """The hint for a password sudo rejected: where it came from decides what to fix (pure)."""
    if from_env:
        return f"sudo rejected the password in ${SUDO_PASSWORD_ENV}: fix or unset it"
    return f"check it, or set {SUDO_PASSWORD_ENV}"


class Remote:
    """An open connection to one host, a `Host` (remote/host.py): commands, sudo and files through
    Fabric; bulk streams and port forwards through an OpenSSH ControlMaster started on first use."""

    def __init__(self, target: SshTarget, configs: SshConfigSet, options: ConnectOptions) -> None:
        self.target = target
        self.configs = configs
        self.options = options
        self._conn: fabric.Connection | None = None
        self._sudo_mode: str | None = None
        self._sudo_password: str | None = None
        self._sudo_password_from_env = False
        self._master: openssh.ControlMaster | None = None
        self._home: str | None = None  # $HOME, read once

    # -- lifecycle ---------------------------------------------------------------------------
    def open(self) -> Remote:
        """Connect and authenticate; translate every failure into a one-line error."""
        t = self.target
        where = f"{t.alias}" + (f" ({t.hostname})" if t.hostname != t.alias else "") + f" port {t.port}"
        conn = _fabric_connection(t, self.configs, self.options)
        roundtrips.note("connect", t.alias, "paramiko")
        try:
            conn.open()
        except HostKeyError:
            raise
        except paramiko.BadHostKeyException as exc:
            raise HostKeyError(
                f"host key for {t.alias} has CHANGED: known {exc.expected_key.get_name()} "
                f"{fingerprint(exc.expected_key)}, offered {exc.key.get_name()} {fingerprint(exc.key)}; "
                "refusing to connect",
                hint=f"if the server was reinstalled, remove the old key: ssh-keygen -R '{t.known_hosts_name}'"
                f" -f {t.writable_known_hosts}",
            ) from exc
        except socket.gaierror as exc:
            raise ConnectError(f"cannot resolve host '{t.hostname}': {exc.strerror or exc}",
                               hint="check the name, or add a Host entry to ~/.ssh/config") from exc
        except UnicodeError as exc:  # the resolver's IDNA encoding refused the name
            raise ConnectError(f"malformed host {t.hostname!r}: {exc}",
                               hint="check the name, or add a Host entry to ~/.ssh/config") from exc
        except NoValidConnectionsError as exc:  # every address refused, or had no route
            raise unreachable_error(where, exc) from exc
        except (socket.timeout, TimeoutError) as exc:
            raise ConnectError(f"timed out connecting to {where} after {t.connect_timeout}s",
                               hint="check the address, VPN or firewall; raise --connect-timeout") from exc
        except paramiko.AuthenticationException as exc:
            raise _authentication_failed(t) from exc
        except paramiko.SSHException as exc:
            if "No authentication methods available" in str(exc):  # no key file, no agent, no password
                raise _authentication_failed(t) from exc
            if any(m in str(exc) for m in NOT_SSH):
                raise ConnectError(f"{where} accepted the connection but did not answer as an SSH server",
                                   hint="is that the SSH port (--port)? sshd also drops new connections when "
                                        "it has too many (MaxStartups)") from exc
            raise ConnectError(f"ssh error talking to {where}: {exc}") from exc
        except OSError as exc:
            raise ConnectError(f"cannot connect to {where}: {exc.strerror or exc}",
                               hint="check the address and your network") from exc
        self._conn = conn
        ui.debug(f"connected to {t.user}@{t.hostname}:{t.port}")
        return self

    def close(self) -> None:
        """Close the connection and the OpenSSH master, if one was started (idempotent)."""
        if self._master is not None:
            self._master.close()
            self._master = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def reconnect(self) -> None:
        """Open a fresh session, e.g. so new group memberships take effect."""
        self.close()
        self.open()

    def __enter__(self) -> Remote:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connection(self) -> fabric.Connection:
        """The underlying Fabric connection (open)."""
        if self._conn is None:
            self.open()
        assert self._conn is not None
        return self._conn

    @property
    def name(self) -> str:
        """What to call this host in messages."""
        return self.target.display

    # -- commands ----------------------------------------------------------------------------
    def run(self, command: str, *, sudo: bool = False, check: bool = True, stdin: str | None = None,
            timeout: float | None = None, what: str | None = None, sudo_mode: str | None = None) -> RunResult:
        """Run an already-quoted command line (see `migrate.remote.shell`); optionally as root.

        `check=True` raises RemoteCommandError on a non-zero exit; `what` names the action in it.
        `sudo_mode`: the mode a probe found, recorded unless one is known (saves a round trip).
        """
        if sudo_mode is not None and self._sudo_mode is None:
            self.set_sudo_mode(sudo_mode)
        if sudo and stdin is not None and self.sudo_mode() == "password":
            # sudo -S reads the password from the same stdin: the data could be taken as the password
            raise ValueError("stdin with password sudo is unsafe; upload with put_bytes() instead")
        conn = self.connection
        kwargs = {"hide": True, "warn": True, "timeout": timeout,
                  "in_stream": _ChunkedInput(stdin) if stdin is not None else False}
        ui.debug(f"[{self.target.alias}]{' (sudo)' if sudo else ''} $ {command}", level=2)
        roundtrips.note("exec", self.target.alias, what or command)
        try:
            if sudo and self.sudo_mode() == "password":
                result = conn.sudo(shell.sh_c(command), password=self._password(), **kwargs)
            else:
                full = self._as_root(command) if sudo else command
                result = conn.run(full, **kwargs)
        except invoke.exceptions.AuthFailure as exc:
            self._sudo_password = None
            raise SudoError(f"wrong sudo password for {self.target.user}@{self.target.alias}",
                            hint=wrong_password_hint(self._sudo_password_from_env)) from exc
        except invoke.exceptions.CommandTimedOut as exc:
            raise RemoteCommandError(f"{what or 'remote command'} timed out after {timeout}s on {self.name}",
                                     command=command, exit_code=124) from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise ConnectError(f"connection to {self.name} lost: {exc}",
                               hint="rerun the command; completed steps are kept") from exc
        res = RunResult(command=command, exit_code=result.exited, stdout=result.stdout, stderr=result.stderr)
        if check:
            res.raise_for_failure(what, self.name)
        return res

    def _as_root(self, command: str) -> str:
        mode = self.sudo_mode()
        if mode == "root":
            return command
        if mode == "nopasswd":
            return shell.sudo_nopasswd(command)
        raise SudoError(f"{self.target.user}@{self.target.alias} cannot run commands as root (no sudo)",
                        hint="ask the owner for sudo rights, or log in as a user who has them")

    # -- sudo --------------------------------------------------------------------------------
    SUDO_MODE_SCRIPT = probe_fragments.SUDO + "sudo_mode"  # the one sudo detection every probe uses

    def sudo_mode(self) -> str:
        """'root', 'nopasswd', 'password' or 'none' (cached; also set by the probe)."""
        if self._sudo_mode is None:
            out = self.run(shell.sh_c(self.SUDO_MODE_SCRIPT), what="sudo check").stdout.strip()
            self._sudo_mode = out if out in ("root", "nopasswd", "password", "none") else "none"
        return self._sudo_mode

    def set_sudo_mode(self, mode: str) -> None:
        """Record a sudo mode found by another probe (saves a round trip)."""
        self._sudo_mode = mode

    def _password(self) -> str:
        if self._sudo_password is None:
            password, from_env = sudo_password_from_env(os.environ)
            if password is None:
                if not sys.stdin.isatty():
                    raise SudoError(
                        f"sudo on {self.target.alias} needs {self.target.user}'s password and there is no terminal"
                        + (f" ({SUDO_PASSWORD_ENV} is set but empty)" if from_env else ""),
                        hint=f"set {SUDO_PASSWORD_ENV} to the password, or run from a terminal",
                    )
                password = getpass.getpass(f"[migrate] sudo password for {self.target.user}@{self.target.alias}: ")
                from_env = False
            self._sudo_password, self._sudo_password_from_env = password, from_env
        return self._sudo_password

    def sudo_password(self) -> str:
        """The sudo password (asked once, or $MIGRATE_SUDO_PASSWORD), for `sudo -S` fed through an OpenSSH
        stream's stdin. Callers must never log it or put it on a command line."""
        return self._password()

    def check_sudo(self) -> str:
        """Prove that root commands work (asking for the password once if needed); return the mode."""
        mode = self.sudo_mode()
        if mode == "none":
            raise SudoError(f"{self.target.user}@{self.target.alias} has no sudo",
                            hint="ask the owner for sudo rights")
        if mode == "password":
            self.run("true", sudo=True, what="sudo password check")
        return mode

    # -- files -------------------------------------------------------------------------------
    def home(self) -> str:
        """The remote user's home directory (read once per connection object)."""
        if self._home is None:
            self._home = self.run('printf %s "$HOME"', what="read $HOME").stdout
        return self._home

    def put_bytes(self, data: bytes, remote_path: str, *, mode: int = 0o600, sudo: bool = False) -> None:
        """Write a file atomically over SFTP (into a temp name, then rename or sudo install)."""
        put_atomically(self, lambda tmp: self._sftp_write(data, tmp, mode), remote_path, mode=mode, sudo=sudo)

    def _sftp_write(self, data: bytes, remote_path: str, mode: int) -> None:
        roundtrips.note("sftp", self.target.alias, f"write {remote_path}")
        sftp = self.connection.sftp()
        with sftp.open(remote_path, "wb") as fh:
            fh.set_pipelined(True)
            fh.write(data)
        sftp.chmod(remote_path, mode)

    def put_file(self, source: bytes | Path, remote_path: str, *, mode: int = 0o600,
                 progress: Progress | None = None) -> None:
        """Copy bytes or a local file to `remote_path` over SFTP (not atomic), then chmod it."""
        roundtrips.note("sftp", self.target.alias, f"write {remote_path}")
        sftp = self.connection.sftp()
        if isinstance(source, bytes):
            sftp.putfo(io.BytesIO(source), remote_path, file_size=len(source), callback=progress)
        else:
            sftp.put(str(source), remote_path, callback=progress, confirm=True)
        sftp.chmod(remote_path, mode)

    def read_text(self, remote_path: str, *, sudo: bool = False) -> str | None:
        """A remote text file's content, or None when it does not exist."""
        return read_text_result(self, self.run(shell.cat_if_exists(remote_path), sudo=sudo, check=False), remote_path)

    def read_bytes(self, remote_path: str) -> bytes:
        """A remote file's bytes, over SFTP (a file that cannot be read: RemoteCommandError saying why)."""
        try:
            roundtrips.note("sftp", self.target.alias, f"read {remote_path}")
            with self.connection.sftp().open(remote_path, "rb") as fh:
                return fh.read()
        except OSError as exc:
            raise RemoteCommandError(f"reading {remote_path} from {self.name} failed: {exc.strerror or exc}",
                                     command=f"sftp get {remote_path}", exit_code=1) from exc

    # -- OpenSSH: bulk bytes and forwards ------------------------------------------------------
    def _bulk(self) -> openssh.ControlMaster:
        """The OpenSSH master for this host's streams and forwards (started once, closed with us)."""
        if self._master is None or not self._master.alive():
            master = openssh.ControlMaster(self.openssh_argv(), alias=self.target.alias, display=self.name,
                                           cipher=openssh.stream_ciphers(self.configs),
                                           connect_timeout=self.target.connect_timeout,
                                           before_spawn=self.configs.openssh_file)
            master.start()
            self._master = master
        return self._master

    def stream_in(self, command: str, feed: Feed, *, what: str, hint: str | None = None) -> None:
        """Run `command` with `feed` as its stdin, through the OpenSSH master."""
        openssh.stream_in(self._bulk().argv_words(["--", command]), feed, what=what, display=self.name, hint=hint)

    def stream_out(self, command: str, sink: IO[bytes], *, what: str) -> None:
        """Run `command` with its stdout written to `sink`, through the OpenSSH master."""
        openssh.stream_out(self._bulk().argv_words(["--", command]), sink, what=what, display=self.name)

    def follow(self, command: str, sink: IO[bytes], on_stderr: Callable[[str], None], *, what: str) -> int:
        """Run `command` with its stdout passed to `sink` and its stderr lines to `on_stderr` as they come,
        through the OpenSSH master (see `Host.follow`)."""
        return openssh.follow(self._bulk().argv_words(["--", command]), sink, on_stderr, what=what,
                              display=self.name)

    def forward(self, local_port: int, remote: int | str, *, bind: str = "127.0.0.1",
                remote_host: str = "127.0.0.1") -> AbstractContextManager[None]:
        """A local forward held by the OpenSSH master (see `Host.forward`)."""
        return self._bulk().forward(openssh.forward_spec(local_port, remote, bind=bind, remote_host=remote_host))

    def forwards_alive(self) -> bool:
        """Whether the OpenSSH master holding the forwards still runs (see `Host.forwards_alive`)."""
        return self._master is not None and self._master.alive()

    def login_round_trip(self) -> float | None:
        return self._master.round_trip() if self._master is not None else None

    def openssh_argv(self, *, extra: list[str] | None = None) -> list[str]:
        """`ssh ... host` for subprocess streams (rsync -e, image pipes) with the same settings."""
        return openssh_argv(self.target, config_file=self.configs.openssh_file(), extra=extra)


def load_configs(options: ConnectOptions) -> SshConfigSet:
    """The ssh_config set migrate uses: the sandbox's blocks, then the user's file."""
    return SshConfigSet(user_ssh_config_path(options), sandbox_ssh_configs())


def target_for(host: str, options: ConnectOptions) -> tuple[SshTarget, SshConfigSet]:
    """Parse and resolve a host argument without connecting."""
    configs = load_configs(options)
    return resolve(HostSpec.parse(host), options, configs), configs


def connect(host: str, options: ConnectOptions | None = None) -> Remote:
    """Parse, resolve and open a connection to `host` (`[user@]host` or an ssh_config alias)."""
    options = options or ConnectOptions()
    target, configs = target_for(host, options)
    return Remote(target, configs, options).open()
