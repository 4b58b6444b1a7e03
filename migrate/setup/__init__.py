"""`migrate host-setup`: make a borrowed server GPU-container ready, idempotently.

Layout (commands as data, execution separate):
- `options`     the options dataclass, the report types and option validation
- `sources`     Docker / NVIDIA apt repository definitions, mirrors, codename fallback, dearmor
- `daemon_json` the /etc/docker/daemon.json merge (keep every key), diff and flag-conflict check
- `apt`         apt-get / dpkg command lines and parsers
- `facts`       the setup probe (one round trip) and its parser
- `plan`        the steps: pure planners from facts + options to actions (what --dry-run shows)
- `journal`     the on-host change journal and the undo plan built from it
- `verify`      the verification commands and the known-failure explanations
- `runner`      the thin layer that executes actions on a `Remote`
- `offline`     --download-offline (local apt with a private root) and offline .deb selection
- `orchestrator` several hosts in parallel, progress lines, summary table (setup_hosts/undo_hosts)
"""
