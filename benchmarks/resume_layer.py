"""Benchmark: Ctrl-C in the middle of one big layer, then the same push again: what is sent twice.

    python benchmarks/resume_layer.py              # 400 MiB single-layer image, Ctrl-C at ~67 %
    python benchmarks/resume_layer.py --size 1024 --at 0.5 --bwlimit 50M

It brings up a one-host sandbox (default `pimageb`, on the subnet and port the test suite reserves
for that name; reused when it is up), installs Docker (Debian's docker.io) there, and imports a local
image of one layer: busybox plus SIZE MiB of random data. Then, each from a host without the image:

1. `push-image --checkpoint 64M` (the default: the layer is staged, resumable inside it), interrupted
   with SIGINT (what Ctrl-C sends) once the host's staged file holds AT of the layer, then the same
   command again: the bytes the rerun sent, against what the host had not received plus 64 MiB.
2. The same with `--checkpoint 2G` (bigger than the layer: no staging, the behaviour before resume
   inside a layer): interrupted once docker load's temporary copy on the host holds AT, rerun.
3. Uninterrupted pushes, staged and not, for what staging costs in time: `--repeat` rounds (default
   3), interleaved, medians; `--before DIR` adds the staged push of another checkout's code.

Every push uses `--compress none` (bytes on the wire = archive bytes) and `--bwlimit` (default 100M)
so that the interrupt lands where it should on a fast loopback. Every final image is checked by its
ID and by running `sha256sum` of the data inside it. The local image is removed at the end; the
sandbox too unless --keep.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import as_installed, push_image  # noqa: E402
from benchmarks.push_image import run  # noqa: E402

TAG = "migrate-resume-bench/app:1"
MIB = 1 << 20
STAGE_DIR = "/home/alice/.migrate/image-partial"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


class Bench(push_image.Bench):
    """The sandbox, its host and the local work dir as benchmarks/push_image.py keeps them."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(argparse.Namespace(**vars(args), image_store="overlay2"))
        self.layer_bytes = 0
        self.data_sha = ""
        self.rows: list[tuple[str, str]] = []  # type: ignore[assignment]

    def setup(self) -> None:
        print(f"[setup] sandbox {self.host}, one layer of {self.args.size} MiB", file=sys.stderr)
        run(self.migrate + ["sandbox", "up", "1"], env=self.env)
        self.in_host("command -v docker >/dev/null || { apt-get update -qq >/dev/null && "
                     "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null 2>&1; }; "
                     "usermod -aG docker alice; systemctl is-active -q docker || systemctl start docker")
        root = self.work / "rootfs"
        (root / "bin").mkdir(parents=True)
        run(["cp", "/bin/busybox", str(root / "bin" / "busybox")])
        os.symlink("busybox", root / "bin" / "sha256sum")
        data = os.urandom(self.args.size * MIB)
        (root / "data.bin").write_bytes(data)
        self.data_sha = hashlib.sha256(data).hexdigest()
        del data
        layer = self.work / "layer.tar"
        run(["tar", "-C", str(root), "-cf", str(layer), "."])
        self.layer_bytes = layer.stat().st_size
        run(["docker", "import", str(layer), TAG])
        layer.unlink()
        (root / "data.bin").unlink()

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)
        run(["docker", "image", "rm", "-f", TAG], check=False)
        self.clear_remote()
        if not self.args.keep:
            run(self.migrate + ["sandbox", "down"], env=self.env, check=False)

    def clear_remote(self) -> None:
        self.in_host(f"docker image rm -f {TAG} >/dev/null 2>&1; rm -rf {STAGE_DIR}; true", check=False)

    def check_remote(self) -> None:
        local = run(["docker", "image", "inspect", "--format", "{{.Id}}", TAG]).strip()
        remote = self.in_host(f"docker image inspect --format '{{{{.Id}}}}' {TAG}").strip()
        if local != remote or self.data_sha not in self.in_host(f"docker run --rm {TAG} sha256sum /data.bin"):
            raise SystemExit(f"the pushed image is not the local one ({remote} vs {local})")
        if self.in_host(f"ls -A {STAGE_DIR} 2>/dev/null; true").strip():
            raise SystemExit("the staged archive was left on the host")

    def push(self, *extra: str, migrate: list[str] | None = None, env: dict | None = None) -> tuple[dict, float]:
        t0 = time.monotonic()
        out = run((migrate or self.migrate) + ["push-image", TAG, self.host, "--compress", "none", "--json", *extra],
                  env=env or self.env)
        seconds = time.monotonic() - t0
        [result] = json.loads(out)
        if result["status"] != "sent":
            raise SystemExit(f"push failed: {result}")
        return result, seconds

    def staged(self) -> tuple[int, int]:
        out = self.in_host(f"cd {STAGE_DIR} 2>/dev/null && for f in *.tar; do [ -f \"$f\" ] && "
                           "echo $(wc -c < \"$f\") $(cat \"$f.ok\" 2>/dev/null || echo 0); done", check=False).split()
        return (int(out[0]), int(out[1])) if len(out) == 2 else (0, 0)

    def load_tmp(self) -> int:
        """Bytes docker load has received so far (its temporary copy in the data-root's tmp dir)."""
        out = self.in_host("du -sb /var/lib/docker/tmp 2>/dev/null | cut -f1", check=False).strip()
        return int(out) if out.isdigit() else 0

    def interrupted(self, checkpoint: str) -> tuple[int, int]:
        """Start a push, SIGINT it at AT of the layer; (bytes the host had, bytes committed there)."""
        self.clear_remote()
        proc = subprocess.Popen(self.migrate + ["push-image", TAG, self.host, "--compress", "none",
                                                "--checkpoint", checkpoint, "--bwlimit", self.args.bwlimit],
                                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        at = self.args.at * self.layer_bytes
        staged = checkpoint == "64M"
        received = self.staged if staged else (lambda: (self.load_tmp(), 0))
        wait_for(lambda: proc.poll() is not None or received()[0] >= at, 600, "the interrupt point")
        if proc.poll() is not None:
            raise SystemExit(f"the push ended before the interrupt: {proc.stderr.read()}")
        before = received()
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
        print(f"[interrupted] {err.strip().splitlines()[-2:]}", file=sys.stderr)
        return self.staged() if staged else before

    def run_all(self) -> None:
        if not self.args.timing_only:
            self.interrupted_rows()
        self.timings()

    def interrupted_rows(self) -> None:
        mib = lambda n: f"{n / MIB:.1f} MiB"  # noqa: E731
        size, committed = self.interrupted("64M")
        r, seconds = self.push()
        self.check_remote()
        rest = self.layer_bytes - size
        bound = rest + 64 * MIB
        self.rows.append(("staged (`--checkpoint 64M`, the default)",
                          f"{mib(size)} ({size / self.layer_bytes:.0%}) | {mib(committed)} | {mib(r['bytes_sent'])} | "
                          f"{mib(rest)} + 64 MiB = {mib(bound)} | {'yes' if r['bytes_sent'] <= bound else 'NO'} | "
                          f"{seconds:.1f} s"))
        size, _ = self.interrupted("2G")
        r, seconds = self.push("--checkpoint", "2G")
        self.check_remote()
        rest = self.layer_bytes - size
        self.rows.append(("not staged (`--checkpoint 2G`: as before)",
                          f"{mib(size)} ({size / self.layer_bytes:.0%}) | 0 | "
                          f"{mib(r['bytes_sent'])} | "
                          f"{mib(rest)} + 64 MiB = {mib(rest + 64 * MIB)} | "
                          f"{'yes' if r['bytes_sent'] <= rest + 64 * MIB else 'NO'} | {seconds:.1f} s"))

    def timings(self) -> None:
        """Uninterrupted pushes, interleaved: the median of --repeat each, against the unstaged push."""
        variants = [("staged", self.migrate, ()),
                    ("not staged (`--checkpoint 2G`)", self.migrate, ("--checkpoint", "2G"))]
        if self.args.before:  # the same staged push with another checkout's code (PYTHONPATH, -P: not this one)
            variants.insert(1, (f"staged, {self.args.before_label}", [sys.executable, "-P", "-m", "migrate"], ()))
        times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
        for n in range(self.args.repeat):  # interleaved, the order rotated each round
            for label, migrate, extra in variants[n % len(variants):] + variants[:n % len(variants)]:
                self.clear_remote()
                env = dict(self.env, PYTHONPATH=self.args.before) if migrate is not self.migrate else None
                _, seconds = self.push(*extra, migrate=migrate, env=env)
                self.check_remote()
                times[label].append(seconds)
                print(f"[timing] {label}: {seconds:.1f} s", file=sys.stderr)
        base = statistics.median(times[variants[-1][0]])
        for label, values in times.items():
            med = statistics.median(values)
            self.rows.append((f"whole push, {label}", f"{med:.1f} s ({med / base:.2f}x; "
                              + ", ".join(f"{v:.1f}" for v in values) + ")"))

    def report(self) -> str:
        lines = [f"One layer of {self.layer_bytes / MIB:.1f} MiB (layer tar), Ctrl-C at {self.args.at:.0%}, "
                 f"`--compress none --bwlimit {self.args.bwlimit}` for the interrupted push, rerun unlimited:", "",
                 "| run | the host had | committed | rerun sent | rest + one checkpoint | within | rerun time |",
                 "|---|---|---|---|---|---|---|"]
        lines += [f"| {name} | {cells} |" for name, cells in self.rows if "|" in cells]
        lines += ["", f"| uninterrupted push (median of {self.args.repeat}, interleaved) | "
                  "time (vs not staged; each run) |", "|---|---|"]
        lines += [f"| {name} | {cells} |" for name, cells in self.rows if "|" not in cells]
        return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=400, help="random data in the layer, MiB (default 400)")
    ap.add_argument("--at", type=float, default=0.67, help="interrupt at this fraction of the layer (default 0.67)")
    ap.add_argument("--bwlimit", default="100M", help="--bwlimit of the interrupted push (default 100M)")
    ap.add_argument("--repeat", type=int, default=3, help="uninterrupted pushes per row, interleaved, median "
                    "reported (default 3)")
    ap.add_argument("--timing-only", action="store_true", help="only the uninterrupted pushes")
    ap.add_argument("--before", help="a checkout of another version (git archive): its staged push joins the timings")
    ap.add_argument("--before-label", default="before", help="how the table names --before's row")
    ap.add_argument("--keep", action="store_true", help="leave the sandbox up afterwards")
    ap.add_argument("--sandbox", default="pimageb", help="sandbox name (default pimageb)")
    ap.add_argument("--subnet", default="172.31.208.0/24")
    ap.add_argument("--port", type=int, default=2560)
    args = ap.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it
    os.chdir(REPO)
    bench = Bench(args)
    try:
        bench.setup()
        bench.run_all()
    finally:
        bench.cleanup()
    print(bench.report())


if __name__ == "__main__":
    main()
