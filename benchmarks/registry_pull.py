"""Benchmark: `push-image --via auto` (the host pulls the base from a registry) vs `--via push`, laptop
side capped to 100 Mbit/s, in one command:

    python benchmarks/registry_pull.py               # ~1 GB image, 900 MB base in the registry (~6 min here)
    python benchmarks/registry_pull.py --base-mb 200 --top-mb 20   # quicker

It brings up the two-host `registry` sandbox (the slot the test suite reserves; MIGRATE_TEST_PREFIX /
MIGRATE_TEST_SLOT_BASE move it like the tests): Debian's docker-registry with TLS and htpasswd auth on
one host, Debian's docker.io on the other (the same setup as tests/integration/test_push_image_registry.py).
The base (three layers of random, incompressible bytes) is pushed into the registry from the local
engine and pulled back, so it carries a RepoDigest; the app image adds one more random layer on top.
Each row starts from a host without either image and is checked by the remote image ID. Only the SSH
stream is capped (`--bwlimit 100mbit`): the host reaches the registry over the sandbox bridge, as a
datacenter host reaches NGC. The sandbox and local images are removed at the end unless --keep.
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks import as_installed  # noqa: E402
from tests.integration.conftest import sandbox_env  # noqa: E402
from tests.integration.test_push_image_registry import push_to_registry, start_registry, stop_registry  # noqa: E402

BASE0 = "migrate-regbench/base0:1"
BASE = "migrate-regbench/base:1"
APP = "migrate-regbench/app:1"
MB = 1_000_000


def sh(*argv: str, env: dict | None = None, input: bytes | None = None) -> str:
    proc = subprocess.run(argv, capture_output=True, env=env, input=input)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {argv}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return proc.stdout.decode(errors="replace")


def random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // (8 * MB)):
            f.write(os.urandom(8 * MB))
        f.write(os.urandom(size % (8 * MB)))


def build(ctx: Path, tag: str) -> None:
    subprocess.run(["docker", "build", "-q", "-t", tag, str(ctx)], check=True, capture_output=True,
                   env=dict(os.environ, DOCKER_BUILDKIT="0"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-mb", type=int, default=900, help="base image size in the registry (3 random layers)")
    ap.add_argument("--top-mb", type=int, default=100, help="the app layer on top (random)")
    ap.add_argument("--bwlimit", default="100mbit")
    ap.add_argument("--keep", action="store_true", help="keep the sandbox and the local images")
    args = ap.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it
    env = dict(os.environ, **sandbox_env("registry"), COLUMNS="200")
    migrate = [sys.executable, "-m", "migrate"]
    work = Path(tempfile.mkdtemp(prefix="regbench-"))
    t0 = time.monotonic()
    print(f"[setup] registry sandbox {env['MIGRATE_SANDBOX']}, base {args.base_mb} MB + app {args.top_mb} MB",
          file=sys.stderr)
    sh(*migrate, "sandbox", "up", "2", env=env)
    from migrate.sandbox.manager import Sandbox, SandboxSettings

    settings = SandboxSettings(name=env["MIGRATE_SANDBOX"], subnet=env["MIGRATE_SANDBOX_SUBNET"],
                               base_port=int(env["MIGRATE_SANDBOX_PORT"]))
    reg_host, target = [h for h in Sandbox(settings).describe() if h["state"] == "running"][:2]
    facts = start_registry(reg_host, target, work)
    remote_base = f"{facts['name']}/bench/base:1"
    rows: list[tuple[str, float, int, str]] = []
    try:
        part = args.base_mb * MB // 3
        ctx = work / "base"
        ctx.mkdir()
        random_file(ctx / "l0.bin", part)
        sh("docker", "import", "--change", 'CMD ["/bin/sh"]', "-", BASE0,
           input=subprocess.run(["tar", "-C", str(ctx), "-cf", "-", "l0.bin"], capture_output=True, check=True).stdout)
        (ctx / "l0.bin").unlink()
        for i in (1, 2):
            random_file(ctx / f"l{i}.bin", part)
        (ctx / "Dockerfile").write_text(f"FROM {BASE0}\nCOPY l1.bin /l1.bin\nCOPY l2.bin /l2.bin\n")
        build(ctx, BASE)
        print(f"[setup] docker push of the base into the registry ({time.monotonic() - t0:.0f}s so far)",
              file=sys.stderr)
        push_to_registry(facts, BASE, remote_base, work)
        app = work / "app"
        app.mkdir()
        random_file(app / "top.bin", args.top_mb * MB)
        (app / "Dockerfile").write_text(f"FROM {remote_base}\nCOPY top.bin /top.bin\n")
        build(app, APP)
        local_id = sh("docker", "image", "inspect", "--format", "{{.Id}}", APP).strip()
        print(f"[setup] done in {time.monotonic() - t0:.0f}s", file=sys.stderr)
        run_env = dict(env, DOCKER_CONFIG=str(facts["good"]))
        container = target["container"]
        for via in ("push", "auto"):
            sh("docker", "exec", container, "sh", "-c",
               f"docker image rm -f {APP} >/dev/null 2>&1; docker image ls -q | xargs -r docker image rm -f "
               ">/dev/null 2>&1; docker image prune -f >/dev/null; true")
            t = time.monotonic()
            out = sh(*migrate, "push-image", APP, target["alias"], "--via", via, "--bwlimit", args.bwlimit, "--json",
                     env=run_env)
            seconds = time.monotonic() - t
            [r] = json.loads(out)
            got = sh("docker", "exec", container, "docker", "image", "inspect", "--format", "{{.Id}}", APP).strip()
            if got != local_id or r["status"] != "sent":
                raise SystemExit(f"--via {via}: wrong result {r} / {got}")
            rows.append((f"--via {via}", seconds, r["bytes_sent"], r.get("via_reason", "")))
            print(f"[run] --via {via}: {seconds:.1f}s, {r['bytes_sent'] / MB:.0f} MB over SSH ({r.get('via')})",
                  file=sys.stderr)
    finally:
        if not args.keep:
            subprocess.run(["docker", "image", "rm", "-f", APP, remote_base, BASE, BASE0], capture_output=True)
            stop_registry(facts)
            subprocess.run([*migrate, "sandbox", "down"], env=env, capture_output=True)
            shutil.rmtree(work, ignore_errors=True)  # ~1 GB of random layer files
    print(f"\n## push-image --via, {args.base_mb} MB base in the registry + {args.top_mb} MB app layer, "
          f"SSH capped to {args.bwlimit}\n")
    print("| run | time | over SSH | decision |")
    print("|---|---|---|---|")
    for name, seconds, sent, why in rows:
        print(f"| {name} | {seconds:.1f} s | {sent / MB:.0f} MB | {why} |")
    if len(rows) == 2:
        print(f"\n--via auto is {rows[0][1] / rows[1][1]:.1f}x faster (target: >= 5x)")


if __name__ == "__main__":
    main()
