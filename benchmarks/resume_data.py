"""Benchmark: push-data interrupted in the middle of one big file, then the same command: what is sent twice.

    python benchmarks/resume_data.py                  # one 2 GiB file, Ctrl-C at ~67 %
    python benchmarks/resume_data.py --size 512 --at 0.5

Needs the shared sandbox up (`migrate sandbox up 2`, MIGRATE_SANDBOX* pick it; the host is
`<sandbox>1`). It writes SIZE MiB of random data locally, starts `migrate push-data` of it (with
`--bwlimit`, so that the interrupt lands where it should on a fast loopback), sends SIGINT (what
Ctrl-C sends) once rsync's temporary file on the host holds AT of the file, and runs the same
command again with `--json`: `wire_bytes` is rsync's "Total bytes sent" of the rerun, compared with
what the host had not received plus one rsync block. rsync keeps the unfinished file in
`DEST/.migrate-partial/` (`--partial-dir`) and the rerun uses it as the basis of its delta transfer.
The result is checked with sha256sum on the host; everything is removed at the end.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import as_installed  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MIB = 1 << 20
DEST = "/home/alice/resume-bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="the file, MiB (default 2048)")
    ap.add_argument("--at", type=float, default=0.67, help="interrupt at this fraction (default 0.67)")
    ap.add_argument("--bwlimit", default="100M", help="--bwlimit of the interrupted push (default 100M)")
    args = ap.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it
    sandbox = os.environ.get("MIGRATE_SANDBOX", "sandbox")
    host, container = f"{sandbox}1", f"migrate-{sandbox}1"
    env = dict(os.environ, COLUMNS="200")
    migrate = [sys.executable, "-m", "migrate", "push-data"]
    work = Path(tempfile.mkdtemp(prefix="resume-data-"))

    def in_host(script: str) -> str:
        return subprocess.run(["docker", "exec", container, "sh", "-c", script], capture_output=True,
                              text=True).stdout

    def received() -> int:  # rsync's temporary file while it runs
        out = in_host(f"find {DEST} -name '.big.bin.*' -printf '%s\\n' 2>/dev/null | sort -n | tail -n 1")
        return int(out.strip() or 0)

    try:
        src = work / "ds"
        src.mkdir()
        digest = hashlib.sha256()
        with open(src / "big.bin", "wb") as fh:
            for _ in range(args.size):
                block = os.urandom(MIB)
                digest.update(block)
                fh.write(block)
        total = args.size * MIB
        in_host(f"rm -rf {DEST}")
        proc = subprocess.Popen(migrate + [str(src), f"{host}:{DEST}", "--bwlimit", args.bwlimit], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO)
        deadline = time.monotonic() + 900
        while proc.poll() is None and received() < args.at * total:
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for the interrupt point")
            time.sleep(0.1)
        if proc.poll() is not None:
            raise SystemExit(f"push-data ended before the interrupt: {proc.stderr.read()}")
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1]
        kept = int(in_host(f"stat -c %s {DEST}/.migrate-partial/big.bin 2>/dev/null").strip() or 0)
        print(f"[interrupted] exit {proc.returncode}; {DEST}/.migrate-partial/big.bin keeps {kept} bytes; "
              f"{err.strip().splitlines()[-1:]}", file=sys.stderr)
        t0 = time.monotonic()
        res = subprocess.run(migrate + [str(src), f"{host}:{DEST}", "--json"], env=env, capture_output=True,
                             text=True, cwd=REPO)
        seconds = time.monotonic() - t0
        if res.returncode != 0:
            raise SystemExit(f"the rerun failed: {res.stderr}")
        [result] = json.loads(res.stdout)
        remote_sha = in_host(f"sha256sum {DEST}/big.bin").split()[0]
        ok = remote_sha == digest.hexdigest() and not in_host(f"ls -A {DEST}/.migrate-partial 2>/dev/null").strip()
        rest = total - kept
        sent = result["wire_bytes"]
        print(f"One {args.size} MiB file of random data, SIGINT at {kept / total:.0%}, rerun unlimited:\n")
        print("| the host kept | rerun sent (rsync's Total bytes sent) | rest | sent - rest | rerun time | file ok |")
        print("|---|---|---|---|---|---|")
        print(f"| {kept / MIB:.1f} MiB | {sent / MIB:.1f} MiB | {rest / MIB:.1f} MiB | {(sent - rest) / MIB:+.2f} MiB "
              f"| {seconds:.1f} s | {'yes' if ok else 'NO'} |")
    finally:
        in_host(f"rm -rf {DEST}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
