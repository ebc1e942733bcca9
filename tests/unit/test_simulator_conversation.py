import asyncio

import orjson

from gateway.protocols.sse import SseParser
from gateway.simulator.conversation import Conversation, encode_journal_event


def test_ids_are_dense_and_after_slices_by_cursor():
    conv = Conversation("c", journal_max=10)
    for n in range(5):
        conv.append("status", {"message": str(n)})
    assert [e.id for e in conv.after(0)] == [1, 2, 3, 4, 5]
    assert [e.id for e in conv.after(3)] == [4, 5]
    assert conv.after(5) == [] and conv.after(99) == []
    assert conv.last_id == 5


def test_bounded_journal_keeps_newest_and_ids_continue():
    conv = Conversation("c", journal_max=3)
    for n in range(7):
        conv.append("status", {"n": n})
    assert [e.id for e in conv.after(0)] == [5, 6, 7]
    assert [e.id for e in conv.after(5)] == [6, 7]


def test_dict_data_is_stamped_and_raw_bytes_are_kept():
    conv = Conversation("c", journal_max=3)
    data = orjson.loads(conv.append("status", {"message": "x"}).data)
    assert data["message"] == "x" and isinstance(data["emitted_at_ms"], float)
    assert conv.append("weird", b"{not json").data == b"{not json"


def test_user_scope_frames_strip_diagnostics():
    call = {"id": "c1", "name": "t", "scope": "s", "args_summary": "a", "args_digest": "sha256:x"}
    entry = encode_journal_event(3, "tool_call", call)
    [full] = SseParser().feed(entry.frame)
    [user] = SseParser().feed(entry.user_frame or b"")
    assert (full.event, full.id) == (user.event, user.id) == ("tool_call", "3")
    assert "args_digest" in orjson.loads(full.data) and "args_digest" not in orjson.loads(user.data)
    assert encode_journal_event(4, "agent_active", {"hint": "h"}).user_frame is None
    assert encode_journal_event(5, "token_usage", {"model": "m"}).user_frame is None
    text = encode_journal_event(6, "text_delta", {"text": "a\nb"})
    assert text.user_frame == text.frame and text.frame.count(b"data:") == 1


def test_subscriber_gets_live_events_and_is_marked_lagged_on_overflow():
    async def scenario() -> None:
        conv = Conversation("c", journal_max=100)
        sub = conv.subscribe(max_pending=3)
        assert not await sub.wait(0.01)
        conv.append("status", {})
        assert await sub.wait(0.01)
        assert [e.id for e in sub.drain()] == [1]
        for _ in range(4):
            conv.append("status", {})
        assert sub.lagged and sub.drain() == []
        conv.unsubscribe(sub)

    asyncio.run(scenario())


def test_idempotency_keys_expire_after_ttl():
    conv = Conversation("c", journal_max=1)
    assert not conv.key_seen("k", now=0.0, ttl_s=10.0)
    conv.remember_key("k", now=0.0)
    assert conv.key_seen("k", now=9.9, ttl_s=10.0)
    assert not conv.key_seen("k", now=10.0, ttl_s=10.0)
