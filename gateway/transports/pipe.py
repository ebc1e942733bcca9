"""The contract between message transports (WebSocket, SockJS) and protocol handlers (STOMP).

A transport accepts a connection, calls a ``HandlerFactory`` with a ``Pipe`` for writing, then feeds
the handler each inbound message and, exactly once when the connection ends for any reason
(including the handler's own ``Pipe.close``), ``on_close``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from starlette.requests import HTTPConnection

log = logging.getLogger(__name__)

HANDLER_TIMEOUT_S = 10.0  # bound on waiting for a handler to be built, or to hear about a close


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """What a handler may know about the peer."""

    transport: str  # "websocket" | "sockjs-websocket" | "xhr-streaming" | "xhr-polling" | "eventsource"
    client: str  # "host:port" of the peer
    headers: Mapping[str, str]  # request headers (lower-case names), for auth/origin checks
    query: Mapping[str, str]


class Pipe(Protocol):
    """The outbound half of a connection; sends after close are dropped silently."""

    async def send(self, message: str) -> None: ...  # one protocol message (e.g. one STOMP frame as text)

    async def send_many(self, messages: list[str]) -> None: ...  # a burst: one SockJS frame, fewer writes

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


@runtime_checkable
class SharedWirePipe(Protocol):
    """A pipe whose messages can be encoded once and the same bytes written to many such pipes."""

    def wire_encoder(self) -> tuple[str, Callable[[bytes], bytes]] | None: ...  # (format, encode) or None

    def write_wire_nowait(self, wire: bytes) -> bool: ...  # False: not written, use the async path


class PipeHandler(Protocol):
    """The inbound half: a protocol session fed one message at a time."""

    async def on_message(self, message: str) -> None: ...

    async def on_close(self) -> None: ...


HandlerFactory = Callable[[Pipe, ConnectionInfo], Awaitable[PipeHandler]]


def connection_info(conn: HTTPConnection, transport: str) -> ConnectionInfo:
    """What a handler may know about the peer of ``conn``, served by ``transport``."""
    client = f"{conn.client.host}:{conn.client.port}" if conn.client else "unknown"
    return ConnectionInfo(transport, client, dict(conn.headers.items()), dict(conn.query_params))


async def notify_closed(handler: PipeHandler) -> None:
    """Tell ``handler`` its connection ended (bounded); its failure is logged, never raised."""
    try:
        async with asyncio.timeout(HANDLER_TIMEOUT_S):
            await handler.on_close()
    except Exception:
        log.exception("sockjs: handler on_close failed")
