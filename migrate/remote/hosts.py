"""Host specs (`[user@]host`), ~/.ssh/config resolution and the OpenSSH command line for a host.

`resolve()` turns what the user typed plus the connection options into an `SshTarget`: the same
answer OpenSSH would give (aliases, HostName, Port, User, IdentityFile, ProxyJump,
UserKnownHostsFile), so that Fabric connections and the `ssh` processes we start for rsync and
image streams reach the same host with the same keys and the same host-key checks.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from migrate.errors import UsageError
from migrate.paths import cache_root, private_dir

_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*\$?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")
_IPV6_RE = re.compile(r"^\[?([0-9A-Fa-f:.]+(?:%[A-Za-z0-9]+)?)\]?$")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
GLOBAL_KNOWN_HOSTS = "/etc/ssh/ssh_known_hosts"
DEFAULT_CONNECT_TIMEOUT = 10
CONFIG_CACHE_PREFIX = "ssh_config-"  # cache_root()/ssh_config-<hash>: the ssh_config text for `ssh -F`


@dataclass(frozen=True)
class HostSpec:
    """What the user typed: an optional user and a host name, alias or address."""

    host: str
    user: str | None = None

    @classmethod
    def parse(cls, text: str) -> HostSpec:
        """Parse `[user@]host`; raise UsageError with a hint for anything else."""
        raw = text
        text = text.strip()
        if not text:
            raise UsageError("empty host", hint="give a host as [user@]host, e.g. alice@10.0.0.5")
        if text.startswith("-"):
            raise UsageError(f"host {raw!r} starts with '-'", hint="host names cannot start with a dash")
        user: str | None = None
        if "@" in text:
            user, _, text = text.rpartition("@")
            if not user or not _USER_RE.match(user):
                raise UsageError(f"malformed user in {raw!r}", hint="use [user@]host, e.g. alice@gpu-box")
        if not text:
            raise UsageError(f"malformed host {raw!r}: nothing after '@'", hint="use [user@]host")
        if _HOST_RE.match(text):
            return cls(host=text, user=user)
        if text.count(":") == 1 and not text.startswith("["):
            name, _, port = text.partition(":")
            if port.isdigit():
                raise UsageError(f"malformed host {raw!r}", hint=f"give the port with --port {port}")
            raise UsageError(f"malformed host {raw!r}",
                             hint="use [user@]host; paths go in HOST:PATH only for push-data")
        if "/" in text or " " in text:
            raise UsageError(f"malformed host {raw!r}", hint="use [user@]host, e.g. alice@gpu-box")
        m = _IPV6_RE.match(text)
        if m and ":" in m.group(1):
            return cls(host=m.group(1), user=user)
        raise UsageError(f"malformed host {raw!r}", hint="use [user@]host with letters, digits, '.', '-' or '_'")

    def __str__(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host


@dataclass
class ConnectOptions:
    """Connection options from the command line; None means 'ask ~/.ssh/config'."""

    port: int | None = None
    identity_files: list[str] = field(default_factory=list)
    accept_new_host_key: bool = False
    connect_timeout: int | None = None
    ssh_config_path: str | None = None


@dataclass
class SshTarget:
    """A fully resolved host: everything needed to open an SSH connection to it."""

    alias: str
    hostname: str
    port: int
    user: str
    identity_files: list[str] = field(default_factory=list)
    identities_only: bool = False
    proxy_jump: list[str] = field(default_factory=list)
    proxy_command: str | None = None
    known_hosts_files: list[str] = field(default_factory=list)
    accept_new_host_key: bool = False
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT

    @property
    def display(self) -> str:
        """`user@alias` (and the port when it is not 22 and not from an alias)."""
        if self.alias != self.hostname or self.port == 22:
            return f"{self.user}@{self.alias}"
        return f"{self.user}@{self.alias}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name under which the host key is stored: `host` or `[host]:port`."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def writable_known_hosts(self) -> str:
        """The known_hosts file a newly accepted key is appended to (OpenSSH's choice: the first)."""
        return self.known_hosts_files[0]


def user_ssh_config_path(options: ConnectOptions | None = None) -> Path:
    """`--ssh-config`, else $MIGRATE_SSH_CONFIG, else ~/.ssh/config."""
    if options and options.ssh_config_path:
        return Path(options.ssh_config_path).expanduser()
    return Path(os.environ.get("MIGRATE_SSH_CONFIG", "~/.ssh/config")).expanduser()


class SshConfigSet:
    """The ssh_config text migrate uses: extra blocks (the sandbox's) first, then the user's file.

    First obtained value wins, as in OpenSSH, so the sandbox's own `Host sandbox1` block decides
    its HostName/Port/User while the user's `Host *` defaults still apply to everything else.
    The same text feeds paramiko (`lookup`) and the OpenSSH client (`openssh_file`, passed with
    `-F`), so ProxyJump hops and aliases resolve identically in both.
    """

    def __init__(self, user_config: Path, extra_configs: list[Path] | None = None) -> None:
        self.user_config = user_config
        parts: list[str] = []
        self.sources: list[Path] = []
        for path in [*(extra_configs or []), user_config]:
            try:
                parts.append(path.read_text())
                self.sources.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise UsageError(f"cannot read ssh config {path}: {exc.strerror}") from exc
        self.text = "\n".join(parts)
        self._config = None
        self._file: Path | None = None

    @property
    def config(self):
        """The text parsed by paramiko (imported only when needed: OpenSSH-only paths skip it)."""
        if self._config is None:
            import paramiko

            try:
                self._config = paramiko.SSHConfig.from_text(self.text)
            except Exception as exc:  # paramiko raises ConfigParseError / ValueError / others
                raise UsageError(f"cannot parse ssh config: {exc}", hint=f"check {self.user_config}") from exc
        return self._config

    def lookup(self, host: str) -> dict:
        """paramiko's view of `Host` blocks for this name."""
        return self.config.lookup(host)

    def openssh_file(self) -> Path | None:
        """A private file with the same text for `ssh -F` (None: plain ~/.ssh/config suffices).

        Written again when it has gone since the last call (`sandbox down` removes the cached files
        that name its hosts, which may include ours), so call it before each `ssh` started.
        """
        default = Path("~/.ssh/config").expanduser()
        if self.sources in ([], [default]):
            return None
        if self._file is not None and self._file.exists():
            return self._file
        digest = hashlib.sha256(self.text.encode()).hexdigest()[:16]
        cache = private_dir(cache_root())
        path = cache / f"{CONFIG_CACHE_PREFIX}{digest}"
        if not path.exists():
            _prune_stale(cache, f"{CONFIG_CACHE_PREFIX}*", max_age_s=7 * 86400)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(self.text)
            tmp.chmod(0o600)
            tmp.replace(path)
        else:
            path.touch()  # in use: keep it out of the pruning
        self._file = path
        return self._file


def remove_cached_configs(marker: str) -> list[Path]:
    """Remove the cached `ssh -F` files whose text contains `marker` (a sandbox's header line, so
    `sandbox down` takes the files naming its hosts and leaves every other one); return them."""
    removed = []
    for path in cache_root().glob(f"{CONFIG_CACHE_PREFIX}*"):
        try:
            if marker in path.read_text(errors="replace"):
                path.unlink()
                removed.append(path)
        except OSError:
            continue
    return removed


def _prune_stale(directory: Path, pattern: str, max_age_s: float) -> None:
    """Remove cache files matching `pattern` not used for `max_age_s` (old sandbox configs pile up)."""
    import time

    cutoff = time.time() - max_age_s
    for old in directory.glob(pattern):
        try:
            if old.stat().st_mtime < cutoff:
                old.unlink()
        except OSError:
            continue


def _split_words(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        words: list[str] = []
        for v in value:
            words.extend(v.split())
        return words
    return value.split()


def resolve(spec: HostSpec, options: ConnectOptions, ssh_config: SshConfigSet) -> SshTarget:
    """Combine the spec, command-line options and ssh_config into an `SshTarget` (pure)."""
    cfg = ssh_config.lookup(spec.host)
    user = spec.user or cfg.get("user") or getpass.getuser()
    try:
        port = options.port or int(cfg.get("port", 22))
    except ValueError as exc:
        raise UsageError(f"bad Port in ssh config for {spec.host}: {cfg.get('port')!r}") from exc
    if not 0 < port < 65536:
        raise UsageError(f"port {port} out of range", hint="ports are 1-65535")
    identities = [os.path.expanduser(p) for p in options.identity_files]
    identities += [os.path.expanduser(p) for p in cfg.get("identityfile", [])]
    for path in options.identity_files:
        if not Path(path).expanduser().is_file():
            raise UsageError(f"identity file {path} not found", hint="pass the private key file with -i")
    jump = cfg.get("proxyjump")
    hops = [] if not jump or jump.lower() == "none" else [h.strip() for h in jump.split(",") if h.strip()]
    proxy_command = cfg.get("proxycommand")
    if proxy_command and proxy_command.lower() == "none":
        proxy_command = None
    known = [os.path.expanduser(p) for p in _split_words(cfg.get("userknownhostsfile"))]
    known = [p for p in known if p != "/dev/null"] or [os.path.expanduser(DEFAULT_KNOWN_HOSTS)]
    for p in _split_words(cfg.get("globalknownhostsfile")) or [GLOBAL_KNOWN_HOSTS]:
        p = os.path.expanduser(p)
        if p not in known:
            known.append(p)
    strict = str(cfg.get("stricthostkeychecking", "ask")).lower()
    accept_new = options.accept_new_host_key or strict in ("accept-new", "no", "off")
    timeout = options.connect_timeout or int(cfg.get("connecttimeout", DEFAULT_CONNECT_TIMEOUT))
    return SshTarget(
        alias=spec.host,
        hostname=cfg.get("hostname", spec.host),
        port=port,
        user=user,
        identity_files=identities,
        identities_only=str(cfg.get("identitiesonly", "no")).lower() == "yes",
        proxy_jump=hops,
        proxy_command=None if hops else proxy_command,
        known_hosts_files=known,
        accept_new_host_key=accept_new,
        connect_timeout=timeout,
    )


def parse_jump_hop(hop: str) -> tuple[HostSpec, int | None]:
    """`[user@]host[:port]` as used in ProxyJump."""
    port: int | None = None
    m = re.match(r"^(.*?)(?::(\d+))?$", hop)
    assert m
    name, port_text = m.group(1), m.group(2)
    if port_text:
        port = int(port_text)
    return HostSpec.parse(name), port


def openssh_options(target: SshTarget, *, batch: bool = True, config_file: Path | None = None) -> list[str]:
    """`-o` options for the OpenSSH client that reproduce this target's settings and checks."""
    opts = ["-F", str(config_file)] if config_file else []
    opts += [
        "-o", f"StrictHostKeyChecking={'accept-new' if target.accept_new_host_key else 'yes'}",
        "-o", "UserKnownHostsFile=" + " ".join(_ssh_word(p) for p in target.known_hosts_files),
        "-o", f"ConnectTimeout={target.connect_timeout}",
        "-o", "ServerAliveInterval=15",
        "-o", "ServerAliveCountMax=4",
    ]
    if batch:
        opts += ["-o", "BatchMode=yes"]
    for key in target.identity_files:
        opts += ["-i", key]
    if target.identities_only:
        opts += ["-o", "IdentitiesOnly=yes"]
    if target.proxy_jump:
        opts += ["-J", ",".join(target.proxy_jump)]
    opts += ["-o", f"HostName={target.hostname}", "-p", str(target.port), "-l", target.user]
    return opts


def _ssh_word(path: str) -> str:
    return f'"{path}"' if " " in path else path


def openssh_argv(target: SshTarget, *, batch: bool = True, config_file: Path | None = None,
                 extra: list[str] | None = None) -> list[str]:
    """`ssh [options] HOSTNAME` (no remote command): the prefix for subprocess streams."""
    opts = openssh_options(target, batch=batch, config_file=config_file)
    return ["ssh", *opts, *(extra or []), target.alias]
