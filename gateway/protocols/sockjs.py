"""SockJS protocol 0.3, sans-I/O: frames, client payloads, ``/info``, session paths, HTTP session state.

The reference is sockjs-protocol's ``sockjs-protocol.py`` (a runnable spec) and sockjs-client 1.6.
Nothing here touches a socket, a clock or an event loop: time arrives as ``now`` arguments.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

import orjson

from gateway.errors import GatewayError

TRANSPORTS = frozenset({"websocket", "xhr", "xhr_send", "xhr_streaming", "eventsource"})
XHR_STREAMING_PRELUDE = b"h" * 2048 + b"\n"  # old IE buffers the first 2 KiB of a streamed XHR
EVENTSOURCE_PRELUDE = b"\r\n"  # old Opera needs a line before the first event
PAYLOAD_EXPECTED = "Payload expected."
BROKEN_JSON = "Broken JSON encoding."

# Characters the server must send as \uXXXX: browsers mangle them on some transports, and lone
# surrogates cannot travel as UTF-8 at all (sockjs-protocol, "JSON Unicode Encoding").
_ESCAPABLE = re.compile("[\x00-\x1f\u200c-\u200f\u2028-\u202f\u2060-\u206f\ud800-\udfff\ufff0-\uffff]")
# sockjs-client runs decodeURI() on every EventSource data line, so '%' must be escaped too.
_EVENTSOURCE_ESCAPES = str.maketrans({"%": "%25", "\r": "%0D", "\n": "%0A", "\x00": "%00"})


class SockJsError(GatewayError):
    """Root of the SockJS protocol errors."""


class PayloadError(SockJsError):
    """A client payload is empty or not JSON; ``str(error)`` is the exact body SockJS answers."""


class QueueOverflow(SockJsError):
    """The application queued more messages than the session may hold for a slow receiver."""


@dataclass(frozen=True, slots=True)
class CloseStatus:
    """A close code and reason, as carried by a ``c`` frame."""

    code: int
    reason: str


GO_AWAY = CloseStatus(3000, "Go away!")
ANOTHER_CONNECTION = CloseStatus(2010, "Another connection still open")
INTERRUPTED = CloseStatus(1002, "Connection interrupted")
BROKEN_FRAMING = CloseStatus(3000, "Broken framing.")
MESSAGE_TOO_BIG = CloseStatus(1009, "Message too big")
QUEUE_FULL = CloseStatus(1013, "Send queue overflow")
SERVER_ERROR = CloseStatus(1011, "Server error")


def _json(value: object) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # orjson refuses lone surrogates, which a JS client may legitimately send
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if _ESCAPABLE.search(text) is None:
        return text
    return _ESCAPABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def open_frame() -> str:
    """The ``o`` frame that starts every session."""
    return "o"


def heartbeat_frame() -> str:
    """The ``h`` frame that keeps idle connections through proxies."""
    return "h"


def message_frame(messages: list[str]) -> str:
    """An ``a[...]`` frame carrying ``messages``, escaped as SockJS requires."""
    return "a" + _json(messages)


def close_frame(code: int, reason: str) -> str:
    """A ``c[code,"reason"]`` frame."""
    return "c" + _json([code, reason])


def xhr_chunk(frames: list[str]) -> bytes:
    """Frames as the xhr and xhr_streaming transports write them: one per line."""
    return "".join(f + "\n" for f in frames).encode()


def eventsource_chunk(frames: list[str]) -> bytes:
    """Frames as EventSource events: ``data: <frame>\\r\\n\\r\\n``."""
    return "".join(f"data: {f.translate(_EVENTSOURCE_ESCAPES)}\r\n\r\n" for f in frames).encode()


def decode_client_payload(body: bytes | str, *, single_allowed: bool = True) -> list[str]:
    """Decode what a client sent: a JSON array of strings, or (``single_allowed``) one JSON string.

    Raises ``PayloadError`` with ``Payload expected.`` for an empty body or a value of the wrong
    shape, and ``Broken JSON encoding.`` when the body is not JSON or holds a lone surrogate.
    """
    if not body:
        raise PayloadError(PAYLOAD_EXPECTED)
    try:
        # orjson also refuses an escaped lone surrogate (``["\ud800"]``): such a string has no UTF-8
        # form (RFC 7493 I-JSON §2.1), so no STOMP frame can carry it; it is broken JSON to us.
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise PayloadError(BROKEN_JSON) from None
    if isinstance(value, str) and single_allowed:
        return [value]
    if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
        raise PayloadError(PAYLOAD_EXPECTED)
    return value


def info_body(*, websocket: bool, cookie_needed: bool, entropy: int) -> bytes:
    """The ``/info`` JSON; ``entropy`` is a random integer in [0, 2**32) the client seeds with."""
    # "origins" is kept for old clients; every client ignores it (sockjs-protocol, InfoTest).
    info = {"websocket": websocket, "cookie_needed": cookie_needed, "origins": ["*:*"], "entropy": entropy}
    return orjson.dumps(info)


@dataclass(frozen=True, slots=True)
class SessionPath:
    """The ``/<server>/<session>/<transport>`` part of a SockJS URL."""

    server: str
    session: str
    transport: str


def valid_id(value: str) -> bool:
    """Server and session ids are any non-empty segment without a dot or a slash."""
    return bool(value) and "." not in value and "/" not in value


def parse_session_path(path: str) -> SessionPath | None:
    """Parse ``/<server>/<session>/<transport>`` (relative to the prefix); None when invalid."""
    parts = path.split("/")
    if len(parts) != 4 or parts[0]:
        return None
    _, server, session, transport = parts
    if not (valid_id(server) and valid_id(session)) or transport not in TRANSPORTS:
        return None
    return SessionPath(server, session, transport)


class SessionState(enum.Enum):
    """The life of a session, as in sockjs-node: CONNECTING until the first receiver."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Attach:
    """The outcome of ``SockJsSession.attach``: frames to write, and whether the receiver stays."""

    accepted: bool
    frames: list[str]
    opened: bool = False


class SockJsSession:
    """State of one session served by HTTP receivers (xhr, xhr_streaming, eventsource).

    A receiver is one HTTP response that carries frames to the client. At most one is attached at
    a time. Messages queue here between receivers; the queue is bounded. ``poll`` hands the
    attached receiver everything due (messages, a heartbeat, the close frame). A session without a
    receiver for ``disconnect_delay_s`` is due to be expired by the caller.
    """

    def __init__(self, *, heartbeat_s: float, disconnect_delay_s: float, max_queue: int, now: float) -> None:
        self.state = SessionState.CONNECTING
        self.close_status: CloseStatus | None = None
        self._heartbeat_s = heartbeat_s
        self._disconnect_delay_s = disconnect_delay_s
        self._max_queue = max_queue
        self._queue: list[str] = []
        self._attached = False
        self._detached_at: float | None = now  # a session nobody polls expires like a detached one
        self._last_write = now

    @property
    def receiver_attached(self) -> bool:
        return self._attached

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closing(self) -> bool:
        """True once the session answers every receiver with its close frame."""
        return self.state in (SessionState.CLOSING, SessionState.CLOSED)

    def send(self, messages: list[str]) -> bool:
        """Queue messages for the client; False (dropped) unless OPEN. Raises ``QueueOverflow``."""
        if self.state is not SessionState.OPEN:
            return False
        if len(self._queue) + len(messages) > self._max_queue:
            raise QueueOverflow(f"{len(self._queue)} queued + {len(messages)} new > limit {self._max_queue}")
        self._queue.extend(messages)
        return True

    def close(self, status: CloseStatus) -> bool:
        """Start closing: receivers get the close frame from now on. False if already closing."""
        if self.closing:
            return False
        self.state = SessionState.CLOSING
        self.close_status = status
        return True

    def attach(self, now: float) -> Attach:
        """A receiving request arrived; says what to write to it and whether it stays attached."""
        if self._attached:
            # sockjs-protocol: a second receiver gets 2010 and the first one keeps the session.
            return Attach(False, [close_frame(ANOTHER_CONNECTION.code, ANOTHER_CONNECTION.reason)])
        if self.closing:
            self._detached_at = now  # sockjs-node restarts the linger for every late receiver
            return Attach(False, self._take(now))
        self._attached = True
        self._detached_at = None
        if self.state is SessionState.CONNECTING:
            self.state = SessionState.OPEN
            self._last_write = now
            return Attach(True, [open_frame()], opened=True)
        return Attach(True, self.poll(now))

    def poll(self, now: float) -> list[str]:
        """Frames due to the attached receiver now: queued messages, the close frame, or a heartbeat."""
        frames = self._take(now)
        if not frames and self._attached and self.state is SessionState.OPEN and self.heartbeat_due(now):
            frames = [heartbeat_frame()]
            self._last_write = now
        return frames

    def _take(self, now: float) -> list[str]:
        frames = []
        if self._queue:
            frames.append(message_frame(self._queue))
            self._queue = []
        if self.close_status is not None:
            frames.append(close_frame(self.close_status.code, self.close_status.reason))
        if frames:
            self._last_write = now
        return frames

    def detach(self, now: float, *, interrupted: bool = False) -> None:
        """The receiver ended; ``interrupted`` means the client went away, which closes the session."""
        if not self._attached:
            return
        self._attached = False
        self._detached_at = now
        if interrupted:
            # Messages may have been lost in flight, so the session cannot go on (sockjs-protocol,
            # HandlingClose.test_abort_xhr_polling); later receivers learn why.
            self.close(INTERRUPTED)

    def next_heartbeat_at(self) -> float:
        """When the attached receiver is owed a heartbeat if nothing else is written before."""
        return self._last_write + self._heartbeat_s

    def heartbeat_due(self, now: float) -> bool:
        return now >= self.next_heartbeat_at()

    def disconnect_deadline(self) -> float | None:
        """When the session expires unless a receiver attaches; None while one is attached."""
        if self._attached or self._detached_at is None:
            return None
        return self._detached_at + self._disconnect_delay_s

    def disconnect_due(self, now: float) -> bool:
        deadline = self.disconnect_deadline()
        return deadline is not None and now >= deadline

    def expire(self) -> None:
        """The caller has decided the session is over: CLOSED, queue dropped."""
        self.state = SessionState.CLOSED
        self._queue = []
        if self.close_status is None:
            self.close_status = GO_AWAY
