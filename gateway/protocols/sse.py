"""Server-Sent Events, sans-I/O: an encoder for frames and an incremental parser of a byte stream.

Follows the WHATWG HTML "event stream" grammar: lines end in CRLF, LF or CR; a blank line
dispatches; ``:`` starts a comment; one leading space after the colon is dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LINE_END = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched event. ``id`` is None when the frame carried no ``id:`` line."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None


def encode_event(data: str | bytes, *, event: str | None = None, id: str | int | None = None) -> bytes:
    """Encode one frame. Multi-line data becomes several ``data:`` lines, as the spec requires."""
    if isinstance(data, bytes):
        data = data.decode()
    out = []
    if id is not None:
        out.append(f"id: {id}\n")
    if event is not None:
        out.append(f"event: {event}\n")
    for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        out.append(f"data: {line}\n")
    out.append("\n")
    return "".join(out).encode()


def encode_comment(text: str = "") -> bytes:
    return f": {text}\n\n".encode() if text else b":\n\n"


def encode_retry(ms: int) -> bytes:
    return f"retry: {ms}\n\n".encode()


class SseParser:
    """Incremental parser: ``feed(bytes)`` returns the events completed by those bytes.

    Comments are counted in ``comments`` (keepalives are life signs, not events).
    """

    def __init__(self, max_line: int = 1 << 20) -> None:
        self._buf = b""
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._has_fields = False
        self._max_line = max_line
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self.comments = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        buf = self._buf + chunk
        if self._pending_cr and buf.startswith(b"\n"):
            buf = buf[1:]  # the LF of a CRLF whose CR ended the previous chunk
        self._pending_cr = False
        if b"\r" in buf:
            # A trailing CR may be half of a CRLF: settle it with the next chunk.
            self._pending_cr = buf.endswith(b"\r")
            lines = _LINE_END.split(buf)
        else:
            lines = buf.split(b"\n")
        self._buf = b"" if self._pending_cr else lines.pop()
        if self._pending_cr:
            lines.pop()  # the empty remainder after the final CR
        for line in lines:
            self._line(line.decode("utf-8", "replace"), events)
        if len(self._buf) > self._max_line:
            raise ValueError(f"SSE line longer than {self._max_line} bytes")
        return events

    def _line(self, line: str, events: list[SseEvent]) -> None:
        if line == "":
            if self._has_fields:
                if self._data or self._event:
                    data = "\n".join(self._data)
                    events.append(SseEvent(self._event or "message", data, self._id, self._retry))
                self._data, self._event, self._retry, self._has_fields = [], "", None, False
                self._id = None
            return
        if line.startswith(":"):
            self.comments += 1
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        self._has_fields = True
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
                self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self._retry = self.retry_ms = int(value)
