#!/usr/bin/env python3
"""push-env benchmark (issue 21): a scientific Python environment onto a host that reaches no index.

    MIGRATE_SANDBOX=... .venv/bin/python benchmarks/push_env.py [--host carol@sandbox1]
        [--packages "numpy==2.2.6 scipy==1.15.3 pandas==2.2.3 scikit-learn==1.6.1"] [--changed PIN]

Measured in one run, one after the other, both from cold caches (pip's http cache off, migrate's
wheel cache for this platform emptied, the host's ~/.migrate (uv included) and the manual directory
removed first):
1. the manual path people use: `pip download` here (for the host's python and platform, plus a pip
   wheel: the host has no pip), `scp -r` the wheels over, `python3 pip.whl/pip install --no-index
   --find-links ... --target ~/manual-env` there;
2. `migrate push-env HOST requirements.txt` (resolve here with uv, download the wheels once, stream
   them and uv over ssh, `uv pip sync` there);
3. the same push again (unchanged: nothing sent);
4. one changed pin (--changed, scikit-learn one release back): only its wheel sent.
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from migrate import paths  # noqa: E402

PACKAGES = "numpy==2.2.6 scipy==1.15.3 pandas==2.2.3 scikit-learn==1.6.1"
CHANGED = "scikit-learn==1.6.0"


def ssh_config() -> str:
    name = os.environ.get("MIGRATE_SANDBOX", "sandbox")
    return str(paths.sandbox_root() / name / "ssh_config")


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    if res.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{res.stdout}\n{res.stderr}")
    return res


def on_host(host: str, command: str) -> str:
    return sh(["ssh", "-F", ssh_config(), host, command]).stdout


def migrate(*args: str) -> list[dict]:
    return json.loads(sh([str(ROOT / ".venv" / "bin" / "migrate"), *args, "--json"]).stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="carol@" + os.environ.get("MIGRATE_SANDBOX", "sandbox") + "1")
    ap.add_argument("--packages", default=PACKAGES)
    ap.add_argument("--changed", default=CHANGED, help="the pin that replaces its package's pin in step 4")
    a = ap.parse_args()
    os.environ["PIP_NO_CACHE_DIR"] = "1"
    host = a.host
    py = on_host(host, "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'").strip()
    on_host(host, "rm -rf ~/.migrate/envs/bench ~/.migrate/wheels ~/.migrate/bin ~/.migrate/cache "
                  "~/manual ~/manual-env")
    shutil.rmtree(paths.cache_root() / "env-wheels", ignore_errors=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pins = a.packages.split()
        # 1. the manual path
        t0 = time.monotonic()
        wheels = work / "manual"
        sh([sys.executable, "-m", "pip", "download", *pins, "pip", "--only-binary=:all:", "--platform",
            "manylinux2014_x86_64", "--python-version", py, "--implementation", "cp", "-d", str(wheels), "-q",
            "--disable-pip-version-check"])
        t_dl = time.monotonic() - t0
        size = sum(p.stat().st_size for p in wheels.glob("*.whl"))
        sh(["scp", "-q", "-F", ssh_config(), "-r", str(wheels), f"{host}:manual"])
        t_scp = time.monotonic() - t0 - t_dl
        on_host(host, "python3 $(ls ~/manual/pip-*.whl)/pip install -q --no-index --find-links ~/manual "
                      f"--target ~/manual-env {' '.join(pins)} && "
                      "PYTHONPATH=~/manual-env python3 -c 'import sklearn, pandas, scipy'")
        manual = time.monotonic() - t0
        rows.append(("manual: pip download + scp + pip install --no-index", manual,
                     f"{len(list(wheels.glob('*.whl')))} wheels, {size / 2**20:.0f} MiB "
                     f"(download {t_dl:.1f}s, scp {t_scp:.1f}s, install {manual - t_dl - t_scp:.1f}s)"))
        # 2-4. push-env
        req = work / "requirements.txt"
        req.write_text("\n".join(pins) + "\n")
        for label, text in (("push-env (cold: resolve, download, send, install)", None),
                            ("push-env again, unchanged", None),
                            (f"push-env, one changed pin ({a.changed})", a.changed)):
            if text:
                name = text.split("==")[0]
                req.write_text("\n".join([p for p in pins if p.split("==")[0] != name] + [text]) + "\n")
            t0 = time.monotonic()
            r = migrate("push-env", host, str(req), "--name", "bench")[0]
            took = time.monotonic() - t0
            rows.append((label, took, f"{r['status']}, {r['packages']} packages, {r['wheels_sent']} wheel(s) sent "
                                      f"({r['bytes_sent'] / 2**20:.1f} MiB)" + (" + uv (once)" if r["uv_sent"] else "")
                                      + (f": {', '.join(r['wheels_missing'])}" if text else "")
                                      + f"; {r['seconds']:.1f}s inside the command"))
        on_host(host, "~/.migrate/envs/bench/bin/python -c 'import sklearn, pandas, scipy'")
    on_host(host, "rm -rf ~/manual ~/manual-env ~/.migrate/envs/bench")
    print(f"host {host}, python {py}, packages: {a.packages}")
    print(f"load average here: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print("| path | seconds (wall, CLI start included) | detail |\n|---|---|---|")
    for label, secs, detail in rows:
        print(f"| {label} | {secs:.1f} | {detail} |")
    print(f"speed-up of push-env (cold) over the manual path: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
