"""The gateway process's one broker connection: stomp.py, driven by a dedicated thread.

stomp.py is threaded and blocking (``send`` ends in ``socket.sendall``; frames arrive on its own
receiver thread), so it never runs on the event loop. The loop hands frames over through a queue;
everything the broker says comes back through ``post``, which schedules a call on the loop
(``loop.call_soon_threadsafe``). Each connection has a generation number: frames queued for an
older generation are dropped, because the loop resends them from the journal after reconnecting.
"""

from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

import stomp

from gateway.backoff import Backoff
from gateway.bridge.target import BrokerTarget

log = logging.getLogger("gateway.bridge")

Post = Callable[..., None]  # post(fn, *args): run fn(*args) on the event loop thread
ConnectionFactory = Callable[[BrokerTarget, int, float], Any]

DISCONNECT_WAIT_S = 2.0
IDLE_WAKE_S = 1.0

# stomp.py logs each failed connect attempt and, at debug, every frame body; the bridge logs its own
# concise lines, so keep stomp.py to errors unless an operator configured its logger explicitly.
if logging.getLogger("stomp.py").level == logging.NOTSET:
    logging.getLogger("stomp.py").setLevel(logging.ERROR)


class LinkEvents(Protocol):
    """What the link reports, always called on the event loop thread (through ``post``)."""

    def on_link_up(self, generation: int) -> None: ...

    def on_link_down(self, generation: int, reason: str) -> None: ...

    def on_receipt(self, receipt_id: str) -> None: ...

    def on_broker_error(self, message: str) -> None: ...


class Link(Protocol):
    """The loop's view of a broker connection (``BrokerLink``, or a fake in tests)."""

    def start(self) -> None: ...

    def send(self, frame: Outgoing) -> None: ...

    def reset(self, generation: int, reason: str) -> None: ...

    def stop(self, timeout: float) -> None: ...


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One SEND for the connection of ``generation``."""

    generation: int
    destination: str
    body: bytes
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """``GATEWAY_BRIDGE_TLS_*``: CA bundle (empty: system store), client certificate, verification."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    verify: bool = True


@dataclass(frozen=True, slots=True)
class _Reset:
    generation: int
    reason: str


def stomp_connection(target: BrokerTarget, heartbeat_ms: int, connect_timeout_s: float) -> Any:
    """A STOMP 1.2 stomp.py connection that tries once: the link owns reconnects (capped, jittered)."""
    return stomp.Connection12(
        [(target.host, target.port)],
        prefer_localhost=False,
        try_loopback_connect=False,
        reconnect_attempts_max=1,
        reconnect_sleep_initial=0.0,
        timeout=connect_timeout_s,
        heartbeats=(heartbeat_ms, heartbeat_ms),
        vhost=target.vhost,
    )


class _Session:
    """The stomp.py listener of one connection; its callbacks run on stomp.py's threads."""

    def __init__(self, post: Post, events: LinkEvents, wake: Callable[[], None]) -> None:
        self._post = post
        self._events = events
        self._wake = wake
        self.settled = threading.Event()  # CONNECTED, ERROR or closed: the handshake is decided
        self.ended = threading.Event()
        self.connected = False
        self.failure: str | None = None
        self.receipts = 0

    def on_connected(self, frame: Any) -> None:
        self.connected = True
        self.settled.set()

    def on_receipt(self, frame: Any) -> None:
        self.receipts += 1
        self._post(self._events.on_receipt, str(frame.headers.get("receipt-id", "")))

    def on_error(self, frame: Any) -> None:
        body = str(frame.body or "").strip().splitlines()
        detail = f": {body[0][:200]}" if body else ""
        self.failure = f"broker ERROR {frame.headers.get('message', '')}{detail}"
        self._post(self._events.on_broker_error, self.failure)
        # STOMP 1.2 §ERROR: the server closes after an ERROR, yet RabbitMQ keeps the socket open
        # (e.g. "Invalid destination") and never answers the receipt: end this connection ourselves.
        self.ended.set()
        self.settled.set()
        self._wake()

    def on_heartbeat_timeout(self) -> None:
        self.failure = "heartbeat timeout"

    def on_disconnected(self) -> None:
        self.failure = self.failure or "connection lost"
        self.ended.set()
        self.settled.set()
        self._wake()


class BrokerLink:
    """Connect, send what the loop queues, report receipts; reconnect with capped backoff and jitter."""

    def __init__(
        self,
        target: BrokerTarget,
        events: LinkEvents,
        post: Post,
        *,
        backoff: Backoff,
        tls: TlsOptions | None = None,
        heartbeat_ms: int = 10_000,
        connect_timeout_s: float = 10.0,
        connection_factory: ConnectionFactory = stomp_connection,
    ) -> None:
        self._target = target
        self._events = events
        self._post = post
        self._backoff = backoff
        self._tls = tls or TlsOptions()
        self._heartbeat_ms = heartbeat_ms
        self._connect_timeout_s = connect_timeout_s
        self._factory = connection_factory
        self._queue: queue.SimpleQueue[Outgoing | _Reset | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None
        self._generation = 0  # of the connection being served, for reset()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bridge-link", daemon=True)
        self._thread.start()

    def send(self, frame: Outgoing) -> None:
        self._queue.put(frame)

    def reset(self, generation: int, reason: str) -> None:
        """Drop the connection of ``generation`` (e.g. a receipt never came) and reconnect."""
        self._queue.put(_Reset(generation, reason))
        conn = self._conn
        if conn is not None and self._generation == generation:
            # The link thread may be blocked in sendall towards a broker that stopped reading (RabbitMQ
            # flow control): shutting the socket down from here unblocks it; it cannot block itself.
            with suppress(Exception):
                conn.transport.socket.shutdown(socket.SHUT_RDWR)

    def stop(self, timeout: float) -> None:
        """Disconnect politely and end the thread (blocking: call it off the event loop)."""
        self._stopping.set()
        self._queue.put(None)
        if self._thread is None:
            return
        self._thread.join(timeout)
        if self._thread.is_alive():  # stuck in sendall towards a broker that stopped reading
            self._force_close(self._conn)
            self._thread.join(1.0)

    def _run(self) -> None:
        generation = failures = 0
        while not self._stopping.is_set():
            generation += 1
            self._generation = generation
            started = time.monotonic()
            session = _Session(self._post, self._events, lambda: self._queue.put(None))
            conn, reason = self._open(session)
            if conn is not None:
                log.info("connected to %s", self._target.display)
                self._post(self._events.on_link_up, generation)
                reason = self._serve(conn, session, generation)
                self._close(conn, session)
                self._post(self._events.on_link_down, generation, reason)
            # A connection that made progress (or lived long) resets the backoff; one the broker
            # drops at once (bad credentials, ERROR on the first SEND) must not become a tight loop.
            if session.receipts or (conn is not None and time.monotonic() - started >= self._backoff.max_s):
                self._backoff.reset()
                failures = 0
                continue
            if not self._stopping.is_set():
                delay = self._backoff.next_delay()
                failures += 1
                # One warning per outage, then a reminder every tenth attempt: no log flood.
                level = logging.WARNING if failures % 10 == 1 else logging.DEBUG
                log.log(level, "broker %s unavailable (%s, attempt %d); retry in %.2f s", self._target.display,
                        reason, failures, delay)  # fmt: skip
                self._stopping.wait(delay)

    def _open(self, session: _Session) -> tuple[Any, str]:
        try:
            conn = self._factory(self._target, self._heartbeat_ms, self._connect_timeout_s)
            conn.set_listener("bridge", session)
            if self._target.tls:
                conn.set_ssl(
                    for_hosts=[(self._target.host, self._target.port)],
                    ca_certs=self._tls.ca_file or None,
                    cert_file=self._tls.cert_file or None,
                    key_file=self._tls.key_file or None,
                    verify=self._tls.verify,
                )
            self._conn = conn
            conn.connect(self._target.login, self._target.passcode, wait=False)
        except Exception as exc:  # stomp.py raises ConnectFailedException, OSError and ssl errors alike
            return None, f"connect failed: {str(exc) or type(exc).__name__}"
        if not session.settled.wait(self._connect_timeout_s) or not session.connected:
            self._force_close(conn)
            return None, session.failure or "no CONNECTED frame in time"
        return conn, ""

    def _serve(self, conn: Any, session: _Session, generation: int) -> str:
        while not self._stopping.is_set():
            if session.ended.is_set():
                return session.failure or "connection lost"
            try:
                item = self._queue.get(timeout=IDLE_WAKE_S)
            except queue.Empty:
                continue
            if item is None or item.generation != generation:
                continue  # a wake-up, or a frame the loop will resend on the new connection
            if isinstance(item, _Reset):
                return item.reason
            try:
                conn.send(item.destination, item.body, headers=item.headers)
            except Exception as exc:  # the socket died under us: the loop resends after the cursor
                return f"send failed: {str(exc) or type(exc).__name__}"
        return "stopping"

    def _close(self, conn: Any, session: _Session) -> None:
        if self._stopping.is_set() and not session.ended.is_set():
            # STOMP 1.2 §DISCONNECT: the receipt proves the broker processed every frame before it.
            with suppress(Exception):
                conn.disconnect()
                session.ended.wait(DISCONNECT_WAIT_S)
        self._force_close(conn)
        self._conn = None

    @staticmethod
    def _force_close(conn: Any) -> None:
        if conn is not None:
            with suppress(Exception):
                conn.transport.disconnect_socket()
