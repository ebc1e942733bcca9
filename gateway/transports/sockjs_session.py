"""A SockJS session served by HTTP receivers (xhr, xhr_streaming, eventsource) across requests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Protocol

from gateway.protocols import sockjs
from gateway.protocols.sockjs import CloseStatus, QueueOverflow, SockJsSession
from gateway.transports.pipe import HANDLER_TIMEOUT_S, ConnectionInfo, HandlerFactory, PipeHandler, notify_closed
from gateway.transports.sockjs_options import SockJsOptions

log = logging.getLogger(__name__)


class SessionHost(Protocol):
    """What a session needs from the service that holds it."""

    options: SockJsOptions
    factory: HandlerFactory
    clock: Callable[[], float]

    def forget(self, session: HttpSession) -> None: ...


class HttpSession:
    """One session served by HTTP receivers; it is the handler's ``Pipe`` and owns one task."""

    def __init__(self, server: SessionHost, session_id: str, info: ConnectionInfo) -> None:
        self.id = session_id
        self.info = info
        self.core = SockJsSession(
            heartbeat_s=server.options.heartbeat_s,
            disconnect_delay_s=server.options.disconnect_delay_s,
            max_queue=server.options.max_queue,
            now=server.clock(),
        )
        self.news = asyncio.Event()  # the attached receiver has something to poll
        self._wake = asyncio.Event()  # the supervisor must re-read state or deadlines
        self._ready = asyncio.Event()
        self._inbound = asyncio.Lock()  # xhr_send requests deliver in order, one at a time
        self._handler: PipeHandler | None = None
        self._terminating = False
        self._notified = False
        self._server = server
        self.task = asyncio.create_task(self._supervise())

    async def send(self, message: str) -> None:
        self._queue([message])

    async def send_many(self, messages: list[str]) -> None:
        if messages:
            self._queue(messages)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_with(CloseStatus(code, reason))

    def _queue(self, messages: list[str]) -> None:
        try:
            if self.core.send(messages):
                self.news.set()
        except QueueOverflow as exc:
            log.warning("sockjs: closing a %s session: %s", self.info.transport, exc)
            self.close_with(sockjs.QUEUE_FULL)

    def close_with(self, status: CloseStatus) -> None:
        if self.core.close(status):
            self.changed()

    def changed(self) -> None:
        self.news.set()
        self._wake.set()

    def terminate(self) -> None:
        """Server shutdown: say Go away! and expire as soon as no receiver holds the session."""
        self._terminating = True
        self.close_with(sockjs.GO_AWAY)
        self.changed()

    async def deliver(self, messages: list[str]) -> None:
        """Hand inbound messages to the handler, waiting (bounded) for it to be built."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(HANDLER_TIMEOUT_S):
                await self._ready.wait()
        async with self._inbound:
            for message in messages:
                if self._handler is None or self.core.closing:
                    return
                try:
                    await self._handler.on_message(message)
                except Exception:
                    log.exception("sockjs: handler on_message failed")
                    self.close_with(sockjs.SERVER_ERROR)

    async def _supervise(self) -> None:
        """Build the handler, expire the session after the disconnect delay, tell the handler once."""
        try:
            try:
                async with asyncio.timeout(HANDLER_TIMEOUT_S):
                    self._handler = await self._server.factory(self, self.info)
            except Exception:
                log.exception("sockjs: handler factory failed")
                self.close_with(sockjs.SERVER_ERROR)
            finally:
                self._ready.set()
            while True:
                self._wake.clear()
                if self.core.closing:
                    await self._notify_once()  # the handler stops producing while the session lingers
                now = self._server.clock()
                if not self.core.receiver_attached and (self._terminating or self.core.disconnect_due(now)):
                    return
                deadline = self.core.disconnect_deadline()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if deadline is None else max(0.0, deadline - now)):
                        await self._wake.wait()
        finally:
            self.core.expire()
            self.news.set()
            self._server.forget(self)
            await self._notify_once()

    async def _notify_once(self) -> None:
        if self._notified or self._handler is None:
            return
        self._notified = True
        async with self._inbound:  # never while an xhr_send is still in on_message
            await notify_closed(self._handler)
