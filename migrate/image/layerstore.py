"""Reading layers straight from the local overlay2 store (placeholder until implemented)."""

from __future__ import annotations


def open_layer_store(images):
    """A layer source reading the local store directly, or None when that is not possible."""
    return None
