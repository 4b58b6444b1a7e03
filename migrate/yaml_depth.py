"""A limit on how deeply the YAML a user wrote (playbook, jobs.yaml, compose file) may nest.

PyYAML composes nodes recursively, so a file nested a few hundred levels deep ended in a RecursionError
traceback. Its event parser is a loop: the depth is measured from the events, before anything is built.
"""

from __future__ import annotations

import yaml

from migrate.errors import UsageError

MAX_DEPTH = 100  # real files nest under 10 levels; PyYAML's recursion gives out in the hundreds


def nesting_problem(text: str) -> tuple[int, str] | None:
    """(line, problem) where `text` first nests deeper than MAX_DEPTH, else None (pure; YAML errors are
    left to the real parse, which says where)."""
    depth = 0
    try:
        for event in yaml.parse(text):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_DEPTH:
                    return event.start_mark.line + 1, f"nested more than {MAX_DEPTH} levels deep"
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
    except yaml.YAMLError:
        return None
    return None


def check_nesting(text: str, filename: str, error: type[UsageError] = UsageError) -> None:
    """Raise `error` (`FILE:LINE: nested more than ...`) for YAML too deep to read safely."""
    found = nesting_problem(text)
    if found:
        raise error(f"{filename}:{found[0]}: {found[1]}", hint="check the brackets and the indentation there")
