"""The Journal contract, run against every implementation: memory and Redis behave identically."""

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import NamedTuple

import pytest
import redis.asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.envelope import Envelope
from gateway.errors import JournalConflict
from gateway.journal.base import Journal, JournalHead
from gateway.journal.memory import MemoryJournal
from gateway.journal.redis import RedisJournal

Clock = Callable[[], float]
Factory = Callable[[AsyncExitStack, int, float, Clock], Awaitable[Journal]]


def env(seq: int, created_ms: int = 0, user_body: bytes | None = None) -> Envelope:
    return Envelope(seq, "S", b'{"s":%d}' % seq, created_ms, "diagnostic" if user_body else "", user_body)


def as_tuple(e: Envelope) -> tuple[object, ...]:
    return (e.seq, e.stage, e.body, e.created_ms, e.scope, e.user_body)


async def memory_journal(stack: AsyncExitStack, max_events: int, max_age_s: float, clock: Clock) -> Journal:
    return MemoryJournal(max_events, max_age_s, clock=clock)


def redis_journal_factory(url: str) -> Factory:
    async def make(stack: AsyncExitStack, max_events: int, max_age_s: float, clock: Clock) -> Journal:
        client = redis.asyncio.Redis.from_url(url)
        stack.push_async_callback(client.aclose)
        # A fresh prefix per journal: examples never see each other's keys.
        return RedisJournal(
            client, prefix=f"t{uuid.uuid4().hex[:8]}", max_events=max_events, max_age_s=max_age_s, clock=clock
        )

    return make


@pytest.fixture(params=["memory", "redis"])
def make_journal(request: pytest.FixtureRequest) -> Factory:
    if request.param == "memory":
        return memory_journal
    return redis_journal_factory(request.getfixturevalue("redis_url"))


def run(make: Factory, test: Callable[[Callable[..., Awaitable[Journal]]], Awaitable[None]]) -> None:
    async def main() -> None:
        async with AsyncExitStack() as stack:

            async def journal(max_events: int, max_age_s: float, clock: Clock = lambda: 0) -> Journal:
                return await make(stack, max_events, max_age_s, clock)

            await test(journal)

    asyncio.run(main())


def test_append_read_head_and_cursor(make_journal: Factory) -> None:
    async def t(journal: Callable[..., Awaitable[Journal]]) -> None:
        j = await journal(100, 1e6)
        assert await j.head("c") == JournalHead(0, 1, None)
        await j.append("c", [env(1), env(2)], "h2")
        await j.append("c", [env(3)], None)  # gateway-originated: cursor unchanged
        await j.append("c", [], None)  # nothing at all: a no-op
        assert await j.head("c") == JournalHead(3, 1, "h2", 1)
        assert [e.seq for e in await j.read("c", 0, 10)] == [1, 2, 3]
        assert [e.seq for e in await j.read("c", 1, 1)] == [2]
        assert await j.read("c", 3, 10) == []
        assert await j.read("c", 0, 0) == []
        assert await j.read("other", 0, 10) == []
        await j.append("c", [], "h3")  # cursor only
        assert await j.head("c") == JournalHead(3, 1, "h3", 1)

    run(make_journal, t)


def test_envelope_fields_round_trip(make_journal: Factory) -> None:
    async def t(journal: Callable[..., Awaitable[Journal]]) -> None:
        j = await journal(100, 1e6)
        sent = [env(7, 1_771_000_000_123, b'{"user":1}'), Envelope(8, "ASSISTANT_OUTPUT", b"\x00\xff{}", 5)]
        await j.append("c", sent, "ünïcode-cursor")
        assert [as_tuple(e) for e in await j.read("c", 0, 10)] == [as_tuple(e) for e in sent]
        assert (await j.head("c")).cursor == "ünïcode-cursor"

    run(make_journal, t)


def test_non_dense_append_is_refused_atomically(make_journal: Factory) -> None:
    async def t(journal: Callable[..., Awaitable[Journal]]) -> None:
        j = await journal(100, 1e6)
        await j.append("c", [env(1)], "a")
        for bad in ([env(3)], [env(2), env(4)], [env(1)], [env(0)]):
            with pytest.raises(JournalConflict):
                await j.append("c", bad, "b")
        assert await j.head("c") == JournalHead(1, 1, "a", 1)
        assert [e.seq for e in await j.read("c", 0, 10)] == [1]

    run(make_journal, t)


def test_retention_by_count_and_age_keeps_seq(make_journal: Factory) -> None:
    async def t(journal: Callable[..., Awaitable[Journal]]) -> None:
        now = [10.0]
        j = await journal(3, 5, lambda: now[0])
        await j.append("c", [env(i, 10_000 + 100 * i) for i in range(1, 6)], "x")
        assert await j.head("c") == JournalHead(5, 3, "x", 1)
        assert [e.seq for e in await j.read("c", 0, 10)] == [3, 4, 5]
        now[0] = 15.5  # seqs 3 (10_300 ms) and 4 are past 5 s; 5 (10_500 ms) is exactly at the edge: kept
        assert await j.head("c") == JournalHead(5, 5, "x", 1)
        assert [e.seq for e in await j.read("c", 0, 10)] == [5]
        now[0] = 100.0  # everything older than 5 s
        assert await j.head("c") == JournalHead(5, 6, "x", 1)
        assert await j.read("c", 0, 10) == []
        await j.append("c", [env(6, 100_000)], "y")  # seq continues, never reused
        assert [e.seq for e in await j.read("c", 0, 10)] == [6]

    run(make_journal, t)


def test_read_skips_expired_prefix_and_honours_limit(make_journal: Factory) -> None:
    async def t(journal: Callable[..., Awaitable[Journal]]) -> None:
        now = [0.0]
        j = await journal(100, 10, lambda: now[0])
        await j.append("c", [env(i, i * 1000) for i in range(1, 21)], None)
        now[0] = 15.0  # seqs 1-4 expired at read time
        assert [e.seq for e in await j.read("c", 0, 3)] == [5, 6, 7]
        assert [e.seq for e in await j.read("c", 17, 100)] == [18, 19, 20]
        assert (await j.head("c")).oldest == 5

    run(make_journal, t)


def test_new_journal_starts_at_any_seq_then_stays_dense(make_journal: Factory) -> None:
    async def t(journal: Callable[..., Awaitable[Journal]]) -> None:
        j = await journal(100, 1e6)
        with pytest.raises(JournalConflict):
            await j.append("c", [], "cursor-without-journal")
        with pytest.raises(JournalConflict):
            await j.append("c", [env(0)], "zero")
        assert await j.head("c") == JournalHead()
        await j.append("c", [env(1_771_000_000_001)], "a")
        assert await j.head("c") == JournalHead(1_771_000_000_001, 1_771_000_000_001, "a", 1_771_000_000_001)
        with pytest.raises(JournalConflict):
            await j.append("c", [env(1_771_000_000_003)], "b")
        assert await j.read("c", 2**63 - 1, 10) == []

    run(make_journal, t)


# Model-based: random operation sequences give the same answers from memory and Redis.
class Append(NamedTuple):
    offset: int  # from the valid next seq
    size: int
    holey: bool  # break density inside the batch
    cursor: str | None
    lag_ms: int  # how far created_ms lags the clock


class Tick(NamedTuple):
    ms: int


class Read(NamedTuple):
    after_offset: int  # from the oldest retained seq
    limit: int


class Head(NamedTuple):
    pass


APPEND = st.builds(
    Append,
    st.sampled_from([0] * 8 + [1, -1]),
    st.integers(0, 6),
    st.sampled_from([False] * 9 + [True]),
    st.one_of(st.none(), st.text("abc", min_size=1, max_size=3)),
    st.sampled_from([0, 0, 500, 1000, 3000]),
)
OP = st.one_of(
    APPEND,
    APPEND,
    # Whole half-seconds: entries land exactly on the age cutoff often (the >= edge).
    st.builds(Tick, st.integers(0, 8).map(lambda n: n * 500)),
    st.builds(Read, st.integers(-3, 12), st.integers(0, 8)),
    st.builds(Head),
)


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(OP, max_size=30),
    max_events=st.integers(1, 20),
    # Also Redis's real TTL: long enough that no example outlives it.
    max_age_s=st.sampled_from([3.0, 5.0]),
    first=st.integers(1, 2**41),
)
def test_memory_and_redis_agree(
    redis_server: str, ops: list[Append | Tick | Read | Head], max_events: int, max_age_s: float, first: int
) -> None:
    async def main() -> None:
        now_ms = [1_771_000_000_000]

        def clock() -> float:
            return now_ms[0] / 1000

        async with AsyncExitStack() as stack:
            mem = await memory_journal(stack, max_events, max_age_s, clock)
            red = await redis_journal_factory(redis_server)(stack, max_events, max_age_s, clock)
            last_created = 0

            async def both(call: Callable[[Journal], Awaitable[object]]) -> None:
                outcomes: list[object] = []
                for j in (mem, red):
                    try:
                        result = await call(j)
                        outcomes.append([as_tuple(e) for e in result] if isinstance(result, list) else result)
                    except JournalConflict:
                        outcomes.append("conflict")
                assert outcomes[0] == outcomes[1]

            for op in ops:
                head = await mem.head("c")
                if isinstance(op, Tick):
                    now_ms[0] += op.ms
                elif isinstance(op, Append):
                    start = (head.seq + 1 if head.exists else first) + op.offset
                    seqs = [start + i + (1 if op.holey and i == op.size - 1 and i else 0) for i in range(op.size)]
                    # created_ms never decreases along a journal, but spreads inside a batch too.
                    created = [max(last_created, now_ms[0] - op.lag_ms + 500 * i) for i in range(op.size)]
                    last_created = max([last_created, *created])
                    batch, cursor = [env(s, c) for s, c in zip(seqs, created, strict=True)], op.cursor
                    await both(lambda j: j.append("c", batch, cursor))  # noqa: B023
                elif isinstance(op, Read):
                    after, limit = max(0, head.oldest - 1) + op.after_offset, op.limit
                    await both(lambda j: j.read("c", after, limit))  # noqa: B023
                await both(lambda j: j.head("c"))

    asyncio.run(main())
