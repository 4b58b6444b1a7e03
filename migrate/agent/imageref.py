"""Docker image references: checked before a job is queued, not when `docker run` fails later.

Docker's reference grammar (github.com/distribution/reference):

    reference := name [ ":" tag ] [ "@" digest ]
    name      := [ domain "/" ] path-component ( "/" path-component )*
    domain    := host [ ":" port ]        (host: DNS name, or [IPv6])
    path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag       := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest    := algorithm ":" hex{32,}    (algorithm: [A-Za-z][A-Za-z0-9]* joined by + . _ -)

The name is at most 255 characters. Used by the agent (jobs from any client, jobs.yaml, playbooks)
and by the client (`migrate run --image`, so a bad reference is a usage error before anything is
sent). Standard library only, like the rest of the agent.
"""

from __future__ import annotations

import re

_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = r"(?:" + _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*|\[[a-fA-F0-9:]+\])"
_DOMAIN = _HOST + r"(?::[0-9]+)?"
_NAME = r"(?:" + _DOMAIN + r"/)?" + _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REFERENCE = re.compile(r"^(" + _NAME + r")(?::" + _TAG + r")?(?:@" + _DIGEST + r")?$", re.ASCII)
NAME_MAX = 255
REF_MAX = 1024  # name, tag and digest together; also keeps the regex's work small
FORM = "[registry[:port]/]path[:tag][@digest]"
EXAMPLE = "e.g. nvcr.io/nvidia/pytorch:24.05-py3 or mylab/train:v2"


def image_ref_problem(ref: object) -> str | None:
    """None when `ref` is a valid Docker image reference, else a short reason (pure)."""
    if not isinstance(ref, str) or not ref:
        return "empty"
    if len(ref) > REF_MAX:
        return f"longer than {REF_MAX} characters"
    if ref.startswith("-"):
        return "it starts with '-'"
    bad = next((c for c in ref if not (c.isascii() and (c.isalnum() or c in "._-/:@+[]"))), None)
    if bad is not None:
        return f"{bad!r} is not allowed in an image reference"
    m = REFERENCE.match(ref)
    if m is None:
        if REFERENCE.match(ref.lower()):
            return "repository names must be lowercase"
        return f"not {FORM}"
    if len(m.group(1)) > NAME_MAX:
        return f"the name is longer than {NAME_MAX} characters"
    return None


def check_image_ref(ref: object) -> str | None:
    """A one-line error for a bad image reference (None when it is fine)."""
    problem = image_ref_problem(ref)
    if problem is None:
        return None
    shown = ref if not isinstance(ref, str) or len(ref) <= 80 else ref[:77] + "..."
    return f"bad image reference {shown!r}: {problem}"
