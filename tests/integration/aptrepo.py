"""A local, signed apt repository served to the sandbox: stand-ins for Docker's and NVIDIA's repos.

Built from scratch in a temp dir, with a throwaway gpg key:
- `docker/linux/debian/`  Docker's layout (dists/<suite>/stable/binary-<arch>, pool/, gpg): stand-in
  docker-ce, docker-ce-cli, containerd.io, docker-buildx-plugin, docker-compose-plugin. Debian's
  docker.io declares `Conflicts: docker-ce`, so the stand-in `docker-ce` cannot depend on it: it is
  Debian's real docker.io .deb repackaged under the name docker-ce (same files, maintainer scripts
  and dependencies, `Conflicts: docker.io`), so the engine that runs is real.
- `nvidia/stable/deb/<arch>/` NVIDIA's flat layout (and `nvidia/gpgkey`): a stand-in
  nvidia-container-toolkit whose `nvidia-container-runtime` execs runc and whose
  `nvidia-container-runtime-hook` does nothing (there is no GPU here). Clearly test doubles.
- `mirror/docker-ce` and `mirror/libnvidia-container`: the same trees under mirror-style paths, so a
  test can tell which URL apt really used (the server records every path it served).

Served with http.server on the sandbox network's gateway address (reachable from the hosts only).
"""

from __future__ import annotations

import email.utils
import functools
import gzip
import hashlib
import http.server
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

VERSION = "99.0.0~migrate.test"
SUITE = "bookworm"
ARCH = "amd64"

RUNTIME = "#!/bin/sh\n# migrate test double: an 'nvidia' OCI runtime that is plain runc (no GPU)\nexec runc \"$@\"\n"
HOOK = "#!/bin/sh\n# migrate test double: prestart hook that does nothing (no GPU)\ncat >/dev/null\nexit 0\n"

DOCKER_PACKAGES = {
    "docker-ce-cli": {},
    "containerd.io": {},
    "docker-buildx-plugin": {},
    "docker-compose-plugin": {},
}
NVIDIA_PACKAGES = {
    "nvidia-container-toolkit-base": {},
    "nvidia-container-toolkit": {"Depends": f"nvidia-container-toolkit-base (= {VERSION})",
                                 "files": {"usr/bin/nvidia-container-runtime": RUNTIME,
                                           "usr/bin/nvidia-container-runtime-hook": HOOK}},
}


def _run(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, capture_output=True, text=True, **kw)


def build_deb(out_dir: Path, name: str, spec: dict, work: Path) -> Path:
    """A tiny real .deb built with dpkg-deb."""
    root = work / f"pkg-{name}"
    (root / "DEBIAN").mkdir(parents=True)
    doc = root / "usr/share/doc" / name
    doc.mkdir(parents=True)
    (doc / "README.migrate-test").write_text(f"{name}: a migrate test double, not the real package\n")
    for rel, content in spec.get("files", {}).items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(content)
        p.chmod(0o755)
    control = [f"Package: {name}", f"Version: {VERSION}", f"Architecture: {ARCH}",
               "Maintainer: migrate tests <t@invalid>", "Section: admin", "Priority: optional"]
    if spec.get("Depends"):
        control.append(f"Depends: {spec['Depends']}")
    control.append(f"Description: migrate test double for {name}\n stand-in package served by the test suite")
    (root / "DEBIAN/control").write_text("\n".join(control) + "\n")
    out = out_dir / f"{name}_{VERSION}_{ARCH}.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(out)])
    return out


def repackage_as_docker_ce(docker_io_deb: Path, out_dir: Path, work: Path) -> Path:
    """Debian's docker.io .deb under the name docker-ce (conflicting with docker.io, like the real one)."""
    root = work / "pkg-docker-ce"
    _run(["dpkg-deb", "-R", str(docker_io_deb), str(root)])
    control = root / "DEBIAN" / "control"
    fields = []
    for line in control.read_text().splitlines():
        if line.startswith("Package:"):
            line = "Package: docker-ce"
        elif line.startswith("Version:"):
            line = f"Version: {VERSION}"
        elif line.startswith(("Conflicts:", "Breaks:", "Replaces:", "Provides:")):
            continue
        fields.append(line)
    fields.insert(2, "Conflicts: docker.io")
    control.write_text("\n".join(fields) + "\n")
    out = out_dir / f"docker-ce_{VERSION}_{ARCH}.deb"
    _run(["dpkg-deb", "-Znone", "--build", str(root), str(out)])  # only crosses the local bridge
    shutil.rmtree(root)
    return out


def control_of(deb: Path) -> str:
    """The control stanza of a .deb (dpkg-deb -f)."""
    return _run(["dpkg-deb", "-f", str(deb)]).stdout.strip()


def packages_index(debs: list[Path], base: Path) -> str:
    """A Packages index for `debs`, with Filename relative to `base`."""
    stanzas = []
    for deb in debs:
        data = deb.read_bytes()
        rel = os.path.relpath(deb, base)
        stanzas.append(control_of(deb) + f"\nFilename: {rel if '/' in rel else './' + rel}\nSize: {len(data)}\n"
                       f"SHA256: {hashlib.sha256(data).hexdigest()}")
    return "\n\n".join(stanzas) + "\n"


def release_file(base: Path, files: list[str], *, suite: str | None, components: str | None) -> str:
    lines = ["Origin: migrate-test", "Label: migrate-test"]
    if suite:
        lines += [f"Suite: {suite}", f"Codename: {suite}"]
    lines += [f"Date: {email.utils.formatdate(usegmt=True)}", f"Architectures: {ARCH}"]
    if components:
        lines.append(f"Components: {components}")
    lines.append("SHA256:")
    for rel in files:
        data = (base / rel).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {rel}")
    return "\n".join(lines) + "\n"


class Gpg:
    """A throwaway signing key in its own GNUPGHOME."""

    def __init__(self, home: Path) -> None:
        self.home = home
        home.mkdir(mode=0o700)
        self._gpg("--quick-gen-key", "migrate test repo <repo@migrate.invalid>", "ed25519", "sign", "1d")
        self.armored_key = self._gpg("--armor", "--export").stdout

    def _gpg(self, *args: str) -> subprocess.CompletedProcess:
        return _run(["gpg", "--homedir", str(self.home), "--batch", "--pinentry-mode", "loopback",
                     "--passphrase", "", *args])

    def sign(self, release: Path) -> None:
        self._gpg("--yes", "--digest-algo", "SHA256", "--clearsign", "-o", str(release.parent / "InRelease"),
                  str(release))
        self._gpg("--yes", "--digest-algo", "SHA256", "-abs", "-o", str(release.parent / "Release.gpg"), str(release))

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "gpg-agent"], capture_output=True)


class _Handler(http.server.SimpleHTTPRequestHandler):
    served: list[str]

    def log_message(self, *args) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self.served.append(self.path)
        super().do_GET()


class SignedRepo:
    """Build the trees, sign them, serve them; `url` is the base every option points at."""

    def __init__(self, docker_io_deb: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="migrate-aptrepo-"))
        self.root = self.dir / "www"
        self.root.mkdir()
        self.gpg = Gpg(self.dir / "gnupg")
        work = self.dir / "build"
        work.mkdir()
        # Docker's layout
        docker = self.root / "docker" / "linux" / "debian"
        pool = docker / "pool" / "stable"
        pool.mkdir(parents=True)
        debs = [build_deb(pool, n, s, work) for n, s in DOCKER_PACKAGES.items()]
        debs.append(repackage_as_docker_ce(docker_io_deb, pool, work))
        dist = docker / "dists" / SUITE
        bin_dir = dist / "stable" / f"binary-{ARCH}"
        bin_dir.mkdir(parents=True)
        self._write_index(bin_dir, packages_index(debs, docker))
        rel = dist / "Release"
        rel.write_text(release_file(dist, [f"stable/binary-{ARCH}/Packages", f"stable/binary-{ARCH}/Packages.gz"],
                                    suite=SUITE, components="stable"))
        self.gpg.sign(rel)
        (docker / "gpg").write_text(self.gpg.armored_key)
        # NVIDIA's flat layout
        nvidia = self.root / "nvidia"
        flat = nvidia / "stable" / "deb" / ARCH
        flat.mkdir(parents=True)
        ndebs = [build_deb(flat, n, s, work) for n, s in NVIDIA_PACKAGES.items()]
        self._write_index(flat, packages_index(ndebs, flat))
        rel = flat / "Release"
        rel.write_text(release_file(flat, ["Packages", "Packages.gz"], suite=None, components=None))
        self.gpg.sign(rel)
        (nvidia / "gpgkey").write_text(self.gpg.armored_key)
        # mirror paths: same content, other URLs
        (self.root / "mirror").mkdir()
        shutil.copytree(self.root / "docker", self.root / "mirror" / "docker-ce")
        shutil.copytree(nvidia, self.root / "mirror" / "libnvidia-container")
        shutil.rmtree(work)
        self.gpg.close()
        self.served: list[str] = []
        self._servers: list[http.server.ThreadingHTTPServer] = []

    @staticmethod
    def _write_index(directory: Path, text: str) -> None:
        (directory / "Packages").write_text(text)
        with gzip.open(directory / "Packages.gz", "wt") as fh:
            fh.write(text)

    def serve(self, bind_ip: str) -> str:
        """Serve the trees on bind_ip (a sandbox network's gateway); returns the base URL."""
        handler = type("Handler", (_Handler,), {"served": self.served})
        server = http.server.ThreadingHTTPServer((bind_ip, 0), functools.partial(handler, directory=str(self.root)))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return f"http://{bind_ip}:{server.server_address[1]}"

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        shutil.rmtree(self.dir, ignore_errors=True)
