import asyncio
from collections.abc import Awaitable, Callable

import pytest

from gateway.envelope import Envelope
from gateway.hub import Hub, StaleNotice, SubscriberStale
from gateway.journal.memory import MemoryJournal

C = "c"


def env(seq: int, size: int = 10) -> Envelope:
    return Envelope(seq, "S", b"x" * size, seq)


def run(test: Callable[[MemoryJournal, Hub], Awaitable[None]], **kw: int) -> None:
    async def main() -> None:
        journal = MemoryJournal(kw.get("max_events", 1000), 1e9, clock=lambda: 0)
        hub = Hub(journal, kw.get("max_messages", 100), kw.get("max_bytes", 1 << 20), kw.get("replay_max", 1000))
        await test(journal, hub)

    asyncio.run(main())


async def emit(journal: MemoryJournal, hub: Hub, *seqs: int) -> None:
    envs = [env(s) for s in seqs]
    await journal.append(C, envs, str(seqs[-1]))
    hub.publish(C, envs)


async def drain(sub, until: int) -> list[int]:  # type: ignore[no-untyped-def]
    seen: list[int] = []
    async with asyncio.timeout(2):
        while not seen or seen[-1] < until:
            seen += [e.seq for e in await sub.next_batch()]
    return seen


def test_live_only_without_cursor() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        await emit(journal, hub, 1, 2)
        sub, notice = await hub.subscribe(C, None)
        assert notice is None and sub.cursor == 2
        await emit(journal, hub, 3, 4)
        assert await drain(sub, 4) == [3, 4]
        assert await sub.next_batch(timeout=0.01) == []

    run(t)


def test_resume_replays_then_splices_live_without_gap_or_duplicate() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        await emit(journal, hub, *range(1, 601))
        sub, notice = await hub.subscribe(C, 10)
        assert notice is None
        await emit(journal, hub, 601)  # live while the replay has not even started
        await emit(journal, hub, 602, 603)
        assert await drain(sub, 603) == list(range(11, 604))

    run(t)


def test_cursor_zero_replays_everything() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        await emit(journal, hub, 1, 2, 3)
        sub, notice = await hub.subscribe(C, 0)
        assert notice is None and await drain(sub, 3) == [1, 2, 3]

    run(t)


def test_expired_and_ahead_cursors_are_signalled() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        await emit(journal, hub, *range(1, 21))  # retention keeps 11..20
        sub, notice = await hub.subscribe(C, 3)
        assert notice == StaleNotice(3, 11, 20, "expired")
        assert await drain(sub, 20) == list(range(11, 21))
        sub, notice = await hub.subscribe(C, 99)
        assert notice == StaleNotice(99, 11, 20, "ahead")
        assert await drain(sub, 20) == list(range(11, 21))
        sub, notice = await hub.subscribe(C, 10)  # exactly the edge of retention: exact resume
        assert notice is None

    run(t, max_events=10)


def test_replay_is_capped() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        await emit(journal, hub, *range(1, 101))
        sub, notice = await hub.subscribe(C, 0)
        assert notice == StaleNotice(0, 96, 100, "expired")
        assert await drain(sub, 100) == [96, 97, 98, 99, 100]

    run(t, replay_max=5)


def test_slow_subscriber_is_cut_loose_others_unaffected() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        slow, _ = await hub.subscribe(C, None)
        fast, _ = await hub.subscribe(C, None)
        for s in range(1, 11):
            await emit(journal, hub, s)
            assert [e.seq for e in await fast.next_batch()] == [s]
        with pytest.raises(SubscriberStale) as err:
            await slow.next_batch()
        assert err.value.reason == "slow"
        assert slow.queued == 0  # memory released at once

    run(t, max_messages=4)


def test_byte_bound() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        sub, _ = await hub.subscribe(C, None)
        envs = [Envelope(i, "S", b"y" * 400, i) for i in (1, 2, 3)]
        await journal.append(C, envs, None)
        hub.publish(C, envs)
        with pytest.raises(SubscriberStale):
            await sub.next_batch()

    run(t, max_bytes=1024)


def test_gap_in_live_queue_is_filled_from_journal() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        sub, _ = await hub.subscribe(C, None)
        await journal.append(C, [env(1), env(2)], None)  # journaled but never published locally
        await emit(journal, hub, 3)
        assert await drain(sub, 3) == [1, 2, 3]

    run(t)


def test_unsubscribe_and_close_all() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        a, _ = await hub.subscribe(C, None)
        b, _ = await hub.subscribe(C, None)
        hub.unsubscribe(a)
        assert hub.viewers(C) == 1
        hub.close_all("shutdown")
        with pytest.raises(SubscriberStale, match="shutdown"):
            await b.next_batch()

    run(t)


def test_journal_starting_at_a_large_seq() -> None:
    base = 1_771_064_521_102

    async def t(journal: MemoryJournal, hub: Hub) -> None:
        early, _ = await hub.subscribe(C, None)  # before the journal exists
        zero, _ = await hub.subscribe(C, 0)
        await emit(journal, hub, base + 1, base + 2)
        assert await drain(early, base + 2) == [base + 1, base + 2]
        assert await drain(zero, base + 2) == [base + 1, base + 2]
        late, notice = await hub.subscribe(C, 0)
        assert notice is None and await drain(late, base + 2) == [base + 1, base + 2]
        # A cursor from an earlier incarnation of the journal is never silently resumed.
        old, notice = await hub.subscribe(C, 57)
        assert notice == StaleNotice(57, base + 1, base + 2, "expired")
        assert await drain(old, base + 2) == [base + 1, base + 2]

    run(t)


def test_a_burst_goes_out_in_one_direct_write_and_falls_back_in_order() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        await emit(journal, hub, 1)
        sub, _ = await hub.subscribe(C, None)
        writes: list[list[int]] = []
        accept = [True]

        def one(e: Envelope) -> bool:
            if accept[0]:
                writes.append([e.seq])
            return accept[0]

        def many(envs: list[Envelope]) -> bool:
            if accept[0]:
                writes.append([e.seq for e in envs])
            return accept[0]

        sub.direct, sub.direct_batch = one, many
        waiting = asyncio.create_task(sub.next_batch())
        await asyncio.sleep(0)  # the transport now waits: the fast path is open
        await emit(journal, hub, 2, 3, 4)
        await emit(journal, hub, 5)
        assert writes == [[2, 3, 4], [5]] and sub.cursor == 5
        accept[0] = False  # the socket stops taking writes: the burst waits in the queue, in order
        await emit(journal, hub, 6, 7, 8)
        assert [e.seq for e in await waiting] == [6, 7, 8] and sub.cursor == 8

    run(t)


def test_a_burst_with_a_hole_is_not_written_directly() -> None:
    async def t(journal: MemoryJournal, hub: Hub) -> None:
        await emit(journal, hub, 1)
        sub, _ = await hub.subscribe(C, None)
        batches: list[list[int]] = []
        sub.direct = lambda e: False
        sub.direct_batch = lambda envs: batches.append([e.seq for e in envs]) is None
        waiting = asyncio.create_task(sub.next_batch())
        await asyncio.sleep(0)
        sub.offer_batch([env(2), env(4)])  # not consecutive: never one direct write
        assert batches == []
        assert [e.seq for e in await waiting] == [2]

    run(t)
