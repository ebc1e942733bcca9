import asyncio

import pytest

from gateway.envelope import Envelope
from gateway.errors import JournalConflict
from gateway.journal.base import JournalHead
from gateway.journal.memory import MemoryJournal


def env(seq: int, created_ms: int = 0) -> Envelope:
    return Envelope(seq, "S", b'{"s":%d}' % seq, created_ms)


def test_append_read_head_and_cursor() -> None:
    async def main() -> None:
        j = MemoryJournal(max_events=100, max_age_s=1e6, clock=lambda: 0)
        assert await j.head("c") == JournalHead(0, 1, None)
        await j.append("c", [env(1), env(2)], "h2")
        await j.append("c", [env(3)], None)  # gateway-originated: cursor unchanged
        assert await j.head("c") == JournalHead(3, 1, "h2", 1)
        assert [e.seq for e in await j.read("c", 0, 10)] == [1, 2, 3]
        assert [e.seq for e in await j.read("c", 1, 1)] == [2]
        assert await j.read("c", 3, 10) == []
        assert await j.read("other", 0, 10) == []

    asyncio.run(main())


def test_non_dense_append_is_refused_atomically() -> None:
    async def main() -> None:
        j = MemoryJournal(100, 1e6, clock=lambda: 0)
        await j.append("c", [env(1)], "a")
        for bad in ([env(3)], [env(2), env(4)], [env(1)]):
            with pytest.raises(JournalConflict):
                await j.append("c", bad, "b")
        assert await j.head("c") == JournalHead(1, 1, "a", 1)

    asyncio.run(main())


def test_retention_by_count_and_age_keeps_seq() -> None:
    async def main() -> None:
        now = [10.0]
        j = MemoryJournal(max_events=3, max_age_s=5, clock=lambda: now[0])
        await j.append("c", [env(i, 10_000 + i) for i in range(1, 6)], "x")
        assert await j.head("c") == JournalHead(5, 3, "x", 1)
        assert [e.seq for e in await j.read("c", 0, 10)] == [3, 4, 5]
        now[0] = 100.0  # everything older than 5 s
        assert await j.head("c") == JournalHead(5, 6, "x", 1)
        await j.append("c", [env(6, 100_000)], "y")  # seq continues, never reused
        assert [e.seq for e in await j.read("c", 0, 10)] == [6]

    asyncio.run(main())


def test_new_journal_starts_at_any_seq_then_stays_dense() -> None:
    async def main() -> None:
        j = MemoryJournal(100, 1e6, clock=lambda: 0)
        with pytest.raises(JournalConflict):
            await j.append("c", [], "cursor-without-journal")
        await j.append("c", [env(1_771_000_000_001)], "a")
        assert await j.head("c") == JournalHead(1_771_000_000_001, 1_771_000_000_001, "a", 1_771_000_000_001)
        with pytest.raises(JournalConflict):
            await j.append("c", [env(1_771_000_000_003)], "b")

    asyncio.run(main())
