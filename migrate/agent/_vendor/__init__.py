"""Third-party code shipped inside the agent, pinned so that every laptop ships the same agent.

`pynvml.py` is nvidia-ml-py 13.615.71, unchanged apart from a two-line header (ruff is told to skip it).
It is vendored rather than taken from the laptop's installed nvidia-ml-py because the agent's
version is a hash of what the zipapp holds: two laptops with different nvidia-ml-py versions would
otherwise ship different agents and replace each other's dispatcher on a shared host. Upgrading
it is a deliberate change to this file (and a new agent version for everybody at once).
"""

PYNVML_VERSION = "13.615.71"
