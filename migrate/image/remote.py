"""What the remote Docker has, in one round trip, and the docker command lines we run there.

`FACTS_SCRIPT` (POSIX sh) finds how we may talk to Docker (directly, through the docker group with
`sg`, or through sudo), and, when access is direct, also lists the engine, storage driver, data-root,
free disk and every image with its layers (`docker image inspect`: docker-group rights are enough,
no reading of /var/lib/docker). With any other access the same `INVENTORY_SCRIPT` runs in a second
round trip through the right prefix. `parse_facts` turns the output into `RemoteDocker`. All pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from migrate.image.archive import PARTIAL_BLOBS_LABEL, chain_ids
from migrate.image.identity import fingerprint
from migrate.remote import shell
from migrate.remote.probe import normalize_arch
from migrate.remote.probe_fragments import ARCH, DOCKER_ACCESS, FREE_SPACE, KV, as_is, assign

_DISK = FREE_SPACE + "disk() { kv \"disk.$2\" \"$(free_space \"$1\" '$4 \" \" $6')\"; }\n"

# c8d_root DATA_ROOT: containerd's root directory (its content store and snapshots live there, not under
# Docker's data-root): the running containerd's --root, else the `root` of its config file (before any
# [section]), else <data-root>/containerd/daemon when dockerd runs its own containerd (Docker 29
# without a system containerd), else containerd's default. `read` keeps it to one fork per process.
# (`_proc` stands in for /proc in the unit test.)
_C8D_ROOT = r"""c8d_root() {
  _a=""
  for _p in "${_proc:-/proc}"/[0-9]*; do
    read -r _c 2>/dev/null < "$_p/comm" || continue
    [ "$_c" = containerd ] || continue
    _a=$(tr '\0' '\n' < "$_p/cmdline" 2>/dev/null); break
  done
  _r=$(printf '%s\n' "$_a" | sed -n -e '/^--root$/{n;p;q;}' -e 's/^--root=//p' | head -n 1)
  _f=$(printf '%s\n' "$_a" | sed -n -e '/^--config$/{n;p;q;}' -e '/^-c$/{n;p;q;}' -e 's/^--config=//p' | head -n 1)
  [ -n "$_r" ] || _r=$(sed -n -e '/^[[:space:]]*\[/q' \
    -e 's/^[[:space:]]*root[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' \
    "${_f:-/etc/containerd/config.toml}" 2>/dev/null | head -n 1)
  case "$_r:$_f" in :*/docker/containerd/*) _r=$1/containerd/daemon ;; esac
  printf '%s\n' "${_r:-/var/lib/containerd}"
}
"""

# |mirrors= last: the shell cuts fields 2 and 3; dockerd's registry-mirrors (daemon.json or --registry-mirror)
_INFO_FORMAT = ("'{{.ServerVersion}}|{{.Driver}}|{{.DockerRootDir}}|{{.OSType}}|{{json .DriverStatus}}"
                "|mirrors={{json .RegistryConfig.Mirrors}}'")

# Images whose every layer blob we put in a containerd content store (their IDs, one a line, in the
# login user's home): the layers of such an image, while it is there, need not ride along again.
BLOB_RECORD = ".migrate/image-blobs"
BLOB_RECORD_LINES = 1000

# Where a layer bigger than --checkpoint is staged while it streams (image/staged.py): one `NAME.tar`
# per step, its committed length in `NAME.tar.ok`; listed by FACTS_SCRIPT as `staged=NAME SIZE COMMITTED`.
STAGE_DIR = ".migrate/image-partial"

# .Config comes last: its JSON may contain '|'. Created/Os/Config feed the fingerprint (image/identity.py).
# RepoDigests (what the host pulled) come after it, behind `|rd=`.
IMAGE_LINE_FORMAT = ("img={{.Id}}|{{range .RepoTags}}{{.}},{{end}}|{{range .RootFS.Layers}}{{.}},{{end}}|{{.Architecture}}"
                     "|{{.Os}}|{{.Created}}|{{json .Config}}|rd={{range .RepoDigests}}{{.}},{{end}}")
_IMG_FORMAT = f"'{IMAGE_LINE_FORMAT}'"

# With `want` (the local image IDs) set, the images we push are inspected first: when all are there
# the full listing is skipped (the common "up to date" case, and big servers with many images).
# The docker CLI calls run in parallel: each costs ~0.1 s on a small host.
INVENTORY_SCRIPT = KV + _DISK + _C8D_ROOT + r"""
ids_file=$(mktemp 2>/dev/null || echo "/tmp/migrate-ids.$$")
if [ -n "${want:-}" ]; then docker image inspect --format """ + _IMG_FORMAT + r""" $want > "$ids_file" 2>/dev/null &
else docker image ls -aq --no-trunc > "$ids_file" 2>/dev/null &
fi
job=$!
[ -n "${info:-}" ] || info=$(docker info --format """ + _INFO_FORMAT + r""" 2>&1) \
  || { wait; rm -f "$ids_file"; kv inventory.error "$(printf '%s' "$info" | tail -n 1)"; exit 0; }
kv info "$info"
root=$(printf '%s' "$info" | cut -d'|' -f3)
tmpdir=$(systemctl show -p Environment docker 2>/dev/null | tr ' ' '\n' | sed -n 's/^\(Environment=\)\{0,1\}DOCKER_TMPDIR=//p' | tail -n 1)
kv tmpdir "$tmpdir"
disk "$root" docker_root
case "$info" in *io.containerd.snapshotter*)  # the containerd image store: blobs and snapshots under its root
  c8d=$(c8d_root "$root"); kv c8d.root "$c8d"
  disk "$c8d/io.containerd.content.v1.content" c8d_content
  disk "$c8d/io.containerd.snapshotter.v1.$(printf '%s' "$info" | cut -d'|' -f2)" c8d_snapshots ;;
esac
t=${tmpdir:-$root/tmp}
case "$t" in "$root"/*) kv disk.docker_tmp same ;; *) disk "$t" docker_tmp ;; esac
if wait "$job" && [ -n "${want:-}" ]; then cat "$ids_file"; rm -f "$ids_file"; kv inventory wanted; exit 0; fi
if [ -n "${want:-}" ]; then ids=$(docker image ls -aq --no-trunc 2>/dev/null | sort -u); else ids=$(sort -u "$ids_file"); fi
rm -f "$ids_file"
[ -z "$ids" ] || docker image inspect --format """ + _IMG_FORMAT + r""" $ids 2>/dev/null
kv inventory done
"""

FACTS_SCRIPT = KV + _DISK + DOCKER_ACCESS + ARCH + r"""
kv aes "$(grep -m1 -wo aes /proc/cpuinfo 2>/dev/null)"
kv zstd "$(command -v zstd 2>/dev/null)"
kv home "$HOME"
for f in "$HOME/""" + STAGE_DIR + r"""/"*.tar; do
  [ -f "$f" ] && kv staged "${f##*/} $(wc -c < "$f") $(cat "$f.ok" 2>/dev/null || echo 0)"
done
[ -r "$HOME/""" + BLOB_RECORD + r"""" ] && sed 's/^/blobs.complete=/' "$HOME/""" + BLOB_RECORD + r""""
kv uid "$(id -u)"
for t in apptainer singularity; do
  if command -v "$t" >/dev/null 2>&1; then kv sif "$(command -v "$t")"; break; fi
done
disk "$HOME" home
if ! command -v docker >/dev/null 2>&1; then kv docker none; exit 0; fi
# fast path: every image we push is already there -> one docker call, nothing else to learn
if [ -n "${want:-}" ] && out=$(docker image inspect --format """ + _IMG_FORMAT + r""" $want 2>/dev/null); then
  kv docker direct; printf '%s\n' "$out"; kv inventory wanted; exit 0
fi
if out=$(docker info --format """ + _INFO_FORMAT + r""" 2>&1) && [ -n "${out%%|*}" ]; then mode=direct; info=$out
else
  out=$(docker version --format '{{.Server.Version}}' 2>&1)  # `docker info --format` hides the reason
  kv docker.error "$(printf '%s' "$out" | tail -n 1)"
  if printf '%s' "$out" | grep -qi 'permission denied'; then mode=$(docker_denied_mode); else mode=down; fi
fi
kv docker "$mode"
[ "$mode" = direct ] || exit 0
""" + INVENTORY_SCRIPT


@dataclass
class RemoteImage:
    """One image on the remote daemon: its ID as that daemon reports it (the config digest on a classic
    store, the manifest digest on the containerd store), and the fingerprint both stores agree on."""

    image_id: str
    tags: list[str]
    diff_ids: list[str]
    arch: str = ""
    fingerprint: str = ""
    config_digest: str = ""  # when known: a classic store's ID, or what we loaded in this run
    blobs_complete: bool = False  # a checkpoint of ours that brought every layer blob (PARTIAL_BLOBS_LABEL)
    repo_digests: list[str] = field(default_factory=list)  # `repo@sha256:…` of the manifests it was pulled as

    def same_as(self, image_id: str, config_digest: str = "", image_fingerprint: str = "") -> bool:
        """True when this is the image with that local ID / config digest / fingerprint."""
        ids = {i for i in (image_id, config_digest) if i}
        if self.image_id in ids or (self.config_digest and self.config_digest in ids):
            return True
        return bool(image_fingerprint) and self.fingerprint == image_fingerprint


@dataclass
class RemoteDocker:
    """The remote host as push-image sees it."""

    arch: str = ""
    aes: bool = False
    zstd: str = ""
    home: str = ""
    uid: int = -1
    sif_tool: str = ""
    access: str = "none"  # direct | group | sudo | sudo-password | denied | down | none
    error: str = ""
    inventory_error: str = ""
    engine: str = ""
    storage_driver: str = ""
    root_dir: str = ""
    os_type: str = ""
    driver_status: list = field(default_factory=list)
    tmp_dir: str = ""
    disks: dict[str, tuple[int, str]] = field(default_factory=dict)  # key -> (free KiB, mount)
    tmp_same_fs: bool = True
    images: list[RemoteImage] = field(default_factory=list)
    inventoried: bool = False
    inventory_scope: str = ""  # "wanted": only the images we push were listed (all present); "done": all
    c8d_root: str = ""  # containerd's root (the containerd image store keeps blobs and snapshots there)
    complete_ids: set[str] = field(default_factory=set)  # BLOB_RECORD: images that have every layer blob
    registry_mirrors: list[str] = field(default_factory=list)  # dockerd's registry-mirrors (Docker Hub pulls)
    staged: dict[str, tuple[int, int]] = field(default_factory=dict)  # STAGE_DIR file -> (size, committed bytes)

    @property
    def docker_arch(self) -> str:
        return normalize_arch(self.arch)

    @property
    def containerd_store(self) -> bool:
        """True when the daemon keeps images in containerd (Engine >= 24 with the snapshotter)."""
        text = json.dumps(self.driver_status)
        return "io.containerd.snapshotter" in text or self.storage_driver in ("overlayfs", "stargz")

    def engine_at_least(self, major: int) -> bool:
        try:
            return int(self.engine.split(".", 1)[0]) >= major
        except ValueError:
            return False

    def chain_set(self) -> set[str]:
        """Every layer ChainID the daemon has (computed from each image's layer list)."""
        out: set[str] = set()
        for img in self.images:
            out.update(chain_ids(img.diff_ids))
        return out

    def blob_layers(self) -> set[str]:
        """DiffIDs whose plain-tar blob (digest = DiffID) the containerd content store is known to hold:
        the layers of images that are still there and got every layer blob from us (recorded in
        BLOB_RECORD, or checkpoints labelled so). Other layers may have only a snapshot, or a compressed
        blob from a pull: their blob must ride along."""
        out: set[str] = set()
        for img in self.images:
            if img.blobs_complete or img.image_id in self.complete_ids:
                out.update(img.diff_ids)
        return out

    def pulled_digests(self) -> set[str]:
        """The manifest digests the host pulled images by (a containerd store then holds their blobs)."""
        return {d.rpartition("@")[2] for img in self.images for d in img.repo_digests if "@" in d}

    def image(self, image_id: str, config_digest: str = "", image_fingerprint: str = "") -> RemoteImage | None:
        """The remote image that is this local image: same ID or config digest, else same fingerprint."""
        for img in self.images:
            if img.same_as(image_id, config_digest):
                return img
        if image_fingerprint:
            for img in self.images:
                if img.fingerprint == image_fingerprint:
                    return img
        return None

    def tag_owner(self, tag: str) -> RemoteImage | None:
        """The image that `tag` points at on the remote, if any."""
        for img in self.images:
            if tag in img.tags:
                return img
        return None

    def add_image(self, image_id: str, tags: list[str], diff_ids: list[str], *, image_fingerprint: str = "",
                  config_digest: str = "") -> RemoteImage:
        """Record an image we just loaded or tagged (so later plans in this run see its layers and tags)."""
        existing = self.image(image_id, config_digest, image_fingerprint)
        for img in self.images:
            if img is not existing:
                img.tags = [t for t in img.tags if t not in tags]
        if existing:
            existing.tags = sorted(set(existing.tags) | set(tags))
            existing.fingerprint = existing.fingerprint or image_fingerprint
            existing.config_digest = existing.config_digest or config_digest
            return existing
        img = RemoteImage(image_id=image_id, tags=list(tags), diff_ids=list(diff_ids), fingerprint=image_fingerprint,
                          config_digest=config_digest)
        self.images.append(img)
        return img

    def free_kib(self, key: str) -> int | None:
        value = self.disks.get(key)
        return value[0] if value else None


def _int(text: str, default: int = -1) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return default


FACTS_KEYS = {"arch": ("arch", as_is), "zstd": ("zstd", as_is), "home": ("home", as_is),
              "tmpdir": ("tmp_dir", as_is), "aes": ("aes", lambda v: v == "aes"), "uid": ("uid", _int),
              "sif": ("sif_tool", as_is), "docker": ("access", as_is), "docker.error": ("error", as_is),
              "inventory.error": ("inventory_error", as_is), "c8d.root": ("c8d_root", as_is)}


def parse_facts(text: str, into: RemoteDocker | None = None) -> RemoteDocker:
    """Parse FACTS_SCRIPT / INVENTORY_SCRIPT output (key=value lines, `img=` lines)."""
    f = into or RemoteDocker()
    for key, value in assign(f, text, FACTS_KEYS, strip=True):
        if key == "inventory":
            f.inventoried = True
            f.inventory_scope = value
        elif key == "info":
            value, _, mirrors = value.rpartition("|mirrors=") if "|mirrors=" in value else (value, "", "")
            f.registry_mirrors = parse_mirrors(mirrors)
            parts = value.split("|", 4) + ["", "", "", "", ""]
            f.engine, f.storage_driver, f.root_dir, f.os_type = parts[:4]
            try:
                f.driver_status = json.loads(parts[4]) if parts[4] else []
            except ValueError:
                f.driver_status = []
        elif key.startswith("disk."):
            name = key[5:]
            if value == "same":
                f.tmp_same_fs = True
                continue
            cols = value.split()
            if len(cols) >= 2:
                f.disks[name] = (_int(cols[0]), cols[1])
                if name == "docker_tmp":
                    f.tmp_same_fs = cols[1] == f.disks.get("docker_root", (0, ""))[1]
        elif key == "img":
            f.images.append(parse_image_line(value, containerd=f.containerd_store))
        elif key == "blobs.complete" and value:
            f.complete_ids.add(value)
        elif key == "staged":
            name, size, committed = (value.split() + ["", "", ""])[:3]
            if name.endswith(".tar") and "/" not in name:
                f.staged[name] = (_int(size, 0), max(_int(committed, 0), 0))
    return f


def parse_mirrors(text: str) -> list[str]:
    """`{{json .RegistryConfig.Mirrors}}` (a JSON list, or null) -> the mirror URLs."""
    try:
        data = json.loads(text) if text.strip() else []
    except ValueError:
        return []
    return [str(m) for m in data if str(m).strip()] if isinstance(data, list) else []


def parse_image_line(value: str, *, containerd: bool = False) -> RemoteImage:
    """One `img=` line (see _IMG_FORMAT); a classic store's ID is the config digest."""
    value, _, repo_digests = value.rpartition("|rd=") if "|rd=" in value else (value, "", "")
    parts = value.split("|", 6) + [""] * 7
    image_id, tags, layers, arch, os_name, created, config_json = parts[:7]
    diff_ids = [d for d in layers.split(",") if d]
    try:
        config = json.loads(config_json) if config_json.strip() else None
    except ValueError:
        config = None
    fp = fingerprint(created, arch, os_name, diff_ids, config) if created else ""
    labels = (config or {}).get("Labels") if isinstance(config, dict) else None
    return RemoteImage(image_id=image_id, tags=[t for t in tags.split(",") if t], diff_ids=diff_ids, arch=arch,
                       fingerprint=fp, config_digest="" if containerd else image_id,
                       blobs_complete=isinstance(labels, dict) and labels.get(PARTIAL_BLOBS_LABEL) == "all",
                       repo_digests=[d for d in repo_digests.split(",") if d])


def with_wanted(script: str, image_ids: list[str]) -> str:
    """`script` with `want` set to the image IDs we are about to push."""
    return f"want={shell.quote(' '.join(image_ids))}\n" + script


# -- command lines -------------------------------------------------------------------------------
def docker_command(access: str, argv: list[str]) -> tuple[str, bool]:
    """A docker command line for `Remote.run` and whether it needs `sudo=True`."""
    line = shell.join(["docker", *argv])
    if access == "group":
        return "sg docker -c " + shell.quote(line), False
    if access in ("sudo", "sudo-password"):
        return line, True
    return line, False


def script_command(access: str, script: str) -> tuple[str, bool]:
    """A shell script run with docker rights, for `Remote.run`: (command, sudo)."""
    if access == "group":
        return "sg docker -c " + shell.quote(script), False
    return shell.sh_c(script), access in ("sudo", "sudo-password")


def stream_command(access: str, script: str) -> str:
    """The remote command of an OpenSSH byte stream that runs `script` with docker rights.

    For password sudo the first stdin line must be the password: `sudo -S -k` always reads it (even
    when credentials are cached) and passes the rest of stdin to the command.
    """
    if access == "group":
        return "sg docker -c " + shell.quote(script)
    if access == "sudo":
        return shell.sudo_nopasswd(script)
    if access == "sudo-password":
        return shell.sudo_first_line(script)
    return shell.sh_c(script)


def record_blobs_command(image_id: str) -> str:
    """Add an image to BLOB_RECORD (run as the login user; the last BLOB_RECORD_LINES lines kept; 0600)."""
    rec = '"$HOME"/' + BLOB_RECORD
    return shell.sh_c(f"umask 077 && mkdir -p \"$(dirname {rec})\" && "
                      f"{{ tail -n {BLOB_RECORD_LINES - 1} {rec} 2>/dev/null; printf '%s\\n' {shell.quote(image_id)}; }} "
                      f"> {rec}.tmp.$$ && mv -f {rec}.tmp.$$ {rec}")


def load_script(decompress: str | None) -> str:
    """`docker load`, behind `zstd -dc |` when the remote must decompress for an old engine."""
    if decompress == "zstd":
        return "zstd -dcq | docker load"
    return "docker load"


def sif_script(tool: str, archive_path: str, sif_path: str, decompress: str | None) -> str:
    """Receive an archive into a private temp file, build a SIF from it with apptainer/singularity, clean up."""
    q_tmp, q_sif = shell.quote(archive_path), shell.quote(sif_path)
    receive = f"zstd -dcq > {q_tmp}" if decompress == "zstd" else f"cat > {q_tmp}"
    cleanup = shell.quote(f"rm -f {q_tmp}")  # the trap's text is parsed again when it runs: quote it once more
    return (f"umask 077 && mkdir -p \"$(dirname {q_tmp})\" \"$(dirname {q_sif})\" && trap {cleanup} EXIT && "
            f"{receive} && {shell.quote(tool)} build --force {q_sif}.part docker-archive://{q_tmp} "
            f"&& mv -f {q_sif}.part {q_sif}")


def parse_load_output(stdout: str, stderr: str) -> tuple[list[str], list[str], list[str]]:
    """(loaded tags, loaded image IDs, error lines) from `docker load` output.

    The containerd store prints `Error unpacking image ...` and still exits 0; JSON progress
    streams carry `errorDetail`. Both count as errors.
    """
    tags: list[str] = []
    ids: list[str] = []
    errors: list[str] = []
    for line in (stdout + "\n" + stderr).splitlines():
        s = line.strip()
        if s.startswith("Loaded image ID: "):
            ids.append(s[len("Loaded image ID: "):].strip())
        elif s.startswith("Loaded image: "):
            tags.append(s[len("Loaded image: "):].strip())
        elif s.lower().startswith(("error", "open ", "unexpected eof")) or "errorDetail" in s \
                or "no space left" in s.lower():
            errors.append(s)
    return tags, ids, errors
