"""The pre-encoded WebSocket frames fan-out shares between viewers, against the websockets library's own."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from gateway.transports.server import ws_text_frame


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_ws_text_frame_is_what_websockets_serializes_and_parses(size: int) -> None:
    payload = ("é" * size).encode()[:size].ljust(size, b"x")
    frame = ws_text_frame(payload)
    assert frame == Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        parsed = done.value
    else:
        pytest.fail("frame not complete")
    assert (parsed.opcode, parsed.fin, parsed.data) == (Opcode.TEXT, True, payload)
