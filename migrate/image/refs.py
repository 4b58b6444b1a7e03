"""Image references on the command line: which arguments are images and which are hosts, tags, and
close matches for a typo. Pure: the caller says which names exist locally."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence

from migrate.errors import UsageError

_HEX_ID = re.compile(r"^(sha256:)?[0-9a-f]{12,64}$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")


def looks_like_image(arg: str) -> bool | None:
    """True: certainly an image reference; False: certainly a host; None: a bare word (either)."""
    if arg.startswith("-"):
        return False  # no image reference starts with '-': a (malformed) host, refused by the host parser
    if "@sha256:" in arg or arg.startswith("sha256:"):
        return True
    if "@" in arg:
        return False  # user@host
    if "/" in arg:
        return True  # repo/name, registry:5000/name
    colons = arg.count(":")
    if colons == 1:
        return True  # name:tag (a host:port is refused by the host parser anyway)
    if colons >= 2:
        return False  # an IPv6 address
    if re.match(r"^\d+(\.\d+){3}$", arg):
        return False  # IPv4 address
    return None


def split_images_and_hosts(args: Sequence[str], *, is_local_image: Callable[[str], bool],
                           is_known_host: Callable[[str], bool]) -> tuple[list[str], list[str]]:
    """Split `IMAGE... HOST...` into images and hosts; images come first.

    An argument is an image when it looks like one (name:tag, repo/name, sha256:..., an ID) or is
    a bare word naming a local image that is not a known ssh host; everything from the first host on
    must be a host.
    """
    images: list[str] = []
    hosts: list[str] = []
    for arg in args:
        kind = looks_like_image(arg)
        if kind is None:
            if _HEX_ID.match(arg) and is_local_image(arg):
                kind = True
            elif hosts:
                kind = False
            else:
                kind = is_local_image(arg) and not is_known_host(arg)
        if kind:
            if hosts:
                raise UsageError(f"image {arg!r} comes after host {hosts[-1]!r}",
                                 hint="give the images first, then the hosts: migrate push-image IMAGE... HOST...")
            images.append(arg)
        else:
            hosts.append(arg)
    return images, hosts


def missing_image(images: Sequence[str], hosts: Sequence[str], *,
                  is_known_host: Callable[[str], bool]) -> str | None:
    """The argument that was meant as an image but exists nowhere locally, or None (pure).

    `push-image nosuchimage gpu1` splits into no image and two hosts: a first argument that is a
    bare word (not user@host, not an address) and no ssh_config host was a missing image, not a host.
    """
    if images or len(hosts) < 2:
        return None
    first = hosts[0]
    if looks_like_image(first) is None and not is_known_host(first):
        return first
    return None


def tag_for(ref: str, repo_tags: Sequence[str]) -> str | None:
    """The tag a reference names (`app` -> `app:latest`), or None for IDs and digests."""
    if ref.startswith("sha256:") or "@" in ref or _HEX_ID.match(ref):
        return None
    name = ref
    for prefix in ("docker.io/library/", "index.docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name += ":latest"
    if name in repo_tags:
        return name
    return name if ":" in name.rsplit("/", 1)[-1] else None


def valid_tag(tag: str) -> bool:
    """True for `repo[:tag]` names docker accepts (lowercase repo path, sane tag)."""
    repo, _, t = tag.rpartition(":") if ":" in tag.rsplit("/", 1)[-1] else (tag, "", "latest")
    return bool(re.match(r"^[a-z0-9]+([._/:-]+[a-z0-9]+)*$", repo)) and bool(_TAG_RE.match(t))


def close_matches(ref: str, names: Sequence[str], limit: int = 5) -> list[str]:
    """Local image names that look like a mistyped `ref` (same repository first, then similar names)."""
    repo = ref.split(":", 1)[0]
    same_repo = [n for n in names if n.split(":", 1)[0] == repo and n != ref]
    similar = difflib.get_close_matches(ref, list(names), n=limit, cutoff=0.5)
    out: list[str] = []
    for n in [*same_repo, *similar]:
        if n not in out and n != ref and not n.startswith("<none>"):
            out.append(n)
    return out[:limit]
