"""push-data's fixed start: a one-host copy must not import paramiko, Fabric or cryptography.

They cost 0.3 s to well over a second to import on a loaded 2-core machine, which alone put `push-data
--method rsync` behind a plain `rsync -a` on big files (issue 24). They load only when several hosts are
relayed (migrate/data/fanout.py, migrate/relay/)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("paramiko", "fabric", "invoke", "cryptography")


def test_the_push_and_pull_data_verbs_import_no_ssh_library():
    code = ("import sys, migrate.cli, migrate.commands.push_data, migrate.data.push, migrate.data.pull; "
            f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"push-data imports {out} at start"
