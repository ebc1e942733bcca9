"""The bridge's asyncio side with a fake broker link: order, window, cursor, resend, pins, shutdown."""

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.bridge import relay
from gateway.bridge.link import Outgoing, Post
from gateway.bridge.relay import Bridge
from gateway.bridge.sender import Sender
from gateway.bridge.store import MemoryCursorStore, MemoryPinStore, Pin, PinKind
from gateway.config import Settings
from gateway.envelope import Envelope
from gateway.hub import Hub
from gateway.journal.memory import MemoryJournal
from gateway.metrics import Metrics

C = "9bf7540a-b129-4685-a120-730e8a0cb94b"
D = "0d8d0b8e-4a0e-4f55-9c1e-2b0b3b6f2c11"


@pytest.fixture(autouse=True)
def quick_flush(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "FLUSH_S", 0.2)  # scenarios often stop with unconfirmed envelopes


class FakeLink:
    """Records SENDs; the test decides when the broker answers, drops or comes back."""

    def __init__(self, sender: Sender) -> None:
        self.events = sender
        self.generation = 0
        self.sent: list[Outgoing] = []
        self.unanswered: list[Outgoing] = []
        self.resets: list[str] = []
        self.stopped = False

    def start(self) -> None:
        self.up()

    def up(self) -> None:
        self.generation += 1
        self.events.on_link_up(self.generation)

    def down(self, reason: str = "test") -> None:
        self.unanswered.clear()
        self.events.on_link_down(self.generation, reason)

    def send(self, frame: Outgoing) -> None:
        assert frame.generation == self.generation
        self.sent.append(frame)
        self.unanswered.append(frame)

    def answer(self, count: int | None = None) -> None:
        todo, self.unanswered = self.unanswered[:count], self.unanswered[len(self.unanswered[:count]) :]
        for frame in todo:
            self.events.on_receipt(frame.headers["receipt"])

    def reset(self, generation: int, reason: str) -> None:
        self.resets.append(reason)

    def stop(self, timeout: float) -> None:
        self.stopped = True


class FakeUpstreams:
    def __init__(self) -> None:
        self.holds: Counter[tuple[str, str]] = Counter()

    def hold(self, conversation_id: str, kind: str = "viewer") -> None:
        self.holds[(conversation_id, kind)] += 1

    def release(self, conversation_id: str, kind: str = "viewer") -> None:
        self.holds[(conversation_id, kind)] -= 1


class World:
    def __init__(self, **settings: Any) -> None:
        self.settings = Settings(bridge_url="stomp://broker", **settings)
        self.journal = MemoryJournal(1000, 1e9, clock=lambda: 0)
        self.hub = Hub(self.journal, 100, 1 << 20, 1000)
        self.upstreams = FakeUpstreams()
        self.cursors = MemoryCursorStore()
        self.pin_store = MemoryPinStore()
        self.now = 0.0
        self.link: FakeLink | None = None
        self.bridge = Bridge(
            self.settings, journal=self.journal, hub=self.hub, upstreams=self.upstreams,  # type: ignore[arg-type]
            metrics=Metrics(), cursors=self.cursors, pins=self.pin_store, link_factory=self._link,
            clock=lambda: self.now,
        )  # fmt: skip
        self.seq: dict[str, int] = {}

    def _link(self, post: Post, sender: Sender) -> FakeLink:
        self.link = FakeLink(sender)
        return self.link

    async def emit(self, conv: str, count: int) -> None:
        first = self.seq.get(conv, 0) + 1
        envs = [Envelope(s, "S", b'{"seq":%d}' % s, 0) for s in range(first, first + count)]
        await self.journal.append(conv, envs, None)
        self.hub.publish(conv, envs)
        self.seq[conv] = first + count - 1

    def seqs(self, conv: str = C) -> list[int]:
        assert self.link is not None
        return [int(f.headers["seq"]) for f in self.link.sent if f.headers["conversation-id"] == conv]


async def settle(until: Callable[[], bool] | None = None, timeout: float = 2.0) -> None:
    """Let pumps and housekeeping run: until ``until`` holds, or for a moment when there is no condition."""
    if until is None:
        await asyncio.sleep(0.3)  # longer than one housekeeping period
        return
    async with asyncio.timeout(timeout):
        while not until():  # noqa: ASYNC110 (the conditions are plain state, nothing to wait on)
            await asyncio.sleep(0.005)


def run(test: Callable[[World], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        world = World(**settings)
        await world.bridge.start()
        try:
            await test(world)
        finally:
            await world.bridge.stop()

    asyncio.run(main())


def test_sends_every_envelope_in_order_with_headers_and_advances_on_receipt() -> None:
    async def scenario(w: World) -> None:
        await w.emit(C, 3)
        await w.bridge.pin(C, PinKind.API)
        await w.emit(C, 2)
        await settle(lambda: len(w.seqs()) == 5)
        assert w.seqs() == [1, 2, 3, 4, 5]
        frame = w.link.sent[0]  # type: ignore[union-attr]
        assert frame.destination == f"/topic/convengine.audit.{C}" and frame.body == b'{"seq":1}'
        assert {k: v for k, v in frame.headers.items() if k != "receipt"} == {
            "content-type": "application/json", "seq": "1", "conversation-id": C, "stage": "S", "persistent": "true",
        }  # fmt: skip
        pinned = w.bridge.get(C)
        assert pinned is not None and pinned.cursor.confirmed == 0 and w.bridge.lag() == 5
        w.link.answer(3)  # type: ignore[union-attr]
        assert pinned.cursor.confirmed == 3 and w.bridge.lag() == 2
        w.link.answer()  # type: ignore[union-attr]
        assert pinned.cursor.confirmed == 5 and w.bridge.lag() == 0
        assert w.upstreams.holds[(C, "pin")] == 1

    run(scenario)


def test_window_bounds_unconfirmed_sends() -> None:
    async def scenario(w: World) -> None:
        await w.bridge.pin(C, PinKind.API)
        await w.bridge.pin(D, PinKind.API)
        await w.emit(C, 10)
        await w.emit(D, 10)
        await settle(lambda: len(w.link.sent) == 4)  # type: ignore[union-attr]
        await settle()
        assert len(w.link.sent) == 4  # type: ignore[union-attr]
        link = w.link
        assert link is not None
        while len(link.sent) < 20:
            before = len(link.sent)
            link.answer(1)  # one slot frees: exactly one more SEND
            await settle(lambda: len(link.sent) == before + 1)  # noqa: B023
            assert len(link.unanswered) == 4
        assert w.seqs(C) == list(range(1, 11)) and w.seqs(D) == list(range(1, 11))

    run(scenario, bridge_window=4)


def test_reconnect_resends_unconfirmed_envelopes_in_order() -> None:
    async def scenario(w: World) -> None:
        link = w.link
        assert link is not None
        await w.bridge.pin(C, PinKind.API)
        await w.emit(C, 6)
        await settle(lambda: len(link.sent) == 6)
        link.answer(2)
        link.down("socket closed")  # 3..6 were sent but never confirmed
        assert not w.bridge.connected and w.bridge.readiness()["detail"]["connected"] is False
        await w.emit(C, 2)  # journaled while the broker is away
        await settle()
        assert len(link.sent) == 6  # nothing is sent while disconnected
        link.up()
        await settle(lambda: len(link.sent) == 12)
        assert w.seqs() == [1, 2, 3, 4, 5, 6, 3, 4, 5, 6, 7, 8]
        assert all(f.generation == 2 for f in link.sent[6:])
        link.answer()
        pinned = w.bridge.get(C)
        assert pinned is not None and pinned.cursor.confirmed == 8 and pinned.resends == 4
        detail = w.bridge.readiness()["detail"]
        assert detail["resends"] == 4 and detail["reconnects"] == 1 and detail["lag"] == 0

    run(scenario)


def test_missing_receipt_resets_the_connection() -> None:
    async def scenario(w: World) -> None:
        await w.bridge.pin(C, PinKind.API)
        await w.emit(C, 1)
        await settle(lambda: len(w.link.sent) == 1)  # type: ignore[union-attr]
        w.now = 5.0
        await settle(lambda: bool(w.link.resets))  # type: ignore[union-attr]
        assert w.link.resets == ["receipt timeout"]  # type: ignore[union-attr]
        assert "no RECEIPT" in w.bridge.readiness()["detail"]["lastError"]

    run(scenario, bridge_receipt_timeout_s=1.0)


def test_unpin_stops_and_a_new_pin_resumes_after_the_saved_cursor() -> None:
    async def scenario(w: World) -> None:
        link = w.link
        assert link is not None
        await w.bridge.pin(C, PinKind.API)
        await w.emit(C, 3)
        await settle(lambda: len(link.sent) == 3)
        link.answer()
        assert await w.bridge.unpin(C) is True
        assert await w.bridge.unpin(C) is False
        assert w.upstreams.holds[(C, "pin")] == 0 and await w.pin_store.load() == []
        await w.emit(C, 2)
        await settle()
        assert w.seqs() == [1, 2, 3]
        _, created = await w.bridge.pin(C, PinKind.API)
        assert created
        await settle(lambda: len(link.sent) == 5)
        assert w.seqs() == [1, 2, 3, 4, 5]  # nothing repeated

    run(scenario)


def test_pin_since_seq_and_store_persistence() -> None:
    async def scenario(w: World) -> None:
        await w.emit(C, 5)
        pinned, created = await w.bridge.pin(C, PinKind.API, since=3)
        assert created and pinned.view()["kind"] == "api"
        await settle(lambda: len(w.link.sent) == 2)  # type: ignore[union-attr]
        assert w.seqs() == [4, 5]
        assert [p.conversation_id for p in await w.pin_store.load()] == [C]

    run(scenario)


def test_stored_and_configured_pins_come_back_at_start() -> None:
    async def main() -> None:
        w = World(bridge_pin=D)
        await w.pin_store.put(Pin(C, PinKind.API, 0.0))
        await w.emit(C, 2)
        await w.cursors.save({C: 1})  # a previous process got 1 confirmed
        await w.bridge.start()
        try:
            assert [(p.conversation_id, p.pin.kind) for p in w.bridge.pins()] == [(D, PinKind.CONFIG), (C, PinKind.API)]
            await settle(lambda: len(w.link.sent) == 1)  # type: ignore[union-attr]
            assert w.seqs() == [2]
            assert [p.conversation_id for p in await w.pin_store.load()] == [C]  # config pins are not stored
        finally:
            await w.bridge.stop()

    asyncio.run(main())


def test_submitted_pin_expires_once_confirmed_and_idle() -> None:
    async def scenario(w: World) -> None:
        link = w.link
        assert link is not None
        await w.bridge.pin_submitted(C)
        await w.emit(C, 2)
        await settle(lambda: len(link.sent) == 2)
        w.now = 100.0
        await settle()
        assert w.bridge.get(C) is not None  # not confirmed yet: it stays
        link.answer()
        w.now = 200.0
        await settle(lambda: w.upstreams.holds[(C, "pin")] == 0)  # unpinned, upstream released
        assert w.bridge.get(C) is None
        assert await w.cursors.load(C) == 2

    run(scenario, bridge_pin="submitted", bridge_submitted_linger_s=60.0)


def test_submitted_pins_only_in_submitted_mode_and_a_put_makes_them_permanent() -> None:
    async def scenario(w: World) -> None:
        await w.bridge.pin_submitted(C)
        assert w.bridge.get(C) is None

    run(scenario)

    async def upgrade(w: World) -> None:
        await w.bridge.pin_submitted(C)
        _, created = await w.bridge.pin(C, PinKind.API)
        pinned = w.bridge.get(C)
        assert not created and pinned is not None and pinned.pin.kind is PinKind.API
        w.now = 1e6
        await settle()
        assert w.bridge.get(C) is not None

    run(upgrade, bridge_pin="submitted", bridge_submitted_linger_s=1.0)


def test_stop_waits_for_receipts_then_disconnects() -> None:
    async def main() -> None:
        w = World()
        await w.bridge.start()
        link = w.link
        assert link is not None
        await w.bridge.pin(C, PinKind.API)
        await w.emit(C, 3)
        await settle(lambda: len(link.sent) == 3)
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, link.answer)
        await w.bridge.stop()
        assert link.stopped and await w.cursors.load(C) == 3

    asyncio.run(main())
