"""Host specs (`[user@]host`), ~/.ssh/config resolution and the OpenSSH command line for a host.

`resolve()` turns what the user typed plus the connection options into an `SshTarget` from OpenSSH's
own answer (`ssh -G`, so Include, Match, ProxyJump, HostName, Port, User, IdentityFile,
UserKnownHostsFile and StrictHostKeyChecking all count), cached per run, so that Fabric
connections and the `ssh` processes we start for rsync and image streams reach the same host with
the same keys and the same host-key checks.
"""

from __future__ import annotations

import fcntl
import getpass
import hashlib
import os
import re
import tempfile
import threading
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
    host_key_alias: str | None = None
    # IdentityAgent: None = $SSH_AUTH_SOCK (OpenSSH's default), "none" = no agent, else a socket path
    identity_agent: str | None = None
    certificate_files: list[str] = field(default_factory=list)

    @property
    def display(self) -> str:
        """`user@alias` (and the port when it is not 22 and not from an alias)."""
        if self.alias != self.hostname or self.port == 22:
            return f"{self.user}@{self.alias}"
        return f"{self.user}@{self.alias}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name under which the host key is stored: `HostKeyAlias`, else `host` or `[host]:port`."""
        if self.host_key_alias:
            return self.host_key_alias
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    @property
    def writable_known_hosts(self) -> str:
        """The known_hosts file a newly accepted key is appended to (OpenSSH's choice: the first)."""
        return self.known_hosts_files[0]


def user_ssh_config_path(options: ConnectOptions | None = None) -> Path:
    """`--ssh-config`, else $MIGRATE_SSH_CONFIG, else ~/.ssh/config; a file named by either must exist
    (a typo would otherwise silently drop every setting the user meant to give)."""
    if options and options.ssh_config_path:
        path, named_by = Path(options.ssh_config_path).expanduser(), "--ssh-config"
    elif os.environ.get("MIGRATE_SSH_CONFIG"):
        path, named_by = Path(os.environ["MIGRATE_SSH_CONFIG"]).expanduser(), "$MIGRATE_SSH_CONFIG"
    else:
        return Path("~/.ssh/config").expanduser()
    if not path.exists():
        raise UsageError(f"ssh config {path} ({named_by}) does not exist",
                         hint=f"give an existing file, or leave {named_by} out to use ~/.ssh/config")
    return path


def read_ssh_config(path: Path) -> str:
    """An ssh_config file as OpenSSH reads it: bytes, never decoded strictly (a Latin-1 comment is fine);
    bytes that are not UTF-8 come back as surrogates and `encode_ssh_config` restores them exactly."""
    return path.read_bytes().decode("utf-8", "surrogateescape")


def encode_ssh_config(text: str) -> bytes:
    """The bytes of ssh_config text from `read_ssh_config`, unchanged (pure)."""
    return text.encode("utf-8", "surrogateescape")


class SshConfigSet:
    """The ssh_config text migrate uses: extra blocks (the sandbox's) first, then the user's file.

    First obtained value wins, as in OpenSSH, so the sandbox's own `Host sandbox1` block decides
    its HostName/Port/User while the user's `Host *` defaults still apply to everything else.
    `resolve()` asks OpenSSH about this text (`ssh -G -F openssh_file()`) and every `ssh` we start
    gets the same `-F`, so the Fabric connection and the OpenSSH client reach the same host.
    """

    def __init__(self, user_config: Path, extra_configs: list[Path] | None = None) -> None:
        self.user_config = user_config
        parts: list[str] = []
        self.sources: list[Path] = []
        for path in [*(extra_configs or []), user_config]:
            try:
                parts.append(read_ssh_config(path))
                self.sources.append(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise UsageError(f"cannot read ssh config {path}: {exc.strerror}") from exc
        # each file starts unconditional, as it would alone: without the `Host *` line, a top-level
        # `Include` of the user's file would land inside the sandbox's last `Host` block
        self.text = "\nHost *\n".join(parts)
        self._config = None
        self._file: Path | None = None

    @property
    def config(self):
        """The text parsed by paramiko, only for the names in its `Host` lines (push-image's image-or-host
        guess); hosts are resolved by `resolve()` (`ssh -G`), never from this."""
        if self._config is None:
            import paramiko

            try:
                self._config = paramiko.SSHConfig.from_text(self.text)
            except Exception as exc:  # paramiko raises ConfigParseError / ValueError / others
                raise UsageError(f"cannot parse ssh config: {exc}", hint=f"check {self.user_config}") from exc
        return self._config

    def openssh_file(self) -> Path | None:
        """A private file with the same text for `ssh -F` (None: plain ~/.ssh/config suffices).

        This process holds a shared lock on it until it exits, so `sandbox down` (which removes the
        cached files naming its hosts) leaves it alone; written again if it has gone anyway, so call
        it before each `ssh` started.
        """
        default = Path("~/.ssh/config").expanduser()
        if self.sources == [default] or (not self.sources and self.user_config == default):
            return None  # plain `ssh` reads the same: ~/.ssh/config (and /etc/ssh/ssh_config)
        if self._file is not None and self._file.exists():
            return self._file
        data = encode_ssh_config(self.text)
        cache = private_dir(cache_root())
        path = cache / f"{CONFIG_CACHE_PREFIX}{hashlib.sha256(data).hexdigest()[:16]}"
        for _ in range(10):  # a `sandbox down` may remove it between our write and our lock: write again
            if not path.exists():
                _prune_stale(cache, f"{CONFIG_CACHE_PREFIX}*", max_age_s=7 * 86400)
                write_private_atomically(path, data)
            else:
                path.touch()  # in use: keep it out of the pruning
            if _hold(path):
                break
        self._file = path
        return self._file


def write_private_atomically(path: Path, data: bytes) -> None:
    """Create `path` (0600) whole through a temporary file of a unique name in the same directory: any
    number of threads and processes may write the same file at once. The first one's file stays (a
    hard link never replaces), so a lock taken on it stays on the file the path names."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.", suffix=_TMP_SUFFIX)  # mode 0600
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another writer was first, with the same text (the name is its hash)
        except OSError:  # a filesystem without hard links
            os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


_TMP_SUFFIX = ".tmp"
# cached `ssh -F` files this process uses -> an open descriptor holding a shared flock on each, kept
# until the process exits: `sandbox down` removes a cached file only when it gets the exclusive lock
_HELD: dict[Path, int] = {}
_HELD_LOCK = threading.Lock()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _hold(path: Path) -> bool:
    """Take (or keep) a shared lock on the cached file `path`; False when it went before we had it."""
    with _HELD_LOCK:
        held = _HELD.get(path)
        if held is not None and _same_file(held, path):
            return True
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not _same_file(fd, path):  # removed (or replaced) while we waited for the lock
            os.close(fd)
            return False
        if held is not None:
            os.close(held)
        _HELD[path] = fd
        return True


def _release(path: Path) -> None:
    """Drop this process's own lock on `path` (it is about to remove the file itself)."""
    with _HELD_LOCK:
        fd = _HELD.pop(path, None)
        if fd is not None:
            os.close(fd)


def _remove_unless_in_use(path: Path) -> bool:
    """Remove cached file `path` unless a live process holds its lock (`openssh_file`); True if removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a running command uses it; the 7-day pruning takes it once nobody does
        if not _same_file(fd, path):
            return False
        path.unlink()  # still locked: whoever opens the path next sees another file (or none) and writes it
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def remove_cached_configs(marker: str) -> list[Path]:
    """Remove the cached `ssh -F` files whose text contains `marker` (a sandbox's header line, so
    `sandbox down` takes the files naming its hosts and leaves every other one), except those a
    running command still uses (other sandboxes' commands read the same text); return them."""
    removed = []
    for path in cache_root().glob(f"{CONFIG_CACHE_PREFIX}*"):
        if path.name.endswith(_TMP_SUFFIX):
            continue  # another process's file being written
        try:
            if marker not in path.read_text(errors="replace"):
                continue
        except OSError:
            continue
        _release(path)  # this process's own use ends here: it writes the file again if it needs it
        if _remove_unless_in_use(path):
            removed.append(path)
    return removed


def _prune_stale(directory: Path, pattern: str, max_age_s: float) -> None:
    """Remove cache files matching `pattern` not used for `max_age_s` (old sandbox configs pile up),
    and half-written ones a killed process left; never one a live process holds."""
    import time

    cutoff = time.time() - max_age_s
    for old in directory.glob(pattern):
        try:
            if old.stat().st_mtime < cutoff:
                _remove_unless_in_use(old)
        except OSError:
            continue


_SSH_G_CACHE: dict[tuple[str, ...], dict[str, list[str]]] = {}
_DEFAULTS_PROBE = "migrate-defaults.invalid"


def parse_ssh_g(text: str) -> dict[str, list[str]]:
    """`ssh -G` output (`key value` lines, keys lowercase) as key -> every value, in order (pure)."""
    values: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key:
            values.setdefault(key.lower(), []).append(value.strip())
    return values


def ssh_g(host: str, *, config_file: Path | None, user: str | None = None, port: int | None = None,
          shown_as: Path | None = None) -> dict[str, list[str]]:
    """OpenSSH's own resolution of `host` (`ssh -G`: Include, Match, ProxyJump... all count), cached per run.

    `config_file` is the `-F` file (None: ~/.ssh/config and /etc/ssh/ssh_config, as plain `ssh`);
    `shown_as` is the file to name in an error (the user's, not our cached copy).
    """
    argv = ["ssh", "-G"]
    if config_file is not None:
        argv += ["-F", str(config_file)]
    if user:
        argv += ["-l", user]
    if port:
        argv += ["-p", str(port)]
    argv += ["--", host]
    key = tuple(argv)
    if key not in _SSH_G_CACHE:
        import subprocess

        try:
            # a value may hold bytes that are not UTF-8 (OpenSSH never decodes): keep them, never crash
            proc = subprocess.run(argv, capture_output=True, text=True, errors="surrogateescape", timeout=60,
                                  stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise UsageError("the OpenSSH client `ssh` is not installed",
                             hint="install it (openssh-client): migrate reads host settings with `ssh -G`") from exc
        except subprocess.TimeoutExpired as exc:
            raise UsageError(f"`ssh -G {host}` did not answer in 60 s",
                             hint="check `Match exec` commands in your ssh config") from exc
        if proc.returncode != 0:
            raise UsageError(_ssh_g_error(host, proc.stderr, proc.returncode),
                             hint=f"check {shown_as or config_file or '~/.ssh/config'}")
        _SSH_G_CACHE[key] = parse_ssh_g(proc.stdout)
    return _SSH_G_CACHE[key]


def _ssh_g_error(host: str, stderr: str, code: int) -> str:
    """One line from `ssh -G`'s complaint, without our cached file's name and line numbers (pure)."""
    first = (stderr.strip().splitlines() or [f"exit code {code}"])[0]
    first = re.sub(r"^\S+?:? line \d+: ", "", first)
    port = re.match(r"Bad port '(.*)'", first)
    if port:
        return f"bad Port in ssh config for {host}: {port.group(1)!r}"
    return f"cannot read the ssh settings for {host}: {first}"


def _default_identity_files() -> list[str]:
    """The IdentityFile list OpenSSH uses when none is configured (this client version's defaults)."""
    return ssh_g(_DEFAULTS_PROBE, config_file=Path(os.devnull)).get("identityfile", [])


def expand_tokens(text: str, *, alias: str, hostname: str, port: int, user: str) -> str:
    """OpenSSH's `%` tokens (%h %p %r %n %u %d %%) and a leading `~`, as in IdentityFile and ProxyCommand."""
    table = {"h": hostname, "p": str(port), "r": user, "n": alias, "u": getpass.getuser(),
             "d": os.path.expanduser("~"), "%": "%"}
    text = re.sub(r"%(.)", lambda m: table.get(m.group(1), m.group(0)), text)
    return os.path.expanduser(text)


def _words(values: list[str]) -> list[str]:
    return [w for v in values for w in v.split()]


def target_from_ssh_g(alias: str, values: dict[str, list[str]], options: ConnectOptions) -> SshTarget:
    """An `SshTarget` from `ssh -G` values plus the command line's keys and host-key choice."""
    def one(key: str, default: str = "") -> str:
        return (values.get(key) or [default])[0]

    try:
        port = int(one("port", "22"))
    except ValueError as exc:
        raise UsageError(f"bad Port in ssh config for {alias}: {one('port')!r}") from exc
    if not 0 < port < 65536:
        raise UsageError(f"port {port} out of range", hint="ports are 1-65535")
    hostname = one("hostname", alias)
    problem = hostname_problem(hostname)
    if problem:
        raise UsageError(f"malformed host {hostname!r}: {problem}",
                         hint="a host name has parts of 1 to 63 characters between dots")
    user = one("user") or getpass.getuser()
    for key, value in (("HostName", hostname), ("User", user)):
        raw = encode_ssh_config(value)
        if raw != value.encode("utf-8", "replace"):  # bytes kept by read_ssh_config; no server takes them
            raise UsageError(f"the ssh config gives {alias} a {key} that is not UTF-8 text: "
                             f"{raw.decode('utf-8', 'backslashreplace')}", hint="write it in ASCII or UTF-8")
    configured = values.get("identityfile", [])
    if configured == _default_identity_files():
        configured = []  # OpenSSH's defaults: paramiko looks for them itself
    identities = [os.path.expanduser(p) for p in options.identity_files]
    identities += [expand_tokens(p, alias=alias, hostname=hostname, port=port, user=user) for p in configured]
    jump = one("proxyjump")
    hops = [] if not jump or jump.lower() == "none" else [h.strip() for h in jump.split(",") if h.strip()]
    proxy_command: str | None = one("proxycommand")
    if not proxy_command or proxy_command.lower() == "none":
        proxy_command = None
    else:
        proxy_command = expand_tokens(proxy_command, alias=alias, hostname=hostname, port=port, user=user)
    known = [os.path.expanduser(p) for p in _words(values.get("userknownhostsfile", []))]
    known = [p for p in known if p != os.devnull] or [os.path.expanduser(DEFAULT_KNOWN_HOSTS)]
    for p in _words(values.get("globalknownhostsfile", [])) or [GLOBAL_KNOWN_HOSTS]:
        p = os.path.expanduser(p)
        if p not in known:
            known.append(p)
    # `ssh -G` prints yes/no as true/false; `no` is never weaker than accept-new here
    strict = one("stricthostkeychecking", "ask").lower()
    accept_new = options.accept_new_host_key or strict in ("accept-new", "no", "off", "false")
    timeout_text = one("connecttimeout", "none")
    timeout = options.connect_timeout or (int(timeout_text) if timeout_text.isdigit() else DEFAULT_CONNECT_TIMEOUT)
    return SshTarget(
        alias=alias,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=identities,
        identities_only=one("identitiesonly", "no").lower() in ("yes", "true"),
        proxy_jump=hops,
        proxy_command=None if hops else proxy_command,
        known_hosts_files=known,
        accept_new_host_key=accept_new,
        connect_timeout=timeout,
        host_key_alias=None if one("hostkeyalias", "none").lower() == "none" else one("hostkeyalias"),
        identity_agent=identity_agent_from(one("identityagent"), alias=alias, hostname=hostname, port=port,
                                           user=user),
        certificate_files=[expand_tokens(p, alias=alias, hostname=hostname, port=port, user=user)
                           for p in values.get("certificatefile", [])],
    )


def hostname_problem(hostname: str) -> str | None:
    """Why `hostname` can be no DNS name, or None (pure). Python's resolver refuses such a name with an
    IDNA UnicodeError, OpenSSH with 'Could not resolve hostname'."""
    name = hostname[:-1] if hostname.endswith(".") else hostname
    if ":" in name:
        return None  # an IPv6 address
    if len(name) > 253:
        return "longer than 253 characters"
    for label in name.split("."):
        if not label:
            return "an empty part between dots"
        if len(label) > 63:
            return f"a part longer than 63 characters ({label[:12]}...)"
    return None


def identity_agent_from(value: str, *, alias: str, hostname: str, port: int, user: str) -> str | None:
    """IdentityAgent as OpenSSH reads it: unset or `SSH_AUTH_SOCK` -> None (the environment's agent),
    `none` -> "none", `$VAR` -> that variable's value, else a path with `%` tokens and `~` expanded."""
    if not value or value == "SSH_AUTH_SOCK":
        return None
    if value.lower() == "none":
        return "none"
    if value.startswith("$"):
        return os.environ.get(value[1:].strip("{}")) or "none"
    return expand_tokens(value, alias=alias, hostname=hostname, port=port, user=user)


def resolve(spec: HostSpec, options: ConnectOptions, ssh_config: SshConfigSet) -> SshTarget:
    """Combine the spec, command-line options and OpenSSH's resolution (`ssh -G`) into an `SshTarget`.

    The one resolution of a host: the Fabric/paramiko connection and every `ssh` process use it.
    """
    for path in options.identity_files:
        if not Path(path).expanduser().is_file():
            raise UsageError(f"identity file {path} not found", hint="pass the private key file with -i")
    if options.port is not None and not 0 < options.port < 65536:
        raise UsageError(f"port {options.port} out of range", hint="ports are 1-65535")
    values = ssh_g(spec.host, config_file=ssh_config.openssh_file(), user=spec.user, port=options.port,
                   shown_as=ssh_config.user_config)
    return target_from_ssh_g(spec.host, values, options)


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
