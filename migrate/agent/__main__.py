"""`python -m migrate.agent SUBCOMMAND`: the agent from a source checkout (tests, benchmarks).

On a host the same code runs from the zipapp, whose own __main__ is written by
migrate.jobs.bundle (ZIP_MAIN).
"""

import sys

from .main import main  # noqa: E402

sys.exit(main())
