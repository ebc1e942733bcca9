"""STOMP server session, sans-I/O: bytes in → events out; the app's decisions in → bytes out.

Usage: ``events = session.receive_data(data)``; handle the events in order, answering every
ConnectRequest, SubscribeRequest and SendRequest with ``accept_*`` or ``reject`` before the next
``receive_data``; write ``data_to_send()``; write ``message()``/``render()`` bytes only after that.
Replies to frames the session answers itself (RECEIPT for UNSUBSCRIBE, ACK, ...) wait behind any
undecided earlier request, so output order always follows input order, even when pipelined.

Choices where the spec leaves room, all lenient towards clients:
* UNSUBSCRIBE of an unknown id is not an error (STOMP 1.2 does not require one): RECEIPT only.
* ACK/NACK are accepted in every ack mode, NACK also in 1.0; nothing is redelivered.
* BEGIN/COMMIT/ABORT are acknowledged (RECEIPT if asked) without transaction semantics: a viewer
  has nothing to transact and SEND is decided by the app frame by frame.
* A body on a frame that should have none is ignored; ``host`` on CONNECT is optional.
* Before CONNECT, frames are read as STOMP 1.0 (no unescaping) and ERRORs written as 1.0.
* MESSAGE ids count up per session; 1.2 client/client-individual MESSAGEs also carry ``ack``.
* Heart-beats: the transport sends ``heartbeat_bytes()`` every ``send_heartbeat_ms`` and considers
  the peer dead after ``peer_timeout_ms`` (twice ``expect_heartbeat_ms``) without any byte; the
  spec leaves the tolerance to implementations, 2x absorbs timer jitter and a slow network.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gateway.protocols.stomp_codec import (
    SUPPORTED_VERSIONS,
    Frame,
    FrameDecoder,
    Heartbeat,
    MessageTemplate,
    StompProtocolError,
    StompVersion,
    encode_frame,
    encode_message,
    escape_header,
)

Headers = tuple[tuple[str, str], ...]
ACK_MODES = frozenset({"auto", "client", "client-individual"})
VERSION_ERROR = "Supported protocol versions are " + ",".join(SUPPORTED_VERSIONS)


class SessionState(enum.Enum):
    """Where the session is; CLOSED is final (after ERROR or DISCONNECT)."""

    AWAIT_CONNECT = "await-connect"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Subscription:
    """An accepted subscription: where it points and how the client acknowledges."""

    destination: str
    ack: str


@dataclass(frozen=True, slots=True)
class ConnectRequest:
    """CONNECT/STOMP with its negotiated version; answer with accept_connect() or reject()."""

    version: StompVersion
    host: str | None
    login: str | None
    passcode: str | None = field(repr=False)
    headers: Headers = field(repr=False)


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """SUBSCRIBE (1.0 without id: id = destination); answer with accept_subscribe() or reject()."""

    id: str
    destination: str
    ack: str
    headers: Headers
    receipt: str | None


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    """A subscription ended; the session has already forgotten it and sent any RECEIPT."""

    id: str
    receipt: str | None


@dataclass(frozen=True, slots=True)
class SendRequest:
    """SEND; answer with accept_send() or reject()."""

    destination: str
    headers: Headers
    body: bytes
    receipt: str | None


@dataclass(frozen=True, slots=True)
class AckRequest:
    """ACK (already answered); ``id`` is 1.2's ``id`` or 1.0/1.1's ``message-id``."""

    id: str
    transaction: str | None
    receipt: str | None


@dataclass(frozen=True, slots=True)
class NackRequest:
    """NACK (already answered); nothing is redelivered."""

    id: str
    transaction: str | None
    receipt: str | None


@dataclass(frozen=True, slots=True)
class DisconnectRequest:
    """DISCONNECT: RECEIPT queued if asked, session CLOSED; close after data_to_send()."""

    receipt: str | None


@dataclass(frozen=True, slots=True)
class HeartbeatReceived:
    """A heart-beat EOL arrived."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The client broke the protocol: ERROR is queued and the session is CLOSED."""

    message: str


Event = (
    ConnectRequest
    | SubscribeRequest
    | UnsubscribeRequest
    | SendRequest
    | AckRequest
    | NackRequest
    | DisconnectRequest
    | HeartbeatReceived
    | ProtocolViolation
)
_Decidable = ConnectRequest | SubscribeRequest | SendRequest
_HEARTBEAT_RECEIVED = HeartbeatReceived()


class _Refused(Exception):
    """A client frame the session refuses; becomes ERROR + close."""

    def __init__(self, message: str, receipt: str | None = None, body: str = "", extra: Headers = ()) -> None:
        super().__init__(message)
        self.receipt, self.body, self.extra = receipt, body, extra


class _Slot:
    """A place in the outbox reserved for the app's answer to one request."""

    __slots__ = ("data", "request")

    def __init__(self, request: _Decidable) -> None:
        self.request = request
        self.data: bytes | None = None


def negotiate_version(accept_version: str | None) -> StompVersion | None:
    """Highest common version; absent header → 1.0 (STOMP 1.2 §Protocol Negotiation)."""
    if accept_version is None:
        return "1.0"
    offered = {v.strip() for v in accept_version.split(",")}
    return next((v for v in reversed(SUPPORTED_VERSIONS) if v in offered), None)


def negotiate_heartbeat(client: tuple[int, int], server: tuple[int, int]) -> tuple[int, int]:
    """(server sends every, server expects every) in ms, 0 = off (STOMP 1.2 §Heart-beating)."""
    (cx, cy), (sx, sy) = client, server
    return (0 if sx == 0 or cy == 0 else max(sx, cy)), (0 if sy == 0 or cx == 0 else max(sy, cx))


def parse_heartbeat(value: str | None) -> tuple[int, int]:
    """Parse a ``heart-beat: cx,cy`` header; absent → (0, 0)."""
    if value is None:
        return 0, 0
    parts = [p.strip() for p in value.split(",")]
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
        raise StompProtocolError(f"Invalid heart-beat header '{value[:64]}'")
    return int(parts[0]), int(parts[1])


class StompServerSession:
    """The server side of one STOMP connection, versions 1.0-1.2."""

    def __init__(
        self,
        *,
        server_name: str = "hq-gateway/0.1",
        heartbeat_ms: tuple[int, int] = (10000, 10000),
        max_subscriptions: int = 100,
        max_frame_bytes: int = 65536,
        max_headers: int = 64,
        max_header_line: int = 8192,
        session_id: str | None = None,
    ) -> None:
        self.server_name = server_name
        self.heartbeat_ms = heartbeat_ms
        self.max_subscriptions = max_subscriptions
        self.session_id = session_id if session_id is not None else secrets.token_hex(8)
        # STOMP 1.2 §Value Encoding: nothing is unescaped before a version is negotiated.
        self._decoder = FrameDecoder("1.0", max_frame_bytes, max_headers, max_header_line)
        self._state = SessionState.AWAIT_CONNECT
        self._version: StompVersion | None = None
        self._client_heartbeat = (0, 0)
        self._heartbeat = (0, 0)
        self._outbox: list[bytes | _Slot] = []  # a list: a deque's first block is 600 bytes per viewer
        self._claimed: dict[str, SubscribeRequest] = {}  # received, possibly not yet accepted
        self._subscriptions: dict[str, Subscription] = {}
        # (prefix, ack header?, message-id suffix, render key): see ``render`` and ``render_key``.
        self._prefixes: dict[str, tuple[bytes, bool, bytes, bytes]] = {}
        self._message_count = 0

    @property
    def state(self) -> SessionState:
        return self._state

    @property
    def version(self) -> StompVersion | None:
        """The negotiated version, None before CONNECT."""
        return self._version

    @property
    def subscriptions(self) -> Mapping[str, Subscription]:
        """Accepted subscriptions by id (read-only view)."""
        return MappingProxyType(self._subscriptions)

    @property
    def send_heartbeat_ms(self) -> int:
        return self._heartbeat[0]

    @property
    def expect_heartbeat_ms(self) -> int:
        return self._heartbeat[1]

    @property
    def peer_timeout_ms(self) -> int:
        """Silence after which the peer counts as dead; 0 = never."""
        return 2 * self._heartbeat[1]

    @staticmethod
    def heartbeat_bytes() -> bytes:
        return b"\n"

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the client; returns the events they complete, in order."""
        events: list[Event] = []
        if self._state is not SessionState.CLOSED:  # bytes after ERROR or DISCONNECT are ignored
            self._decoder.receive_data(data)
        while self._state is not SessionState.CLOSED:
            event: Event | None
            try:
                item = self._decoder.next_event()
                if item is None:
                    break
                if isinstance(item, Heartbeat):
                    event = _HEARTBEAT_RECEIVED
                else:
                    event = self._on_frame(item, item.get("receipt"))
            except StompProtocolError as exc:
                event = self._violation(_Refused(str(exc)))
            except _Refused as exc:
                event = self._violation(exc)
            if event is not None:
                events.append(event)
        return events

    def data_to_send(self) -> bytes:
        """Drain the bytes ready to write, stopping at the first request still awaiting a decision."""
        out: list[bytes] = []
        for item in self._outbox:
            if isinstance(item, _Slot):
                if item.data is None:
                    break
                item = item.data
            out.append(item)
        del self._outbox[: len(out)]
        return b"".join(out)

    def accept_connect(self, extra_headers: Headers = ()) -> None:
        """Answer the pending ConnectRequest with CONNECTED; sets the negotiated heart-beat periods."""
        slot = self._slot(ConnectRequest)
        if slot is None:
            return
        version = self._version or "1.0"
        headers: list[tuple[str, str]] = [("version", version)]
        heartbeat = (0, 0)
        if version != "1.0":  # heart-beating arrived with STOMP 1.1
            heartbeat = negotiate_heartbeat(self._client_heartbeat, self.heartbeat_ms)
            headers.append(("heart-beat", f"{heartbeat[0]},{heartbeat[1]}"))
        headers += [("session", self.session_id), ("server", self.server_name), *extra_headers]
        slot.data = encode_frame(Frame("CONNECTED", tuple(headers)), version)
        if self._state is SessionState.AWAIT_CONNECT:
            self._state, self._heartbeat = SessionState.CONNECTED, heartbeat

    def accept_subscribe(self, request: SubscribeRequest) -> None:
        """Register the subscription and send its RECEIPT if one was asked for."""
        slot = self._slot(request)
        if slot is None:
            return
        slot.data = self._receipt(request.receipt)
        if self._claimed.get(request.id) is request and self._state is not SessionState.CLOSED:
            self._subscriptions[request.id] = Subscription(request.destination, request.ack)
            version = self._version or "1.0"
            escaped = escape_header(request.id, version)
            prefix = f"MESSAGE\nsubscription:{escaped}\nmessage-id:".encode()
            with_ack = self._version == "1.2" and request.ack != "auto"
            key = b"%s|%d|%s" % (version.encode(), with_ack, prefix)
            self._prefixes[request.id] = (prefix, with_ack, f"-{escaped}".encode(), key)

    def accept_send(self, request: SendRequest) -> None:
        """Acknowledge a SEND the app has handled: its RECEIPT if one was asked for."""
        slot = self._slot(request)
        if slot is not None:
            slot.data = self._receipt(request.receipt)

    def reject(self, message: str, receipt_id: str | None = None, body: str = "") -> None:
        """Send ERROR (answering the oldest undecided request, if any) and close."""
        pending = any(isinstance(i, _Slot) and i.data is None for i in self._outbox)
        if self._state is not SessionState.CLOSED or pending:
            self._fail(message, receipt_id, body)

    def message(
        self,
        subscription_id: str,
        destination: str,
        body: bytes,
        seq: int | None,
        extra_headers: Headers = (),
    ) -> bytes:
        """A MESSAGE for one subscription, not queued; KeyError if the subscription is gone."""
        ack = self._subscriptions[subscription_id].ack
        message_id = self._next_message_id()
        if self._version == "1.2" and ack != "auto":  # STOMP 1.2 §MESSAGE: ack header to relate ACK
            extra_headers = (*extra_headers, ("ack", message_id))
        return encode_message(
            version=self._version or "1.0",
            subscription=subscription_id,
            message_id=message_id,
            destination=destination,
            body=body,
            seq=seq,
            extra_headers=extra_headers,
        )

    def render(self, template: MessageTemplate, subscription_id: str) -> bytes:
        """The fan-out fast path: ``template`` for one subscription; KeyError if it is gone.

        The message-id is ``<seq>-<subscription>``: unique in the session (a subscription sees a
        seq once), and the same bytes for every session with this subscription id, version and ack
        mode, so the whole frame can be encoded once and shared (see ``render_key``).
        """
        prefix, with_ack, id_suffix, _ = self._prefixes[subscription_id]
        seq = template.seq
        message_id = self._next_message_id().encode() if seq is None else b"%d%s" % (seq, id_suffix)
        tail = template.tail(self._version or "1.0")
        if with_ack:  # STOMP 1.2 §MESSAGE
            return b"".join((prefix, message_id, b"\nack:", message_id, b"\n", tail))
        return b"".join((prefix, message_id, b"\n", tail))

    def subscribed(self, subscription_id: str) -> bool:
        """Whether MESSAGEs for this subscription may still be sent (it was accepted, not unsubscribed)."""
        return subscription_id in self._prefixes

    def render_key(self, subscription_id: str) -> bytes:
        """What ``render`` output depends on besides the template: equal keys, equal bytes (seq'd templates).

        KeyError if the subscription is gone.
        """
        return self._prefixes[subscription_id][3]

    def _next_message_id(self) -> str:
        self._message_count += 1
        return str(self._message_count)

    def _slot(self, request: _Decidable | type[ConnectRequest]) -> _Slot | None:
        for item in self._outbox:
            if isinstance(item, _Slot) and item.data is None:
                matches = type(item.request) is request if isinstance(request, type) else item.request is request
                if matches:
                    return item
        if self._state is SessionState.CLOSED:
            return None  # already refused (or DISCONNECTed): a late decision changes nothing
        raise RuntimeError(f"no pending decision for {request!r}")

    def _receipt(self, receipt: str | None) -> bytes:
        if receipt is None:
            return b""
        return encode_frame(Frame("RECEIPT", (("receipt-id", receipt),)), self._version or "1.0")

    def _violation(self, refusal: _Refused) -> ProtocolViolation:
        self._fail(str(refusal), refusal.receipt, refusal.body, refusal.extra)
        return ProtocolViolation(str(refusal))

    def _fail(self, message: str, receipt: str | None, body: str = "", extra: Headers = ()) -> None:
        # Nothing may follow an ERROR (STOMP 1.2 §ERROR): drop undecided requests and all after them.
        for index, item in enumerate(self._outbox):
            if isinstance(item, _Slot) and item.data is None:
                while len(self._outbox) > index:
                    self._outbox.pop()
                break
        headers = [("message", " ".join(message.splitlines()))]
        if receipt is not None:
            headers.append(("receipt-id", receipt))
        data = body.encode()
        headers += [*extra, ("content-type", "text/plain"), ("content-length", str(len(data)))]
        # Before CONNECTED the client has not switched to escaped headers (stompjs unescapes only
        # once connected): an ERROR answering CONNECT is written unescaped, as 1.0 would.
        version = self._version if self._state is SessionState.CONNECTED and self._version else "1.0"
        self._outbox.append(encode_frame(Frame("ERROR", tuple(headers), data), version))
        self._close()

    def _close(self) -> None:
        self._state, self._heartbeat = SessionState.CLOSED, (0, 0)
        self._claimed.clear()
        self._subscriptions.clear()
        self._prefixes.clear()

    def _on_frame(self, frame: Frame, receipt: str | None) -> Event | None:
        command = frame.command
        if command in ("CONNECT", "STOMP"):
            return self._on_connect(frame)
        if self._version is None:
            raise _Refused(f"Expected CONNECT or STOMP, got {command[:32]}", receipt)
        if command == "SUBSCRIBE":
            return self._on_subscribe(frame, receipt)
        if command == "UNSUBSCRIBE":
            return self._on_unsubscribe(frame, receipt)
        if command == "SEND":
            request = SendRequest(self._require(frame, "destination", receipt), frame.headers, frame.body, receipt)
            self._outbox.append(_Slot(request))
            return request
        if command in ("ACK", "NACK"):
            id_ = self._require(frame, "id" if self._version == "1.2" else "message-id", receipt)
            self._outbox.append(self._receipt(receipt))
            kind = AckRequest if command == "ACK" else NackRequest
            return kind(id_, frame.get("transaction"), receipt)
        if command in ("BEGIN", "COMMIT", "ABORT"):
            self._require(frame, "transaction", receipt)
            self._outbox.append(self._receipt(receipt))
            return None
        if command == "DISCONNECT":
            self._outbox.append(self._receipt(receipt))
            self._close()
            return DisconnectRequest(receipt)
        raise _Refused(f"Unknown command {command[:32]}", receipt)

    def _on_connect(self, frame: Frame) -> ConnectRequest:
        if self._version is not None:
            raise _Refused("Already connected")
        version = negotiate_version(frame.get("accept-version"))
        if version is None:  # STOMP 1.2 §Protocol Negotiation: ERROR listing what we support
            raise _Refused(VERSION_ERROR, None, VERSION_ERROR, (("version", ",".join(SUPPORTED_VERSIONS)),))
        if version != "1.0":  # heart-beating arrived with STOMP 1.1
            self._client_heartbeat = parse_heartbeat(frame.get("heart-beat"))
        self._version = self._decoder.version = version
        request = ConnectRequest(version, frame.get("host"), frame.get("login"), frame.get("passcode"), frame.headers)
        self._outbox.append(_Slot(request))
        return request

    def _on_subscribe(self, frame: Frame, receipt: str | None) -> SubscribeRequest:
        destination = self._require(frame, "destination", receipt)
        id_ = frame.get("id") if self._version != "1.0" else (frame.get("id") or destination)
        if id_ is None:
            raise _Refused("SUBSCRIBE frame requires header 'id'", receipt)
        ack = frame.get("ack") or "auto"
        if ack not in ACK_MODES:
            raise _Refused(f"Invalid ack mode '{ack[:32]}'", receipt)
        if id_ in self._claimed:
            raise _Refused(f"Subscription id '{id_[:64]}' is already in use", receipt)
        if len(self._claimed) >= self.max_subscriptions:
            raise _Refused(f"Too many subscriptions (limit {self.max_subscriptions})", receipt)
        request = SubscribeRequest(id_, destination, ack, frame.headers, receipt)
        self._claimed[id_] = request
        self._outbox.append(_Slot(request))
        return request

    def _on_unsubscribe(self, frame: Frame, receipt: str | None) -> UnsubscribeRequest | None:
        id_ = frame.get("id") if self._version != "1.0" else (frame.get("id") or frame.get("destination"))
        if id_ is None:
            raise _Refused("UNSUBSCRIBE frame requires header 'id'", receipt)
        self._outbox.append(self._receipt(receipt))
        known = self._claimed.pop(id_, None) is not None
        self._subscriptions.pop(id_, None)
        self._prefixes.pop(id_, None)
        return UnsubscribeRequest(id_, receipt) if known else None

    @staticmethod
    def _require(frame: Frame, name: str, receipt: str | None) -> str:
        value = frame.get(name)
        if value is None:
            raise _Refused(f"{frame.command} frame requires header '{name}'", receipt)
        return value
