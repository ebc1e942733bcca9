"""STOMP server session: negotiation tables, every frame kind, receipts, errors, ordering, fan-out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocols.stomp_codec import Frame, FrameDecoder, MessageTemplate, StompVersion, encode_frame
from gateway.protocols.stomp_session import (
    AckRequest,
    ConnectRequest,
    DisconnectRequest,
    HeartbeatReceived,
    NackRequest,
    ProtocolViolation,
    SendRequest,
    SessionState,
    StompServerSession,
    SubscribeRequest,
    Subscription,
    UnsubscribeRequest,
    negotiate_heartbeat,
    negotiate_version,
)

VERSIONS: tuple[StompVersion, ...] = ("1.0", "1.1", "1.2")
ACCEPT = {"1.0": "1.0", "1.1": "1.1", "1.2": "1.0,1.1,1.2"}


def wire(command: str, *headers: tuple[str, str], body: bytes = b"", version: StompVersion = "1.2") -> bytes:
    return encode_frame(Frame(command, headers, body), version)


def out_frames(session: StompServerSession, version: StompVersion | None = None) -> list[Frame]:
    data = session.data_to_send()
    decoder = FrameDecoder(version or session.version or "1.0")
    return [f for f in decoder.feed(data) if isinstance(f, Frame)]


def connected(version: StompVersion = "1.2", heart_beat: str | None = None, **kwargs: object) -> StompServerSession:
    session = StompServerSession(session_id="sess-1", **kwargs)  # type: ignore[arg-type]
    headers = [("accept-version", ACCEPT[version]), ("host", "gw")]
    if heart_beat is not None:
        headers.append(("heart-beat", heart_beat))
    events = session.receive_data(wire("CONNECT", *headers))
    assert isinstance(events[0], ConnectRequest)
    session.accept_connect()
    session.data_to_send()
    return session


def subscribed(version: StompVersion = "1.2", ack: str = "auto", sub_id: str = "0") -> StompServerSession:
    session = connected(version)
    (request,) = session.receive_data(
        wire("SUBSCRIBE", ("id", sub_id), ("destination", "/topic/a"), ("ack", ack), version=version)
    )
    assert isinstance(request, SubscribeRequest)
    session.accept_subscribe(request)
    return session


def error_of(session: StompServerSession) -> Frame:
    (frame,) = out_frames(session)
    assert frame.command == "ERROR"
    assert session.state is SessionState.CLOSED
    return frame


# --- negotiation tables --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept_version", "expected"),
    [
        (None, "1.0"),
        ("1.0", "1.0"),
        ("1.1", "1.1"),
        ("1.2", "1.2"),
        ("1.0,1.1,1.2", "1.2"),
        ("1.1,1.0", "1.1"),
        ("1.2,1.0", "1.2"),
        (" 1.1 , 1.2 ", "1.2"),
        ("1.2,2.0", "1.2"),
        ("2.0", None),
        ("1.3,0.9", None),
        ("", None),
    ],
)
def test_version_negotiation_table(accept_version: str | None, expected: str | None) -> None:
    assert negotiate_version(accept_version) == expected


@pytest.mark.parametrize(
    ("client", "server", "expected"),
    [
        ((0, 0), (10000, 10000), (0, 0)),
        ((10000, 10000), (0, 0), (0, 0)),
        ((5000, 0), (10000, 10000), (0, 10000)),
        ((0, 5000), (10000, 10000), (10000, 0)),
        ((5000, 20000), (10000, 10000), (20000, 10000)),
        ((30000, 1000), (10000, 10000), (10000, 30000)),
        ((1000, 1000), (10000, 0), (10000, 0)),
        ((1000, 1000), (0, 10000), (0, 10000)),
        ((10000, 10000), (10000, 10000), (10000, 10000)),
    ],
)
def test_heartbeat_negotiation_table(
    client: tuple[int, int], server: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert negotiate_heartbeat(client, server) == expected


# --- CONNECT -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["CONNECT", "STOMP"])
def test_connect_1_2_exact_connected_frame(command: str) -> None:
    session = StompServerSession(session_id="sess-1", heartbeat_ms=(10000, 10000))
    data = wire(command, ("accept-version", "1.1,1.2"), ("host", "gw"), ("heart-beat", "5000,20000"))
    (request,) = session.receive_data(data)
    assert isinstance(request, ConnectRequest)
    assert request == ConnectRequest("1.2", "gw", None, None, request.headers)
    assert session.data_to_send() == b""  # nothing before the app decides
    states = [session.state]
    session.accept_connect((("user-name", "alice"),))
    states.append(session.state)
    assert session.data_to_send() == (
        b"CONNECTED\nversion:1.2\nheart-beat:20000,10000\nsession:sess-1\nserver:hq-gateway/0.1\nuser-name:alice\n\n\0"
    )
    assert states == [SessionState.AWAIT_CONNECT, SessionState.CONNECTED]
    assert (session.version, session.send_heartbeat_ms, session.expect_heartbeat_ms) == ("1.2", 20000, 10000)
    assert session.peer_timeout_ms == 20000


def test_connect_without_accept_version_is_1_0_without_heartbeats() -> None:
    session = StompServerSession(session_id="s", server_name="gw/9")
    (request,) = session.receive_data(wire("CONNECT", ("login", "bob"), ("heart-beat", "not-parsed-in-1.0")))
    assert isinstance(request, ConnectRequest)
    assert (request.version, request.login) == ("1.0", "bob")
    session.accept_connect()
    assert session.data_to_send() == b"CONNECTED\nversion:1.0\nsession:s\nserver:gw/9\n\n\0"
    assert (session.send_heartbeat_ms, session.expect_heartbeat_ms, session.peer_timeout_ms) == (0, 0, 0)


def test_connect_headers_are_not_unescaped_and_passcode_stays_out_of_repr() -> None:
    session = StompServerSession()
    data = b"CONNECT\naccept-version:1.2\nlogin:a\\cb\npasscode:s3cr\\t:x\n\n\0"
    (request,) = session.receive_data(data)
    assert isinstance(request, ConnectRequest)
    assert (request.login, request.passcode) == ("a\\cb", "s3cr\\t:x")
    assert "s3cr" not in repr(request)


def test_no_common_version_exact_error() -> None:
    session = StompServerSession()
    events = session.receive_data(wire("CONNECT", ("accept-version", "2.0,3.0")))
    assert events == [ProtocolViolation("Supported protocol versions are 1.0,1.1,1.2")]
    assert session.data_to_send() == (
        b"ERROR\nmessage:Supported protocol versions are 1.0,1.1,1.2\nversion:1.0,1.1,1.2\n"
        b"content-type:text/plain\ncontent-length:43\n\nSupported protocol versions are 1.0,1.1,1.2\0"
    )
    assert session.state is SessionState.CLOSED
    assert session.receive_data(wire("CONNECT")) == []


@pytest.mark.parametrize("value", ["abc", "1000", "1,2,3", "-1,5", "1, x", "1," + "9" * 5000])
def test_invalid_heartbeat_header(value: str) -> None:
    session = StompServerSession()
    session.receive_data(wire("CONNECT", ("accept-version", "1.2"), ("heart-beat", value)))
    assert error_of(session).get("message") == f"Invalid heart-beat header '{value[:64]}'"


def test_connect_reject_exact_error_and_close() -> None:
    session = StompServerSession()
    session.receive_data(wire("CONNECT", ("accept-version", "1.2")))
    session.reject("Access denied", body="bad token")
    assert session.data_to_send() == (
        b"ERROR\nmessage:Access denied\ncontent-type:text/plain\ncontent-length:9\n\nbad token\0"
    )
    assert session.state is SessionState.CLOSED
    session.accept_connect()  # a late decision is a no-op
    assert session.data_to_send() == b""


def test_second_connect_is_an_error() -> None:
    session = connected()
    session.receive_data(wire("CONNECT", ("accept-version", "1.2")))
    assert error_of(session).get("message") == "Already connected"


def test_accept_connect_without_pending_request_is_a_bug() -> None:
    session = connected()
    with pytest.raises(RuntimeError, match="no pending decision"):
        session.accept_connect()


@pytest.mark.parametrize("command", ["SUBSCRIBE", "SEND", "DISCONNECT", "ACK"])
def test_frames_before_connect_exact_error(command: str) -> None:
    session = StompServerSession()
    events = session.receive_data(wire(command, ("receipt", "r-1"), ("destination", "/d")))
    assert events == [ProtocolViolation(f"Expected CONNECT or STOMP, got {command}")]
    assert (
        session.data_to_send()
        == (
            f"ERROR\nmessage:Expected CONNECT or STOMP, got {command}\nreceipt-id:r-1\n"
            "content-type:text/plain\ncontent-length:0\n\n\0"
        ).encode()
    )
    assert session.state is SessionState.CLOSED


# --- errors after CONNECT ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (wire("FOO", ("receipt", "r")), "Unknown command FOO"),
        (wire("MESSAGE", ("receipt", "r")), "Unknown command MESSAGE"),
        (wire("SUBSCRIBE", ("id", "1"), ("receipt", "r")), "SUBSCRIBE frame requires header 'destination'"),
        (wire("SUBSCRIBE", ("destination", "/d"), ("receipt", "r")), "SUBSCRIBE frame requires header 'id'"),
        (
            wire("SUBSCRIBE", ("id", "1"), ("destination", "/d"), ("ack", "sometimes"), ("receipt", "r")),
            "Invalid ack mode 'sometimes'",
        ),
        (wire("UNSUBSCRIBE", ("receipt", "r")), "UNSUBSCRIBE frame requires header 'id'"),
        (wire("SEND", ("receipt", "r")), "SEND frame requires header 'destination'"),
        (wire("ACK", ("message-id", "1"), ("receipt", "r")), "ACK frame requires header 'id'"),
        (wire("NACK", ("receipt", "r")), "NACK frame requires header 'id'"),
        (wire("BEGIN", ("receipt", "r")), "BEGIN frame requires header 'transaction'"),
        (wire("COMMIT", ("receipt", "r")), "COMMIT frame requires header 'transaction'"),
        (wire("ABORT", ("receipt", "r")), "ABORT frame requires header 'transaction'"),
    ],
)
def test_protocol_errors_exact_error_frame(frame: bytes, message: str) -> None:
    session = connected()
    assert session.receive_data(frame) == [ProtocolViolation(message)]
    assert session.data_to_send() == (
        f"ERROR\nmessage:{message}\nreceipt-id:r\ncontent-type:text/plain\ncontent-length:0\n\n\0".encode()
    )
    assert session.state is SessionState.CLOSED
    assert session.subscriptions == {}


def test_1_1_ack_needs_message_id() -> None:
    session = connected("1.1")
    session.receive_data(wire("ACK", ("id", "1"), version="1.1"))
    assert error_of(session).get("message") == "ACK frame requires header 'message-id'"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"SEND\ndestination:/a\\tb\n\n\0", "Undefined escape sequence '\\\\t' in header"),
        (b"SEND\ndestination:/d\ncontent-length:99999\n\n", "Frame larger than 65536 bytes"),
        (b"SEND\nbroken\n\n\0", "Malformed header line 'broken'"),
    ],
)
def test_codec_errors_become_protocol_violations(data: bytes, message: str) -> None:
    session = connected()
    assert session.receive_data(data) == [ProtocolViolation(message)]
    assert error_of(session).get("message") == message


def test_session_limits_are_passed_to_the_decoder() -> None:
    session = connected(max_frame_bytes=128, max_headers=2, max_header_line=32)
    session.receive_data(wire("SEND", ("a", "1"), ("b", "2"), ("c", "3")))
    assert error_of(session).get("message") == "More than 2 headers in a frame"


def test_error_message_is_one_line_and_escaped_per_version() -> None:
    session = connected("1.2")
    session.reject("first line\nsecond: line", receipt_id="r:1")
    frame = error_of(session)
    assert frame.get("message") == "first line second: line"
    assert frame.get("receipt-id") == "r:1"


def test_escaped_values_in_1_2_errors_on_the_wire() -> None:
    session = connected("1.2")
    session.receive_data(wire("SEND", ("receipt", "a:b")))
    assert b"receipt-id:a\\cb\n" in session.data_to_send()


# --- SUBSCRIBE / UNSUBSCRIBE ---------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_subscribe_accept_with_receipt(version: StompVersion) -> None:
    session = connected(version)
    data = wire(
        "SUBSCRIBE", ("id", "s1"), ("destination", "/t"), ("since-seq", "4"), ("receipt", "77"), version=version
    )
    (request,) = session.receive_data(data)
    assert isinstance(request, SubscribeRequest)
    assert request == SubscribeRequest("s1", "/t", "auto", request.headers, "77")
    assert dict(request.headers)["since-seq"] == "4"
    assert session.data_to_send() == b""
    session.accept_subscribe(request)
    assert session.data_to_send() == b"RECEIPT\nreceipt-id:77\n\n\0"
    assert session.subscriptions == {"s1": Subscription("/t", "auto")}


def test_subscribe_without_receipt_sends_nothing() -> None:
    session = subscribed()
    assert session.data_to_send() == b""
    assert session.subscriptions == {"0": Subscription("/topic/a", "auto")}


def test_subscribe_1_0_without_id_uses_destination() -> None:
    session = connected("1.0")
    (request,) = session.receive_data(wire("SUBSCRIBE", ("destination", "/topic/x"), version="1.0"))
    assert isinstance(request, SubscribeRequest)
    assert request.id == "/topic/x"
    session.accept_subscribe(request)
    assert session.subscriptions == {"/topic/x": Subscription("/topic/x", "auto")}
    events = session.receive_data(wire("UNSUBSCRIBE", ("destination", "/topic/x"), ("receipt", "u"), version="1.0"))
    assert events == [UnsubscribeRequest("/topic/x", "u")]
    assert session.subscriptions == {}
    assert session.data_to_send() == b"RECEIPT\nreceipt-id:u\n\n\0"


def test_subscribe_headers_unescaped_per_negotiated_version() -> None:
    raw = b"SUBSCRIBE\nid:a\\cb\ndestination:/x\\\\y\n\n\0"
    (r12,) = connected("1.2").receive_data(raw)
    (r10,) = connected("1.0").receive_data(raw)
    assert isinstance(r12, SubscribeRequest) and isinstance(r10, SubscribeRequest)
    assert (r12.id, r12.destination) == ("a:b", "/x\\y")
    assert (r10.id, r10.destination) == ("a\\cb", "/x\\\\y")


def test_duplicate_subscription_id() -> None:
    session = subscribed()
    session.receive_data(wire("SUBSCRIBE", ("id", "0"), ("destination", "/b"), ("receipt", "r")))
    frame = error_of(session)
    assert (frame.get("message"), frame.get("receipt-id")) == ("Subscription id '0' is already in use", "r")


def test_duplicate_subscription_id_within_one_chunk() -> None:
    session = connected()
    sub = wire("SUBSCRIBE", ("id", "0"), ("destination", "/b"))
    events = session.receive_data(sub + sub)
    assert isinstance(events[0], SubscribeRequest)
    assert events[1] == ProtocolViolation("Subscription id '0' is already in use")


def test_subscription_limit() -> None:
    session = connected(max_subscriptions=2)
    for i in range(2):
        (request,) = session.receive_data(wire("SUBSCRIBE", ("id", str(i)), ("destination", "/d")))
        assert isinstance(request, SubscribeRequest)
        session.accept_subscribe(request)
    session.receive_data(wire("SUBSCRIBE", ("id", "2"), ("destination", "/d")))
    assert error_of(session).get("message") == "Too many subscriptions (limit 2)"


def test_unsubscribe_frees_a_slot_under_the_limit() -> None:
    session = connected(max_subscriptions=1)
    for i in range(3):
        (request,) = session.receive_data(wire("SUBSCRIBE", ("id", str(i)), ("destination", "/d")))
        assert isinstance(request, SubscribeRequest)
        session.accept_subscribe(request)
        assert session.receive_data(wire("UNSUBSCRIBE", ("id", str(i)))) == [UnsubscribeRequest(str(i), None)]
    assert session.state is SessionState.CONNECTED


def test_unsubscribe_unknown_id_is_lenient() -> None:
    session = connected()
    assert session.receive_data(wire("UNSUBSCRIBE", ("id", "nope"), ("receipt", "9"))) == []
    assert session.data_to_send() == b"RECEIPT\nreceipt-id:9\n\n\0"
    assert session.state is SessionState.CONNECTED


def test_reject_subscribe_closes_with_receipt_id() -> None:
    session = connected()
    (request,) = session.receive_data(wire("SUBSCRIBE", ("id", "1"), ("destination", "/nope"), ("receipt", "r")))
    assert isinstance(request, SubscribeRequest)
    session.reject("Unknown destination /nope", receipt_id=request.receipt)
    assert session.data_to_send() == (
        b"ERROR\nmessage:Unknown destination /nope\nreceipt-id:r\ncontent-type:text/plain\ncontent-length:0\n\n\0"
    )
    session.accept_subscribe(request)  # late decision after close: no-op
    assert session.data_to_send() == b""
    assert session.subscriptions == {}


def test_accept_subscribe_twice_is_a_bug() -> None:
    session = connected()
    (request,) = session.receive_data(wire("SUBSCRIBE", ("id", "1"), ("destination", "/d")))
    assert isinstance(request, SubscribeRequest)
    session.accept_subscribe(request)
    with pytest.raises(RuntimeError):
        session.accept_subscribe(request)


# --- SEND, ACK/NACK, transactions, DISCONNECT ----------------------------------------------------


def test_send_accept_and_receipt() -> None:
    session = connected()
    (request,) = session.receive_data(wire("SEND", ("destination", "/app/x"), ("receipt", "s"), body=b"hi"))
    assert request == SendRequest("/app/x", (("destination", "/app/x"), ("receipt", "s")), b"hi", "s")
    assert isinstance(request, SendRequest)
    session.accept_send(request)
    assert session.data_to_send() == b"RECEIPT\nreceipt-id:s\n\n\0"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ack", ["auto", "client", "client-individual"])
@pytest.mark.parametrize("command", ["ACK", "NACK"])
def test_ack_nack_accepted_in_every_mode(version: StompVersion, ack: str, command: str) -> None:
    session = subscribed(version, ack)
    id_header = "id" if version == "1.2" else "message-id"
    headers = [(id_header, "m-1"), ("subscription", "0"), ("transaction", "tx"), ("receipt", "a")]
    events = session.receive_data(wire(command, *headers, version=version))
    kind = AckRequest if command == "ACK" else NackRequest
    assert events == [kind("m-1", "tx", "a")]
    assert session.data_to_send() == b"RECEIPT\nreceipt-id:a\n\n\0"
    assert session.state is SessionState.CONNECTED


@pytest.mark.parametrize("command", ["BEGIN", "COMMIT", "ABORT"])
def test_transactions_are_acknowledged(command: str) -> None:
    session = connected()
    assert session.receive_data(wire(command, ("transaction", "t1"), ("receipt", "x"))) == []
    assert session.data_to_send() == b"RECEIPT\nreceipt-id:x\n\n\0"
    assert session.receive_data(wire(command, ("transaction", "t1"))) == []
    assert session.data_to_send() == b""


def test_disconnect_with_receipt_then_closed() -> None:
    session = subscribed()
    assert session.receive_data(wire("DISCONNECT", ("receipt", "bye"))) == [DisconnectRequest("bye")]
    assert session.data_to_send() == b"RECEIPT\nreceipt-id:bye\n\n\0"
    assert session.state is SessionState.CLOSED
    assert session.subscriptions == {}
    assert session.receive_data(wire("SEND", ("destination", "/d"))) == []
    assert session.data_to_send() == b""


def test_disconnect_without_receipt() -> None:
    session = connected()
    assert session.receive_data(wire("DISCONNECT")) == [DisconnectRequest(None)]
    assert session.data_to_send() == b""
    assert session.state is SessionState.CLOSED


_RECEIPTED = [
    ("SUBSCRIBE", (("id", "9"), ("destination", "/d"))),
    ("UNSUBSCRIBE", (("id", "0"),)),
    ("SEND", (("destination", "/d"),)),
    ("ACK", (("id", "1"),)),
    ("NACK", (("id", "1"),)),
    ("BEGIN", (("transaction", "t"),)),
    ("COMMIT", (("transaction", "t"),)),
    ("ABORT", (("transaction", "t"),)),
    ("DISCONNECT", ()),
]


@pytest.mark.parametrize(("command", "headers"), _RECEIPTED, ids=[c for c, _ in _RECEIPTED])
def test_every_frame_kind_gets_its_receipt(command: str, headers: tuple[tuple[str, str], ...]) -> None:
    session = subscribed()
    for event in session.receive_data(wire(command, *headers, ("receipt", f"r-{command}"))):
        if isinstance(event, SubscribeRequest):
            session.accept_subscribe(event)
        elif isinstance(event, SendRequest):
            session.accept_send(event)
    assert session.data_to_send() == f"RECEIPT\nreceipt-id:r-{command}\n\n\0".encode()


# --- ordering under pipelining -------------------------------------------------------------------


def test_pipelined_frames_answer_in_input_order() -> None:
    session = StompServerSession(session_id="p")
    data = (
        wire("CONNECT", ("accept-version", "1.2"))
        + wire("SUBSCRIBE", ("id", "0"), ("destination", "/a"), ("receipt", "1"))
        + wire("UNSUBSCRIBE", ("id", "0"), ("receipt", "2"))
        + wire("DISCONNECT", ("receipt", "3"))
    )
    connect, subscribe, unsubscribe, disconnect = session.receive_data(data)
    assert isinstance(connect, ConnectRequest) and isinstance(subscribe, SubscribeRequest)
    assert (unsubscribe, disconnect) == (UnsubscribeRequest("0", "2"), DisconnectRequest("3"))
    assert session.data_to_send() == b""  # the UNSUBSCRIBE/DISCONNECT receipts wait behind CONNECTED
    session.accept_connect()
    assert [f.command for f in out_frames(session)] == ["CONNECTED"]
    session.accept_subscribe(subscribe)
    assert [(f.command, f.get("receipt-id")) for f in out_frames(session)] == [
        ("RECEIPT", "1"),
        ("RECEIPT", "2"),
        ("RECEIPT", "3"),
    ]
    assert session.subscriptions == {}  # unsubscribed before the app got to accept it


def test_pipelined_frames_after_connect_use_the_negotiated_escaping() -> None:
    session = StompServerSession()
    data = wire("CONNECT", ("accept-version", "1.2")) + b"SUBSCRIBE\nid:a\\cb\ndestination:/d\n\n\0"
    _connect, subscribe = session.receive_data(data)
    assert isinstance(subscribe, SubscribeRequest)
    assert subscribe.id == "a:b"


def test_violation_after_pipelined_connect_sends_only_error() -> None:
    session = StompServerSession()
    events = session.receive_data(wire("CONNECT", ("accept-version", "1.2")) + b"BOGUS\n\n\0")
    assert isinstance(events[0], ConnectRequest)
    assert events[1] == ProtocolViolation("Unknown command BOGUS")
    session.accept_connect()  # the app handles events in order: too late, a no-op
    assert [f.command for f in out_frames(session, "1.2")] == ["ERROR"]


def test_reject_drops_undecided_later_answers() -> None:
    session = connected()
    data = wire("SUBSCRIBE", ("id", "a"), ("destination", "/ok"), ("receipt", "1")) + wire(
        "SUBSCRIBE", ("id", "b"), ("destination", "/bad"), ("receipt", "2")
    )
    data += wire("ACK", ("id", "m"), ("receipt", "3"))
    first, second, _ack = session.receive_data(data)
    assert isinstance(first, SubscribeRequest) and isinstance(second, SubscribeRequest)
    session.accept_subscribe(first)
    session.reject("Unknown destination /bad", receipt_id=second.receipt)
    assert [(f.command, f.get("receipt-id")) for f in out_frames(session, "1.2")] == [("RECEIPT", "1"), ("ERROR", "2")]


def test_reject_without_pending_request_appends_error() -> None:
    session = subscribed()
    session.reject("Slow consumer")
    assert error_of(session).get("message") == "Slow consumer"
    session.reject("again")  # already closed: no second ERROR
    assert session.data_to_send() == b""


# --- heart-beats and MESSAGE ---------------------------------------------------------------------


def test_heartbeats_are_events_before_and_after_connect() -> None:
    session = StompServerSession()
    assert session.receive_data(b"\n\r\n") == [HeartbeatReceived(), HeartbeatReceived()]
    session.receive_data(wire("CONNECT", ("accept-version", "1.2")) + b"\n")
    assert session.heartbeat_bytes() == b"\n"


@pytest.mark.parametrize("version", VERSIONS)
def test_message_ids_increase_and_frames_decode(version: StompVersion) -> None:
    session = subscribed(version)
    first = session.message("0", "/topic/a", b'{"n":1}', 1)
    second = session.message("0", "/topic/a", b'{"n":2}', None, (("x", "y"),))
    f1, f2 = FrameDecoder(version).feed(first + second)
    assert isinstance(f1, Frame) and isinstance(f2, Frame)
    assert (f1.get("message-id"), f2.get("message-id")) == ("1", "2")
    assert f1.headers == (
        ("subscription", "0"),
        ("message-id", "1"),
        ("destination", "/topic/a"),
        ("content-type", "application/json"),
        ("seq", "1"),
        ("content-length", "7"),
    )
    assert (f2.get("seq"), f2.get("x"), f2.body) == (None, "y", b'{"n":2}')


@pytest.mark.parametrize(
    ("version", "ack", "has_ack"),
    [("1.2", "client", True), ("1.2", "client-individual", True), ("1.2", "auto", False), ("1.1", "client", False)],
)
def test_1_2_client_ack_messages_carry_ack_header(version: StompVersion, ack: str, has_ack: bool) -> None:
    session = subscribed(version, ack)
    template = MessageTemplate(destination="/topic/a", body=b"{}", seq=5)
    for data in (session.message("0", "/topic/a", b"{}", 5), session.render(template, "0")):
        (frame,) = FrameDecoder(version).feed(data)
        assert isinstance(frame, Frame)
        assert frame.get("ack") == (frame.get("message-id") if has_ack else None)


@pytest.mark.parametrize("version", VERSIONS)
def test_render_matches_message(version: StompVersion) -> None:
    sub_id = "s:1" if version != "1.0" else "s-1"
    session = subscribed(version, sub_id=sub_id)
    template = MessageTemplate(destination="/topic/a", body=b'{"x":"\0"}', seq=9)
    rendered, built = session.render(template, sub_id), session.message(sub_id, "/topic/a", b'{"x":"\0"}', 9)
    escaped = sub_id.replace(":", "\\c").encode()
    assert rendered == built.replace(b"message-id:1", b"message-id:9-" + escaped)
    (frame,) = FrameDecoder(version).feed(rendered)
    assert isinstance(frame, Frame)
    assert frame.get("subscription") == sub_id
    assert frame.get("message-id") == f"9-{sub_id}"


def test_rendered_frames_are_equal_across_sessions_with_equal_render_keys() -> None:
    """Fan-out encodes an envelope once per render key: the key must capture everything render varies on."""
    template = MessageTemplate(destination="/topic/a", body=b"{}", seq=42)
    sessions = [subscribed("1.2"), subscribed("1.2"), subscribed("1.2", "client"), subscribed("1.1"),
                subscribed("1.2", sub_id="sub-1")]  # fmt: skip
    sub_ids = ["0", "0", "0", "0", "sub-1"]
    keys = [s.render_key(i) for s, i in zip(sessions, sub_ids, strict=True)]
    frames = [s.render(template, i) for s, i in zip(sessions, sub_ids, strict=True)]
    assert keys[0] == keys[1] and frames[0] == frames[1]
    assert len(set(keys)) == 4  # ack mode, version and subscription id each make a key of their own
    assert frames[2] != frames[0] and frames[4] != frames[0]


def test_message_ids_stay_unique_in_a_session_with_two_subscriptions_of_one_topic() -> None:
    session = subscribed("1.2", sub_id="a")
    (request,) = session.receive_data(wire("SUBSCRIBE", ("id", "b"), ("destination", "/topic/a")))
    assert isinstance(request, SubscribeRequest)
    session.accept_subscribe(request)
    template = MessageTemplate(destination="/topic/a", body=b"{}", seq=7)
    decoder = FrameDecoder("1.2")
    ids = []
    for sub in ("a", "b"):
        (frame,) = decoder.feed(session.render(template, sub))
        assert isinstance(frame, Frame)
        ids.append(frame.get("message-id"))
    assert ids[0] != ids[1]


def test_message_for_unknown_subscription_raises_key_error() -> None:
    session = subscribed()
    with pytest.raises(KeyError):
        session.message("nope", "/d", b"", None)
    session.receive_data(wire("UNSUBSCRIBE", ("id", "0")))
    with pytest.raises(KeyError):
        session.render(MessageTemplate(destination="/d", body=b"", seq=None), "0")


def test_default_session_ids_are_unique() -> None:
    assert StompServerSession().session_id != StompServerSession().session_id


# --- robustness ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(1, 50))
def test_arbitrary_bytes_never_raise_and_errors_are_last(garbage: bytes, chunk: int) -> None:
    session = StompServerSession(max_frame_bytes=256)
    data = wire("CONNECT", ("accept-version", "1.2")) + garbage
    for i in range(0, len(data), chunk):
        for event in session.receive_data(data[i : i + chunk]):
            if isinstance(event, ConnectRequest):
                session.accept_connect()
            elif isinstance(event, SubscribeRequest):
                session.accept_subscribe(event)
            elif isinstance(event, SendRequest):
                session.accept_send(event)
    frames = [f for f in FrameDecoder("1.2").feed(session.data_to_send()) if isinstance(f, Frame)]
    assert all(f.command != "ERROR" for f in frames[:-1])
    if session.state is SessionState.CLOSED and frames[-1].command == "ERROR":
        assert session.receive_data(b"more") == []
