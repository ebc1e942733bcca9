"""Real clients for tests: an SSE viewer over httpx, and condition waits with deadlines."""

from __future__ import annotations

import asyncio
import json
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import httpx

from gateway.protocols.sse import SseEvent, SseParser
from tests.waiting import eventually

__all__ = ["SseViewer", "eventually"]


@dataclass
class SseViewer:
    """One SSE viewer of a conversation: connects, records every event, can reconnect with its cursor."""

    base_url: str
    conversation_id: str
    events: list[SseEvent] = field(default_factory=list)
    comments: int = 0
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def envelopes(self) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.event != "stale"]

    @property
    def seqs(self) -> list[int]:
        return [int(e.id) for e in self.events if e.id is not None]

    @property
    def last_id(self) -> str | None:
        ids = [e.id for e in self.events if e.id is not None]
        return ids[-1] if ids else None

    def stages(self) -> list[str]:
        return [e.event for e in self.events]

    def start(self, *, last_event_id: str | None = None, params: dict[str, str] | None = None) -> SseViewer:
        self.closed.clear()
        self._task = asyncio.create_task(self._run(last_event_id, params or {}))
        return self

    async def _run(self, last_event_id: str | None, params: dict[str, str]) -> None:
        headers = {"Accept": "text/event-stream", **self.headers}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        url = f"{self.base_url}/api/v1/conversation/stream/{self.conversation_id}"
        parser = SseParser()
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=None)) as client,
                client.stream("GET", url, headers=headers, params=params) as response,
            ):
                self.status = response.status_code
                async for chunk in response.aiter_raw():
                    self.events.extend(parser.feed(chunk))
                    self.comments = parser.comments
        except httpx.HTTPError:
            pass
        finally:
            self.closed.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task

    async def wait_for_stage(self, stage: str, count: int = 1, timeout: float = 10.0) -> None:
        await eventually(lambda: self.stages().count(stage) >= count, timeout, f"{count}x {stage}")

    async def wait_connected(self, timeout: float = 5.0) -> None:
        await eventually(lambda: self.comments >= 1 or self.closed.is_set(), timeout, "SSE stream open")


def assert_dense(seqs: list[int], first: int | None = None, last: int | None = None) -> None:
    """Event by event: no gap, no duplicate, in order."""
    assert seqs, "no envelopes"
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or duplicate in {seqs}"
    if first is not None:
        assert seqs[0] == first
    if last is not None:
        assert seqs[-1] == last
