import asyncio
import itertools

import orjson

from gateway.coalesce import coalesce
from gateway.envelope import ConversationInfo, Envelope, HqEvent, TurnState, load_mapping, normalize
from gateway.hub import Hub, SubscriberStale
from gateway.journal.memory import MemoryJournal
from gateway.snapshot import TurnView

CONV = "9bf7540a-b129-4685-a120-730e8a0cb94b"
MAPPING = load_mapping()


def envelopes(events: list[tuple[str, dict]], start: int = 1) -> list[Envelope]:
    out, turn = [], TurnState()
    for i, (name, data) in enumerate(events):
        env, turn = normalize(
            HqEvent(name, data, str(i)),
            seq=start + len(out),
            conversation_id=CONV,
            turn=turn,
            mapping=MAPPING,
            now_ms=1_000 + i,
            info=ConversationInfo(),
        )
        assert env is not None
        out.append(env)
    return out


def status(text: str) -> tuple[str, dict]:
    return ("status", {"message": text})


def delta(text: str) -> tuple[str, dict]:
    return ("text_delta", {"text": text})


TURN = [
    ("gateway.user_input", {"message": "q"}),
    status("thinking"),
    delta("Hel"),
    delta("lo "),
    status("still thinking"),
    delta("wor"),
    ("tool_call", {"id": "t1", "name": "sql"}),
    delta("ld"),
    status("done soon"),
    ("final", {"text": "Hello world"}),
]


def body(env: Envelope) -> dict:
    return orjson.loads(env.body)


def test_coalesce_merges_deltas_drops_superseded_captions_and_keeps_the_rest() -> None:
    out = coalesce(envelopes(TURN))
    stages = [e.stage for e in out]
    # Dropping the superseded captions makes the first three deltas consecutive: one envelope.
    assert stages == [
        "USER_INPUT",
        "ASSISTANT_OUTPUT_DELTA",
        "MCP_TOOL_CALL",
        "ASSISTANT_OUTPUT_DELTA",
        "VERBOSE",
        "ASSISTANT_OUTPUT",
    ]
    # Coverage is contiguous: the cursor never skips or repeats a seq.
    assert out[0].first_seq == 1 and out[-1].seq == 10
    for a, b in itertools.pairwise(out):
        assert b.first_seq == a.seq + 1
    merged = body(out[1])
    assert merged["payload"]["text"] == "Hello wor" and merged["auditId"] == 6
    assert merged["payload"]["_meta"]["coalesced"] == {"fromSeq": 2, "toSeq": 6, "count": 5}
    assert body(out[4])["verbose"]["text"] == "done soon"  # the latest caption survives
    text = "".join(body(e)["payload"]["text"] for e in out if e.stage == "ASSISTANT_OUTPUT_DELTA")
    assert text == "Hello world"


def test_coalesce_never_merges_across_turns_or_other_stages() -> None:
    events = [delta("a"), ("final", {"text": "a"}), ("done", {}), delta("b"), delta("c")]
    out = coalesce(envelopes(events))
    assert [e.stage for e in out] == [
        "ASSISTANT_OUTPUT_DELTA",
        "ASSISTANT_OUTPUT",
        "ENGINE_RETURN",
        "ASSISTANT_OUTPUT_DELTA",
    ]
    assert body(out[3])["payload"]["text"] == "bc"
    assert coalesce(out) == out or [e.seq for e in coalesce(out)] == [e.seq for e in out]  # idempotent


def test_turn_view_mid_turn_and_after() -> None:
    envs = envelopes(TURN)
    view = TurnView(CONV)
    for e in envs[:7]:
        view.apply(e)
    p = view.payload()
    assert (p["turn"], p["running"], p["reply"], p["status"], p["userInput"]) == (
        1,
        True,
        "Hello wor",
        "still thinking",
        "q",
    )
    assert p["tools"][0]["status"] == "running" and view.last_seq == 7
    for e in envs[7:]:
        view.apply(e)
    snap = body(view.envelope(5_000))
    assert snap["stage"] == "TURN_SNAPSHOT" and snap["auditId"] == 10
    assert snap["payload"]["reply"] == "Hello world" and snap["payload"]["running"] is False


def test_hub_slow_subscriber_is_coalesced_not_cut_and_fast_one_untouched() -> None:
    async def main() -> None:
        journal = MemoryJournal(10_000, 1e9, clock=lambda: 0)
        hub = Hub(journal, max_messages=50, max_bytes=1 << 20, replay_max=1000)
        hub.coalesce_after = 8
        slow, _ = await hub.subscribe(CONV, None)
        fast, _ = await hub.subscribe(CONV, None, coalesce=False)
        fast_seen: list[Envelope] = []
        events = (
            [("gateway.user_input", {"message": "q"})]
            + [delta(f"{i},") for i in range(300)]
            + [("final", {"text": "".join(f"{i}," for i in range(300))})]
        )
        for env in envelopes(events):
            await journal.append(CONV, [env], None)
            hub.publish(CONV, [env])
            fast_seen += await fast.next_batch()
        assert [e.seq for e in fast_seen] == list(range(1, 303))
        got: list[Envelope] = []
        while not got or got[-1].seq < 302:
            got += await slow.next_batch()
        assert len(got) < 20
        text = "".join(body(e)["payload"]["text"] for e in got if e.stage == "ASSISTANT_OUTPUT_DELTA")
        assert text == "".join(f"{i}," for i in range(300))
        assert next(e.stage for e in got) == "USER_INPUT" and got[-1].stage == "ASSISTANT_OUTPUT"
        # Opted out: the same flood cuts a viewer loose at the hard limit.
        assert fast.failure is None

    asyncio.run(main())


def test_hub_hard_limit_still_cuts_a_viewer_that_never_reads() -> None:
    async def main() -> None:
        journal = MemoryJournal(10_000, 1e9, clock=lambda: 0)
        hub = Hub(journal, max_messages=20, max_bytes=1 << 20, replay_max=1000)
        hub.coalesce_after = 8
        stuck, _ = await hub.subscribe(CONV, None)
        tools = [("tool_call", {"id": str(i), "name": "x"}) for i in range(30)]  # never merged
        for env in envelopes(tools):
            hub.publish(CONV, [env])
        try:
            await stuck.next_batch()
        except SubscriberStale as exc:
            assert exc.reason == "slow"
        else:
            raise AssertionError("not cut loose")

    asyncio.run(main())


def test_hub_snapshot_splice_and_o1_updates() -> None:
    async def main() -> None:
        journal = MemoryJournal(10_000, 1e9, clock=lambda: 0)
        hub = Hub(journal, 100, 1 << 20, 1000)
        envs = envelopes(TURN)
        for env in envs[:5]:
            await journal.append(CONV, [env], None)
            hub.publish(CONV, [env])
        sub, snap = await hub.subscribe_with_snapshot(CONV, 9_000)
        assert snap.seq == 5 and body(snap)["payload"]["reply"] == "Hello "
        for env in envs[5:]:
            await journal.append(CONV, [env], None)
            hub.publish(CONV, [env])
        got: list[Envelope] = []
        while not got or got[-1].seq < 10:
            got += await sub.next_batch()
        assert [e.seq for e in got] == [6, 7, 8, 9, 10]
        reply = body(snap)["payload"]["reply"] + "".join(
            body(e)["payload"]["text"] for e in got if e.stage == "ASSISTANT_OUTPUT_DELTA"
        )
        assert reply == "Hello world"
        # The view followed the publishes: the next snapshot needs no journal scan.
        assert body(await hub.snapshot(CONV, 9_001))["auditId"] == 10

    asyncio.run(main())


def test_caption_is_never_absorbed_by_an_envelope_user_viewers_do_not_see() -> None:
    out = coalesce(envelopes([status("one"), ("agent_active", {"hint": "h"}), delta("x")]))
    texts = [body(e)["verbose"]["text"] for e in out if e.stage == "VERBOSE" and not e.scope]
    assert texts == ["one"]  # a diagnostic caption never supersedes a visible one
    out = coalesce(envelopes([status("one"), ("agent_active", {"hint": "h"}), status("two"), delta("x")]))
    assert [body(e)["verbose"]["text"] for e in out if e.stage == "VERBOSE" and not e.scope] == ["two"]
    for a, b in itertools.pairwise(out):
        assert b.first_seq == a.seq + 1
