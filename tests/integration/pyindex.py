"""A real PEP 503 package index served inside a sandbox, for tests of `migrate mirror` users.

The index is `www/simple/` (a root page and one page per project, named by its PEP 503 normalized
name, each link `../../packages/<wheel>#sha256=<digest>` with its PEP 658 metadata hash) and
`www/packages/` (the wheels, each with its `.metadata` beside it). `build(wheels, out)` writes the
pages and metadata here; `serve(host, wheels)` streams them with the wheels (one tar over the host's
SSH, into `~/pyindex-test/`), runs `python3 -m http.server` there as the host's (normal) user, bound
to the host's sandbox IP, and polls the port with a deadline, in that one command. It yields an
`Index` whose `log()` is the server's access log (http.server writes one line per request:
`IP - - [date] "GET /packages/ray-... HTTP/1.1" 200 -`); at the end it stops the server and removes
`~/pyindex-test/`; nothing else on the host is touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import re
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from migrate.remote import shell
from migrate.remote.connection import connect

DIR = "pyindex-test"   # under the host user's home: the tree (www/), the server's pid and access log
PORT = 8613


def normalize(name: str) -> str:
    """PEP 503: runs of -, _ and . become one -, lower case."""
    return re.sub(r"[-_.]+", "-", name).lower()


def project_of(wheel: str) -> str:
    """The project a wheel belongs to: its file name's first dash-separated field (PEP 427)."""
    return normalize(wheel.split("-", 1)[0])


def build(wheels: Path, out: Path) -> dict[str, list[str]]:
    """`out/simple/` and the wheels' `out/packages/<wheel>.metadata` for every wheel in `wheels` (the
    wheels themselves join them in `stream_tree`, not copied here); returns project -> wheel names."""
    projects: dict[str, list[str]] = {}
    (out / "packages").mkdir(parents=True)
    for whl in sorted(wheels.glob("*.whl")):
        projects.setdefault(project_of(whl.name), []).append(whl.name)
    simple = out / "simple"
    simple.mkdir()
    for project, files in projects.items():
        links = []
        for name in files:
            whl = wheels / name
            digest = hashlib.sha256(whl.read_bytes()).hexdigest()
            meta = _metadata(whl)
            (out / "packages" / f"{name}.metadata").write_bytes(meta)
            href = html.escape(f"../../packages/{name}#sha256={digest}")
            core = f"sha256={hashlib.sha256(meta).hexdigest()}"
            links.append(f'<a href="{href}" data-core-metadata="{core}" data-dist-info-metadata="{core}">'
                         f'{html.escape(name)}</a><br/>')
        (simple / project).mkdir()
        (simple / project / "index.html").write_text(_page(f"Links for {project}", links))
    root = [f'<a href="{p}/">{p}</a><br/>' for p in sorted(projects)]
    (simple / "index.html").write_text(_page("Simple index", root))
    return projects


def _metadata(whl: Path) -> bytes:
    """The wheel's METADATA, served beside it as `<wheel>.metadata` (PEP 658, as PyPI does), so an
    installer resolves without fetching every wheel whole."""
    with zipfile.ZipFile(whl) as z:
        return z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1))


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">"
            f"<title>{html.escape(title)}</title></head><body>\n<h1>{html.escape(title)}</h1>\n"
            + "\n".join(body) + "\n</body></html>\n")


def stream_tree(tree: Path, wheels: Path) -> Callable[[IO[bytes]], None]:
    """A feed for `Host.stream_in`: a tar stream of `tree` as www/, the wheels in www/packages/."""
    def feed(sink: IO[bytes]) -> None:
        with tarfile.open(fileobj=sink, mode="w|") as tar:
            tar.add(str(tree), arcname="www")
            for whl in sorted(wheels.glob("*.whl")):
                tar.add(str(whl), arcname=f"www/packages/{whl.name}")
    return feed


# On the host: start the server in the background (its own session, so the ssh command returns), then
# poll its port until it answers or 15 s have passed; prints the server's pid.
START = r'''
import os, socket, subprocess, sys, time
ip, port, base = sys.argv[1], int(sys.argv[2]), os.path.expanduser("~/" + sys.argv[3])
log = open(os.path.join(base, "access.log"), "ab")
proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", ip, "--directory",
                         os.path.join(base, "www")], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                        start_new_session=True)
with open(os.path.join(base, "pid"), "w") as f:
    f.write(str(proc.pid))
deadline = time.monotonic() + 15
while True:
    if proc.poll() is not None:
        sys.exit("http.server exited: " + open(os.path.join(base, "access.log")).read()[-500:])
    try:
        socket.create_connection((ip, port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit("http.server not answering on %s:%d after 15 s" % (ip, port))
        time.sleep(0.1)
print(proc.pid)
'''


@dataclass
class Index:
    alias: str
    url: str          # http://IP:PORT/simple/
    projects: dict[str, list[str]]

    def log(self) -> str:
        """The server's access log so far."""
        with connect(self.alias) as r:
            return r.run(f"cat ~/{DIR}/access.log", timeout=30).stdout


def url(host: dict, port: int = PORT) -> str:
    """The index URL `serve(host)` answers on (known before it runs: set the mirror meanwhile)."""
    return f"http://{host['ip']}:{port}/simple/"


@contextlib.contextmanager
def serve(host: dict, wheels: Path, port: int = PORT) -> Iterator[Index]:
    """Serve `wheels` as a PEP 503 index from the sandbox host `host` (a describe() dict) at `url(host)`."""
    alias = host["alias"]
    try:
        with connect(alias) as r, tempfile.TemporaryDirectory(prefix="migrate-pyindex-") as tmp:
            projects = build(wheels, Path(tmp) / "www")
            # one command: unpack the stream, then start the server and wait for its port
            r.stream_in(f"rm -rf ~/{DIR} && mkdir -m 700 ~/{DIR} && tar -xf - -C ~/{DIR} && "
                        f"python3 -c {shell.quote(START)} {host['ip']} {port} {DIR}",
                        stream_tree(Path(tmp) / "www", wheels), what="start the test index")
        yield Index(alias, url(host, port), projects)
    finally:
        with connect(alias) as r:
            r.run(f"test -f ~/{DIR}/pid && kill $(cat ~/{DIR}/pid); rm -rf ~/{DIR}", check=False, timeout=30)
