"""The one delivery path (gateway/delivery.py): render once per group, skip hidden, count alike."""

import asyncio

from prometheus_client import CollectorRegistry, Counter

from gateway.coalesce import DELTA, coalesce
from gateway.delivery import Delivery, FrameCache, sse_frame, sse_user_frame
from gateway.envelope import Envelope
from gateway.hub import Hub
from gateway.journal.memory import MemoryJournal
from gateway.metrics import LiveLatency

C = "c"


def visible(seq: int) -> Envelope:
    return Envelope(seq, "ASSISTANT_OUTPUT", b'{"text":"%d","args_digest":"x"}' % seq, seq, "",
                    b'{"text":"%d"}' % seq)  # fmt: skip


def hidden(seq: int) -> Envelope:
    return Envelope(seq, "HQ_AGENT_ACTIVE", b'{"hint":"%d"}' % seq, seq, "diagnostic")


def test_each_group_renders_once_hidden_is_never_counted_and_live_latency_is_observed_once() -> None:
    async def main() -> None:
        journal = MemoryJournal(1000, 1e9, clock=lambda: 0)
        hub = Hub(journal, 100, 1 << 20, 1000)
        delivered = Counter("d", "d", ["transport"], registry=CollectorRegistry()).labels("sse")
        observed: list[float] = []
        live = LiveLatency(observed.append)
        renders: list[tuple[bool, int]] = []
        written: list[list[bytes]] = [[], [], []]

        def renderer(user: bool):  # type: ignore[no-untyped-def]
            def render(env: Envelope) -> bytes:
                renders.append((user, env.seq))
                return sse_frame(env, user)

            return render

        for i, user in enumerate((True, True, False)):  # two user-scope viewers, one full
            sub, _ = await hub.subscribe(C, None)
            out = written[i]
            delivery = Delivery(sub, user, hub.frames(C, ("sse", user)), renderer(user), delivered, live,
                                lambda data, out=out: out.append(data) is None)  # fmt: skip
            delivery.attach()
            assert sub.park(lambda: None)  # idle and caught up: the direct path is open
        for burst in ([visible(1)], [hidden(2)], [visible(3), hidden(4), visible(5)]):
            await journal.append(C, burst, None)
            hub.publish(C, burst)
        user_a, user_b, full = written
        assert user_a == user_b == [sse_user_frame(visible(1)), sse_user_frame(visible(3)) + sse_user_frame(visible(5))]
        assert all(a is b for a, b in zip(user_a, user_b, strict=True))  # the same bytes, rendered once
        assert b"".join(full) == b"".join(sse_frame(e) for e in [visible(1), hidden(2), visible(3), hidden(4),
                                                                 visible(5)])  # fmt: skip
        assert sorted(renders) == [(False, s) for s in range(1, 6)] + [(True, 1), (True, 3), (True, 5)]
        assert delivered._value.get() == 2 * 3 + 5  # hidden envelopes are never counted as delivered
        assert len(observed) == 5  # every live envelope once per transport, whichever viewer came first

    asyncio.run(main())


def test_the_task_path_counts_like_the_direct_path() -> None:
    async def main() -> None:
        journal = MemoryJournal(1000, 1e9, clock=lambda: 0)
        hub = Hub(journal, 100, 1 << 20, 1000)
        delivered = Counter("d", "d", ["transport"], registry=CollectorRegistry()).labels("sse")
        observed: list[float] = []
        sub, _ = await hub.subscribe(C, None)
        delivery = Delivery(sub, True, hub.frames(C, ("sse", True)), sse_user_frame, delivered,
                            LiveLatency(observed.append))  # fmt: skip
        envs = [visible(1), hidden(2), visible(3)]
        await journal.append(C, envs, None)
        hub.publish(C, envs)  # no direct path: queued
        batch = await sub.next_batch()
        frames, shown = delivery.prepare(batch)
        delivery.count(batch, shown)
        assert frames == [sse_user_frame(visible(1)), sse_user_frame(visible(3))] and shown == [envs[0], envs[2]]
        assert delivered._value.get() == 2 and len(observed) == 3

    asyncio.run(main())


def test_a_frame_is_reused_only_for_the_same_body() -> None:
    cache: FrameCache[bytes] = FrameCache()
    deltas = [Envelope(s, DELTA, b'{"payload":{"text":"%d"}}' % s, s) for s in (1, 2, 3)]
    first = cache.get(deltas[2], sse_frame)
    assert cache.get(deltas[2], sse_frame) is first
    replayed = Envelope(3, DELTA, deltas[2].body, 3)  # the journal's bytes: shared
    assert cache.get(replayed, sse_frame) is first
    # A coalesced delta or a snapshot carries the seq of the last envelope it stands for, another body.
    other = Envelope(3, "TURN_SNAPSHOT", b'{"snapshot":true}', 3)
    assert cache.get(other, sse_frame) == sse_frame(other) != first
    (merged,) = coalesce(deltas)
    assert merged.seq == 3 and merged.first_seq == 1
    assert cache.get(merged, sse_frame) == sse_frame(merged) and b'"text":"123"' in sse_frame(merged)


def test_frame_caches_live_as_long_as_the_conversation_has_viewers_here() -> None:
    async def main() -> None:
        hub = Hub(MemoryJournal(1000, 1e9, clock=lambda: 0), 100, 1 << 20, 1000)
        sub, _ = await hub.subscribe(C, None)
        shared = hub.frames(C, ("sse", False))
        assert hub.frames(C, ("sse", False)) is shared and hub.frames(C, ("sse", True)) is not shared
        hub.unsubscribe(sub)
        assert hub.frames(C, ("sse", False)) is not shared  # dropped with the last viewer
        assert hub.frames(C, ("sse", False)) is not hub.frames(C, ("sse", False))  # none kept for nobody

    asyncio.run(main())
