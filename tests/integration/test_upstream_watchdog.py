"""The upstream dead-stream watchdog against a real socket server: silence ends a stream, any byte resets it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from gateway.envelope import HqEvent
from gateway.upstream.client import HqClient, UpstreamUnavailable

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
IDLE_S = 0.3

Behaviour = Callable[[asyncio.StreamWriter], Awaitable[None]]


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def serve(behaviour: Behaviour) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        try:
            await behaviour(writer)
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def read_events(behaviour: Behaviour, limit_s: float = 5.0) -> tuple[list[HqEvent], BaseException | None, float]:
    server, url = await serve(behaviour)
    client = HqClient(url, "t", connect_timeout_s=2, idle_timeout_s=IDLE_S)
    events: list[HqEvent] = []
    started = time.monotonic()
    error: BaseException | None = None
    try:
        async with asyncio.timeout(limit_s):
            async with client.open_stream("c", None) as stream:
                async for item in stream:
                    if isinstance(item, HqEvent):
                        events.append(item)
    except UpstreamUnavailable as exc:
        error = exc
    finally:
        await client.close()
        server.close()
    return events, error, time.monotonic() - started


def test_silence_before_the_response_head_ends_the_stream() -> None:
    async def never_answer(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(10)

    events, error, took = asyncio.run(read_events(never_answer))
    assert events == [] and error is not None and f"no bytes from HQ in {IDLE_S:g}s" in str(error)
    assert IDLE_S <= took < IDLE_S + 1.5


def test_silence_mid_stream_ends_it_after_the_events_already_read() -> None:
    async def one_event_then_silence(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b'id: 1\nevent: text_delta\ndata: {"text":"a"}\n\n'))
        await writer.drain()
        await asyncio.sleep(10)

    events, error, took = asyncio.run(read_events(one_event_then_silence))
    assert [e.id for e in events] == ["1"]
    assert error is not None and "no bytes from HQ" in str(error)
    assert IDLE_S <= took < IDLE_S + 1.5


def test_keepalive_comments_keep_a_quiet_stream_alive() -> None:
    async def comments_then_event(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD)
        for _ in range(8):  # 8 x 0.1 s: far longer than the idle timeout, never silent that long
            writer.write(chunk(b": ping\n\n"))
            await writer.drain()
            await asyncio.sleep(0.1)
        writer.write(chunk(b'id: 9\nevent: final\ndata: {"text":"done"}\n\n') + b"0\r\n\r\n")
        await writer.drain()

    events, error, took = asyncio.run(read_events(comments_then_event))
    assert error is None, error
    assert [e.name for e in events] == ["final"]
    assert took >= 0.8


def test_a_slow_consumer_is_not_mistaken_for_a_silent_upstream() -> None:
    """The watchdog bounds waiting for bytes, not the time the gateway spends on an event."""

    async def two_events(writer: asyncio.StreamWriter) -> None:
        writer.write(HEAD + chunk(b"id: 1\nevent: status\ndata: {}\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(chunk(b"id: 2\nevent: final\ndata: {}\n\n") + b"0\r\n\r\n")
        await writer.drain()

    async def main() -> list[str | None]:
        server, url = await serve(two_events)
        client = HqClient(url, "t", connect_timeout_s=2, idle_timeout_s=IDLE_S)
        seen: list[str | None] = []
        try:
            async with client.open_stream("c", None) as stream:
                async for item in stream:
                    if isinstance(item, HqEvent):
                        seen.append(item.id)
                        await asyncio.sleep(IDLE_S * 3)  # e.g. a journal append stuck on Redis
        finally:
            await client.close()
            server.close()
        return seen

    assert asyncio.run(main()) == ["1", "2"]


@pytest.mark.parametrize("status", [503])
def test_status_errors_still_map_to_unavailable(status: int) -> None:
    async def refuse(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 %d Nope\r\ncontent-length: 0\r\n\r\n" % status)
        await writer.drain()

    events, error, _ = asyncio.run(read_events(refuse))
    assert events == [] and error is not None and str(status) in str(error)
