"""The conversation event stream: journal replay spliced onto live events, keepalives and faults."""

from __future__ import annotations

import asyncio
import logging
import time

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from gateway.protocols.sse import encode_comment, encode_event, encode_retry
from gateway.simulator.conversation import Conversation, JournalEvent
from gateway.simulator.hq import SimulatedHq

PING = encode_comment("ping")
REPLAY_BATCH = 500
# The `garbage` fault: a line that is no SSE field, then an event whose data is not JSON (and no id).
GARBAGE = b"this line is not an sse field\n\n" + encode_event("{not json", event="text_delta")
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
]


class StreamDropped(Exception):
    """Raised out of the ASGI app so the server cuts the connection without a terminating chunk."""


class _DroppedStreamFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, StreamDropped)


def quiet_dropped_streams() -> None:
    """Keep the server's error log free of the deliberate ``drop_every`` cuts (idempotent)."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DroppedStreamFilter) for f in logger.filters):
        logger.addFilter(_DroppedStreamFilter())


def stale_frame(reason: str) -> bytes:
    data = {"reason": reason, "emitted_at_ms": time.time() * 1000.0}
    return encode_event(orjson.dumps(data), event="stale")


class SseStream(Response):
    """An endless SSE response for one conversation, from ``cursor`` on (None: live only)."""

    def __init__(self, hq: SimulatedHq, conv: Conversation, cursor: int | None, user_scope: bool) -> None:
        self.status_code = 200
        self.background = None
        self.raw_headers = list(HEADERS)
        self._hq = hq
        self._conv = conv
        self._cursor = cursor
        self._user_scope = user_scope
        self._last = 0
        self._sent = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        stats, conv_id = self._hq.stats, self._conv.id
        pump = asyncio.create_task(self._pump(send), name=f"sim-stream-{conv_id}")
        self._hq.track_stream(pump)
        watch = asyncio.create_task(_until_disconnect(receive))
        stats.open_streams[conv_id] += 1
        try:
            await asyncio.wait({pump, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stats.stream_closed(conv_id)
            pump.cancel()
            watch.cancel()
            outcome, _ = await asyncio.gather(pump, watch, return_exceptions=True)
        if isinstance(outcome, StreamDropped):
            raise StreamDropped(f"drop_every fault on conversation {conv_id}")
        if isinstance(outcome, Exception):
            raise outcome
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _pump(self, send: Send) -> None:
        faults, conv, config = self._hq.faults, self._conv, self._hq.config

        async def write(chunk: bytes) -> None:
            await faults.wait_unstalled()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        # Subscribe before reading the journal: nothing can fall between the two, and ids de-duplicate.
        sub = conv.subscribe(config.subscriber_max_pending)
        try:
            self._last = conv.last_id if self._cursor is None else self._cursor
            batch = conv.after(self._last)
            await write(encode_retry(config.retry_ms))
            while True:
                for start in range(0, max(len(batch), 1), REPLAY_BATCH):
                    chunk, ending = self._encode(batch[start : start + REPLAY_BATCH])
                    if chunk:
                        await write(chunk)
                    if ending == "stale":
                        return
                    if ending == "drop":
                        raise StreamDropped
                if sub.lagged:
                    await write(stale_frame("lagged"))
                    return
                batch = sub.drain() if await sub.wait(config.keepalive_s) else []
                if not batch and not sub.lagged:
                    await write(PING)
        finally:
            conv.unsubscribe(sub)

    def _encode(self, events: list[JournalEvent]) -> tuple[bytes, str | None]:
        """The bytes for ``events`` not sent yet, and "stale" or "drop" when a fault ends the stream."""
        faults = self._hq.faults
        out = [GARBAGE] if faults.take_garbage() else []
        for event in events:
            if event.id <= self._last:
                continue
            self._last = event.id
            frame = event.user_frame if self._user_scope else event.frame
            if frame is None:
                continue
            out.append(frame)
            self._sent += 1
            if faults.stale_after and self._sent >= faults.stale_after:
                out.append(stale_frame("lagged"))
                return b"".join(out), "stale"
            if faults.drop_every and self._sent >= faults.drop_every:
                return b"".join(out), "drop"
        return b"".join(out), None


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
