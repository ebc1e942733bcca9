"""What every baseline shares: one HQ (simulator) SSE stream per conversation, and envelope-sized frames.

A baseline is fed exactly as the gateway is: it follows the simulator's stream of a conversation
(httpx + httpx-sse, as the gateway does) and turns each event into an envelope-shaped JSON body of
the same size class, serialized once, with a dense per-conversation ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse

Publish = Callable[[str, int, str, bytes], None]  # (conversation, seq, stage, body)


def envelope_body(conversation: str, seq: int, event: str, data: Any, source_id: str | None) -> bytes:
    """An AUDIT-envelope-shaped body (ConvEngine v2 field names) for one HQ event."""
    stage = event.upper()
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    payload = dict(data) if isinstance(data, dict) else {"value": data}
    payload["_meta"] = {
        "stage": stage,
        "conversationId": conversation,
        "intent": None,
        "state": "RUNNING",
        "sourceEvent": event,
        "sourceEventId": source_id,
    }
    envelope = {
        "eventType": "AUDIT",
        "auditId": seq,
        "stage": stage,
        "createdAt": now,
        "payload": payload,
        "verbose": None,
    }
    return orjson.dumps(envelope)


def stomp_message(conversation: str, seq: int, body: bytes) -> bytes:
    """A STOMP MESSAGE frame (subscription 0, as every benchmark viewer subscribes) carrying ``seq``."""
    head = (
        f"MESSAGE\nsubscription:0\nmessage-id:{seq}\ndestination:/topic/convengine/audit/{conversation}\n"
        f"content-type:application/json\ncontent-length:{len(body)}\nseq:{seq}\n\n"
    )
    return head.encode() + body + b"\0"


def sse_frame(seq: int, stage: str, body: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (seq, stage.encode(), body)


class Upstreams:
    """One follower task per conversation, started on first interest, kept until the process ends."""

    def __init__(self, hq_url: str, token: str, publish: Publish) -> None:
        self._http = httpx.AsyncClient(
            base_url=hq_url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(10.0, read=None),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=16),
        )
        self._publish = publish
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def ensure(self, conversation: str) -> None:
        if conversation not in self._tasks:
            self._tasks[conversation] = asyncio.create_task(self._follow(conversation), name=f"up:{conversation}")

    async def _follow(self, conversation: str) -> None:
        seq = 0
        cursor: str | None = None
        while True:
            headers = {"Last-Event-ID": cursor} if cursor else {}
            try:
                async with aconnect_sse(
                    self._http, "GET", f"/v1/api/conversations/{conversation}/stream", headers=headers
                ) as source:
                    async for sse in source.aiter_sse():
                        if sse.event in ("message", "stale") and not sse.data:
                            continue
                        cursor = sse.id or cursor
                        seq += 1
                        data = orjson.loads(sse.data) if sse.data else {}
                        body = envelope_body(conversation, seq, sse.event, data, sse.id)
                        self._publish(conversation, seq, sse.event.upper(), body)
            except (httpx.HTTPError, orjson.JSONDecodeError):
                await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        for task in self._tasks.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._http.aclose()


def now_ms() -> float:
    return time.time() * 1000.0
