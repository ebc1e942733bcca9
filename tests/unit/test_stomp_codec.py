"""STOMP codec: escaping per version, framing, limits, every split point, stomp.py interop."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stomp.protocol import Protocol12
from stomp.utils import Frame as StompPyFrame
from stomp.utils import convert_frame, parse_frame

from gateway.errors import GatewayError
from gateway.protocols.stomp_codec import (
    HEARTBEAT,
    Frame,
    FrameDecoder,
    Heartbeat,
    MessageTemplate,
    StompProtocolError,
    StompVersion,
    encode_frame,
    encode_message,
    escape_header,
    unescape_header,
)

VERSIONS: tuple[StompVersion, ...] = ("1.0", "1.1", "1.2")


def frames_of(items: list[Frame | Heartbeat]) -> list[Frame]:
    return [i for i in items if isinstance(i, Frame)]


def decode_all(data: bytes, version: StompVersion = "1.2", **limits: int) -> list[Frame | Heartbeat]:
    return FrameDecoder(version, **limits).feed(data)


# --- value objects -------------------------------------------------------------------------------


def test_frame_get_returns_first_of_repeated_headers() -> None:
    frame = Frame("MESSAGE", (("foo", "1"), ("bar", "x"), ("foo", "2")))
    assert frame.get("foo") == "1"
    assert frame.get("missing") is None


def test_protocol_error_is_a_gateway_error() -> None:
    assert issubclass(StompProtocolError, GatewayError)


# --- escaping ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "text", "escaped"),
    [
        ("1.2", "a:b\nc\\d\re", "a\\cb\\nc\\\\d\\re"),
        ("1.1", "a:b\nc\\d", "a\\cb\\nc\\\\d"),
        ("1.0", "a:b\\c", "a:b\\c"),
        ("1.2", "plain /topic/x-1", "plain /topic/x-1"),
        ("1.2", "\\\\c", "\\\\\\\\c"),
    ],
)
def test_escape_table(version: StompVersion, text: str, escaped: str) -> None:
    assert escape_header(text, version) == escaped
    assert unescape_header(escaped, version) == text


@pytest.mark.parametrize(("version", "text"), [("1.1", "a\rb"), ("1.0", "a\nb"), ("1.0", "a\rb"), ("1.2", "\n")])
def test_unrepresentable_header_text_raises(version: StompVersion, text: str) -> None:
    with pytest.raises(ValueError, match="cannot carry"):
        escape_header(text, version, raw=version == "1.2")


@pytest.mark.parametrize("version", ["1.1", "1.2"])
@pytest.mark.parametrize("text", ["a\\tb", "trailing\\", "\\x", "\\C"])
def test_undefined_escape_is_fatal(version: StompVersion, text: str) -> None:
    with pytest.raises(StompProtocolError, match="Undefined escape"):
        unescape_header(text, version)


def test_backslash_r_is_undefined_in_1_1_but_cr_in_1_2() -> None:
    with pytest.raises(StompProtocolError):
        unescape_header("a\\rb", "1.1")
    assert unescape_header("a\\rb", "1.2") == "a\rb"


def test_1_0_never_unescapes() -> None:
    assert unescape_header("a\\tb\\c", "1.0") == "a\\tb\\c"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("command", ["CONNECT", "STOMP", "CONNECTED"])
def test_connect_frames_are_never_escaped(version: StompVersion, command: str) -> None:
    frame = Frame(command, (("login", "a\\cb"), ("passcode", "p:w\\d")))
    data = encode_frame(frame, version)
    assert data == f"{command}\nlogin:a\\cb\npasscode:p:w\\d\n\n\0".encode()
    assert decode_all(data, version) == [frame]


def test_connect_header_names_cannot_hold_colon() -> None:
    with pytest.raises(ValueError, match="invalid header name"):
        encode_frame(Frame("CONNECT", (("a:b", "x"),)), "1.2")


def test_decoder_unescapes_per_version() -> None:
    data = b"SEND\ndestination:/a\\cb\\nc\\\\d\n\n\0"
    assert decode_all(data, "1.2")[0] == Frame("SEND", (("destination", "/a:b\nc\\d"),))
    assert decode_all(data, "1.1")[0] == Frame("SEND", (("destination", "/a:b\nc\\d"),))
    assert decode_all(data, "1.0")[0] == Frame("SEND", (("destination", "/a\\cb\\nc\\\\d"),))


def test_decoder_undefined_escape_is_a_protocol_error() -> None:
    with pytest.raises(StompProtocolError, match="Undefined escape"):
        decode_all(b"SEND\ndestination:/a\\tb\n\n\0", "1.2")


def test_decoder_version_switch_applies_to_later_frames() -> None:
    decoder = FrameDecoder("1.0")
    first = decoder.feed(b"CONNECT\naccept-version:1.2\n\n\0SEND\nx:a\\cb\n\n\0")
    assert first[1] == Frame("SEND", (("x", "a\\cb"),))
    decoder.version = "1.2"
    assert decoder.feed(b"SEND\nx:a\\cb\n\n\0") == [Frame("SEND", (("x", "a:b"),))]


def test_escaped_header_names_roundtrip() -> None:
    frame = Frame("MESSAGE", (("we:ird\nname", "v"),))
    assert b"we\\cird\\nname:v" in encode_frame(frame, "1.2")
    assert decode_all(encode_frame(frame, "1.2")) == [frame]


def test_raw_colons_in_values_are_tolerated() -> None:
    assert frames_of(decode_all(b"SEND\ndestination:/a:b:c\n\n\0"))[0].get("destination") == "/a:b:c"


# --- framing -------------------------------------------------------------------------------------


def test_crlf_line_endings() -> None:
    data = b"SEND\r\ndestination:/q\r\nreceipt:7\r\n\r\nhello\0"
    assert decode_all(data) == [Frame("SEND", (("destination", "/q"), ("receipt", "7")), b"hello")]


@pytest.mark.parametrize("version", VERSIONS)
def test_heartbeats_between_frames_are_reported(version: StompVersion) -> None:
    data = b"\n\r\nSEND\n\n\0\n\nSEND\n\nx\0\r\n"
    items = decode_all(data, version)
    assert items == [HEARTBEAT, HEARTBEAT, Frame("SEND"), HEARTBEAT, HEARTBEAT, Frame("SEND", (), b"x"), HEARTBEAT]


def test_lone_cr_between_frames_waits_then_fails_on_non_lf() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(b"\r") == []
    assert decoder.feed(b"\n") == [HEARTBEAT]
    assert decoder.feed(b"\r") == []
    with pytest.raises(StompProtocolError, match="CR not followed by LF"):
        decoder.feed(b"X")


def test_content_length_body_may_hold_nul() -> None:
    frame = Frame("SEND", (("content-length", "5"),), b"a\0b\0c")
    data = encode_frame(frame, "1.2")
    assert data == b"SEND\ncontent-length:5\n\na\0b\0c\0"
    assert decode_all(data + data) == [frame, frame]


def test_empty_body_with_content_length_zero() -> None:
    assert decode_all(b"SEND\ncontent-length:0\n\n\0") == [Frame("SEND", (("content-length", "0"),))]


def test_first_content_length_wins() -> None:
    data = b"SEND\ncontent-length:2\ncontent-length:9\n\nab\0"
    assert frames_of(decode_all(data))[0].body == b"ab"


def test_content_length_tolerates_surrounding_spaces() -> None:
    assert frames_of(decode_all(b"SEND\ncontent-length: 2 \n\nab\0"))[0].body == b"ab"


@pytest.mark.parametrize("value", ["abc", "-1", "", "1.5", "\u0663", "12345678901"])
def test_invalid_content_length(value: str) -> None:
    with pytest.raises(StompProtocolError, match="Invalid content-length"):
        decode_all(f"SEND\ncontent-length:{value}\n\nab\0".encode())


def test_body_longer_than_content_length() -> None:
    with pytest.raises(StompProtocolError, match="not terminated by NUL"):
        decode_all(b"SEND\ncontent-length:1\n\nab\0")


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"SEND\nno-colon\n\n\0", "Malformed header"),
        (b"SEND\n:empty-name\n\n\0", "Malformed header"),
        (b"SEND\nx:\xff\xfe\n\n\0", "not valid UTF-8"),
        (b"SE\xffND\n\n\0", "not valid UTF-8"),
        (b"SEND\nx:a\rb\n\n\0", "Stray CR or NUL"),
        (b"\0SEND\n\n\0", "Stray CR or NUL"),
        (b"SEND\nx:a\0\n\n\0", "Stray CR or NUL"),
    ],
)
def test_malformed_frames(data: bytes, match: str) -> None:
    with pytest.raises(StompProtocolError, match=match):
        decode_all(data)


# --- limits --------------------------------------------------------------------------------------


def test_frame_exactly_at_the_limit_passes_one_more_byte_fails() -> None:
    head = b"SEND\n\n"
    limit = 100
    ok = head + b"x" * (limit - len(head) - 1) + b"\0"
    assert len(ok) == limit
    assert frames_of(decode_all(ok, max_frame_bytes=limit))[0].body == b"x" * (limit - len(head) - 1)
    with pytest.raises(StompProtocolError, match="Frame larger than 100 bytes"):
        decode_all(head + b"x" * (limit - len(head)) + b"\0", max_frame_bytes=limit)


def test_oversized_body_is_refused_while_streaming() -> None:
    decoder = FrameDecoder(max_frame_bytes=1000)
    decoder.feed(b"SEND\n\n")
    fed = 0
    with pytest.raises(StompProtocolError, match="Frame larger"):
        for _ in range(100):
            decoder.feed(b"x" * 100)
            fed += 100
    assert fed < 1000  # refused before a full frame's worth was buffered, not at the NUL


def test_oversized_content_length_is_refused_before_the_body_arrives() -> None:
    with pytest.raises(StompProtocolError, match="Frame larger than 1000"):
        FrameDecoder(max_frame_bytes=1000).feed(b"SEND\ncontent-length:5000\n\n")


def test_header_section_counts_towards_the_frame_limit() -> None:
    decoder = FrameDecoder(max_frame_bytes=200, max_header_line=1000)
    with pytest.raises(StompProtocolError, match="Frame larger"):
        for i in range(100):
            decoder.feed(f"h{i}:v\n".encode() if i else b"SEND\n")


def test_max_headers() -> None:
    ok = b"SEND\n" + b"".join(b"h%d:v\n" % i for i in range(3)) + b"\n\0"
    assert decode_all(ok, max_headers=3)
    with pytest.raises(StompProtocolError, match="More than 2 headers"):
        decode_all(ok, max_headers=2)


def test_max_header_line_complete_and_incomplete() -> None:
    with pytest.raises(StompProtocolError, match="Header line longer than 10"):
        decode_all(b"SEND\nh:" + b"v" * 9 + b"\n\n\0", max_header_line=10)
    assert decode_all(b"SEND\nh:" + b"v" * 8 + b"\r\n\n\0", max_header_line=10)
    decoder = FrameDecoder(max_header_line=10)
    with pytest.raises(StompProtocolError, match="Header line longer than 10"):
        decoder.feed(b"SEND\nh:" + b"v" * 20)  # no LF yet: refused without waiting for one


def test_heartbeat_flood_is_not_buffered() -> None:
    decoder = FrameDecoder(max_frame_bytes=64)
    assert len(decoder.feed(b"\n" * 10_000)) == 10_000
    assert decoder.feed(b"SEND\n\n\0") == [Frame("SEND")]


# --- encoder guards and MESSAGE fast path --------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "match"),
    [
        (Frame(""), "invalid STOMP command"),
        (Frame("SE\nND"), "invalid STOMP command"),
        (Frame("SEND", (("", "x"),)), "invalid header name"),
        (Frame("SEND", (("x", "a\0b"),)), "NUL in header"),
        (Frame("SEND", (("content-length", "3"),), b"ab"), "does not match"),
        (Frame("SEND", (), b"a\0b"), "needs a content-length"),
    ],
)
def test_encode_frame_refuses_unencodable_frames(frame: Frame, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_frame(frame, "1.2")


def test_encode_frame_refuses_colon_in_1_0_header_name() -> None:
    with pytest.raises(ValueError, match="invalid header name"):
        encode_frame(Frame("SEND", (("a:b", "x"),)), "1.0")


def test_encode_message_exact_bytes() -> None:
    data = encode_message(
        version="1.2",
        subscription="sub-0",
        message_id="7",
        destination="/topic/convengine/audit/c1",
        body=b'{"seq":3}',
        seq=3,
        extra_headers=(("x-trace", "t:1"),),
    )
    assert data == (
        b"MESSAGE\nsubscription:sub-0\nmessage-id:7\ndestination:/topic/convengine/audit/c1\n"
        b'content-type:application/json\nseq:3\nx-trace:t\\c1\ncontent-length:9\n\n{"seq":3}\0'
    )


def test_encode_message_without_seq() -> None:
    data = encode_message(version="1.0", subscription="s", message_id="1", destination="/d", body=b"", seq=None)
    assert data == (
        b"MESSAGE\nsubscription:s\nmessage-id:1\ndestination:/d\ncontent-type:application/json\ncontent-length:0\n\n\0"
    )


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("destination", ["/topic/convengine/audit/c1", "/odd:dest\\x"])
def test_message_template_matches_encode_message(version: StompVersion, destination: str) -> None:
    body = b'{"a":"\0"}'
    template = MessageTemplate(destination=destination, body=body, seq=42, extra_headers=(("k", "v"),))
    for sub, mid in [("0", "1"), ("sub:1", "99")]:
        expected = encode_message(
            version=version,
            subscription=sub,
            message_id=mid,
            destination=destination,
            body=body,
            seq=42,
            extra_headers=(("k", "v"),),
        )
        assert template.render(version, sub, mid) == expected
        decoded = frames_of(decode_all(expected, version))[0]
        assert (decoded.get("subscription"), decoded.get("destination"), decoded.body) == (sub, destination, body)


# --- stomp.py interoperability -------------------------------------------------------------------


def test_stomp_py_parses_our_frames() -> None:
    frame = Frame(
        "MESSAGE",
        (("destination", "/topic/a:b"), ("subscription", "s\\1"), ("content-length", "5"), ("x", "l1\nl2")),
        b"ab\0cd",
    )
    parsed = parse_frame(encode_frame(frame, "1.2")[:-1])  # stomp.py's transport strips the NUL
    assert parsed.cmd == "MESSAGE"
    assert parsed.headers == dict(frame.headers)
    assert parsed.body == b"ab\0cd"


def test_we_decode_stomp_py_frames() -> None:
    headers = {"destination": "/queue/a:b\\c", "receipt": "r\n1", "content-length": "0"}
    Protocol12._escape_headers(None, headers)  # what stomp.py's Protocol12.send_frame does
    data = b"".join(convert_frame(StompPyFrame("SEND", headers, b"x\0y")))
    frame = decode_all(data)[0]
    assert isinstance(frame, Frame)
    assert frame.command == "SEND"
    assert dict(frame.headers) == {"content-length": "3", "destination": "/queue/a:b\\c", "receipt": "r\n1"}
    assert frame.body == b"x\0y"


# --- properties ----------------------------------------------------------------------------------

_COMMANDS = ["SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "MESSAGE", "RECEIPT", "ERROR", "DISCONNECT"]
# Text that stresses escaping: the special characters, multi-byte UTF-8, no NUL, no surrogates.
_TEXT_ALPHABET = st.one_of(
    st.sampled_from(list(":\\\r\nabc ,/\u00e9\u4e2d\U0001f600")),
    st.characters(exclude_categories=["Cs"], exclude_characters="\0"),
)


def _header_text(version: StompVersion, raw: bool, name: bool) -> st.SearchStrategy[str]:
    banned = "\r\n" if raw or version == "1.0" else ("\r" if version == "1.1" else "")
    if name and (raw or version == "1.0"):
        banned += ":"
    return st.text(_TEXT_ALPHABET, min_size=1 if name else 0, max_size=12).filter(
        lambda s: not any(c in s for c in banned)
    )


@st.composite
def frames(draw: st.DrawFn, version: StompVersion) -> Frame:
    command = draw(st.sampled_from([*_COMMANDS, "CONNECT", "CONNECTED"]))
    raw = command in ("CONNECT", "CONNECTED")
    names = _header_text(version, raw, name=True).filter(lambda n: n != "content-length")
    headers = draw(st.lists(st.tuples(names, _header_text(version, raw, name=False)), max_size=5))
    if draw(st.booleans()):
        body = draw(st.binary(max_size=40))
        headers.insert(draw(st.integers(0, len(headers))), ("content-length", str(len(body))))
    else:
        body = draw(st.binary(max_size=40).filter(lambda b: b"\0" not in b))
    return Frame(command, tuple(headers), body)


@st.composite
def versioned_frames(draw: st.DrawFn) -> tuple[StompVersion, Frame]:
    version = draw(st.sampled_from(VERSIONS))
    return version, draw(frames(version))


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["destination", "receipt", "id", "x-custom", "content-type"]),
        st.text(_TEXT_ALPHABET, max_size=12),
        max_size=5,
    ),
    st.binary(max_size=40),
)
def test_we_decode_whatever_stomp_py_encodes(headers: dict[str, str], body: bytes) -> None:
    original = dict(headers, **{"content-length": "0"})
    wire_headers = dict(original)
    Protocol12._escape_headers(None, wire_headers)
    data = b"".join(convert_frame(StompPyFrame("SEND", wire_headers, body)))
    frame = FrameDecoder("1.2").feed(data)[0]
    assert isinstance(frame, Frame)
    assert dict(frame.headers) == dict(original, **{"content-length": str(len(body))})
    assert frame.body == body


@settings(max_examples=300, deadline=None)
@given(versioned_frames())
def test_roundtrip_split_at_every_byte_boundary(case: tuple[StompVersion, Frame]) -> None:
    version, frame = case
    data = encode_frame(frame, version)
    for cut in range(len(data) + 1):
        decoder = FrameDecoder(version)
        assert decoder.feed(data[:cut]) + decoder.feed(data[cut:]) == [frame]
    decoder = FrameDecoder(version)
    assert [item for i in range(len(data)) for item in decoder.feed(data[i : i + 1])] == [frame]


@st.composite
def streams(draw: st.DrawFn) -> tuple[StompVersion, list[Frame | Heartbeat], bytes, list[int]]:
    version = draw(st.sampled_from(VERSIONS))
    items: list[Frame | Heartbeat] = []
    data = b""
    for frame in draw(st.lists(frames(version), min_size=1, max_size=6)):
        for eol in draw(st.lists(st.sampled_from([b"\n", b"\r\n"]), max_size=3)):
            items.append(HEARTBEAT)
            data += eol
        items.append(frame)
        data += encode_frame(frame, version)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    return version, items, data, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_roundtrip_concatenated_frames_with_heartbeats_random_splits(
    case: tuple[StompVersion, list[Frame | Heartbeat], bytes, list[int]],
) -> None:
    version, items, data, cuts = case
    assert FrameDecoder(version).feed(data) == items
    decoder = FrameDecoder(version)
    got: list[Frame | Heartbeat] = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        got += decoder.feed(data[start:end])
    assert got == items


@settings(max_examples=200, deadline=None)
@given(frames("1.2").filter(lambda f: f.command not in ("CONNECT", "CONNECTED")))
def test_stomp_py_parse_frame_agrees_with_us(frame: Frame) -> None:
    parsed = parse_frame(encode_frame(frame, "1.2")[:-1])
    assert parsed.cmd == frame.command
    first: dict[str, str] = {}
    for name, value in frame.headers:
        first.setdefault(name, value)
    assert parsed.headers == first
    assert parsed.body == frame.body


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_protocol_errors(data: bytes) -> None:
    decoder = FrameDecoder("1.2", max_frame_bytes=128, max_headers=4, max_header_line=32)
    try:
        for i in range(0, len(data), 7):
            decoder.feed(data[i : i + 7])
    except StompProtocolError:
        pass
