"""Benchmark: one image to three hosts behind a slow link, fed host to host vs one copy each.

    python benchmarks/fanout.py                 # 1024 MB image, 1 GiB dataset, 3 hosts, --link 100mbit/20ms
    python benchmarks/fanout.py --size 512 --data-size 512   # smaller (a loaded 2-core machine)
    python benchmarks/fanout.py --direct        # + the --no-relay rows (three copies over the link)
    python benchmarks/fanout.py --rows image --no-plain   # the migrate rows again (repeats)
    python benchmarks/fanout.py --sandbox fansb --subnet 172.29.1.0/24 --port 5100 --keep

It brings up a three-host sandbox (default `fanoutb`) with `--link RATE/DELAY` (only this machine's
traffic to the hosts is shaped; host to host stays on the Docker network), installs Docker
(Debian's docker.io) where missing, builds a local image of random bytes in two layers, then
measures, each from hosts without the image:

  one host           migrate push-image IMG -H h1
  3 hosts, relay     migrate push-image IMG -H h1 -H h2 -H h3 (h1 gets it, feeds h2 and h3)
  3 hosts, direct    the same with --no-relay (three copies over the link, in parallel; --direct)
  3 hosts, plain     docker save IMG | ssh h docker load, to each host in parallel
  data, one host     migrate push-data DIR h1:bench-data (8 random files, --data-size MiB in all)
  data, 3 hosts      migrate push-data DIR h1:bench-data -H h2 -H h3 (h1 feeds h2 and h3)
  data, direct       the same with --no-relay (--direct)

and checks every host's image ID against the local one (the dataset: its size in bytes on every
host). Prints Markdown tables: seconds, ratio to one host, bytes that crossed the link (migrate's
counters; the plain row: image x 3).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import as_installed  # noqa: E402
from benchmarks.push_image import MB, run, sandbox_env  # noqa: E402  (the one runner of local commands)

TAG = "migrate-fanout-bench/app:1"


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = sandbox_env(args)
        self.migrate = [sys.executable, "-m", "migrate"]
        self.hosts = [f"{args.sandbox}{i}" for i in (1, 2, 3)]
        self.work = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
        self.rows: list[tuple[str, float, int]] = []
        self.data_rows: list[tuple[str, float, int]] = []

    def in_host(self, host: str, script: str, check: bool = True) -> str:
        return run(["docker", "exec", f"migrate-{host}", "sh", "-c", script], check=check)

    def setup(self) -> None:
        print(f"[setup] sandbox {self.args.sandbox} x3, --link {self.args.link}, image ~{self.args.size} MB",
              file=sys.stderr)
        run(self.migrate + ["sandbox", "up", "3", "--link", self.args.link], env=self.env)
        (self.work / "ssh_config").write_text(run(self.migrate + ["sandbox", "ssh-config"], env=self.env))
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda h: self.in_host(h, (
                "command -v docker >/dev/null || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive "
                "apt-get install -y -qq --no-install-recommends docker.io >/dev/null 2>&1; }; "
                "usermod -aG docker alice; systemctl is-active -q docker || systemctl start docker")), self.hosts))
        self.image_bytes = 0
        if "image" in self.args.rows:
            self.build_image()
        data = self.work / "data"
        data.mkdir()
        for i in range(8):
            with open(data / f"part{i}.bin", "wb") as fh:
                for left in range(self.args.data_size * (1 << 20) // 8, 0, -16 * MB):
                    fh.write(os.urandom(min(left, 16 * MB)))
        self.data_bytes = sum(f.stat().st_size for f in data.iterdir())

    def build_image(self) -> None:
        ctx = self.work / "ctx"
        ctx.mkdir()
        for name, size in (("a.bin", self.args.size * MB * 3 // 4), ("b.bin", self.args.size * MB // 4)):
            with open(ctx / name, "wb") as fh:
                for left in range(size, 0, -16 * MB):
                    fh.write(os.urandom(min(left, 16 * MB)))
        (ctx / "Dockerfile").write_text("FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n")
        run(["docker", "build", "-q", "-t", TAG, str(ctx)], env=dict(os.environ, DOCKER_BUILDKIT="0"))
        for f in ctx.glob("*.bin"):
            f.unlink()
        self.image_id = run(["docker", "image", "inspect", "--format", "{{.Id}}", TAG]).strip()
        self.image_bytes = int(run(["docker", "image", "inspect", "--format", "{{.Size}}", TAG]).strip())

    def clear(self) -> None:
        for h in self.hosts:
            self.in_host(h, f"docker image rm -f {TAG} >/dev/null 2>&1; "
                            "docker image ls -q migrate-partial | xargs -r docker image rm -f >/dev/null 2>&1; true")

    def check(self, hosts: list[str]) -> None:
        for h in hosts:
            got = self.in_host(h, f"docker image inspect --format '{{{{.Id}}}}' {TAG}").strip()
            if got != self.image_id:
                raise SystemExit(f"{h}: image {got or 'missing'}, expected {self.image_id}")

    def push(self, label: str, hosts: list[str], *extra: str) -> None:
        self.clear()
        t0 = time.monotonic()
        out = run(self.migrate + ["push-image", TAG, *(a for h in hosts for a in ("-H", h)), "--json", *extra],
                  env=self.env)
        seconds = time.monotonic() - t0
        self.check(hosts)
        results = json.loads(out)
        link = sum(r["bytes_sent"] for r in results)
        fed = ", ".join(f"{r['host']}<-{r['fed_via']}" for r in results)
        print(f"[{label}] {seconds:.1f} s, {link / MB:.0f} MB over the link ({fed})", file=sys.stderr)
        self.rows.append((label, seconds, link))

    def plain(self) -> None:
        self.clear()
        cfg = self.work / "ssh_config"
        t0 = time.monotonic()
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(lambda h: run(f"docker save {TAG} | ssh -F {cfg} {h} docker load"), self.hosts))
        seconds = time.monotonic() - t0
        self.check(self.hosts)
        print(f"[plain] {seconds:.1f} s", file=sys.stderr)
        self.rows.append(("3 hosts: `docker save | ssh | docker load` each, in parallel", seconds,
                          3 * self.image_bytes))

    def push_data(self, label: str, hosts: list[str], *extra: str) -> None:
        for h in self.hosts:
            self.in_host(h, "rm -rf /home/alice/bench-data")
        t0 = time.monotonic()
        out = run(self.migrate + ["push-data", str(self.work / "data"), f"{hosts[0]}:bench-data",
                                  *(a for h in hosts[1:] for a in ("-H", h)), "--json", *extra], env=self.env)
        seconds = time.monotonic() - t0
        for h in hosts:
            got = int(self.in_host(h, "du -sb --apparent-size /home/alice/bench-data/*.bin | "
                                      "awk '{s += $1} END {print s}'").strip() or 0)
            if got != self.data_bytes:
                raise SystemExit(f"{h}: dataset {got} bytes, expected {self.data_bytes}")
        results = json.loads(out)
        link = sum(r["wire_bytes"] for r in results)
        fed = ", ".join(f"{r['host']}<-{r['fed_via']}" for r in results)
        print(f"[{label}] {seconds:.1f} s, {link / MB:.0f} MB over the link ({fed})", file=sys.stderr)
        self.data_rows.append((label, seconds, link))

    def report(self) -> None:
        print(f"\n--link {self.args.link}, 3 sandbox hosts; image {self.image_bytes / MB:.0f} MB (2 layers, "
              f"random bytes), dataset {self.data_bytes / (1 << 20):.0f} MiB (8 random files)\n")
        for rows in (self.rows, self.data_rows):
            if not rows:
                continue
            one = rows[0][1]
            print("| pipeline | seconds | vs one host | bytes over the link |")
            print("|---|---:|---:|---:|")
            for label, seconds, link in rows:
                print(f"| {label} | {seconds:.1f} | {seconds / one:.2f}x | {link / MB:.0f} MB |")
            print()

    def cleanup(self) -> None:
        run(["docker", "image", "rm", "-f", TAG], check=False)
        shutil.rmtree(self.work, ignore_errors=True)
        for h in self.hosts:
            self.in_host(h, "rm -rf /home/alice/bench-data", check=False)
        if not self.args.keep:
            run(self.migrate + ["sandbox", "down"], env=self.env, check=False)
        else:
            self.clear()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024, help="image size in MB (default 1024)")
    p.add_argument("--data-size", type=int, default=1024, help="dataset size in MiB (default 1024; 0: no data rows)")
    p.add_argument("--rows", default="image,data", help="which tables: image, data or both (default)")
    p.add_argument("--direct", action="store_true", help="also measure --no-relay (three copies over the link)")
    p.add_argument("--link", default="100mbit/20ms", help="the sandbox link (default 100mbit/20ms)")
    p.add_argument("--sandbox", default="fanoutb")
    p.add_argument("--subnet", default="172.31.250.0/24")
    p.add_argument("--port", type=int, default=3300)
    p.add_argument("--keep", action="store_true", help="leave the sandbox up (its link too)")
    p.add_argument("--no-plain", action="store_true",
                   help="leave out the plain `docker save | ssh | docker load` row (4-5 minutes here): for repeats")
    args = p.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it
    bench = Bench(args)
    try:
        bench.setup()
        if "image" in args.rows:
            bench.push("one host: migrate push-image", bench.hosts[:1])
            bench.push("3 hosts: migrate push-image (h1 feeds h2, h3)", bench.hosts)
            if args.direct:
                bench.push("3 hosts: migrate push-image --no-relay", bench.hosts, "--no-relay")
            if not args.no_plain:
                bench.plain()
        if args.data_size and "data" in args.rows:
            bench.push_data("one host: migrate push-data", bench.hosts[:1])
            bench.push_data("3 hosts: migrate push-data (h1 feeds h2, h3)", bench.hosts)
            if args.direct:
                bench.push_data("3 hosts: migrate push-data --no-relay", bench.hosts, "--no-relay")
        bench.report()
    finally:
        bench.cleanup()


if __name__ == "__main__":
    main()
