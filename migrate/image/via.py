"""`push-image --via auto|push|pull`: the host pulls what a registry holds, SSH carries the rest.

Per run, `Registries` learns where each local image came from (registry.find_sources over one
`docker image inspect` of every local image) and the credentials per registry (credentials.lookup,
or `--registry-login` asked once, up front). Per host and image, `decide` asks the host (one HEAD
of the manifest, registry.PROBE_SCRIPT; credentials on stdin) and returns a `ViaDecision` with its
reason: pull (the host runs `docker pull registry/repo@digest`, then the normal push sends only the
layers it still lacks) or push. `pull_on_host` runs the pull with a temporary DOCKER_CONFIG fed
over stdin (registry.pull_script) and records the pulled image in the host's inventory.

Refusals (before anything moves): `--via pull` without a registry source or with the registry
unusable from the host; in every mode, credentials the registry refuses (a wrong password is a
mistake to fix, not a reason to send 15 GB over a home uplink).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypedDict

from migrate import local, ui
from migrate.errors import MigrateError, UsageError
from migrate.image import credentials as creds
from migrate.image import registry as reg
from migrate.image.local import LocalImage
from migrate.image.plan import SEND, ImagePlan
from migrate.image.remote import IMAGE_LINE_FORMAT, RemoteDocker, docker_command, parse_image_line
from migrate.remote import shell
from migrate.remote.host import Host

MODES = ("auto", "push", "pull")
MAX_PROBES = 3  # registry sources tried per image and host
UNREACHABLE = ("unreachable", "tls", "nopython")  # verdicts about the host and registry, not the image


class ViaFields(TypedDict, total=False):
    """ImagePushResult's fields that result_fields fills (typed, so **-passing them is checked)."""

    via: str
    via_reason: str
    pulled: str


@dataclass
class ViaDecision:
    """How one image reaches one host: `pull` (registry `ref` brings `layers` layers first) or `push`."""

    via: str = "push"
    reason: str = ""
    ref: str = ""
    layers: int = 0
    registry: str = ""
    auth_key: str = ""
    mirror: str = ""  # the host dockerd's registry mirror the pull goes through (a Docker Hub image)
    # for a containerd image store: DiffID -> the registry's (media type, digest, size) of the pulled layers
    registry_layers: dict[str, tuple[str, str, int]] = field(default_factory=dict)

    @property
    def pulls(self) -> bool:
        return self.via == "pull"


class Registries:
    """One run's registry knowledge: local image sources and credentials (each looked up once)."""

    def __init__(self, mode: str, login: str | None = None, *,
                 list_local: Callable[[], str] | None = None,
                 lookup: Callable[[str], creds.Credential | None] | None = None) -> None:
        if mode not in MODES:
            raise UsageError(f"unknown --via {mode!r}", hint="use auto, push or pull")
        self.mode = mode
        self._list_local = list_local or _list_local_images
        self._lookup = lookup or creds.lookup
        self._candidates: dict[str, reg.LocalCandidate] | None = None
        self._creds: dict[str, creds.Credential | None] = {}
        self._unusable: dict[tuple[str, str], reg.ProbeResult] = {}  # (host, registry) -> why not, asked once
        self._lock = threading.Lock()
        if login:
            self._creds[registry_name(login)] = creds.ask(registry_name(login))  # asked once, before any work

    def sources(self, img: LocalImage) -> list[reg.Source]:
        with self._lock:
            if self._candidates is None:
                self._candidates = reg.parse_candidates(self._list_local())
        own = self._candidates.get(img.image_id)
        return reg.find_sources(img.diff_ids, own.repo_digests if own else [],
                                [c for i, c in self._candidates.items() if i != img.image_id])

    def ask(self, remote: Host, ref: reg.RegistryRef, arch: str = "", mirror: str = "") -> reg.ProbeResult:
        """`probe` from `remote` (through dockerd's registry `mirror` when given, anonymously); a registry
        the host cannot reach (or no python3) is asked once per host, so an air-gapped host costs one
        timeout per registry, not one per image."""
        key = (remote.name, mirror or ref.registry)
        with self._lock:
            known = self._unusable.get(key)
        if known is not None:
            return known
        verdict = probe(remote, ref, None if mirror else self.credential(ref.registry), arch, mirror)
        if verdict.verdict in UNREACHABLE:
            with self._lock:
                self._unusable[key] = verdict
        return verdict

    def credential(self, registry: str) -> creds.Credential | None:
        with self._lock:
            if registry not in self._creds:
                self._creds[registry] = self._lookup(registry)
            return self._creds[registry]


def registry_name(text: str) -> str:
    """`--registry-login` spellings -> the registry as image references name it (`docker.io` for Docker Hub)."""
    name = text.strip().removeprefix("https://").removeprefix("http://").split("/", 1)[0]
    return reg.DOCKER_HUB if name in ("index.docker.io", "registry-1.docker.io", "hub.docker.com") else name


def _list_local_images() -> str:
    try:
        return _inspect_all_local()
    except MigrateError as exc:  # no local docker (--from-file runs never get here): no sources
        ui.debug(f"cannot list local images for registry sources: {exc.one_line()}")
        return ""


def _inspect_all_local() -> str:
    ids = local.run(["docker", "image", "ls", "-aq", "--no-trunc"], check=False, what="docker image ls").stdout.split()
    if not ids:
        return ""
    return local.run(["docker", "image", "inspect", "--format", reg.CANDIDATE_FORMAT, *dict.fromkeys(ids)],
                     check=False, what="docker image inspect").stdout


def probe(remote: Host, ref: reg.RegistryRef, cred: creds.Credential | None, arch: str = "",
          mirror: str = "") -> reg.ProbeResult:
    """One HEAD of `ref`'s manifest from the host (read-only; credentials on stdin); with `arch`, a GET that
    also returns the layer descriptors for that platform; with `mirror`, asked of that registry mirror."""
    res = remote.run(reg.probe_command(ref, arch, mirror), stdin=cred.probe_stdin() if cred else "", check=False,
                     what="ask the registry mirror" if mirror else "ask the registry", timeout=90)
    if res.exit_code != 0 and "probe=" not in res.stdout:
        return reg.ProbeResult("error", (res.stderr.strip().splitlines() or [f"exit code {res.exit_code}"])[-1])
    verdict = reg.parse_probe(res.stdout)
    verdict.mirror = mirror
    return verdict


def through_mirrors(ask: Callable[[str], reg.ProbeResult], ref: reg.RegistryRef,
                    mirrors: Sequence[str]) -> reg.ProbeResult:
    """Ask the host's dockerd registry mirrors first for a Docker Hub image (dockerd pulls it from the
    first that has it, so a Hub behind a firewall is no reason to push); the registry itself when no
    mirror has it (then a verdict that is not ok also says why each mirror could not serve it).
    `ask(mirror)` probes through that mirror ("" = the registry)."""
    failures = []
    if ref.registry == reg.DOCKER_HUB:
        for mirror in mirrors:
            verdict = ask(mirror)
            if verdict.ok:
                return verdict
            ui.debug(f"registry mirror {mirror}: {verdict.verdict} {verdict.detail}")
            failures.append(f"its registry mirror {mirror} cannot serve it either ({verdict.verdict}"
                            + (f": {verdict.detail})" if verdict.detail else ")"))
    verdict = ask("")
    # a copy: Registries caches its verdicts about the registry itself
    return verdict if verdict.ok or not failures else replace(verdict, mirror_failures=failures)


def refusal(verdict: reg.ProbeResult, registry: str) -> MigrateError:
    """Why `registry` cannot serve the host, one error; the host's registry mirrors asked first add theirs."""
    err = _refusal(verdict, registry)
    if verdict.mirror_failures:
        return MigrateError("; ".join([err.message, *verdict.mirror_failures]), hint=err.hint)
    return err


def _refusal(verdict: reg.ProbeResult, registry: str) -> MigrateError:
    if verdict.verdict == "noauth":
        return MigrateError(f"{registry} asks for a login and there are no credentials for it on this machine",
                            hint=f"docker login {registry} here, or pass --registry-login {registry}")
    if verdict.verdict == "nopython":
        return MigrateError("the host has no python3 to ask the registry with", hint="push with --via push")
    if verdict.verdict == "notfound":
        return MigrateError(f"{registry} does not have the image (HTTP 404)",
                            hint="was it deleted there? push with --via push")
    if verdict.verdict in ("unauthorized", "denied"):
        cause = "unauthorized: " + (verdict.detail or "the registry refused the login")
        return MigrateError(f"{cause}, check the credentials for {registry}",
                            hint=f"docker login {registry} here, or pass --registry-login {registry}")
    kind = "tls" if verdict.verdict == "tls" else "unreachable"
    cause, hint = reg.explain_failure(verdict.detail or verdict.verdict, registry, kind)
    return MigrateError(cause, hint=hint)


def _pulled_layers(img: LocalImage, sources: Sequence[reg.Source], pulled: set[str],
                   ask: Callable[[reg.Source], reg.ProbeResult]) -> dict[str, tuple[str, str, int]]:
    """For a containerd store that pulled a source itself: that registry's descriptors of its layers. Its
    content store holds those (compressed) blobs, maybe not the plain ones: the layout names them and
    sends nothing, as a whole `docker load` there would (containerd finds the blob by its uncompressed
    label). Empty when the host did not pull any source by that digest, or the registry does not answer."""
    for source in [s for s in sources if s.ref.digest in pulled][:1]:
        verdict = ask(source)
        if verdict.ok and len(verdict.layers) == source.layers:
            return dict(zip(img.diff_ids[:source.layers], verdict.layers))
    return {}


def decide(mode: str, img: LocalImage, plan: ImagePlan, sources: Sequence[reg.Source],
           ask: Callable[[reg.Source], reg.ProbeResult], *, need_layers: bool = False,
           pulled: set[str] | None = None) -> ViaDecision:
    """Pull or push for one image on one host, with the reason; raises for the refusals (module doc).

    `pulled`: the manifest digests a containerd store host pulled (RemoteDocker.pulled_digests)."""
    pulled = pulled or set()
    if mode == "push":
        return ViaDecision("push", "--via push")
    if plan.action != SEND:
        return ViaDecision("push", "nothing to send")
    if not sources:
        if mode == "pull":
            raise MigrateError(f"--via pull: {img.display} has no registry source (neither it nor a local base "
                               "image has a RepoDigest: built, loaded or imported here)",
                               hint="pull its base from a registry before building on it, or use --via push")
        return ViaDecision("push", "no registry source (the image and its bases have no RepoDigest)")
    useful = [s for s in sources if s.layers > plan.first_missing]
    if not useful:
        reason = f"the host already has the {sources[0].layers} layers {sources[0].ref.registry} holds"
        return ViaDecision("push", reason, registry_layers=_pulled_layers(img, sources, pulled, ask) if need_layers
                           else {})
    last: MigrateError | None = None
    for source in useful[:MAX_PROBES]:
        verdict = ask(source)
        if verdict.ok and need_layers and len(verdict.layers) != source.layers:
            # a containerd store needs the registry's layer descriptors to name the pulled layers
            verdict = reg.ProbeResult("error", f"the manifest of {source.ref.pull_ref} lists {len(verdict.layers)} "
                                               f"layers for this platform, the local base has {source.layers}")
        if verdict.ok:
            where = f"{source.ref.registry} through its registry mirror {verdict.mirror}" if verdict.mirror \
                else source.ref.registry
            return ViaDecision("pull", f"the host pulls {source.layers} of {plan.total_layers} layers from "
                                       f"{where} ({source.base}); SSH carries the rest",
                               ref=source.ref.pull_ref, layers=source.layers, registry=source.ref.registry,
                               auth_key=source.ref.auth_key, mirror=verdict.mirror,
                               registry_layers=dict(zip(img.diff_ids[:source.layers], verdict.layers)))
        why = refusal(verdict, source.ref.registry)
        if verdict.verdict in ("unauthorized", "denied"):
            raise why
        last = why
    assert last is not None
    if mode == "pull":
        raise MigrateError(f"--via pull: {last.message}", hint=last.hint)
    return ViaDecision("push", last.one_line())


def decide_for_host(registries: Registries, remote: Host, img: LocalImage, plan: ImagePlan,
                    facts: RemoteDocker | None = None) -> ViaDecision:
    """`decide` with this run's sources and credentials, probing through `remote`. A containerd image
    store host also gets the registry's layer descriptors (the OCI layout we load there names them)."""
    if registries.mode == "push" or plan.action != SEND:
        return decide(registries.mode, img, plan, [], lambda s: reg.ProbeResult("error"))
    sources = registries.sources(img)
    arch = facts.docker_arch if facts is not None and facts.containerd_store else ""
    mirrors = facts.registry_mirrors if facts is not None else []

    def ask(source: reg.Source) -> reg.ProbeResult:
        return through_mirrors(lambda m: registries.ask(remote, source.ref, arch, m), source.ref, mirrors)

    return decide(registries.mode, img, plan, sources, ask,
                  need_layers=bool(arch), pulled=facts.pulled_digests() if arch and facts is not None else set())


def pull_credential(registries: Registries | None, registry: str, mirror: str) -> creds.Credential | None:
    """The login the host's `docker pull` gets: none through a registry mirror. dockerd offers a pull's
    credentials to every mirror it tries (moby/moby#42022), and the mirror answered the probe anonymously."""
    return None if mirror or registries is None else registries.credential(registry)


def run_pull(remote: Host, access: str, ref: reg.RegistryRef, cred: creds.Credential | None,
             sudo_password: Callable[[], str]) -> None:
    """`docker pull ref.pull_ref` on the host with a temporary DOCKER_CONFIG fed over stdin; one clear error."""
    stdin = creds.host_config_json(ref.auth_key, cred)
    if access == "sudo-password":
        stdin = sudo_password() + "\n" + stdin
    res = remote.run(shell.sh_c(reg.pull_script(access, ref.pull_ref)), stdin=stdin, check=False,
                     what=f"docker pull {ref.pull_ref}")
    if res.exit_code != 0:
        text = (res.stderr.strip() or res.stdout.strip()).splitlines()
        cause, hint = reg.explain_failure(text[-1] if text else f"exit code {res.exit_code}", ref.registry)
        raise MigrateError(f"docker pull on {remote.name} failed: {cause}", hint=hint)


def pull_on_host(remote: Host, facts: RemoteDocker, decision: ViaDecision, cred: creds.Credential | None,
                 img: LocalImage, sudo_password: Callable[[], str]) -> None:
    """Run the pull and record the pulled image in `facts` (its layers must be the local base's)."""
    ref = reg.parse_ref(decision.ref)
    run_pull(remote, facts.access, ref, cred, sudo_password)
    cmd, sudo = docker_command(facts.access, ["image", "inspect", "--format", IMAGE_LINE_FORMAT, decision.ref])
    got = remote.run(cmd, sudo=sudo, check=False, what="inspect the pulled image")
    if not got.ok:
        raise MigrateError(f"{decision.ref} is not on {remote.name} after the pull")
    pulled = parse_image_line(got.stdout.strip().removeprefix("img="), containerd=facts.containerd_store)
    if pulled.diff_ids != img.diff_ids[:decision.layers]:
        raise MigrateError(f"{decision.ref} on {remote.name} has other layers than the local base of {img.display}",
                           hint="the registry's tag was rebuilt? push with --via push")
    facts.add_image(pulled.image_id, [], pulled.diff_ids, image_fingerprint=pulled.fingerprint,
                    config_digest=pulled.config_digest)


def registry_layers(decision: ViaDecision | None) -> dict[str, tuple[str, str, int]]:
    """The registry's descriptors of layers the host pulls or pulled itself (a containerd store only)."""
    return decision.registry_layers if decision is not None else {}


def result_fields(decision: ViaDecision | None) -> ViaFields:
    """The via/via_reason/pulled fields of a push result (no credential is ever part of a decision)."""
    if decision is None:
        return {}
    return {"via": decision.via, "via_reason": decision.reason, "pulled": decision.ref if decision.pulls else ""}


def announce(host: str, img: LocalImage, decision: ViaDecision) -> None:
    """The decision and its reason, one status line (only for images that need sending, not for --via push)."""
    if decision.reason and decision.reason not in ("nothing to send", "--via push"):
        ui.step(f"{host}: {img.display} via {decision.via}: {decision.reason}")
