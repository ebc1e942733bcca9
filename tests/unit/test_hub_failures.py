"""The hub never leaves a viewer silent: failures are told, one viewer's failure never stops the others."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from gateway.envelope import Envelope
from gateway.errors import JournalUnavailable
from gateway.hub import Hub, SubscriberStale
from gateway.journal.base import JournalHead
from gateway.journal.batched import BatchedReads
from gateway.journal.memory import MemoryJournal

C = "c"


def env(seq: int) -> Envelope:
    return Envelope(seq, "S", b"{}", seq)


class CountingJournal(MemoryJournal):
    """The memory journal, counting calls and failing on demand like an unreachable Redis."""

    def __init__(self) -> None:
        super().__init__(1000, 1e9, clock=lambda: 0)
        self.heads = self.reads = 0
        self.down = False

    async def head(self, conversation_id: str) -> JournalHead:
        self.heads += 1
        await asyncio.sleep(0)  # a round trip: others may queue behind it meanwhile
        if self.down:
            raise JournalUnavailable("redis down")
        return await super().head(conversation_id)

    async def read(self, conversation_id: str, after: int, limit: int) -> list[Envelope]:
        self.reads += 1
        await asyncio.sleep(0)
        if self.down:
            raise JournalUnavailable("redis down")
        return await super().read(conversation_id, after, limit)

    async def append(
        self, conversation_id: str, envelopes: Sequence[Envelope], cursor: str | None, *, owner: str | None = None
    ) -> None:
        await super().append(conversation_id, envelopes, cursor, owner=owner)


def test_a_thousand_joins_cost_one_head_and_a_thousand_catch_ups_one_read() -> None:
    async def main() -> None:
        journal = CountingJournal()
        await journal.append(C, [env(s) for s in range(1, 11)], "10")
        hub = Hub(BatchedReads(journal), 100, 1 << 20, 1000)
        joined = await asyncio.gather(*(hub.subscribe(C, 4) for _ in range(1000)))
        assert journal.heads == 1
        subs = [sub for sub, _ in joined]
        batches = await asyncio.gather(*(sub.next_batch() for sub in subs))
        assert journal.reads == 1
        assert all([e.seq for e in batch] == list(range(5, 11)) for batch in batches)
        # A head asked for after a batch went out is a new round trip, never an answer older than the ask.
        await journal.append(C, [env(11)], "11")
        sub, _ = await hub.subscribe(C, None)
        assert journal.heads == 2 and sub.cursor == 11

    asyncio.run(main())


def test_a_journal_that_fails_a_catch_up_read_tells_the_viewer_where_to_resume() -> None:
    async def main() -> None:
        journal = CountingJournal()
        await journal.append(C, [env(s) for s in range(1, 11)], "10")
        hub = Hub(BatchedReads(journal), 100, 1 << 20, 1000)
        sub, _ = await hub.subscribe(C, 3)
        journal.down = True
        with pytest.raises(SubscriberStale) as told:
            await sub.next_batch()
        assert (told.value.reason, told.value.cursor) == ("unavailable", 3)
        assert told.value.sse_data() == (
            "error",
            {"error": "journal_unavailable", "message": told.value.sse_data()[1]["message"], "resumeFrom": 3},
        )
        assert told.value.stomp_message().startswith("journal_unavailable: ")
        assert told.value.stomp_message().endswith("resume with since-seq:3")
        with pytest.raises(JournalUnavailable):  # a join is refused loudly too; the transport tells it
            await hub.subscribe(C, None)
        assert hub.viewers(C) == 1  # the refused join left nothing registered

    asyncio.run(main())


def test_one_failing_viewer_is_cut_loose_and_the_others_still_get_every_envelope() -> None:
    async def main() -> None:
        journal = CountingJournal()
        await journal.append(C, [env(1)], "1")
        hub = Hub(journal, 100, 1 << 20, 1000)
        subs = [(await hub.subscribe(C, None))[0] for _ in range(3)]
        got: list[list[int]] = [[], [], []]

        def writer(i: int):  # type: ignore[no-untyped-def]
            def write(e: Envelope) -> bool:
                if i == 1:
                    raise RuntimeError("a transport bug")
                got[i].append(e.seq)
                return True

            return write

        for i, sub in enumerate(subs):
            sub.direct = writer(i)
            assert sub.park(lambda: None)
        for seq in (2, 3):
            await journal.append(C, [env(seq)], str(seq))
            hub.publish(C, [env(seq)])
        assert got[0] == got[2] == [2, 3]
        assert subs[1].failure == "internal"
        with pytest.raises(SubscriberStale) as told:
            await subs[1].next_batch()
        assert told.value.sse_data()[1]["error"] == "internal_error"

    asyncio.run(main())


def test_failing_a_conversation_tells_only_the_viewers_it_names() -> None:
    async def main() -> None:
        journal = CountingJournal()
        await journal.append(C, [env(s) for s in range(1, 4)], "3")
        hub = Hub(journal, 100, 1 << 20, 1000)
        old, _ = await hub.subscribe(C, None)
        new, _ = await hub.subscribe(C, None)
        new.cursor = 0
        told = hub.fail_conversation(C, "reset", {"oldest": 7, "newest": 9}, lambda s: s.cursor != 0)
        assert told == 1 and old.failure == "reset" and new.failure is None
        with pytest.raises(SubscriberStale) as exc:
            await old.next_batch()
        assert exc.value.sse_data() == ("stale", {"reason": "reset", "resumeFrom": 3, "oldest": 7, "newest": 9})

    asyncio.run(main())


def test_a_viewer_from_before_the_journal_hears_when_the_journal_lost_what_it_was_offered() -> None:
    async def main() -> None:
        journal = CountingJournal()
        hub = Hub(journal, 100, 1 << 20, 1000)
        sub, _ = await hub.subscribe(C, None)  # no journal yet: cursor 0
        first = [env(s) for s in range(100, 103)]
        await journal.append(C, first, "x")
        hub.publish(C, first)  # offered live, not yet read by the viewer
        # Redis loses the journal; a new incarnation begins above it before the viewer reads.
        journal._convs.clear()  # type: ignore[attr-defined]
        await journal.append(C, [env(500)], "y")
        with pytest.raises(SubscriberStale) as told:
            await sub.next_batch()
        assert (told.value.reason, told.value.cursor) == ("expired", 0)

    asyncio.run(main())
