"""Pure builders for host-to-host feeding: who feeds whom, the transfer key's line, the commands.

A transfer is named by a `Marker` (`migrate-relay:<machine>:<pid>:<token>:<until>`): the comment of
the one authorized_keys line it adds on each receiving host and the name of the directory holding
its private key on the sending host. A later run removes what a dead run left: a marker of this
machine whose process is gone, or any marker past its `until` (remote/reap.py's rule, plus a
deadline for runs of other machines). The line is `restrict,command="..."`: the key can only run
the receive command (no shell, no forwarding, no pty), and the sender checks the receiver's host
key against the one this machine verified (StrictHostKeyChecking=yes, a one-transfer known_hosts).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from migrate.errors import MigrateError
from migrate.remote import shell

PREFIX = "migrate-relay"
LIFETIME_S = 24 * 3600  # a marker of another machine is stale after this
RELAY_DIR = ".migrate/relay"  # on the sending host, under $HOME: one 0700 dir per transfer
HOST_ALIAS = "migrate-relay-host"  # + a number: the name a receiver's host key goes by in the transfer's known_hosts
# AES-GCM first: servers have AES-NI, where it costs a fraction of chacha20-poly1305's CPU (both ends of a
# relay are busy hosts); the others keep a host without it working
RELAY_CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr"
SAVE_FAILED = "migrate-relay: the source command failed"
_MARKER = re.compile(rf"{PREFIX}:(?P<machine>[A-Za-z0-9.-]+):(?P<pid>\d+):(?P<token>[0-9a-f]{{8,32}}):(?P<until>\d+)")
_AUTH = '"$HOME/.ssh/authorized_keys"'


@dataclass(frozen=True)
class Marker:
    """One transfer's name: which machine and run made it, a random token, when it expires."""

    machine: str
    pid: int
    token: str
    until: int

    def text(self) -> str:
        return f"{PREFIX}:{self.machine}:{self.pid}:{self.token}:{self.until}"

    @property
    def key_dir(self) -> str:
        """The sending host's directory (relative to $HOME) for this transfer's key and known_hosts."""
        return f"{RELAY_DIR}/{self.text()}"


def new_marker(machine: str, pid: int, token: str, now: float) -> Marker:
    return Marker(machine, pid, token, int(now) + LIFETIME_S)


def parse_markers(text: str) -> list[Marker]:
    """Every marker named in `text` (authorized_keys lines, directory names), once each, in order."""
    seen: dict[str, Marker] = {}
    for m in _MARKER.finditer(text):
        seen.setdefault(m.group(0), Marker(m["machine"], int(m["pid"]), m["token"], int(m["until"])))
    return list(seen.values())


def is_stale(marker: Marker, *, now: float, machine: str, pid: int, alive: Callable[[int], bool]) -> bool:
    """A dead run's marker: past its deadline, or this machine's and its process is gone (never ours)."""
    if marker.until < now:
        return True
    return marker.machine == machine and marker.pid != pid and not alive(marker.pid)


# -- the receiving host ----------------------------------------------------------------------------
def authorized_line(public_key: str, command: str, marker: Marker) -> str:
    """`restrict,command="CMD" ssh-ed25519 AAAA... MARKER`: the key may run CMD and nothing else.

    sshd unescapes only `\\"` inside the quoted option, so escaping every `"` keeps CMD exact."""
    if "\n" in command or "\n" in public_key or not public_key.startswith("ssh-ed25519 "):
        raise ValueError("an authorized_keys line must be one line with an ed25519 key")
    return f'restrict,command="{command.replace(chr(34), chr(92) + chr(34))}" {public_key.strip()} {marker.text()}'


def add_line_command(line: str) -> str:
    """Append `line` to ~/.ssh/authorized_keys atomically: a copy with the same mode (cp -p, or 0600 for
    a new file), the line added (after a newline if the last line lacks one), renamed over the file.
    A symlinked authorized_keys is refused (exit 3): renaming would replace the link."""
    script = (f"umask 077; f={_AUTH}; t=\"$f.migrate-$$\"; mkdir -p \"$HOME/.ssh\" || exit 1; "
              "if [ -L \"$f\" ]; then echo 'authorized_keys is a symlink: not editing it' >&2; exit 3; fi; "
              "if [ -f \"$f\" ]; then cp -p \"$f\" \"$t\" || exit 1; "
              "[ -s \"$t\" ] && [ -n \"$(tail -c 1 \"$t\")\" ] && echo >> \"$t\"; else : > \"$t\"; fi; "
              f"printf '%s\\n' {shell.quote(line)} >> \"$t\" && mv -f \"$t\" \"$f\" || {{ rm -f \"$t\"; exit 1; }}")
    return shell.sh_c(script)


def remove_lines_command(markers: Sequence[Marker]) -> str:
    """Remove the authorized_keys lines naming these markers (and nothing else), atomically, keeping
    the file's mode; a file without them is not touched."""
    if not markers:
        return "true"
    pats = " ".join(f"-e {shell.quote(' ' + m.text())}" for m in markers)
    script = (f"f={_AUTH}; t=\"$f.migrate-$$\"; [ -f \"$f\" ] && [ ! -L \"$f\" ] || exit 0; "
              f"grep -q -F {pats} \"$f\" || exit 0; cp -p \"$f\" \"$t\" || exit 1; "
              f"grep -v -F {pats} \"$f\" > \"$t\"; [ $? -le 1 ] && mv -f \"$t\" \"$f\" || {{ rm -f \"$t\"; exit 1; }}")
    return shell.sh_c(script)


def list_markers_command() -> str:
    """The markers in authorized_keys and the transfer directories under ~/.migrate/relay (read-only)."""
    return shell.sh_c(f"grep -o '{PREFIX}:[A-Za-z0-9.:-]*' {_AUTH} 2>/dev/null; "
                      f"ls -1 \"$HOME/{RELAY_DIR}\" 2>/dev/null; true")


def remove_dirs_command(markers: Sequence[Marker]) -> str:
    """Remove the sending host's key directories of these transfers."""
    if not markers:
        return "true"
    return "cd && rm -rf -- " + shell.join(m.key_dir for m in markers)


def host_alias(n: int) -> str:
    """The name receiver number `n`'s host key goes by in the transfer's known_hosts (one name each, so
    no receiver's key is accepted for another)."""
    return f"{HOST_ALIAS}-{n}"


def known_hosts_text(keys: Sequence[tuple[str, str, str]]) -> str:
    """The transfer's known_hosts from (alias, key type, base64 key): each receiver's host key as this
    machine verified it."""
    return "".join(f"{alias} {key_type} {b64}\n" for alias, key_type, b64 in keys)


# -- where the receiver listens, and whether the sender reaches it ---------------------------------
@dataclass(frozen=True)
class Address:
    ip: str
    port: int

    def __str__(self) -> str:
        return f"[{self.ip}]:{self.port}" if ":" in self.ip else f"{self.ip}:{self.port}"


ADDRESS_COMMAND = 'printf "%s\\n" "$SSH_CONNECTION"'


def parse_address(ssh_connection: str) -> Address | None:
    """The address and port this host's sshd answered on (`$SSH_CONNECTION` fields 3 and 4), unless it
    is a loopback address (a tunnel's end: other hosts cannot use it)."""
    parts = ssh_connection.split()
    if len(parts) != 4 or not parts[3].isdigit():
        return None
    ip = parts[2]
    if ip.startswith("127.") or ip in ("::1", "localhost"):
        return None
    return Address(ip, int(parts[3]))


REACH_PY = r"""
import shutil, socket, subprocess, sys
print("ssh=" + ("ok" if shutil.which("ssh") else "no ssh client"))
try:  # GNU tee's -p (keep going when one output ends): what feeds riders as the bytes arrive
    tee = subprocess.run(["tee", "-p"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL).returncode == 0
except OSError:
    tee = False
print("tee=" + ("ok" if tee else "no GNU tee -p"))
for spec in sys.argv[2:]:
    ip, port = spec.rsplit(":", 1)
    try:
        c = socket.create_connection((ip.strip("[]"), int(port)), float(sys.argv[1]))
        c.settimeout(float(sys.argv[1]))
        got = c.recv(8).decode(errors="replace")
        c.close()
        print(spec + "=" + ("ok" if got.startswith("SSH-") else "something other than sshd answered"))
    except OSError as e:
        print(spec + "=" + (str(e) or type(e).__name__))
"""


def reach_command(addresses: Sequence[Address], timeout: float = 5) -> str:
    """From the sending host: is there an ssh client and a GNU `tee -p`, and does an sshd answer at each
    address?"""
    return f"python3 -c {shell.quote(REACH_PY)} {shell.join([timeout, *map(str, addresses)])}"


NO_SHARED_ADDRESS = "no address the hosts share (this machine reaches it through a tunnel or a forward)"


def reach_verdict(got: Mapping[str, str], address: Address) -> str:
    """"ok", or why the sender cannot feed `address`, from parse_reach's answer."""
    if got.get("ssh") != "ok":
        return got.get("ssh", "no python3 there")
    return got.get(str(address), "no answer")


def parse_reach(text: str) -> dict[str, str]:
    """`{"ssh": "ok"|why, "tee": "ok"|why, "ip:port": "ok"|why}` from reach_command's output."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


# -- the sending host ------------------------------------------------------------------------------
def ssh_argv(marker: Marker, alias: str, user: str, address: Address) -> list[str]:
    """The sender's `ssh`: only the transfer key, only the transfer's known_hosts, no user config
    (ssh expands the `~` of both paths itself)."""
    d = f"~/{marker.key_dir}"
    return ["ssh", "-F", "/dev/null", "-i", f"{d}/key", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={d}/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes", "-o", f"HostKeyAlias={alias}", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=15", "-o", "Compression=no",
            "-c", RELAY_CIPHERS,
            "-p", str(address.port), "-l", user, address.ip, PREFIX]


def send_command(source: str, marker: Marker, alias: str, user: str, address: Address) -> str:
    """On the sending host: `source | dd (counts) | ssh receiver`; the receiver's forced command
    reads the bytes. Prints the receiver's output, then `relayed=BYTES`; a failing source prints
    SAVE_FAILED to stderr (sh has no pipefail). Exit status: ssh's. Each receiver's count has its own
    file: the seed feeds several receivers at once."""
    count = shell.quote(f"{marker.key_dir}/count-{alias}")
    script = (f"cd && ( {source} || echo {shell.quote(SAVE_FAILED)} >&2 ) | LC_ALL=C dd bs=1048576 2>{count} | "
              f"{shell.join(ssh_argv(marker, alias, user, address))}; rc=$?; "
              f"sed -n 's/^\\([0-9][0-9]*\\) bytes.*/relayed=\\1/p' {count}; exit $rc")
    return shell.sh_c(script)


def parse_relayed(stdout: str) -> tuple[str, int]:
    """(the receiver's output, the bytes the sender sent) from send_command's stdout."""
    lines, sent = [], 0
    for line in stdout.splitlines():
        if line.startswith("relayed=") and line[8:].isdigit():
            sent = int(line[8:])
        else:
            lines.append(line)
    return "\n".join(lines), sent


# -- who feeds whom --------------------------------------------------------------------------------
LAPTOP = "this machine"


@dataclass(frozen=True)
class Feed:
    """How one host gets its bytes: `source` is LAPTOP or the host that feeds it; `why` says why."""

    host: str
    source: str
    why: str

    @property
    def relayed(self) -> bool:
        return self.source != LAPTOP and self.source != "-"


def plan_feeds(hosts: Sequence[str], needs: Mapping[str, bool], refuse: Mapping[str, str],
               reach: Callable[[str, str], str], *, off: str = "") -> dict[str, Feed]:
    """A star from the first host that needs bytes and may send (the seed): it gets the one copy over
    this machine's link, every other host that needs bytes and that the seed reaches is fed by it.

    `refuse[h]`: why `h` can take no part in a relay ("" or absent: it can); `reach(seed, h)`: "ok" or
    why the seed cannot reach `h` (asked only for candidates); `off`: why no host is relayed ("" = on)."""
    out: dict[str, Feed] = {}
    takers = [h for h in hosts if needs.get(h)]
    for h in hosts:
        if not needs.get(h):
            out[h] = Feed(h, "-", "nothing to send")
    if len(takers) < 2 or off:
        why = off if len(takers) > 1 else "one host needs the bytes"
        out.update({h: Feed(h, LAPTOP, why) for h in takers})
        return out
    seed = next((h for h in takers if not refuse.get(h)), None)
    if seed is None:
        out.update({h: Feed(h, LAPTOP, refuse[h]) for h in takers})
        return out
    out[seed] = Feed(seed, LAPTOP, "the one copy over this machine's link")
    for h in takers:
        if h == seed:
            continue
        if refuse.get(h):
            out[h] = Feed(h, LAPTOP, refuse[h])
            continue
        try:
            verdict = reach(seed, h)
        except MigrateError as exc:  # a connection lost while asking: that host is fed from here
            verdict = exc.one_line()
        out[h] = Feed(h, seed, "host to host") if verdict == "ok" else \
            Feed(h, LAPTOP, f"{seed} cannot reach it: {verdict}")
    return out


# -- feeding receivers from the seed's own stream, as it arrives ------------------------------------
REPORT = "migrate-relay-report"  # prefixes the lines a tee'd load adds to the seed's output


@dataclass(frozen=True)
class Rider:
    """A receiver fed from the seed's incoming stream: its alias in the transfer, login user, address."""

    alias: str
    user: str
    address: Address


def tee_load_command(load: str, marker: Marker, riders: Sequence[Rider], decompress: str | None = None) -> str:
    """On the seed, as the login user: `[DECOMPRESS |] tee -p FIFO... | LOAD`, each fifo read by an
    `ssh` to one rider (whose forced command is its `docker load`), so the riders get the bytes the
    seed loads while they arrive. `tee -p` drops a rider whose ssh ends early and goes on with the
    others and the seed. After the load: every rider's output, stderr and exit status as REPORT lines
    (parse_reports), then the seed load's exit status. Fifos that cannot be made: the plain load."""
    head = f"{decompress} | " if decompress else ""
    if not riders:
        return shell.sh_c(head + load)
    d = f'"$HOME"/{shell.quote(marker.key_dir)}'
    fifos = " ".join(f'"$d/in-{r.alias}"' for r in riders)
    lines = [f"d={d}; rm -f {fifos}", f"if mkfifo -m 600 {fifos}; then"]
    for r in riders:
        a = r.alias
        lines.append(f'  ( {shell.join(ssh_argv(marker, a, r.user, r.address))} < "$d/in-{a}" > "$d/out-{a}" '
                     f'2> "$d/err-{a}"; echo $? > "$d/rc-{a}" ) &')
    lines.append(f"  {head}tee -p {fifos} | {load}")
    lines.append("  rc=$?; wait")
    for r in riders:
        a = r.alias
        lines.append(f"  sed 's/^/{REPORT} {a} out /' \"$d/out-{a}\"; sed 's/^/{REPORT} {a} err /' \"$d/err-{a}\"; "
                     f"echo \"{REPORT} {a} rc $(cat \"$d/rc-{a}\" 2>/dev/null)\"; "
                     f'rm -f "$d/in-{a}" "$d/out-{a}" "$d/err-{a}" "$d/rc-{a}"')
    lines.append("  exit $rc")
    lines.append(f"else {head}{load}; fi")
    return shell.sh_c("\n".join(lines))


@dataclass
class RiderReport:
    """What one rider's load said (stdout, stderr) and its ssh's exit status (-1: none reported)."""

    stdout: str = ""
    stderr: str = ""
    exit_code: int = -1


def parse_reports(stdout: str) -> tuple[str, dict[str, RiderReport]]:
    """(the seed's own output, each rider's report by alias) from tee_load_command's stdout."""
    own: list[str] = []
    out: dict[str, dict[str, list[str]]] = {}
    reports: dict[str, RiderReport] = {}
    for line in stdout.splitlines():
        parts = line.split(" ", 3)
        if len(parts) >= 3 and parts[0] == REPORT and parts[2] in ("out", "err", "rc"):
            alias, kind, text = parts[1], parts[2], parts[3] if len(parts) > 3 else ""
            reports.setdefault(alias, RiderReport())
            if kind == "rc":
                reports[alias].exit_code = int(text) if text.strip().isdigit() else -1
            else:
                out.setdefault(alias, {}).setdefault(kind, []).append(text)
        else:
            own.append(line)
    for alias, kinds in out.items():
        reports[alias].stdout = "\n".join(kinds.get("out", []))
        reports[alias].stderr = "\n".join(kinds.get("err", []))
    return "\n".join(own) + ("\n" if own and stdout.endswith("\n") else ""), reports
