"""Sans-I/O client wire codecs for the load client: WebSocket (RFC 6455), HTTP/1.1 chunked bodies, STOMP frames.

Lean on purpose: the load client must not be the bottleneck, so it parses only what it measures
(a STOMP ``seq`` header, an SSE ``id:`` line, the ``emitted_at_ms`` number in a body).
"""

from __future__ import annotations

import base64
import os

_EMITTED = b'"emitted_at_ms":'
_FROM_SEQ = b'"fromSeq":'
_NUMBER_END = b",}] \n"


def ws_handshake(host: str, port: int, path: str, subprotocols: tuple[str, ...] = ()) -> bytes:
    """An upgrade request offering no extension (no permessage-deflate: every target sends plain frames)."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"Origin: http://{host}:{port}",
    ]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def http_get(host: str, port: int, path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()


def split_head(buf: bytearray) -> tuple[int, bytes] | None:
    """(status, head bytes) once the response head is complete (consumed from ``buf``); None before."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end])
    del buf[: end + 4]
    parts = head.split(b" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0
    return status, head


def ws_frame(opcode: int, payload: bytes) -> bytes:
    """One masked client frame (clients must mask, RFC 6455 §5.3)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    if n:
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "little")
        masked = (int.from_bytes(payload, "little") ^ key).to_bytes(n, "little")
    else:
        masked = b""
    return head + mask + masked


class WsReader:
    """Incremental parser of unmasked server frames: ``feed`` returns complete (opcode, payload) messages."""

    __slots__ = ("_buf", "_frag", "_frag_op")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._frag: list[bytes] = []
        self._frag_op = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, bytes]] = []
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            head = 2
            if n == 126:
                if size - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif n == 127:
                if size - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if b1 & 0x80:  # a masked server frame is a protocol error; unmask anyway, we only measure
                head += 4
            if size - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            opcode = b0 & 0x0F
            if not b0 & 0x80:  # fragment: keep until FIN
                if opcode:
                    self._frag_op = opcode
                self._frag.append(payload)
                continue
            if opcode == 0:
                self._frag.append(payload)
                payload, opcode = b"".join(self._frag), self._frag_op
                self._frag = []
            out.append((opcode, payload))
        if pos:
            del buf[:pos]
        return out


class ChunkedReader:
    """Decoder of an HTTP/1.1 ``Transfer-Encoding: chunked`` body (``chunked=False``: bytes pass through)."""

    __slots__ = ("_buf", "_chunked", "_left")

    def __init__(self, chunked: bool) -> None:
        self._chunked = chunked
        self._buf = bytearray()
        self._left = 0  # bytes of the current chunk still to come (+2 for its CRLF)

    def feed(self, data: bytes) -> bytes:
        if not self._chunked:
            return data
        buf = self._buf
        buf += data
        out = bytearray()
        while buf:
            if self._left:
                take = min(self._left, len(buf))
                out += buf[:take]
                del buf[:take]
                self._left -= take
                if self._left:
                    break
                continue
            if buf[:2] == b"\r\n":
                del buf[:2]
                continue
            end = buf.find(b"\r\n")
            if end < 0:
                break
            size = int(bytes(buf[:end]).split(b";")[0], 16)
            del buf[: end + 2]
            self._left = size
            if size == 0:
                break
        return bytes(out)


def take_sse_frames(buf: bytearray, text: bytes) -> list[bytes]:
    """Append decoded body ``text`` to ``buf`` and take out every complete SSE frame (comments dropped)."""
    buf += text
    end = buf.rfind(b"\n\n")
    if end < 0:
        return []
    block = bytes(buf[: end + 2])
    del buf[: end + 2]
    return [frame for frame in block.split(b"\n\n") if frame and not frame.startswith(b":")]


def number_after(data: bytes, key: bytes, start: int = 0) -> float | None:
    """The JSON number following ``key`` in ``data`` (a byte search, no JSON parse)."""
    i = data.find(key, start)
    if i < 0:
        return None
    i += len(key)
    j = i
    size = len(data)
    while j < size and data[j] not in _NUMBER_END:
        j += 1
    try:
        return float(data[i:j])
    except ValueError:
        return None


def emitted_at_ms(body: bytes) -> float | None:
    return number_after(body, _EMITTED)


def coalesced_from(body: bytes) -> int | None:
    """``_meta.coalesced.fromSeq`` of a merged delta envelope, else None."""
    value = number_after(body, _FROM_SEQ)
    return None if value is None else int(value)


def stomp_frame(command: str, headers: dict[str, str], body: str = "") -> bytes:
    lines = [command, *(f"{k}:{v}" for k, v in headers.items())]
    return ("\n".join(lines) + "\n\n" + body + "\0").encode()


def stomp_frames(data: bytes) -> list[bytes]:
    """The frames in one WebSocket message (heart-beat EOLs dropped); a JSON body never holds a NUL."""
    if b"\0" not in data:
        return []
    return [part.lstrip(b"\r\n") for part in data.split(b"\0") if part.strip(b"\r\n")]


def stomp_header(frame: bytes, name: bytes) -> bytes | None:
    """A header's raw value (first occurrence wins, STOMP 1.2 §Repeated Header Entries)."""
    end = frame.find(b"\n\n")
    key = b"\n" + name + b":"
    i = frame.find(key, 0, end)
    if i < 0:
        return None
    i += len(key)
    j = frame.find(b"\n", i)
    return frame[i:j].rstrip(b"\r")


def stomp_body(frame: bytes) -> bytes:
    end = frame.find(b"\n\n")
    return frame[end + 2 :] if end >= 0 else b""
