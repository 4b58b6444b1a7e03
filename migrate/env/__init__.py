"""`migrate push-env`: a Python environment on a host under ~/.migrate/envs/NAME, no root needed.

- source.py  what SOURCE is (requirements.txt, pyproject.toml +/- uv.lock, the active venv), pure
- plan.py    the on-host layout and every remote command line (probe, unpack, install, delete), pure
- resolve.py uv here: the exact lock for the host's python and platform; the local wheel cache
- push.py    the orchestration: probe, resolve, send only the missing wheels, install, report
"""
