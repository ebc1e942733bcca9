"""Redis reachability as the journal's callers see it: one error type, whatever redis-py raised."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis.exceptions

from gateway.errors import JournalUnavailable

__all__ = ["UNAVAILABLE", "JournalUnavailable", "unavailable_as_error"]

# Failures that say "Redis is not reachable right now", as opposed to a bug in a command or script.
UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.ReadOnlyError)


@contextmanager
def unavailable_as_error(what: str) -> Iterator[None]:
    """Turn Redis connectivity failures into ``JournalUnavailable``."""
    try:
        yield
    except UNAVAILABLE as exc:
        raise JournalUnavailable(f"Redis unavailable during {what}: {exc}") from exc
