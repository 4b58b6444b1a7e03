"""migrate's polite wrapper around every Ray job's command (shipped to ~/.migrate/ray/bin/migrate-ray-job.py).

usage: python migrate-ray-job.py [--cwd DIR] -- COMMAND

The wrapper is the agent's (`migrate_agent.raynode.wrapper_main`, also its `ray-job` subcommand): this
file only imports it from the agent zipapp `cluster up` ships next to it (migrate-agent.pyz), so the
node side of a cluster runs the agent's own code. Stdlib only; python >= 3.8.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
AGENT = os.path.join(HERE, "migrate-agent.pyz")

if os.path.isfile(AGENT):
    sys.path.insert(0, AGENT)
    from migrate_agent.raynode import wrapper_main  # type: ignore[import-not-found]  # the shipped zipapp, not here
else:  # migrate's own tests run this file from the source tree (migrate/cluster/shipped/), maybe with -I -S
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))
    from migrate.agent.raynode import wrapper_main

if __name__ == "__main__":
    sys.exit(wrapper_main(sys.argv[1:]))
