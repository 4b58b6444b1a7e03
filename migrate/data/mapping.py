"""Where each source lands: explicit rules instead of rsync's trailing-slash trap.

rsync's rule (`/data/cifar` lands in `/srv/cifar/cifar/`, `/data/cifar/` in `/srv/cifar/`) trips
everyone. migrate states the outcome instead, with or without slashes on either side:

- a directory SRC and DEST: the contents of SRC become DEST (`./cifar/ -> host:/srv/cifar/`);
- `--into` (or several sources): each SRC goes inside DEST (`./cifar -> host:/srv/cifar`);
- a file SRC: it becomes DEST, unless DEST ends with `/` or is an existing directory on the other
  side, in which case it goes inside it.

`resolve_mapping` is pure: the caller says whether each path is a directory; the result carries
the exact rsync arguments (with the trailing slashes that produce the stated outcome) and a
one-line description that is printed before anything moves.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from migrate.errors import UsageError


@dataclass(frozen=True)
class Mapping:
    """One source and where it lands."""

    source: str          # as typed (for messages)
    source_arg: str      # the rsync source argument (dir sources end with '/')
    dest_arg: str        # the rsync destination path (dirs end with '/')
    landing: str         # the path that source becomes (dir or file) on the other side
    source_is_dir: bool
    mode: str            # "contents" | "into" | "file"

    def describe(self, where: str) -> str:
        """`./cifar/ -> host:/srv/cifar/ (contents)` style line."""
        if self.mode == "contents":
            return f"{self.source_arg} -> {where}{self.dest_arg} (contents of {self.source} become {self.landing})"
        if self.mode == "into":
            return f"{self.source} -> {where}{self.landing} (inside {posixpath.dirname(self.landing) or '~'}/)"
        return f"{self.source} -> {where}{self.landing} (file)"


def normalize_remote_path(path: str) -> str:
    """Make a remote path safe for rsync/ssh: `~/x` -> `x` (home-relative), `-x` -> `./-x`."""
    if not path:
        raise UsageError("empty destination path", hint="give HOST:/absolute/path or HOST:relative/to/home")
    if "\n" in path or "\0" in path:
        raise UsageError("destination path contains a newline or NUL byte")
    if path in ("~", "~/"):
        return "./"
    if path.startswith("~/"):
        path = path[2:] or "./"
    elif path.startswith("~"):
        raise UsageError(f"cannot use another user's home ({path.split('/')[0]}) in {path!r}",
                         hint="give the absolute path")
    if path.startswith("-"):
        path = "./" + path
    return path


def normalize_local_path(path: str) -> str:
    """`-x` -> `./-x` so rsync/tar never read a file name as an option."""
    return "./" + path if path.startswith("-") else path


def _strip_slash(path: str) -> str:
    stripped = path.rstrip("/")
    return stripped if stripped else "/"


def _join(dest: str, name: str) -> str:
    return posixpath.join(dest, name) if dest not in ("./", ".") else name


def _basename(path: str) -> str:
    name = posixpath.basename(_strip_slash(path))
    if name in ("", ".", "..", "/"):
        raise UsageError(f"cannot tell the name of {path!r}", hint="give the directory by its name, not '.' or '/'")
    return name


def resolve_mapping(sources: list[tuple[str, bool, str]], dest: str, *, into: bool,
                    dest_is_dir: bool) -> list[Mapping]:
    """Resolve every source against DEST.

    `sources`: (as typed, is_directory, real name) per source; the real name is the resolved
    basename used with --into (so `.` maps to the current directory's name). `dest_is_dir`: DEST
    already exists as a directory on the receiving side (only matters for single files).
    """
    if not sources:
        raise UsageError("no source given")
    several = len(sources) > 1
    into = into or several
    dest_dir = dest if dest.endswith("/") else dest + "/"
    out: list[Mapping] = []
    seen: dict[str, str] = {}
    for typed, is_dir, real_name in sources:
        src = _strip_slash(typed)
        if is_dir:
            if into:
                # "inside DEST" is "contents of SRC become DEST/name": also right for '.' and symlinks
                landing = _join(dest_dir, real_name)
                m = Mapping(typed, src + "/" if src != "/" else "/", landing + "/", landing, True, "into")
            else:
                m = Mapping(typed, src + "/" if src != "/" else "/", dest_dir, _strip_slash(dest) or "/", True,
                            "contents")
        else:
            if typed.endswith("/"):
                raise UsageError(f"{typed!r} is a file, not a directory", hint="drop the trailing '/'")
            if into or dest.endswith("/") or dest_is_dir:
                landing = _join(dest_dir, real_name)
                m = Mapping(typed, src, dest_dir, landing, False, "into" if (into or several) else "file")
            else:
                m = Mapping(typed, src, dest, dest, False, "file")
        if m.landing in seen:
            raise UsageError(f"{seen[m.landing]!r} and {typed!r} would both land at {m.landing}",
                             hint="rename one, or push them separately")
        seen[m.landing] = typed
        out.append(m)
    return out
