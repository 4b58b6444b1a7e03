"""Benchmark: `migrate push-image` against the plain pipelines people use, in one run, as ratios.

    python benchmarks/push_image.py            # ~0.5 GB image, about 4 minutes on 2 cores
    python benchmarks/push_image.py --quick    # 128 MB, about a minute
    python benchmarks/push_image.py --all      # + the bzip2 seed (~150 s alone) and gzip at 100 Mbit/s
    python benchmarks/push_image.py --repeat 3 # best of 3 for every row (this machine is shared and noisy)
    python benchmarks/push_image.py --image-store containerd   # the host: Debian 13, Docker 28.5, containerd store

It brings up a one-host sandbox (default `pimageb`: host `pimageb1`, on the subnet and port the
test suite reserves for that name), installs Docker (Debian's docker.io) and zstd there, builds a
local test image of three layers: half compressible (real files from /usr), half random, plus a
5 MB app layer, and a v2 that changes only the app layer. Every pipeline starts from a host without
the image (except the re-push rows) and is checked by comparing the remote image ID with the local
one. The 100 Mbit/s rows cap the wire with `pv -L` (plain pipe) and `--bwlimit 100mbit` (migrate).
Local images and the sandbox are removed at the end unless --keep.

With `--image-store containerd` the host is a Debian 13 sandbox host with Debian sid's docker.io
28.5 on the containerd image store (sandbox `pimagec`), installed by `migrate host-setup`; an image
there is checked by its layers and creation time (that store reports the manifest digest as ID).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import as_installed  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TAG = "migrate-pimage-bench/app"
MB = 1_000_000


def run(cmd: str | list[str], *, env: dict | None = None, check: bool = True, input: bytes | None = None) -> str:
    proc = subprocess.run(cmd, shell=isinstance(cmd, str), capture_output=True, env=env, input=input,
                          executable="/bin/bash" if isinstance(cmd, str) else None)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed: {cmd}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return proc.stdout.decode(errors="replace")


def sandbox_env(args: argparse.Namespace) -> dict[str, str]:
    """The environment that selects the benchmark's own sandbox (--sandbox, --subnet, --port)."""
    return dict(os.environ, MIGRATE_SANDBOX=args.sandbox, MIGRATE_SANDBOX_SUBNET=args.subnet,
                MIGRATE_SANDBOX_PORT=str(args.port), COLUMNS="200")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = sandbox_env(args)
        self.migrate = [sys.executable, "-m", "migrate"]
        self.host = f"{args.sandbox}1"
        self.container = f"migrate-{args.sandbox}1"
        self.work = Path(tempfile.mkdtemp(prefix="pimage-bench-"))
        self.ssh_config = self.work / "ssh_config"
        self.rows: list[tuple[str, float, int | None, str]] = []
        self.containerd = args.image_store == "containerd"

    # -- setup ------------------------------------------------------------------------------------
    def setup(self) -> None:
        print(f"[setup] sandbox {self.host}, image of ~{self.args.size} MB", file=sys.stderr)
        if self.containerd:
            run(self.migrate + ["sandbox", "up", "1", "--release", "trixie", "--docker-from", "sid",
                                "--image-store", "containerd"], env=self.env)
            run(self.migrate + ["host-setup", self.host, "--docker-source", "distro", "--no-nvidia"], env=self.env)
            self.in_host("command -v zstd >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zstd "
                         ">/dev/null 2>&1")
        else:
            run(self.migrate + ["sandbox", "up", "1"], env=self.env)
        self.ssh_config.write_text(run(self.migrate + ["sandbox", "ssh-config"], env=self.env))
        self.in_host("command -v docker >/dev/null || { apt-get update -qq >/dev/null && "
                     "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io zstd >/dev/null 2>&1; }; "
                     "usermod -aG docker alice; systemctl is-active -q docker || systemctl start docker")
        if self.containerd and "io.containerd.snapshotter" not in self.in_host(
                "docker info --format '{{json .DriverStatus}}'"):
            raise SystemExit("the benchmark host does not use the containerd image store")
        self.build_images()

    def in_host(self, script: str, check: bool = True) -> str:
        return run(["docker", "exec", self.container, "sh", "-c", script], check=check)

    def build_images(self) -> None:
        half = self.args.size * MB // 2
        root = self.work / "rootfs"
        (root / "bin").mkdir(parents=True)
        shutil.copy("/bin/busybox", root / "bin" / "busybox")
        os.symlink("busybox", root / "bin" / "sh")
        comp = root / "usr-data"
        comp.mkdir()
        written = 0
        sources = [p for d in ("/usr/lib/python3", "/usr/share/doc", "/usr/include", "/usr/share/perl",
                               "/usr/lib/python3.11") if Path(d).is_dir() for p in Path(d).rglob("*")
                   if p.is_file() and not p.is_symlink()]
        i = 0
        while written < half and sources:  # real files (text, code, binaries), cycled until half is full
            src = sources[i % len(sources)]
            i += 1
            try:
                data = src.read_bytes()
            except OSError:
                continue
            dest = comp / f"{i // 2000}" / f"{i}-{src.name}"
            dest.parent.mkdir(exist_ok=True)
            dest.write_bytes(data[: half - written])
            written += len(data[: half - written])
        tar = run(f"tar -C {root} -cf - . | docker import - {TAG}:base", check=True)
        del tar
        for name, size in (("random", half), ("app-v1", 5 * MB), ("app-v2", 5 * MB)):
            (self.work / name).mkdir()
            with open(self.work / name / "blob.bin", "wb") as fh:
                left = size
                while left:
                    n = min(left, 16 * MB)
                    fh.write(os.urandom(n))
                    left -= n
        ctx = self.work / "ctx"
        ctx.mkdir()
        shutil.move(str(self.work / "random" / "blob.bin"), ctx / "random.bin")
        for v in ("v1", "v2"):
            shutil.copy(self.work / f"app-{v}" / "blob.bin", ctx / f"app-{v}.bin")
        (ctx / "Dockerfile.mid").write_text(f"FROM {TAG}:base\nCOPY random.bin /data/random.bin\n")
        benv = dict(os.environ, DOCKER_BUILDKIT="0")
        run(["docker", "build", "-q", "-f", str(ctx / "Dockerfile.mid"), "-t", f"{TAG}:mid", str(ctx)], env=benv)
        for v in ("v1", "v2"):
            (ctx / f"Dockerfile.{v}").write_text(f"FROM {TAG}:mid\nCOPY app-{v}.bin /app/app.bin\n")
            run(["docker", "build", "-q", "-f", str(ctx / f"Dockerfile.{v}"), "-t", f"{TAG}:{v}", str(ctx)], env=benv)
        self.image_bytes = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", f"{TAG}:v1"]).strip())
        print(f"[setup] {TAG}:v1 is {self.image_bytes / MB:.0f} MB in 3 layers", file=sys.stderr)

    def cleanup(self) -> None:
        run(["docker", "image", "rm", "-f", f"{TAG}:v1", f"{TAG}:v2", f"{TAG}:mid", f"{TAG}:base"], check=False)
        if not self.args.keep:
            run(self.migrate + ["sandbox", "down"], env=self.env, check=False)
        shutil.rmtree(self.work, ignore_errors=True)

    # -- measuring --------------------------------------------------------------------------------
    def clear_remote(self) -> None:
        self.in_host(f"docker image rm -f {TAG}:v1 {TAG}:v2 >/dev/null 2>&1; "
                     "docker image ls -q migrate-partial | xargs -r docker image rm -f >/dev/null 2>&1; "
                     "docker image prune -f >/dev/null 2>&1; true")

    def check_remote(self, ref: str) -> None:
        # the containerd store reports the manifest digest as ID: compare layers and creation time there
        fmt = "{{.Created}} {{.RootFS.Layers}}" if self.containerd else "{{.Id}}"
        want = run(["docker", "image", "inspect", "--format", fmt, ref]).strip()
        got = self.in_host(f"docker image inspect --format '{fmt}' {ref}", check=False).strip()
        if got != want:
            raise SystemExit(f"remote image {ref} is {got or 'missing'}, expected {want}")

    def shell_pipeline(self, name: str, pipeline: str, ref: str = f"{TAG}:v1") -> None:
        ssh = f"ssh -F {self.ssh_config} {self.host}"
        cmd = "set -o pipefail; " + pipeline.format(img=ref, ssh=ssh)
        times = []
        for _ in range(self.args.repeat):
            self.clear_remote()
            t0 = time.monotonic()
            run(cmd)
            times.append(time.monotonic() - t0)
            self.check_remote(ref)
        seconds = min(times)
        self.rows.append((name, seconds, None, pipeline.format(img="IMG", ssh="ssh host")))
        print(f"  {name:<38} {seconds:7.2f} s", file=sys.stderr)

    def migrate_push(self, name: str, *extra: str, ref: str = f"{TAG}:v1", clear: bool = True,
                     before: str | None = None) -> float:
        times = []
        for _ in range(self.args.repeat):
            if clear:
                self.clear_remote()
            if before:  # bring the host to the starting state of this row (not timed)
                run(self.migrate + ["push-image", before, self.host], env=self.env)
            t0 = time.monotonic()
            out = run(self.migrate + ["push-image", ref, self.host, "--json", *extra], env=self.env)
            times.append(time.monotonic() - t0)
            result = json.loads(out)[0]
            self.check_remote(ref)
        seconds = min(times)
        note = f"{result['status']}; {result['detail']}"
        self.rows.append((name, seconds, result["bytes_sent"], note))
        print(f"  {name:<38} {seconds:7.2f} s  sent {result['bytes_sent'] / MB:8.1f} MB  {note}", file=sys.stderr)
        return seconds

    def run_all(self) -> None:
        pv = "pv -q | " if shutil.which("pv") else ""
        print("[run]", file=sys.stderr)
        self.shell_pipeline("seed: save | gzip | pv | ssh | load",
                            "docker save {img} | gzip | " + pv + "{ssh} 'docker load'")
        if self.args.all:
            self.shell_pipeline("seed: save | bzip2 | ssh | load", "docker save {img} | bzip2 | {ssh} 'docker load'")
        self.shell_pipeline("plain: save | ssh | load", "docker save {img} | {ssh} 'docker load'")
        self.migrate_push("migrate push-image (full)")
        self.migrate_push("migrate push-image --compress none", "--compress", "none")
        self.migrate_push("migrate push-image --no-direct-layers", "--no-direct-layers")
        self.migrate_push("migrate re-push unchanged", before=f"{TAG}:v1")
        self.migrate_push("migrate push v2 (one changed 5 MB layer)", ref=f"{TAG}:v2", before=f"{TAG}:v1")
        if not self.args.no_capped:
            if shutil.which("pv"):
                self.shell_pipeline("100 Mbit/s: save | pv -L | ssh | load",
                                    "docker save {img} | pv -q -L 12500000 | {ssh} 'docker load'")
                if self.args.all:
                    self.shell_pipeline("100 Mbit/s: save | gzip | pv -L | ssh | load",
                                        "docker save {img} | gzip | pv -q -L 12500000 | {ssh} 'docker load'")
            self.migrate_push("100 Mbit/s: migrate --bwlimit 100mbit", "--bwlimit", "100mbit")

    # -- report -----------------------------------------------------------------------------------
    def report(self) -> str:
        t = {name: s for name, s, _, _ in self.rows}
        full = t["migrate push-image (full)"]
        ends = ("laptop Docker 20.10 (overlay2), host Docker 28.5 on the containerd image store (Debian 13)"
                if self.containerd else "both ends Docker 20.10")
        lines = [f"Image: {self.image_bytes / MB:.0f} MB (3 layers: half real files from /usr, half random, "
                 f"5 MB app), sandbox host over loopback SSH, {ends}, 2 shared vCPUs; "
                 f"best of {self.args.repeat} run(s) per row.", "",
                 "| pipeline | seconds | × migrate full | bytes sent | notes |", "|---|---|---|---|---|"]
        for name, seconds, sent, note in self.rows:
            sent_text = "" if sent is None else f"{sent / MB:.1f} MB"
            cells = [name, f"{seconds:.2f}", f"{seconds / full:.2f}", sent_text, note]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        checks = []

        def target(label: str, ok: bool, value: str) -> None:
            checks.append(f"| {label} | {value} | {'met' if ok else 'NOT met'} |")

        gz = t["seed: save | gzip | pv | ssh | load"]
        target(">= 2.2x faster than the gzip seed", gz / full >= 2.2, f"{gz / full:.2f}x")
        plain = t["plain: save | ssh | load"]
        target("<= 1.1x the plain pipe", full / plain <= 1.1, f"{full / plain:.2f}x")
        unchanged = t["migrate re-push unchanged"]
        target("unchanged re-push < 1 s", unchanged < 1.0, f"{unchanged:.2f} s")
        changed = t["migrate push v2 (one changed 5 MB layer)"]
        target("changed-layer re-push >= 4x faster than full", full / changed >= 4, f"{full / changed:.2f}x")
        if "100 Mbit/s: migrate --bwlimit 100mbit" in t and "100 Mbit/s: save | pv -L | ssh | load" in t:
            capped = t["100 Mbit/s: save | pv -L | ssh | load"] / t["100 Mbit/s: migrate --bwlimit 100mbit"]
            target("100 Mbit/s: faster than the capped plain pipe", capped > 1, f"{capped:.2f}x")
        lines += ["", "| target | measured | |", "|---|---|---|", *checks]
        return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="image size in MB (default 512)")
    ap.add_argument("--quick", action="store_true", help="128 MB image")
    ap.add_argument("--all", action="store_true", help="add the slow rows: bzip2 seed, gzip at 100 Mbit/s")
    ap.add_argument("--repeat", type=int, default=1, help="runs per row; the best is reported (default 1)")
    ap.add_argument("--no-capped", action="store_true", help="skip the 100 Mbit/s rows")
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    ap.add_argument("--markdown", type=Path, help="also write the table to this file")
    ap.add_argument("--image-store", choices=("overlay2", "containerd"), default="overlay2",
                    help="the host's image store: overlay2 (Debian 12, Docker 20.10) or containerd (Debian 13, 28.5)")
    ap.add_argument("--sandbox", help="sandbox name (own subnet and port below; default pimageb, pimagec)")
    ap.add_argument("--subnet")
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it
    c8d = args.image_store == "containerd"
    args.sandbox = args.sandbox or ("pimagec" if c8d else "pimageb")
    args.subnet = args.subnet or ("172.31.242.0/24" if c8d else "172.31.208.0/24")
    args.port = args.port or (3400 if c8d else 2560)
    if args.quick:
        args.size = 128
    os.chdir(REPO)
    bench = Bench(args)
    try:
        bench.setup()
        bench.run_all()
        text = bench.report()
    finally:
        bench.cleanup()
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
