"""`migrate cluster`: several borrowed servers as one Ray cluster, set up and driven over SSH.

- plan.py     pure builders: the preflight probe and its parser, `ray start`/`ray stop` command lines,
              the ports, the on-host layout (~/.migrate/ray/...)
- install.py  the pinned Ray and uv, the local wheel cache (pip download per host platform), pushing
              wheels over the host's ssh, `uv venv` + `uv pip install --no-index` (the offline path)
- state.py    the cluster records on this machine (migrate's state dir) and on each host
- ops.py      up / status / down: preflight everything, install, start head then workers, record
- jobapi.py   the Ray Job REST API over an SSH local forward (stdlib urllib only: no Ray here)
- jobs.py     `migrate run/status/logs/cancel/retry NAME` for a cluster name; --nodes gang jobs
- shell.py    `migrate shell/exec NAME JOB` for a cluster job: find its node, enter it there (issue 15)
- shipped/    the small scripts that run on the hosts: the polite job wrapper, the gang driver, and the
              enter script `shell/exec` send over ssh
"""
