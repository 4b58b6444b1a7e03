"""Benchmark: `migrate host-setup` against the plain shell commands people type, in one run, as ratios.

    python benchmarks/host_setup.py            # fresh setup + 3 reruns each, about 2 minutes on 2 cores
    python benchmarks/host_setup.py --quick    # fresh setup + 1 rerun each, about 1.5 minutes
    python benchmarks/host_setup.py --keep     # leave the sandbox up afterwards

It brings up a two-host sandbox (default name `hsbench`: hosts hsbench1 and hsbench2, own subnet and
port). Host 1 gets the plain pipeline over one OpenSSH session, what a careful person would type:

    sudo apt-get update && sudo apt-get install -y --no-install-recommends docker.io
    echo '{"registry-mirrors": [...]}' | sudo tee /etc/docker/daemon.json
    sudo systemctl reset-failed docker; sudo systemctl restart docker
    sudo usermod -aG docker $USER            # then a new login for `docker info`

(Without the reset-failed, the plain pipeline's third run within a minute fails: docker.service
allows 3 starts per 60 s, "start of the service was attempted too often". host-setup does not
restart docker when nothing changed.)

Host 2 gets `migrate host-setup --docker-source distro --no-nvidia --registry-mirror ...` (which also
probes, journals, backs up, validates and proves `docker info` without sudo). Then both are run again
on the already set-up hosts: the plain pipeline repeats its apt update and restarts docker every time;
host-setup checks and changes nothing. Both end in the same state (docker.io, that daemon.json, the
user in the docker group), checked at the end. The sandbox is removed unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks import as_installed  # noqa: E402

MIRROR = "https://mirror.bench.example"
PLAIN = ("sudo apt-get -q update >/dev/null && "
         "sudo DEBIAN_FRONTEND=noninteractive apt-get -q -y install --no-install-recommends docker.io >/dev/null && "
         f"echo '{{\"registry-mirrors\": [\"{MIRROR}\"]}}' | sudo tee /etc/docker/daemon.json >/dev/null && "
         "sudo systemctl reset-failed docker; sudo systemctl restart docker && sudo usermod -aG docker \"$USER\"")


def run(argv: list[str], *, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{(proc.stderr or proc.stdout)[-2000:]}")
    return proc


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = dict(os.environ, MIGRATE_SANDBOX=args.sandbox, MIGRATE_SANDBOX_SUBNET=args.subnet,
                        MIGRATE_SANDBOX_PORT=str(args.port), COLUMNS="200")
        self.env.pop("MIGRATE_SUDO_PASSWORD", None)
        self.migrate = [sys.executable, "-m", "migrate"]
        self.plain_host, self.migrate_host = f"{args.sandbox}1", f"{args.sandbox}2"
        self.work = Path(tempfile.mkdtemp(prefix="hsetup-bench-"))
        self.ssh_config = self.work / "ssh_config"
        self.rows: list[tuple[str, float, float, str]] = []

    def ssh(self, host: str, command: str) -> subprocess.CompletedProcess:
        return run(["ssh", "-F", str(self.ssh_config), host, command])

    def plain(self) -> float:
        t0 = time.monotonic()
        self.ssh(self.plain_host, PLAIN)
        self.ssh(self.plain_host, "docker info >/dev/null")  # a new login: group membership applies
        return time.monotonic() - t0

    def host_setup(self) -> tuple[float, dict]:
        t0 = time.monotonic()
        proc = run(self.migrate + ["host-setup", self.migrate_host, "--docker-source", "distro", "--no-nvidia",
                                   "--registry-mirror", MIRROR, "--json"], env=self.env)
        return time.monotonic() - t0, json.loads(proc.stdout)[0]

    def main(self) -> None:
        print(f"[setup] sandbox {self.args.sandbox}: 2 fresh hosts", file=sys.stderr)
        run(self.migrate + ["sandbox", "up", "2"], env=self.env)
        try:
            self.ssh_config.write_text(run(self.migrate + ["sandbox", "ssh-config"], env=self.env).stdout)
            print("[fresh] plain pipeline ...", file=sys.stderr)
            plain_fresh = self.plain()
            print("[fresh] migrate host-setup ...", file=sys.stderr)
            mig_fresh, report = self.host_setup()
            assert report["ok"] and report["changed"] >= 3, report
            self.rows.append(("fresh host: install docker.io, daemon.json, group", plain_fresh, mig_fresh,
                              f"migrate remote work {report['remote_seconds']:.1f}s"))
            plains, migs, remote = [], [], []
            for i in range(self.args.reruns):
                print(f"[rerun {i + 1}/{self.args.reruns}] ...", file=sys.stderr)
                plains.append(self.plain())
                t, report = self.host_setup()
                assert report["ok"] and report["changed"] == 0 and report["docker_restarts"] == 0, report
                migs.append(t)
                remote.append(report["remote_seconds"])
            self.rows.append((f"set-up host again (median of {self.args.reruns})", statistics.median(plains),
                              statistics.median(migs), f"migrate: 0 changed, no restart, remote work "
                                                       f"{statistics.median(remote):.2f}s; plain restarts docker"))
            self.check_same_state()
        finally:
            if not self.args.keep:
                run(self.migrate + ["sandbox", "down"], env=self.env, check=False)
            shutil.rmtree(self.work, ignore_errors=True)
        self.report()

    def check_same_state(self) -> None:
        probe = ("dpkg-query -W -f='${Status}' docker.io; echo; cat /etc/docker/daemon.json | tr -d ' \\n'; echo; "
                 "id -nG alice | tr ' ' '\\n' | grep -x docker")
        states = [run(["docker", "exec", f"migrate-{h}", "sh", "-c", probe]).stdout.split("\n")
                  for h in (self.plain_host, self.migrate_host)]
        for a, b in zip(*states):
            if a.strip() != b.strip():
                raise SystemExit(f"the two hosts differ: {a!r} vs {b!r}")

    def report(self) -> None:
        print("\n| scenario | plain pipeline | migrate host-setup | ratio (migrate/plain) | notes |")
        print("|---|---|---|---|---|")
        for name, plain, mig, note in self.rows:
            print(f"| {name} | {plain:.1f}s | {mig:.1f}s | {mig / plain:.2f} | {note} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one rerun instead of three")
    p.add_argument("--keep", action="store_true", help="leave the sandbox up")
    p.add_argument("--sandbox", default="hsbench", help="sandbox name (default hsbench)")
    p.add_argument("--subnet", default="172.31.212.0/24")
    p.add_argument("--port", type=int, default=2680)
    args = p.parse_args()
    as_installed()  # migrate's bytecode, as an installed migrate has it
    args.reruns = 1 if args.quick else 3
    Bench(args).main()


if __name__ == "__main__":
    main()
