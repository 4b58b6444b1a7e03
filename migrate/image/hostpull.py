"""Registry images the host pulls itself (a playbook's `images: - pull: REF`): nothing crosses SSH but
the credentials, on stdin, into a temporary DOCKER_CONFIG (image/registry.py: pull_script).

Idempotent: an image already on the host under that reference is "up to date" (a tag that moved in
the registry since is not pulled again; pull by digest to pin it). Before pulling, the host is asked
(one HEAD of the manifest, as `push-image --via` does), so an unreachable registry or a wrong
password is one clear line and nothing is half done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypedDict

from migrate.errors import MigrateError, UsageError
from migrate.image import registry as reg
from migrate.image.plan import check_access
from migrate.image.push import ImagePushResult
from migrate.image.remote import FACTS_SCRIPT, docker_command, parse_facts
from migrate.image.via import Registries, probe, pull_credential, refusal, run_pull, through_mirrors
from migrate.remote import shell
from migrate.remote.connection import connect
from migrate.remote.host import Host
from migrate.remote.hosts import ConnectOptions
from migrate.remote.parallel import for_each_host

PULLED = "pulled"
WOULD_PULL = "would pull"


class PullFields(TypedDict, total=False):
    """ImagePushResult's fields that _pull_one fills (typed, so **-passing them is checked)."""

    pulled: str
    detail: str
    error: str


def parse_refs(refs: Sequence[str]) -> list[reg.RegistryRef]:
    out = []
    for r in refs:
        try:
            out.append(reg.parse_ref(r))
        except ValueError as exc:
            raise UsageError(f"cannot pull {r!r}: {exc}", hint="e.g. nvcr.io/nvidia/pytorch:24.05-py3") from None
    return out


def _pull_one(remote: Host, access: str, ref: reg.RegistryRef, registries: Registries,
              dry_run: bool, mirrors: Sequence[str] = ()) -> tuple[str, PullFields]:
    """(status, result fields) of one registry image on one host."""
    cmd, sudo = docker_command(access, ["image", "inspect", "--format", "{{.Id}}", ref.pull_ref])
    if remote.run(cmd, sudo=sudo, check=False, what="look for the image").ok:
        return "up to date", {"detail": "already there"}
    try:
        cred = registries.credential(ref.registry)
        verdict = through_mirrors(lambda m: probe(remote, ref, None if m else cred, "", m), ref, mirrors)
        if not verdict.ok:
            raise refusal(verdict, ref.registry)
        where = f"{ref.registry} through its registry mirror {verdict.mirror}" if verdict.mirror else ref.registry
        if dry_run:
            return WOULD_PULL, {"pulled": ref.pull_ref, "detail": f"the host would pull it from {where}"}
        run_pull(remote, access, ref, pull_credential(registries, ref.registry, verdict.mirror),
                 remote.sudo_password)
    except MigrateError as exc:
        return "failed", {"error": exc.one_line()}
    return PULLED, {"pulled": ref.pull_ref, "detail": f"pulled by the host from {where}"}


def pull_images(refs: Sequence[str], hosts: Sequence[str], conn: ConnectOptions, *,
                dry_run: bool = False) -> list[ImagePushResult]:
    """Have every host pull every registry image it lacks; one result per (image, host)."""
    parsed = parse_refs(refs)
    registries = Registries("pull")

    def one(host: str) -> list[ImagePushResult]:
        with connect(host, conn) as remote:
            facts = parse_facts(remote.run(shell.sh_c(FACTS_SCRIPT), what="inspect Docker").stdout)
            check_access(facts, remote.name)
            if facts.access == "sudo-password":
                remote.check_sudo()
            out = []
            for ref, text in zip(parsed, refs):
                t0 = time.monotonic()
                status, kw = _pull_one(remote, facts.access, ref, registries, dry_run, facts.registry_mirrors)
                out.append(ImagePushResult(image=text, host=host, status=status, via="pull",
                                           seconds=round(time.monotonic() - t0, 3), **kw))
            return out

    results: list[ImagePushResult] = []
    for o in for_each_host(list(hosts), one):
        if o.ok and o.value is not None:
            results += o.value
        else:
            results += [ImagePushResult(image=r, host=o.host, status="failed", error=o.error) for r in refs]
    return results
