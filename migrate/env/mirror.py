"""`migrate mirror`: package-index mirrors for one user on a host, no root, journaled and undoable.

Writes pip's (~/.config/pip/pip.conf, merged: only [global] index-url changes, and for a plain-http
URL its host joins trusted-host, without which pip ignores the index), uv's
(~/.config/uv/uv.toml: a marked [[index]] block) and conda's (~/.condarc, only when the user has
none) configuration for a named mirror (tuna, ustc, aliyun) or a URL. Before a file changes, the
first original is copied to ~/.migrate/mirror/ and recorded in journal.json; `--undo` puts every
original back (or removes a file migrate created). push-env reads the journal and installs from the
mirror. Everything runs as one stdlib python script on the host (SCRIPT), so a dry run and the
real run are the same code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from migrate.errors import UsageError
from migrate.remote import shell

MIRRORS = {  # name -> (PyPI simple index, anaconda mirror root)
    "tuna": ("https://pypi.tuna.tsinghua.edu.cn/simple", "https://mirrors.tuna.tsinghua.edu.cn/anaconda"),
    "ustc": ("https://mirrors.ustc.edu.cn/pypi/simple", "https://mirrors.ustc.edu.cn/anaconda"),
    "aliyun": ("https://mirrors.aliyun.com/pypi/simple", "https://mirrors.aliyun.com/anaconda"),
}
JOURNAL = ".migrate/mirror/journal.json"


def resolve(name: str) -> tuple[str, str]:
    """A mirror name or an https URL -> (pip index URL, conda root or '')."""
    if name in MIRRORS:
        return MIRRORS[name]
    if name.startswith(("https://", "http://")) and " " not in name:
        return name.rstrip("/"), ""
    raise UsageError(f"unknown mirror {name!r}", hint=f"one of {', '.join(MIRRORS)}, or an index URL (https://...)")


SCRIPT = r'''
import configparser, io, json, os, shutil, sys, urllib.parse
action, url, conda, dry = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
home = os.path.expanduser("~")
state = os.path.join(home, ".migrate", "mirror")
jpath = os.path.join(state, "journal.json")
MARK = "# migrate mirror: `migrate mirror HOST --undo` removes this block"
try:
    with open(jpath) as f:
        journal = json.load(f)
except (OSError, ValueError):
    journal = {"url": "", "files": []}
changes = []
def read(p):
    try:
        with open(p) as f:
            return f.read()
    except OSError:
        return None
def write(p, text):
    os.makedirs(os.path.dirname(p), mode=0o700, exist_ok=True)
    tmp = p + ".migrate-tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, p)
def save():
    os.makedirs(state, mode=0o700, exist_ok=True)
    write(jpath, json.dumps(journal, indent=1))
def record(p, old):
    if any(e["path"] == p for e in journal["files"]):
        return
    entry = {"path": p, "existed": old is not None, "backup": "", "dir_existed": os.path.isdir(os.path.dirname(p))}
    if old is not None:
        entry["backup"] = os.path.join(state, "orig-" + os.path.basename(p))
        os.makedirs(state, mode=0o700, exist_ok=True)
        write(entry["backup"], old)
    journal["files"].append(entry)
    save()
def pip_text(old):
    cp = configparser.RawConfigParser()
    if old:
        cp.read_string(old)
    if not cp.has_section("global"):
        cp.add_section("global")
    cp.set("global", "index-url", url)
    host = urllib.parse.urlsplit(url).hostname if url.startswith("http://") else None
    trusted = cp.get("global", "trusted-host", fallback="").split()
    if host and host not in trusted:  # pip ignores a plain-http index whose host is not trusted
        cp.set("global", "trusted-host", " ".join(trusted + [host]))
    buf = io.StringIO()
    cp.write(buf)
    return buf.getvalue()
def uv_text(old):
    block = MARK + "\n[[index]]\nurl = \"" + url + "\"\ndefault = true\n"
    if not old:
        return block
    kept = old.split(MARK)[0].rstrip("\n")
    if "default = true" in kept:
        return None
    return (kept + "\n\n" if kept else "") + block
def conda_text(old):
    if not conda or (old is not None and MARK not in old):
        return None
    return (MARK + "\nchannels:\n  - defaults\nshow_channel_urls: true\ndefault_channels:\n"
            "  - " + conda + "/pkgs/main\n  - " + conda + "/pkgs/r\ncustom_channels:\n"
            "  conda-forge: " + conda + "/cloud\n  pytorch: " + conda + "/cloud\n")
files = [("pip", os.path.join(home, ".config", "pip", "pip.conf"), pip_text),
         ("uv", os.path.join(home, ".config", "uv", "uv.toml"), uv_text),
         ("conda", os.path.join(home, ".condarc"), conda_text)]
if action == "set":
    for tool, p, make in files:
        old = read(p)
        new = make(old)
        if new is None:
            why = "no conda mirror for a URL" if tool == "conda" and not conda else "kept: you have your own settings"
            changes.append({"tool": tool, "path": p, "change": "skipped", "why": why})
        elif new == old:
            changes.append({"tool": tool, "path": p, "change": "unchanged"})
        else:
            changes.append({"tool": tool, "path": p, "change": "write" if old is None else "merge"})
            if not dry:
                record(p, old)
                write(p, new)
    if not dry and journal.get("url") != url:
        journal["url"] = url
        save()
else:
    for e in reversed(journal["files"]):
        changes.append({"tool": "", "path": e["path"], "change": "restore" if e["existed"] else "remove"})
        if dry:
            continue
        if e["existed"]:
            write(e["path"], read(e["backup"]) or "")
        elif os.path.exists(e["path"]):
            os.remove(e["path"])
        if not e.get("dir_existed", True):
            try:
                os.rmdir(os.path.dirname(e["path"]))
            except OSError:
                pass
    if not dry and os.path.isdir(state):
        shutil.rmtree(state)
print(json.dumps({"url": journal.get("url", "") if action == "undo" else url, "changes": changes}))
'''


def command(action: str, url: str = "", conda: str = "", *, dry_run: bool) -> str:
    """`set` the mirror or `undo` every change (pure: the command line that runs SCRIPT on the host)."""
    return (f"umask 077 && python3 -c {shell.quote(SCRIPT)} {shell.quote(action)} {shell.quote(url)} "
            f"{shell.quote(conda)} {'1' if dry_run else '0'}")


@dataclass
class MirrorResult:
    host: str
    url: str = ""
    changes: list[dict] = field(default_factory=list)
    error: str = ""

    @classmethod
    def parse(cls, host: str, stdout: str) -> MirrorResult:
        data = json.loads(stdout.strip().splitlines()[-1])
        return cls(host=host, url=data["url"], changes=data["changes"])
