"""The one way tests wait: poll a condition until a deadline, then fail naming what was awaited.

Never a bare sleep: a test waits for something a user would see (a frame, a receipt, a status), and
"nothing happened" is checked by waiting for a later positive marker, not for a fixed time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02, what: str = "") -> Any:
    """Poll ``predicate`` until truthy and return its value; AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)
    return value


async def eventually(
    predicate: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> Any:
    """``wait_until`` for async tests: ``predicate`` may be a coroutine function; returns its truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
