"""Run one function per host in parallel; one host failing never stops the others."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from migrate.errors import MigrateError

T = TypeVar("T")


@dataclass
class HostOutcome(Generic[T]):
    """What happened on one host: a value, or the one-line error that stopped it."""

    host: str
    value: T | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def for_each_host(hosts: Sequence[str], work: Callable[[str], T], *, max_workers: int = 8) -> list[HostOutcome[T]]:
    """Call `work(host)` for every host concurrently; results in the order of `hosts`.

    A MigrateError (or any exception) on one host is recorded as that host's error; the others go
    on. Callers decide the exit code (1 if any failed).
    """

    def guarded(host: str) -> HostOutcome[T]:
        try:
            return HostOutcome(host=host, value=work(host))
        except MigrateError as exc:
            return HostOutcome(host=host, error=exc.one_line())
        except Exception as exc:  # a bug on one host must not hide the others' results
            return HostOutcome(host=host, error=f"internal error: {type(exc).__name__}: {exc}")

    if len(hosts) == 1:
        return [guarded(hosts[0])]
    with ThreadPoolExecutor(max_workers=min(max_workers, len(hosts))) as pool:
        return list(pool.map(guarded, hosts))
