"""Where an image came from, and asking a host whether it can pull it from there. Pure.

A local image pulled from a registry carries `RepoDigests` (`nvcr.io/nvidia/pytorch@sha256:…`: the
manifest digest the registry serves). An image built on top of it has none, but its layer list
starts with the base's layers: the base is a local image whose DiffIDs are a prefix of the image's.
`find_sources` names, longest first, the registry manifests that hold a prefix of an image's layers;
the host can pull such a manifest by digest (the identical layers, checked by the registry's
digests) and only the layers above it travel over SSH.

`PROBE_SCRIPT` runs on the host (python3, stdlib only): one HEAD of the manifest, with the
credentials read from stdin (basic auth, or the bearer token dance of Docker Hub, NGC, GHCR), and
prints one verdict. `pull_script` pulls with a temporary DOCKER_CONFIG that the credentials reach
through stdin only; see docs/push-image.md, "Images the host pulls itself".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from migrate.remote import shell

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DOCKER_HUB_AUTH_KEY = "https://index.docker.io/v1/"  # the key `docker login` writes for Docker Hub

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True)
class RegistryRef:
    """`registry/repo[:tag][@digest]`, normalised as Docker does (`busybox` is docker.io/library/busybox)."""

    registry: str
    repo: str
    tag: str = ""
    digest: str = ""

    @property
    def api_host(self) -> str:
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def auth_key(self) -> str:
        """The key of this registry in a Docker config's `auths` (and what credential helpers get)."""
        return DOCKER_HUB_AUTH_KEY if self.registry == DOCKER_HUB else self.registry

    @property
    def pull_ref(self) -> str:
        """What `docker pull` is given: by digest when known (the exact layers), else by tag."""
        name = f"{self.registry}/{self.repo}"
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag or 'latest'}"

    @property
    def manifest_url(self) -> str:
        return f"https://{self.api_host}/v2/{self.repo}/manifests/{self.digest or self.tag or 'latest'}"

    def __str__(self) -> str:
        return self.pull_ref


def is_registry_host(first: str) -> bool:
    """Docker's rule: the first path component names a registry when it has a '.' or ':' or is localhost."""
    return "." in first or ":" in first or first == "localhost"


def parse_ref(text: str) -> RegistryRef:
    """Parse an image reference (`nvcr.io/nvidia/pytorch:24.05-py3`, `busybox@sha256:…`, `reg:5000/a/b`)."""
    ref = text.strip()
    if not ref or any(c.isspace() for c in ref):
        raise ValueError(f"not an image reference: {text!r}")
    name, _, digest = ref.partition("@")
    if digest and not _DIGEST.match(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    last = name.rsplit("/", 1)[-1]
    tag = ""
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    first, sep, rest = name.partition("/")
    if sep and is_registry_host(first):
        registry, repo = first, rest
    else:
        registry, repo = DOCKER_HUB, name
    if registry in ("index.docker.io", "registry-1.docker.io"):
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repo:
        repo = "library/" + repo
    if not repo or repo != repo.lower():
        raise ValueError(f"not an image reference: {text!r}")
    return RegistryRef(registry=registry, repo=repo, tag=tag, digest=digest)


@dataclass
class LocalCandidate:
    """A local image as `docker image inspect` shows it: name, layers, and where it was pulled from."""

    name: str
    diff_ids: list[str]
    repo_digests: list[str]


@dataclass(frozen=True)
class Source:
    """A registry manifest that holds the first `layers` layers of an image."""

    ref: RegistryRef
    layers: int
    base: str  # the local image it was learnt from (the image itself, or its base)


def find_sources(diff_ids: Sequence[str], own_repo_digests: Sequence[str],
                 candidates: Sequence[LocalCandidate]) -> list[Source]:
    """Registry manifests holding a prefix of `diff_ids`, the most layers first.

    The image's own RepoDigests hold all of it; a local image whose layer list is a non-empty prefix
    of the image's (its base) holds that prefix. Unparsable digests are skipped."""
    found: list[Source] = []
    seen: set[str] = set()

    def add(digests: Sequence[str], layers: int, base: str) -> None:
        for d in digests:
            try:
                ref = parse_ref(d)
            except ValueError:
                continue
            if ref.digest and ref.pull_ref not in seen:
                seen.add(ref.pull_ref)
                found.append(Source(ref=ref, layers=layers, base=base))

    add(own_repo_digests, len(diff_ids), "the image itself")
    bases = [c for c in candidates if c.repo_digests and 0 < len(c.diff_ids) <= len(diff_ids)
             and list(diff_ids[:len(c.diff_ids)]) == list(c.diff_ids)]
    for c in sorted(bases, key=lambda c: -len(c.diff_ids)):
        add(c.repo_digests, len(c.diff_ids), c.name)
    found.sort(key=lambda s: -s.layers)
    return found


# -- the line format of the local listing ----------------------------------------------------------
CANDIDATE_FORMAT = ("{{.Id}}|{{range .RepoTags}}{{.}},{{end}}|{{range .RepoDigests}}{{.}},{{end}}|"
                    "{{range .RootFS.Layers}}{{.}},{{end}}")


def parse_candidates(text: str) -> dict[str, LocalCandidate]:
    """`docker image inspect --format CANDIDATE_FORMAT` lines -> image ID -> candidate."""
    out: dict[str, LocalCandidate] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[0]:
            continue
        image_id, tags, digests, layers = parts
        split = [[x for x in p.split(",") if x] for p in (tags, digests, layers)]
        out[image_id] = LocalCandidate(name=(split[0] or [image_id[:19]])[0], repo_digests=split[1],
                                       diff_ids=split[2])
    return out


# -- on the host -----------------------------------------------------------------------------------
# One HEAD of the manifest (a GET with a third argument ARCH: then the platform's layer descriptors are
# printed as `layer=MEDIATYPE DIGEST SIZE`, what a containerd image store needs). argv: URL REGISTRY
# [ARCH]; stdin: {"username", "password"} or {"identitytoken"} or nothing. Prints `probe=<verdict>` and
# `detail=<one line>`; always exits 0. Verdicts: ok, noauth (the registry wants credentials and we
# have none), unauthorized (it refused ours), denied, notfound, tls, unreachable, error. Docker trusts
# /etc/docker/certs.d/REGISTRY/*.crt: so does this.
PROBE_SCRIPT = r"""
import base64, glob, json, re, ssl, sys
import urllib.error, urllib.parse, urllib.request
url, reg = sys.argv[1], sys.argv[2]
arch = sys.argv[3] if len(sys.argv) > 3 else ""
raw = sys.stdin.read()
c = json.loads(raw) if raw.strip() else {}
def say(v, d=""):
    print("probe=" + v)
    print("detail=" + " ".join(str(d).split())[:300])
    sys.exit(0)
ctx = ssl.create_default_context()
# Python 3.13 verifies strictly (RFC 5280 key usage, AKI); Go's verifier, which dockerd uses, does not
ctx.verify_flags &= ~getattr(ssl, "VERIFY_X509_STRICT", 0)
for ca in sorted(glob.glob("/etc/docker/certs.d/%s/*.crt" % reg)):
    try:
        ctx.load_verify_locations(ca)
    except (OSError, ssl.SSLError):
        pass
ACCEPT = ", ".join(["application/vnd.oci.image.index.v1+json",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                    "application/vnd.oci.image.manifest.v1+json",
                    "application/vnd.docker.distribution.manifest.v2+json"])
basic = None
if c.get("username"):
    basic = "Basic " + base64.b64encode(("%s:%s" % (c["username"], c.get("password", ""))).encode()).decode()
creds = bool(basic or c.get("identitytoken"))
def open_(u, headers, method="HEAD", data=None):
    r = urllib.request.Request(u, headers=headers, method=method, data=data)
    return urllib.request.urlopen(r, context=ctx, timeout=8)
h = {"Accept": ACCEPT}
try:
    try:
        open_(url, h)
        say("ok")
    except urllib.error.HTTPError as e:
        if e.code != 401:
            raise
        challenge = e.headers.get("WWW-Authenticate", "")
    scheme, _, params = challenge.partition(" ")
    if scheme.lower() == "basic":
        if not basic:
            say("noauth", "the registry asks for a login (basic auth)")
        h["Authorization"] = basic
    elif scheme.lower() == "bearer":
        p = dict(re.findall(r'(\w+)="([^"]*)"', params))
        q = {k: p[k] for k in ("service", "scope") if p.get(k)}
        if c.get("identitytoken"):
            form = dict(q, grant_type="refresh_token", refresh_token=c["identitytoken"], client_id="migrate")
            t = json.loads(open_(p["realm"], {}, "POST", urllib.parse.urlencode(form).encode()).read())
        else:
            th = {"Authorization": basic} if basic else {}
            t = json.loads(open_(p["realm"] + "?" + urllib.parse.urlencode(q), th, "GET").read())
        h["Authorization"] = "Bearer " + (t.get("token") or t.get("access_token") or "")
    else:
        say("error", "unknown authentication scheme %r" % scheme)
    if not arch:
        open_(url, h)
        say("ok")
    m = json.loads(open_(url, h, "GET").read())
    for d in m.get("manifests") or []:
        p = d.get("platform") or {}
        if p.get("architecture") == arch and p.get("os", "linux") == "linux":
            m = json.loads(open_(url.rsplit("/", 1)[0] + "/" + d["digest"], h, "GET").read())
            break
    for layer in m.get("layers") or []:
        print("layer=%s %s %d" % (layer["mediaType"], layer["digest"], layer["size"]))
    say("ok")
except urllib.error.HTTPError as e:
    if e.code == 401:
        say("unauthorized" if creds else "noauth", "HTTP 401 %s" % e.reason)
    if e.code == 403:
        say("denied", "HTTP 403 %s" % e.reason)
    if e.code == 404:
        say("notfound", "HTTP 404: the registry has no such manifest")
    say("error", "HTTP %d %s" % (e.code, e.reason))
except urllib.error.URLError as e:
    r = e.reason
    if isinstance(r, ssl.SSLError) or "CERTIFICATE" in str(r).upper():
        say("tls", getattr(r, "verify_message", "") or r)
    say("unreachable", r)
except ssl.SSLError as e:
    say("tls", e)
except (OSError, ValueError) as e:
    say("unreachable", e)
"""


def mirror_target(ref: RegistryRef, mirror: str) -> tuple[str, str]:
    """(manifest URL, host[:port]) of a Docker Hub image on one of dockerd's `registry-mirrors`
    (`http://10.0.0.5:5000/`, `https://mirror.gcr.io`): a pull-through mirror serves the same
    /v2/<repo>/manifests/<digest> as the Hub (pure)."""
    base = mirror.strip().rstrip("/")
    if "://" not in base:
        base = "https://" + base
    host = base.split("://", 1)[1].split("/", 1)[0]
    return f"{base}/v2/{ref.repo}/manifests/{ref.digest or ref.tag or 'latest'}", host


def probe_command(ref: RegistryRef, arch: str = "", mirror: str = "") -> str:
    """The host command of the probe (no secret in it: the credentials come on stdin); with `arch`, it
    also reads the manifest's layer descriptors for that platform; with `mirror`, it asks that
    registry mirror of the host's dockerd instead of Docker Hub."""
    url, registry = mirror_target(ref, mirror) if mirror else (ref.manifest_url, ref.registry)
    return (f"command -v python3 >/dev/null 2>&1 || {{ echo probe=nopython; exit 0; }}; "
            f"python3 -I -c {shell.quote(PROBE_SCRIPT)} {shell.quote(url)} {shell.quote(registry)}"
            + (f" {shell.quote(arch)}" if arch else ""))


@dataclass
class ProbeResult:
    verdict: str
    detail: str = ""
    layers: list[tuple[str, str, int]] = field(default_factory=list)  # the registry's (media type, digest, size)
    mirror: str = ""  # the host dockerd's registry mirror that answered (a Docker Hub image), "" = the registry
    mirror_failures: list[str] = field(default_factory=list)  # why each mirror asked before the registry could not

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"


def parse_probe(stdout: str) -> ProbeResult:
    verdict, detail = "error", "no answer from the probe"
    layers: list[tuple[str, str, int]] = []
    for line in stdout.splitlines():
        key, _, value = line.partition("=")
        parts = value.split()
        if key == "layer" and len(parts) == 3 and parts[2].isdigit():
            layers.append((parts[0], parts[1], int(parts[2])))
        elif key == "probe":
            verdict = value.strip()
            detail = ""
        elif key == "detail":
            detail = value.strip()
    return ProbeResult(verdict, detail, layers)


_SAFE_REF = re.compile(r"^[A-Za-z0-9./:@_-]+$")


def pull_script(access: str, pull_ref: str) -> str:
    """Pull `pull_ref` on the host with a temporary DOCKER_CONFIG fed from stdin (run as the login user).

    stdin: the sudo password line when `access` is sudo-password, then the config.json text. The
    directory is made by mktemp -d under umask 077 (0700) and removed by the trap on every exit; the
    credentials are never in an argv (`cat` writes them, the docker CLI reads them and hands them to
    the daemon in the API request). Docker rights come as for every other docker command."""
    if not _SAFE_REF.match(pull_ref):
        raise ValueError(f"unexpected characters in image reference {pull_ref!r}")
    pull = 'docker --config "$d" pull "$ref"'
    if access == "group":
        pull = 'sg docker -c "docker --config $d pull $ref"'  # both are plain words (mktemp, _SAFE_REF)
    elif access == "sudo":
        pull = "sudo -n " + pull
    elif access == "sudo-password":
        pull = "printf '%s\\n' \"$pw\" | sudo -S -k -p '' " + pull
    return (
        "umask 077\n"
        f"ref={shell.quote(pull_ref)}\n"
        'd=$(mktemp -d "${TMPDIR:-/tmp}/migrate-pull.XXXXXXXX") || exit 98\n'
        "trap 'rm -rf \"$d\"' EXIT\n"
        "trap 'exit 129' HUP INT TERM PIPE\n"
        + ("IFS= read -r pw || exit 97\n" if access == "sudo-password" else "")
        + 'cat > "$d/config.json" || exit 99\n'
        + pull + "\n"
    )


def explain_failure(text: str, registry: str, kind: str = "") -> tuple[str, str]:
    """(one-line cause, hint) for a failed probe (`kind` = its verdict) or `docker pull` output on the host."""
    low = "" if kind else text.lower()
    if "unauthorized" in low or "401" in low or "authentication required" in low or "incorrect username" in low:
        return (f"unauthorized: the registry refused the login, check the credentials for {registry}",
                f"docker login {registry} here (or pass --registry-login {registry}), then rerun")
    if "denied" in low or "403" in low:
        return (f"denied: {registry} refused access to this repository, check the credentials for {registry}",
                "the account needs pull rights on the repository")
    if kind == "tls" or "x509" in low or "certificate" in low or "tls" in low or "ssl" in low:
        return (f"TLS error talking to {registry} from the host: {text.strip()[:200]}",
                f"the host must trust the registry's CA: put it in /etc/docker/certs.d/{registry}/ca.crt there "
                "(docs/troubleshooting.md)")
    return (f"{registry} is unreachable from the host: {text.strip()[:200]}",
            f"check the host's DNS, proxy and firewall (curl -I https://{registry}/v2/ there), or push with --via push")
