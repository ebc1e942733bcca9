import asyncio
import dataclasses
import time

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


# Bounded memory (issue 14): periodic sweep, a cap on conversations, tombstones, each envelope kept once.


def test_sweep_frees_expired_conversations_without_any_read() -> None:
    async def main() -> None:
        now = [10.0]
        j = MemoryJournal(max_events=100, max_age_s=4, clock=lambda: now[0])
        for c in ("a", "b", "c"):
            await j.append(c, [env(1, 9_000), env(2, 10_000)], "h2")
        await j.append("d", [env(1, 13_000)], "h1")
        now[0] = 14.5  # a, b, c: every envelope older than 4 s; d: 1.5 s old
        assert j.sweep() == 3
        assert j.conversations == 1
        # Retired, not forgotten: the seq goes on where it was, and nothing is readable.
        assert await j.head("a") == JournalHead(2, 3, "h2", 1)
        assert await j.read("a", 0, 10) == []
        await j.append("a", [env(3, 14_500)], None)
        assert await j.head("a") == JournalHead(3, 3, "h2", 1)
        assert [e.seq for e in await j.read("d", 0, 10)] == [1]

    asyncio.run(main())


def test_cap_evicts_least_recently_appended_nobody_uses() -> None:
    async def main() -> None:
        j = MemoryJournal(max_events=100, max_age_s=1e6, clock=lambda: 0, max_conversations=2)
        retired: list[str] = []
        j.in_use = lambda c: c == "a"
        j.on_retired = retired.append
        await j.append("a", [env(1)], None)
        await j.append("b", [env(1)], None)
        await j.append("c", [env(1)], None)  # over the cap: "a" is the oldest but in use, "b" goes
        assert j.conversations == 2
        assert [e.seq for e in await j.read("a", 0, 10)] == [1]
        assert await j.read("b", 0, 10) == []
        assert retired == ["b"]
        await j.append("a", [env(2)], None)  # now "c" is the least recently appended
        await j.append("d", [env(1)], None)
        assert await j.read("c", 0, 10) == [] and retired == ["b", "c"]
        j.in_use = lambda c: True  # everyone watched: the cap still holds, oldest first, but no forgetting
        await j.append("e", [env(1)], None)
        assert await j.read("a", 0, 10) == [] and retired == ["b", "c"]
        assert j.conversations == 2

    asyncio.run(main())


def test_resume_after_eviction_is_stale_expired_never_silently_wrong() -> None:
    from gateway.hub import Hub

    async def main() -> None:
        now = [1_000.0]
        j = MemoryJournal(max_events=100, max_age_s=1e6, clock=lambda: now[0], max_conversations=1)
        hub = Hub(j, 100, 1 << 20, 1000)
        await j.append("a", [env(s) for s in range(1, 6)], "h5")
        await j.append("b", [env(1)], None)  # evicts "a"
        _, notice = await hub.subscribe("a", 3)
        assert notice is not None and notice.reason == "expired" and (notice.oldest, notice.newest) == (6, 5)
        _, exact = await hub.subscribe("a", 5)  # this viewer had everything: nothing lost, nothing to say
        assert exact is None
        # "a" comes back: seq continues at 6, the old cursor is still told it missed 4 and 5.
        await j.append("a", [env(6)], "h6")
        _, notice = await hub.subscribe("a", 3)
        assert notice is not None and notice.reason == "expired" and (notice.oldest, notice.newest) == (6, 6)

    asyncio.run(main())


def test_tombstones_are_bounded_and_seq_never_reused() -> None:
    async def main() -> None:
        now = [2_000_000.0]  # 2e9 ms
        j = MemoryJournal(max_events=10, max_age_s=1e6, clock=lambda: now[0], max_conversations=1)
        await j.append("ahead", [env(3_000_000_000)], "x")  # seq above the wall clock in ms
        for i in range(1_500):
            await j.append(f"c{i}", [env(1_000 + i)], None)
        assert j.conversations == 1
        # 1,000 tombstones at most (max(1000, 4 x 1)), except one the clock has not passed yet.
        assert await j.head("ahead") == JournalHead(3_000_000_000, 3_000_000_001, "x", 3_000_000_000)
        assert await j.head("c10") == JournalHead()  # forgotten: a new incarnation starts at the clock...
        assert int(now[0] * 1000) > 1_010  # ...which is past every seq it ever had
        assert (await j.head("c1400")).seq == 2_400

    asyncio.run(main())


def test_each_envelope_is_kept_once_without_transport_caches() -> None:
    async def main() -> None:
        j = MemoryJournal(max_events=100, max_age_s=1e6, clock=lambda: 0)
        live = env(1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            live.body = b"{}"  # type: ignore[misc]  # a value: nothing writes into a journaled envelope
        fields = {f.name for f in dataclasses.fields(live)}
        assert fields == {"seq", "stage", "body", "created_ms", "scope", "user_body", "covers_from"}
        assert not hasattr(live, "__dict__")  # and no room for a transport's cache either
        await j.append("c", [live], None)
        first = (await j.read("c", 0, 1))[0]
        assert first == live and first.body is live.body  # the journaled value itself, nothing else
        assert (await j.read("c", 0, 1))[0] is first

    asyncio.run(main())


def test_gateway_sweeps_expired_conversations_by_itself() -> None:
    from gateway.config import Settings
    from gateway.runtime import Gateway

    async def main() -> None:
        gw = Gateway(Settings(journal_max_age_s=1))
        journal = gw.journal
        assert isinstance(journal, MemoryJournal)
        await gw.start()
        try:
            now_ms = int(time.time() * 1000)
            await journal.append("c", [env(now_ms, now_ms)], None)
            assert journal.conversations == 1
            deadline = time.monotonic() + 5
            while journal.conversations:  # nobody reads: only the sweeper can retire it
                assert time.monotonic() < deadline, "the expired conversation was never swept"
                await asyncio.sleep(0.05)
        finally:
            await gw.close()

    asyncio.run(main())
