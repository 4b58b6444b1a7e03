"""The OpenSSH side of the one transport: one ControlMaster manager, and `OpenSshSession` on top of it.

Bulk bytes travel through `ssh` processes (rsync `-e`, tar pipes, image streams): about twice
paramiko's throughput. `ControlMaster` is the one manager of the multiplexed connection they share:
one socket directory (`control_dir()`), one lifecycle (our own `ssh -M -N` child, started once,
stopped when the verb ends). push-data/pull-data reach it through `OpenSshSession`, push-image
directly (`ControlMaster(remote.openssh_argv(), ...)`).

Settings and checks are the one resolution every verb uses (`hosts.resolve`: `ssh -G` on the same
ssh_config text, sandbox blocks first, passed with `-F`), so host, port, user, keys, known_hosts
files and the host-key policy (`StrictHostKeyChecking=yes`, or `accept-new` when asked on the command
line or in ssh_config) are the Fabric connection's. When the master cannot connect, the same host is
tried once with the paramiko-based connection layer, whose errors say exactly what is wrong (unknown
host key with its fingerprint, changed key, refused port, authentication) instead of OpenSSH's terse
exit 255.

Cipher: where this CPU has AES-NI and no ssh_config in play names `Ciphers`, AES-GCM is offered
first (OpenSSH's default is chacha20-poly1305, ~20 % slower per byte with AES-NI; measured on the
sandbox: 1 GiB in 5.05 s vs 5.99 s). The server still picks from what it allows.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from migrate import ui
from migrate.errors import ConnectError, RemoteCommandError, SudoError
from migrate.paths import cache_root, private_dir, sandbox_ssh_configs
from migrate.remote import roundtrips, shell
from migrate.remote.hosts import (
    ConnectOptions,
    HostSpec,
    SshConfigSet,
    SshTarget,
    openssh_options,
    resolve,
    user_ssh_config_path,
)
from migrate.remote.reap import reap_masters_once

AES_GCM_FIRST = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
_CIPHERS_LINE = re.compile(r"^\s*ciphers[\s=]", re.IGNORECASE | re.MULTILINE)


def local_has_aes() -> bool:
    """True when this CPU advertises AES instructions (x86 `aes` flag, arm64 `aes` feature)."""
    try:
        return re.search(r"\baes\b", Path("/proc/cpuinfo").read_text()) is not None
    except OSError:
        return False


def preferred_ciphers(config_text: str, has_aes: bool) -> str | None:
    """The `Ciphers` value to offer, or None to leave OpenSSH's choice (or the user's) alone (pure)."""
    if not has_aes or _CIPHERS_LINE.search(config_text):
        return None
    return AES_GCM_FIRST


def _user_default_config_text() -> str:
    """/etc/ssh/ssh_config (and its drop-ins): a system-wide `Ciphers` is respected too."""
    parts = []
    for path in [Path("/etc/ssh/ssh_config"), *sorted(Path("/etc/ssh/ssh_config.d").glob("*.conf"))]:
        try:
            parts.append(path.read_text(errors="surrogateescape"))  # only the ASCII `Ciphers` keyword matters
        except OSError:
            continue
    return "\n".join(parts)


def stream_ciphers(configs: SshConfigSet, *, remote_has_aes: bool = True) -> str | None:
    """The `Ciphers` to offer on a bulk connection to a host reached with `configs` (None: OpenSSH's)."""
    return preferred_ciphers(configs.text + "\n" + _user_default_config_text(), local_has_aes() and remote_has_aes)


def control_dir() -> Path:
    """The one directory of ControlMaster sockets (private; short path: sockets have a length limit)."""
    return private_dir(cache_root() / "cm")


class MasterFailed(ConnectError):
    """The master connection could not be opened; `stderr` is what ssh said."""

    def __init__(self, message: str, hint: str | None = None, *, stderr: str = "") -> None:
        super().__init__(message, hint)
        self.stderr = stderr


class ControlMaster:
    """One OpenSSH master connection to one host, shared by every `ssh` of a verb (`with ControlMaster(...)`).

    `base_argv` is `ssh [options] alias` (`Remote.openssh_argv()` or `OpenSshSession`'s); the master
    is our own child (`ssh -M -N`, ControlPersist=no), so it ends with the verb. Clients use
    `ControlMaster=no`: if the master has gone, they still connect on their own.
    """

    def __init__(self, base_argv: list[str], *, alias: str, display: str, cipher: str | None = None,
                 connect_timeout: float = 10, before_spawn: Callable[[], object] | None = None) -> None:
        self.base = base_argv[:-1]
        self.before_spawn = before_spawn
        self.alias = alias
        self.display = display
        self.cipher = cipher
        self.connect_timeout = connect_timeout
        self.socket = str(control_dir() / f"{os.getpid()}-{uuid.uuid4().hex[:8]}")
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ControlMaster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn_check(self) -> None:
        if self.before_spawn is not None:
            self.before_spawn()  # e.g. rewrite the `ssh -F` file if a `sandbox down` removed it

    def start(self) -> None:
        """Open the master connection; MasterFailed (with ssh's words) when it cannot."""
        reap_masters_once(control_dir())  # masters a killed run left (remote/reap.py)
        self._spawn_check()
        extra = ["-M", "-S", self.socket, "-o", "ControlPersist=no", "-N"]
        if self.cipher:
            extra += ["-c", self.cipher]
        argv = [*self.base, *extra, self.alias]
        ui.debug("$ " + " ".join(argv), level=2)
        roundtrips.note("connect", self.alias, "ssh ControlMaster")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        deadline = time.monotonic() + self.connect_timeout + 10
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else b"").decode(errors="replace").strip()
                code = self.proc.returncode
                self.close()
                raise MasterFailed(f"ssh stream connection to {self.display} failed: "
                                   f"{err.splitlines()[-1] if err else 'exit ' + str(code)}",
                                   hint="check that `ssh` (OpenSSH client) reaches the host with the same settings",
                                   stderr=err)
            if time.monotonic() > deadline:
                self.close()
                raise MasterFailed(f"timed out opening the ssh stream connection to {self.display}")
            time.sleep(0.02)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def client_argv(self) -> list[str]:
        """`ssh [options] alias` through the master (no command: rsync `-e`, tar pipes)."""
        self._spawn_check()
        return [*self.base, "-S", self.socket, "-o", "ControlMaster=no", self.alias]

    def argv(self, command: str) -> list[str]:
        """`ssh ... -T alias COMMAND` through the master (one exec channel: counted here, where every
        caller builds the one process it runs)."""
        roundtrips.note("exec", self.alias, command)
        return [*self.client_argv()[:-1], "-T", self.alias, command]

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop the master (idempotent) and remove its socket."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            if self.proc.stderr:
                self.proc.stderr.close()
            self.proc = None
        try:
            os.unlink(self.socket)
        except OSError:
            pass


class OpenSshSession:
    """One host reached with `ssh` over a `ControlMaster`; `run()` mirrors `Remote.run` for plain commands.

    Kept for push-data/pull-data; new code can take `target` (the one resolution), `master` (the one
    ControlMaster manager) and `openssh_argv()` from here, or `Remote.openssh_argv()` + `ControlMaster`.
    """

    def __init__(self, host: str, options: ConnectOptions) -> None:
        self.spec = HostSpec.parse(host)
        self.options = options
        self.configs = SshConfigSet(user_ssh_config_path(options), sandbox_ssh_configs())
        self.target: SshTarget = resolve(self.spec, options, self.configs)
        self._ciphers = stream_ciphers(self.configs)
        self.master = ControlMaster([*self._base(), self.spec.host], alias=self.spec.host, display=self.name,
                                    connect_timeout=self.target.connect_timeout,
                                    before_spawn=self.configs.openssh_file)

    # -- argv ---------------------------------------------------------------------------------
    def _base(self) -> list[str]:
        argv = ["ssh", *openssh_options(self.target, config_file=self.configs.openssh_file())]
        if self._ciphers:
            argv += ["-o", f"Ciphers={self._ciphers}"]
        return argv

    def openssh_argv(self) -> list[str]:
        """`ssh [options] alias` sharing this session's connection (for rsync -e, tar pipes)."""
        return self.master.client_argv()

    @property
    def name(self) -> str:
        return f"{self.target.user}@{self.target.alias}"

    # -- commands -----------------------------------------------------------------------------
    def open(self) -> OpenSshSession:
        """Connect now (the master), so a connection problem is reported before anything runs."""
        self._ensure_master()
        return self

    def _ensure_master(self) -> None:
        if self.master.alive():
            return
        try:
            self.master.start()
        except MasterFailed as exc:
            self._diagnose(exc.stderr)

    def run(self, command: str, *, sudo: bool = False, check: bool = True, stdin: str | None = None,
            timeout: float | None = None, what: str | None = None, sudo_mode: str = "nopasswd"):
        """Run an already-quoted command line; `sudo` needs root or passwordless sudo (see `sudo_mode`)."""
        from migrate.remote.result import RunResult

        if sudo and sudo_mode == "password":
            raise SudoError("this step needs sudo with a password", hint="run it through the paramiko connection")
        full = shell.sudo_nopasswd(command) if sudo and sudo_mode != "root" else command
        self._ensure_master()
        ui.debug(f"[{self.spec.host}] $ {full}", level=2)
        roundtrips.note("exec", self.spec.host, what or command)
        try:
            # no stdin given: /dev/null, never ours (a command must not eat what the user pipes to migrate)
            feed = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
            proc = subprocess.run([*self.openssh_argv(), full], capture_output=True, text=True, timeout=timeout,
                                  **feed)
        except subprocess.TimeoutExpired as exc:
            raise RemoteCommandError(f"{what or 'remote command'} timed out after {timeout}s on {self.name}",
                                     command=command, exit_code=124) from exc
        res = RunResult(command=command, exit_code=proc.returncode, stdout=proc.stdout, stderr=proc.stderr)
        if proc.returncode == 255:
            last = (proc.stderr.strip().splitlines() or ["connection failed"])[-1]
            raise ConnectError(f"connection to {self.name} lost: {last}", hint="rerun the command")
        if check:
            res.raise_for_failure(what, self.name)
        return res

    def _diagnose(self, stderr: str) -> None:
        """OpenSSH failed to connect: let the paramiko layer say why, in the same words as every verb."""
        from migrate.remote.connection import connect

        with connect(str(self.spec), self.options):
            pass
        last = (stderr.strip().splitlines() or ["exit code 255"])[-1]
        raise ConnectError(f"ssh to {self.spec.host} failed: {last}", hint="try `ssh -v` with the same host")

    def close(self) -> None:
        """Stop the ControlMaster (idempotent)."""
        self.master.close()

    def __enter__(self) -> OpenSshSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
