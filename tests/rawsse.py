"""Many cheap SSE viewers for scale tests: one asyncio connection each, HTTP parsed by h11."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import h11

from gateway.protocols.sse import SseEvent, SseParser


@dataclass
class RawSseViewer:
    """One viewer: records every event with its arrival time; ``closed`` once the server ends the stream."""

    host: str
    port: int
    conversation_id: str
    last_event_id: str | None = None
    status: int | None = None
    comments: int = 0
    events: list[SseEvent] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    @property
    def seqs(self) -> list[int]:
        return [int(e.id) for e in self.events if e.id is not None and e.event not in ("stale", "error")]

    def stages(self) -> list[str]:
        return [e.event for e in self.events]

    def told(self) -> list[tuple[str, dict[str, Any]]]:
        """The notices the viewer was given (stale / error events), parsed."""
        return [(e.event, json.loads(e.data)) for e in self.events if e.event in ("stale", "error")]

    def start(self) -> RawSseViewer:
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        conn = h11.Connection(h11.CLIENT)
        parser = SseParser()
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            headers = [("Host", f"{self.host}:{self.port}"), ("Accept", "text/event-stream")]
            if self.last_event_id is not None:
                headers.append(("Last-Event-ID", self.last_event_id))
            target = f"/api/v1/conversation/stream/{self.conversation_id}"
            writer.write(conn.send(h11.Request(method="GET", target=target, headers=headers)))
            writer.write(conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        return
                    continue
                if isinstance(event, h11.Response):
                    self.status = event.status_code
                    self.opened.set()
                elif isinstance(event, h11.Data):
                    now = time.monotonic()
                    for sse in parser.feed(bytes(event.data)):
                        self.events.append(sse)
                        self.arrivals.append(now)
                    self.comments = parser.comments
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    return
        except (OSError, h11.RemoteProtocolError):
            return
        finally:
            self.opened.set()
            self.closed.set()
            if writer is not None:
                writer.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
