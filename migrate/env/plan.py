"""The on-host layout of pushed environments and every remote command line push-env runs (pure).

~/.migrate/envs/NAME          the environment (a venv made by uv from the host's python)
~/.migrate/envs/NAME/migrate-lock.txt   the exact lock it was synced to (its sha256 says "unchanged")
~/.migrate/wheels/            the wheels pushed so far (a host that reaches no index installs from here)
~/.migrate/bin/uv             the static uv binary (pushed once; hosts often lack pip and python3-venv)
~/.migrate/envs/.packs/NAME.tar   a conda env's last pushed conda-pack tar: the rsync basis of the next push
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from migrate.agent.launch import CONDA_ACTIVATE_D
from migrate.remote import shell

ENVS_DIR = ".migrate/envs"
WHEELS_DIR = ".migrate/wheels"
INCOMING_DIR = ".migrate/.incoming"
UV_BIN = ".migrate/bin/uv"
UV_CACHE = ".migrate/cache/uv"
LOCK_FILE = "migrate-lock.txt"
PACKS_DIR = ".migrate/envs/.packs"
# manylinux levels uv resolves for (`uv pip compile --python-platform`): the highest the host's glibc allows
UV_GLIBC = ((2, 17), (2, 28), (2, 31), (2, 32), (2, 33), (2, 34), (2, 35), (2, 36), (2, 37), (2, 38), (2, 39), (2, 40))
UV_ENV = {"UV_PYTHON_DOWNLOADS": "never", "UV_NO_CONFIG": "1"}


def env_dir(name: str) -> str:
    return f"{ENVS_DIR}/{name}"


def lock_upload(name: str) -> str:
    return f"{ENVS_DIR}/.{name}.lock"


def pack_path(name: str) -> str:
    """The conda pack kept on the host after a push of NAME (the basis rsync sends the next one against)."""
    return f"{PACKS_DIR}/{name}.tar"


def lock_sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- the probe: one round trip says what the host has ---------------------------------------------
PROBE = r"""
import hashlib, json, os, platform, shutil, sys
name, uv_version = sys.argv[1], sys.argv[2]
home = os.path.expanduser("~")
env = os.path.join(home, ".migrate", "envs", name)
def sha(p):
    try:
        with open(p, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return ""
def env_python():
    try:
        for line in open(os.path.join(env, "pyvenv.cfg")):
            k, _, v = line.partition("=")
            if k.strip() in ("version_info", "version"):
                return ".".join(v.strip().split(".")[:2])
    except OSError:
        pass
    return ""
uv = ""
try:
    with open(os.path.join(home, ".migrate", "bin", "uv.version")) as f:
        uv = f.read().strip()
except OSError:
    pass
if uv != uv_version or not os.access(os.path.join(home, ".migrate", "bin", "uv"), os.X_OK):
    uv = ""
try:
    wheels = sorted(n for n in os.listdir(os.path.join(home, ".migrate", "wheels")) if n.endswith(".whl"))
except OSError:
    wheels = []
try:
    glibc = os.confstr("CS_GNU_LIBC_VERSION").split()[-1]
except (ValueError, OSError, AttributeError, IndexError):
    glibc = ""
try:
    with open(os.path.join(home, ".migrate", "mirror", "journal.json")) as f:
        mirror = json.load(f).get("url", "")
except (OSError, ValueError):
    mirror = ""
packs = os.path.join(home, ".migrate", "envs", ".packs")
def size(p):
    try:
        return os.lstat(p).st_size
    except OSError:
        return -1
stale = sum(max(size(os.path.join(d, f)), 0) for d, _, fs in os.walk(env + ".new") for f in fs)
try:
    stale += sum(max(size(os.path.join(packs, n)), 0) for n in os.listdir(packs)
                 if n == name + ".tar.part" or (n.startswith("." + name + ".tar.") and len(n) == len(name) + 12))
except OSError:
    pass
d = os.path.join(home, ".migrate", "envs")
while not os.path.isdir(d) and os.path.dirname(d) != d:
    d = os.path.dirname(d)
try:
    st = os.statvfs(d)
    free = st.f_bavail * st.f_frsize
except OSError:
    free = None
print(json.dumps({"rsync": bool(shutil.which("rsync")), "pack_bytes": size(os.path.join(packs, name + ".tar")),
                  "free_bytes": free, "stale_bytes": stale,
                  "python": "%d.%d" % sys.version_info[:2], "python_path": sys.executable, "mirror": mirror,
                  "machine": platform.machine(), "glibc": glibc, "uv": uv, "wheels": wheels,
                  "lock_sha": sha(os.path.join(env, "migrate-lock.txt")), "env_python": env_python(),
                  "env_exists": os.path.isdir(env)}))
"""


def probe_command(name: str, uv_version: str, python: str = "python3") -> str:
    """Run the probe with the host's python3 (or --python); exit 127 says that python is missing."""
    return (f"command -v {shell.quote(python)} >/dev/null 2>&1 || {{ echo 'no such python' >&2; exit 127; }}; "
            f"{shell.quote(python)} -c {shell.quote(PROBE)} {shell.quote(name)} {shell.quote(uv_version)}")


INDEX_CHECK = r"""
import sys, urllib.request
try:
    urllib.request.urlopen(sys.argv[2].rstrip("/") + "/pip/", timeout=float(sys.argv[1])).close()
    print("ok")
except Exception as e:
    print(str(e)[:200] or type(e).__name__)
"""


PUBLIC_INDEX = "https://pypi.org/simple"


def index_command(index_url: str = "", timeout_s: float = 5.0) -> str:
    """Does the host reach the package index (its mirror, when one is set)? Prints 'ok' or why not."""
    return f"python3 -c {shell.quote(INDEX_CHECK)} {shell.quote(timeout_s)} {shell.quote(index_url or PUBLIC_INDEX)}"


@dataclass
class HostFacts:
    """What the probe found on one host."""

    host: str
    python: str
    python_path: str
    machine: str
    glibc: str
    uv: str = ""
    wheels: list[str] = field(default_factory=list)
    lock_sha: str = ""
    env_python: str = ""
    env_exists: bool = False
    mirror: str = ""     # the index URL `migrate mirror` set for this user ("" = the public index)
    rsync: bool = False          # the host runs rsync (a conda push can send the delta against a kept pack)
    pack_bytes: int = -1         # the kept conda pack's size (~/.migrate/envs/.packs/NAME.tar); -1: none
    free_bytes: int | None = None  # free where ~/.migrate/envs is (or would be); None: unknown
    stale_bytes: int = 0         # leftovers of an interrupted conda push (NAME.new, rsync's temp file), freed first

    @classmethod
    def parse(cls, host: str, stdout: str) -> HostFacts:
        data = json.loads(stdout.strip().splitlines()[-1])
        return cls(host=host, **{k: data[k] for k in ("python", "python_path", "machine", "glibc", "uv", "wheels",
                                                     "lock_sha", "env_python", "env_exists")},
                   mirror=data.get("mirror", ""), rsync=data.get("rsync", False),
                   pack_bytes=data.get("pack_bytes", -1), free_bytes=data.get("free_bytes"),
                   stale_bytes=data.get("stale_bytes", 0))


def manylinux(glibc: str) -> tuple[int, int]:
    """The manylinux level to resolve for: the highest uv knows that the host's glibc runs."""
    have = tuple(int(x) for x in re.findall(r"\d+", glibc)[:2]) or (2, 17)
    fits = [g for g in UV_GLIBC if g <= have]
    return fits[-1] if fits else UV_GLIBC[0]


def uv_platform(machine: str, glibc: str) -> str:
    major, minor = manylinux(glibc)
    return f"{machine}-manylinux_{major}_{minor}"


def pip_platform(machine: str, glibc: str) -> str:
    major, minor = manylinux(glibc)
    return f"manylinux_{major}_{minor}_{machine}"


def pip_platforms(machine: str, glibc: str) -> list[str]:
    """Every platform tag the host runs, most specific first: `pip download --platform` takes exactly
    the tags it is given (manylinux_2_36 does not imply manylinux_2_17)."""
    _, minor = manylinux(glibc)
    tags = [f"manylinux_2_{m}_{machine}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{legacy[m]}_{machine}" for m in (17, 12, 5) if m <= minor]


# -- locks and wheel file names ----------------------------------------------------------------------
def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def parse_lock(text: str) -> list[tuple[str, str]]:
    """`name==version` lines of an exact lock -> [(normalized name, version)]; anything else is refused."""
    pins = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)$", line)
        if not m:
            raise ValueError(line)
        pins.append((normalize(m.group(1)), m.group(3)))
    return pins


def wheel_key(filename: str) -> tuple[str, str]:
    """`Foo.Bar-1.0-py3-none-any.whl` -> ('foo_bar', '1.0')."""
    parts = filename[:-4].split("-")
    return normalize(parts[0]), parts[1] if len(parts) > 1 else ""


# -- on the host ---------------------------------------------------------------------------------
def unpack_command() -> str:
    """Unpack the pushed tar (bin/uv, wheels/*.whl) aside, then move each complete file in place:
    a broken stream leaves nothing in ~/.migrate/wheels that looks whole."""
    inc = shell.home_path(INCOMING_DIR)
    return (f"umask 077 && cd && {shell.mkdir_private('.migrate')} && rm -rf {inc} && "
            f"{shell.mkdir_private(INCOMING_DIR)} && "
            f"tar -xf - -C {inc} && cd {inc} && "
            f"for d in bin wheels; do if [ -d $d ]; then mkdir -p ../$d && chmod 700 ../$d && "
            f"find $d -type f -exec mv -f {{}} ../$d/ \\; ; fi; done && cd && rm -rf {inc}")


def install_command(name: str, python_path: str, python: str, *, offline: bool, index_url: str = "") -> str:
    """(Re)create the venv when missing or on another python, `uv pip sync` it to the uploaded lock,
    then keep that lock as the record of what the environment holds (written last)."""
    env = shell.home_path(env_dir(name))
    uv = shell.home_path(UV_BIN)
    lock = shell.home_path(lock_upload(name))
    major, minor = (int(x) for x in python.split(".")[:2])
    check = shell.quote(f"import sys; sys.exit(sys.version_info[:2] != ({major}, {minor}))")
    source = (f"--no-index --find-links {shell.home_path(WHEELS_DIR)} " if offline else
              f"--index-url {shell.quote(index_url)} " if index_url else "")
    env_vars = shell.env_prefix(UV_ENV) + f"UV_CACHE_DIR={shell.home_path(UV_CACHE)} "
    return (f"umask 077 && cd && {shell.mkdir_private(ENVS_DIR)} && "
            f"{{ {{ [ -x {env}/bin/python ] && {env}/bin/python -c {check}; }} || "
            f"{{ rm -rf {env} && {env_vars}{uv} venv -q --python {shell.quote(python_path)} {env}; }}; }} && "
            f"{env_vars}{uv} pip sync -q --python {env}/bin/python {source}{lock} && "
            f"mv -f {lock} {env}/{LOCK_FILE}")


# -- conda: the pack streamed whole, or rsync'd against the pack kept from the last push ------------------
SPACE_MARGIN_BYTES = 16 << 20


@dataclass
class CondaTransfer:
    """How a conda pack reaches the host (`conda_transfer`)."""

    path: str            # "rsync": the delta against the kept pack | "stream": the whole pack over ssh
    keep: bool           # the new pack stays on the host as the next push's basis
    reason: str          # one line for people: why this path
    need_bytes: int      # the free space the push needs on the host (margin included)


def conda_transfer(*, local_rsync: bool, host_rsync: bool, kept_bytes: int, pack_bytes: int, unpacked_bytes: int,
                   free_bytes: int | None, stale_bytes: int = 0) -> CondaTransfer:
    """Choose the path (pure). Keeping the pack costs its size on the host, and is only worth it where
    both sides run rsync; with a kept pack there, rsync sends the new one as a delta against it. The
    space: NAME.new (`unpacked_bytes`) is unpacked beside the old environment, and a kept pack needs the
    new one's room beside the old (rsync builds it aside, then renames it over). Without room for both,
    the pack is sent whole and not kept (the old kept one is deleted first, its room counted free).
    Leftovers of an interrupted push (`stale_bytes`) are deleted first. No room even for NAME.new:
    a MigrateError-ready `CondaTransfer` with path "" (the caller refuses)."""
    margin = SPACE_MARGIN_BYTES + (pack_bytes + unpacked_bytes) // 100
    free = None if free_bytes is None else free_bytes + stale_bytes
    keep_need = pack_bytes + unpacked_bytes + margin
    plain_need = unpacked_bytes + margin
    if not local_rsync or not host_rsync:
        side = "this machine" if not local_rsync else "the host"
        why = f"{side} has no rsync: the whole pack is streamed"
        if free is not None and plain_need > free + max(kept_bytes, 0):
            return CondaTransfer("", False, why, plain_need)
        return CondaTransfer("stream", False, why, plain_need)
    if free is None or keep_need <= free:
        if kept_bytes >= 0:
            return CondaTransfer("rsync", True, "rsync sends the changes against the pack kept from the last push",
                                 keep_need)
        return CondaTransfer("stream", True, "no pack kept on the host yet: the whole pack is streamed (and kept, "
                             "so the next change sends only its delta)", keep_need)
    if plain_need <= free + max(kept_bytes, 0):
        return CondaTransfer("stream", False, "no room on the host to keep a pack beside the environment: the whole "
                             "pack is streamed and not kept", plain_need)
    return CondaTransfer("", False, "not enough space", plain_need)


def conda_prepare_command(name: str, *, drop_kept: bool) -> str:
    """Before a conda push: ~/.migrate/envs and .packs/ (0700), without the leftovers of an interrupted
    push (NAME.new, an unverified NAME.tar.part, rsync's temp file .NAME.tar.XXXXXX); `drop_kept` also
    deletes the kept pack (a push that does not keep one)."""
    new = shell.home_path(env_dir(name) + ".new")
    kept = shell.home_path(pack_path(name))
    temp = f"{shell.home_path(PACKS_DIR)}/.{shell.quote(name)}.tar.??????"
    return (f"umask 077 && cd && {shell.mkdir_private(ENVS_DIR)} && {shell.mkdir_private(PACKS_DIR)} && "
            f"rm -rf {new} {kept}.part {temp}" + (f" {kept}" if drop_kept else ""))


def _conda_swap_in(name: str) -> str:
    """NAME.new replaces NAME, its own python runs its conda-unpack, then the uploaded lock (written last)."""
    env = shell.home_path(env_dir(name))
    new = shell.home_path(env_dir(name) + ".new")
    lock = shell.home_path(lock_upload(name))
    return (f"rm -rf {env} && mv {new} {env} && "
            f"{env}/bin/python {env}/bin/conda-unpack && mv -f {lock} {env}/{LOCK_FILE}")


def conda_install_command(name: str, keep_sha256: str | None = None) -> str:
    """Receive the conda-pack tar on stdin into NAME.new, swap it in, relocate it with its own
    conda-unpack (run by the env's python), then keep the uploaded lock (written last).

    With `keep_sha256` the stream is also written to .packs/NAME.tar.part, which becomes the kept pack
    only when its sha256 is the pack's (a pack that could not be kept: the push still succeeds)."""
    new = shell.home_path(env_dir(name) + ".new")
    receive = f"tar -xf - -C {new}"
    keep = ""
    if keep_sha256:
        kept = shell.home_path(pack_path(name))
        # tar may stop reading at the end-of-archive blocks: `cat` drains the rest so tee writes it all
        receive = f"{{ tee {kept}.part | {{ {receive} && cat >/dev/null; }}; }}"
        keep = (f"{{ [ \"$(sha256sum {kept}.part 2>/dev/null | cut -d' ' -f1)\" = {shell.quote(keep_sha256)} ] && "
                f"mv -f {kept}.part {kept} || rm -f {kept}.part; }} && ")
    return (f"umask 077 && cd && {shell.mkdir_private(ENVS_DIR)} && rm -rf {new} && mkdir -m 700 {new} && "
            f"{receive} && {keep}{_conda_swap_in(name)}")


def pack_rsync_argv(local_pack: str, dest: str, rsh: str) -> list[str]:
    """rsync the new pack onto the kept one (`dest`: HOST:.migrate/envs/.packs/NAME.tar): only the
    delta against it crosses the link. rsync builds the new file aside (.NAME.tar.XXXXXX, deleted when
    interrupted), checks its whole-file checksum, and only then renames it over the old pack. No
    --partial: a partial file would replace the old pack as the basis of the rerun."""
    return ["rsync", "--stats", "--no-whole-file", "--ignore-times", "--perms", "--chmod=F600", "-e", rsh, "--",
            local_pack, dest]


def conda_extract_command(name: str) -> str:
    """After the rsync: unpack the kept pack (complete and checked) into NAME.new and swap it in."""
    new = shell.home_path(env_dir(name) + ".new")
    return (f"umask 077 && cd && rm -rf {new} && mkdir -m 700 {new} && "
            f"tar -xf {shell.home_path(pack_path(name))} -C {new} && {_conda_swap_in(name)}")


def delete_command(name: str) -> str:
    """Remove the environment and a conda env's kept pack (and what an interrupted push left)."""
    env = shell.home_path(env_dir(name))
    kept = shell.home_path(pack_path(name))
    temp = f"{shell.home_path(PACKS_DIR)}/.{shell.quote(name)}.tar.??????"
    return (f"cd && if [ -d {env} ] || [ -e {kept} ]; then rm -rf {env} {env}.new {kept} {kept}.part {temp} "
            f"&& echo deleted; else echo absent; fi")


def exists_command(name: str) -> str:
    return (f"cd && if [ -d {shell.home_path(env_dir(name))} ] || [ -e {shell.home_path(pack_path(name))} ]; "
            "then echo yes; else echo no; fi")


def list_command() -> str:
    return f"cd && ls -1 {shell.home_path(ENVS_DIR)} 2>/dev/null || true"


# -- `migrate shell/exec HOST --env NAME`: a shell or one command with the env activated -------------
def activation(name: str) -> str:
    """Shell lines that activate ~/.migrate/envs/NAME: VIRTUAL_ENV (or CONDA_PREFIX for a conda env,
    which has conda-meta/, and its etc/conda/activate.d/*.sh scripts) and PATH, as the agent does for
    a job (agent/launch.py: activate)."""
    env = shell.home_path(env_dir(name))
    return (f"PATH={env}/bin:\"$PATH\"; export PATH; unset PYTHONHOME; "
            f"if [ -d {env}/conda-meta ]; then CONDA_PREFIX={env}; export CONDA_PREFIX; "
            f"{CONDA_ACTIVATE_D}"
            f"else VIRTUAL_ENV={env}; export VIRTUAL_ENV; fi")


def session_command(name: str, command: str | None) -> str:
    """The remote command of `migrate shell/exec HOST --env NAME [-- CMD]` (pure).

    The activation runs after the login profile (`bash -l`, which may reset PATH); an interactive
    shell gets it once more after ~/.bashrc (an `--rcfile` that sources ~/.bashrc, then activates),
    so a conda init block there cannot put its base env in front. Without bash: sh. A missing env is
    one line on stderr and exit 127, as for a job."""
    env = shell.home_path(env_dir(name))
    act = activation(name)
    missing = shell.quote(f"migrate: no environment {name} on this host (~/{env_dir(name)}); "
                          f"push it with: migrate push-env HOST --name {name} SOURCE")
    if command is not None:
        body = f"{act}; {command}"
        run = f"exec bash -lc {shell.quote(body)}"
        fallback = f"exec sh -c {shell.quote(body)}"
    else:
        rc = f"exec bash --rcfile <({{ cat ~/.bashrc 2>/dev/null; printf '%s\\n' {shell.quote(act)}; }}) -i"
        run = f"exec bash -lc {shell.quote(f'{act}; {rc}')}"
        fallback = f"exec sh -c {shell.quote(f'{act}; exec sh -i')}"
    return shell.sh_c(f"[ -d {env} ] || {{ echo {missing} >&2; exit 127; }}; "
                      f"if command -v bash >/dev/null 2>&1; then {run}; else {fallback}; fi")
