"""A streaming ASGI response for SSE that the gateway can abort, unlike starlette's StreamingResponse.

A viewer that stops reading leaves its writer blocked inside ``send`` forever: it never returns to
its queue to learn it was cut loose. ``abort()`` interrupts such a writer (and only a writer that is
writing); a client disconnect does the same, learnt from the server's connection-lost hook (or, on a
server without it, from a task per viewer blocked in ``receive()``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import suppress

from starlette.types import Receive, Scope, Send

from gateway.transports.server import abort_of, on_disconnect_of


@functools.lru_cache(maxsize=16)
def _raw_headers(headers: tuple[tuple[str, str], ...]) -> tuple[tuple[bytes, bytes], ...]:
    encoded = [(k.lower().encode(), v.encode()) for k, v in headers]
    return ((b"content-type", b"text/event-stream; charset=utf-8"), *encoded)


class SseResponse:
    """ASGI app streaming ``frames``; ``abort()`` ends it at once, even mid-write."""

    def __init__(self, frames: AsyncGenerator[bytes, None], headers: Mapping[str, str]) -> None:
        self._frames = frames
        # A fresh list (a CORS wrapper may append to it) of header pairs encoded once per process.
        self._headers = list(_raw_headers(tuple(headers.items())))
        self._task: asyncio.Task[object] | None = None
        self._hard_abort: Callable[[], None] | None = None
        self._aborted = False
        self.writing = False

    def abort(self, *, only_if_writing: bool = False) -> bool:
        """Cancel the streaming task; with ``only_if_writing``, only when it is blocked in a write."""
        if self._task is None or self._aborted or (only_if_writing and not self.writing):
            return False
        self._aborted = True
        self._task.cancel()
        if only_if_writing and self._hard_abort is not None:
            # The peer stopped reading: a graceful close would wait forever for the buffer to drain.
            self._hard_abort()
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._task = asyncio.current_task()
        self._hard_abort = abort_of(scope)
        watch_disconnect = on_disconnect_of(scope)
        watcher: asyncio.Task[None] | None = None
        unwatch: Callable[[], None] | None = None
        if watch_disconnect is not None:
            unwatch = watch_disconnect(self._disconnected)  # no task per viewer just to learn it left
        else:
            watcher = asyncio.create_task(self._watch(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self._headers})
            async for chunk in self._frames:
                self.writing = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self.writing = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not self._aborted or self._task is None:
                raise
            self._task.uncancel()  # our own abort: end the response quietly, the server closes it
        except OSError:
            pass  # the peer went away mid-write
        finally:
            if unwatch is not None:
                unwatch()
            if watcher is not None:
                watcher.cancel()
                with suppress(asyncio.CancelledError):
                    await watcher
            await self._frames.aclose()

    def _disconnected(self) -> None:
        self.abort()

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.abort()
                return
