"""migrate: move a deep-learning experiment onto a borrowed GPU server over SSH."""

__version__ = "0.1.0"
