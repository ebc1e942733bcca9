from hypothesis import given
from hypothesis import strategies as st

from gateway.protocols.sse import SseEvent, SseParser, encode_comment, encode_event, encode_retry

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\x00"), max_size=40)


def test_encode_event_fields() -> None:
    assert encode_event('{"a":1}', event="VERBOSE", id=5) == b'id: 5\nevent: VERBOSE\ndata: {"a":1}\n\n'
    assert encode_event("a\nb") == b"data: a\ndata: b\n\n"
    assert encode_comment("ping") == b": ping\n\n"
    assert encode_retry(1500) == b"retry: 1500\n\n"


def test_parser_line_endings_comments_and_retry() -> None:
    p = SseParser()
    events = p.feed(b": hi\r\nid: 1\r\nevent: x\r\ndata: a\r\ndata:b\r\n\r\nretry: 300\n\ndata: c\r\r")
    assert events == [SseEvent("x", "a\nb", "1"), SseEvent("message", "c", None)]
    assert p.comments == 1 and p.retry_ms == 300 and p.last_event_id == "1"


def test_incomplete_event_is_not_dispatched() -> None:
    p = SseParser()
    assert p.feed(b"id: 1\ndata: half") == []


@given(
    st.lists(st.tuples(text, st.one_of(st.none(), st.from_regex(r"[A-Z_]{1,10}", fullmatch=True)),
                       st.one_of(st.none(), st.integers(0, 10**9))), min_size=1, max_size=5),
    st.data(),
)  # fmt: skip
def test_round_trip_at_every_split(frames: list[tuple[str, str | None, int | None]], data: st.DataObject) -> None:
    wire = b"".join(encode_event(d, event=e, id=i) for d, e, i in frames)
    expected = [SseEvent(e or "message", d, None if i is None else str(i)) for d, e, i in frames]
    cut = data.draw(st.integers(0, len(wire)))
    p = SseParser()
    assert p.feed(wire[:cut]) + p.feed(wire[cut:]) == expected
    p = SseParser()
    out = []
    for b in wire:
        out += p.feed(bytes([b]))
    assert out == expected
