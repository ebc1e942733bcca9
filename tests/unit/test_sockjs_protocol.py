"""SockJS sans-I/O core: framing, escaping, client payloads, paths and the HTTP session state machine."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols import sockjs
from gateway.protocols.sockjs import (
    Attach,
    CloseStatus,
    PayloadError,
    QueueOverflow,
    SessionPath,
    SessionState,
    SockJsSession,
)

# sockjs-protocol's "escapable_by_server" set, plus the surrogates sockjs-node escapes too.
SERVER_ESCAPABLE = re.compile("[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ufff0-\uffff\ud800-\udfff]")


# -- frames -------------------------------------------------------------------------------------


def test_fixed_frames() -> None:
    assert sockjs.open_frame() == "o"
    assert sockjs.heartbeat_frame() == "h"
    assert sockjs.message_frame(["a", 'b"c']) == 'a["a","b\\"c"]'
    assert sockjs.message_frame([]) == "a[]"
    assert sockjs.close_frame(3000, "Go away!") == 'c[3000,"Go away!"]'
    assert sockjs.close_frame(2010, "Another connection still open") == 'c[2010,"Another connection still open"]'


def test_server_escapes_every_character_sockjs_protocol_lists() -> None:
    chars = "".join(chr(i) for i in range(0x100, 0x10000) if SERVER_ESCAPABLE.match(chr(i)))
    frame = sockjs.message_frame([chars])
    expected = "".join(f"\\u{ord(c):04x}" for c in chars)
    assert frame == f'a["{expected}"]'
    assert frame.isascii()


def test_control_characters_are_escaped_and_plain_unicode_is_not() -> None:
    frame = sockjs.message_frame(["\x00\n\x1f", "héllo ✓ 😀"])
    assert frame == 'a["\\u0000\\n\\u001f","héllo ✓ 😀"]'


def test_lone_surrogates_are_escaped_so_the_frame_is_valid_utf8() -> None:
    frame = sockjs.message_frame(["x\ud800y"])
    assert frame == 'a["x\\ud800y"]'
    frame.encode()  # no UnicodeEncodeError


@given(st.lists(st.text()))
def test_message_frame_round_trips_and_never_carries_escapable_characters(messages: list[str]) -> None:
    frame = sockjs.message_frame(messages)
    assert frame[0] == "a"
    assert SERVER_ESCAPABLE.search(frame) is None
    assert json.loads(frame[1:]) == messages


def test_transport_encodings() -> None:
    assert sockjs.xhr_chunk(["o", "h"]) == b"o\nh\n"
    assert sockjs.eventsource_chunk(["o"]) == b"data: o\r\n\r\n"
    # sockjs-client decodeURI()s EventSource data, so '%' must survive as %25.
    assert sockjs.eventsource_chunk(['a["100%"]']) == b'data: a["100%25"]\r\n\r\n'
    assert sockjs.XHR_STREAMING_PRELUDE == b"h" * 2048 + b"\n"


# -- client payloads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'["a"]', ["a"]),
        ('["a","b"]', ["a", "b"]),
        (b"[]", []),
        (b'"single"', ["single"]),
        (rb'["\u2028\ud83d\ude00"]', ["\u2028😀"]),
    ],
)
def test_decode_client_payload(body: bytes | str, expected: list[str]) -> None:
    assert sockjs.decode_client_payload(body) == expected


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", sockjs.PAYLOAD_EXPECTED),
        ("", sockjs.PAYLOAD_EXPECTED),
        (b'["x', sockjs.BROKEN_JSON),
        (b" ", sockjs.BROKEN_JSON),
        (b"\xff\xfe[", sockjs.BROKEN_JSON),
        (b"[" * 100_000, sockjs.BROKEN_JSON),
        (b"{}", sockjs.PAYLOAD_EXPECTED),
        (b"[1]", sockjs.PAYLOAD_EXPECTED),
        (b"null", sockjs.PAYLOAD_EXPECTED),
        # A lone surrogate has no UTF-8 form: no STOMP frame can carry it (I-JSON, RFC 7493 §2.1).
        (rb'["\ud800"]', sockjs.BROKEN_JSON),
        (rb'"a\udc00"', sockjs.BROKEN_JSON),
    ],
)
def test_decode_client_payload_errors(body: bytes | str, error: str) -> None:
    with pytest.raises(PayloadError) as info:
        sockjs.decode_client_payload(body)
    assert str(info.value) == error


def test_xhr_send_accepts_only_arrays() -> None:
    with pytest.raises(PayloadError) as info:
        sockjs.decode_client_payload(b'"a"', single_allowed=False)
    assert str(info.value) == sockjs.PAYLOAD_EXPECTED


def test_info_body() -> None:
    info = json.loads(sockjs.info_body(websocket=True, cookie_needed=False, entropy=42))
    assert info == {"websocket": True, "cookie_needed": False, "origins": ["*:*"], "entropy": 42}


# -- paths ---------------------------------------------------------------------------------------


def test_parse_session_path() -> None:
    assert sockjs.parse_session_path("/000/abc/xhr") == SessionPath("000", "abc", "xhr")
    assert sockjs.parse_session_path("/a/a b_-/websocket") == SessionPath("a", "a b_-", "websocket")


@pytest.mark.parametrize(
    "path", ["//x/xhr", "/a./a/xhr", "/a/a./xhr", "/./././xhr", "/a/a/jsonp", "/a/a", "/a/a/b/xhr", "a/a/xhr"]
)
def test_parse_session_path_rejects(path: str) -> None:
    assert sockjs.parse_session_path(path) is None


# -- session state machine -------------------------------------------------------------------------


def new_session(now: float = 0.0, max_queue: int = 10) -> SockJsSession:
    return SockJsSession(heartbeat_s=25.0, disconnect_delay_s=5.0, max_queue=max_queue, now=now)


def test_new_session_waits_for_its_first_receiver() -> None:
    s = new_session()
    assert s.state is SessionState.CONNECTING
    assert not s.receiver_attached


def test_first_receiver_opens_then_polls_messages_in_one_frame() -> None:
    s = new_session()
    assert s.attach(0.0) == Attach(True, ["o"], opened=True)
    assert s.state is SessionState.OPEN
    assert s.poll(1.0) == []
    assert s.send(["a"]) and s.send(["b", "c"])
    assert s.poll(1.0) == ['a["a","b","c"]']
    assert s.poll(1.0) == []


def test_messages_wait_between_receivers() -> None:
    s = new_session()
    s.attach(0.0)
    s.detach(0.1)
    s.send(["x"])
    assert s.attach(0.2) == Attach(True, ['a["x"]'])


def test_second_receiver_gets_2010_and_first_keeps_the_session() -> None:
    s = new_session()
    s.attach(0.0)
    assert s.attach(1.0) == Attach(False, ['c[2010,"Another connection still open"]'])
    assert s.receiver_attached
    s.send(["still mine"])
    assert s.poll(1.0) == ['a["still mine"]']


def test_heartbeat_due_after_quiet_period_and_reset_by_writes() -> None:
    s = new_session()
    s.attach(0.0)
    assert s.next_heartbeat_at() == 25.0
    assert not s.heartbeat_due(24.9)
    assert s.poll(24.9) == []
    s.send(["m"])
    assert s.poll(20.0) == ['a["m"]']  # a write restarts the heartbeat period
    assert s.next_heartbeat_at() == 45.0
    assert s.poll(44.0) == []
    assert s.poll(45.0) == ["h"]
    assert s.poll(45.1) == []
    assert s.next_heartbeat_at() == 70.0


def test_no_heartbeat_without_receiver() -> None:
    s = new_session()
    s.attach(0.0)
    s.detach(1.0)
    assert s.poll(100.0) == []


def test_disconnect_delay_counts_from_creation_and_from_each_detach() -> None:
    s = new_session(now=10.0)
    assert s.disconnect_deadline() == 15.0
    assert not s.disconnect_due(14.9) and s.disconnect_due(15.0)
    s.attach(12.0)
    assert s.disconnect_deadline() is None
    assert not s.disconnect_due(1000.0)
    s.detach(100.0)
    assert s.disconnect_deadline() == 105.0
    s.expire()
    assert s.state is SessionState.CLOSED
    assert s.attach(106.0) == Attach(False, ['c[3000,"Go away!"]'])


def test_close_sends_pending_messages_then_close_frame_to_every_late_receiver() -> None:
    s = new_session()
    s.attach(0.0)
    s.detach(0.5)
    s.send(["last"])
    assert s.close(sockjs.GO_AWAY)
    assert not s.close(CloseStatus(1000, "again"))
    assert s.state is SessionState.CLOSING
    assert not s.send(["dropped"])
    assert s.attach(1.0) == Attach(False, ['a["last"]', 'c[3000,"Go away!"]'])
    assert s.attach(2.0) == Attach(False, ['c[3000,"Go away!"]'])
    assert s.disconnect_deadline() == 7.0  # each late receiver restarts the linger (sockjs-node)


def test_close_while_attached_reaches_the_receiver_by_poll() -> None:
    s = new_session()
    s.attach(0.0)
    s.close(CloseStatus(3001, "bye"))
    assert s.closing
    assert s.poll(0.1) == ['c[3001,"bye"]']


def test_interrupted_receiver_closes_the_session_with_1002() -> None:
    s = new_session()
    s.attach(0.0)
    s.detach(1.0, interrupted=True)
    assert s.state is SessionState.CLOSING
    assert s.attach(2.0) == Attach(False, ['c[1002,"Connection interrupted"]'])


def test_queue_is_bounded() -> None:
    s = new_session(max_queue=3)
    s.attach(0.0)
    s.send(["1", "2"])
    with pytest.raises(QueueOverflow):
        s.send(["3", "4"])
    assert s.queued == 2  # nothing of the refused batch was queued
    s.send(["3"])
    assert s.queued == 3


def test_send_before_open_is_dropped() -> None:
    s = new_session()
    assert not s.send(["early"])
    assert s.queued == 0
