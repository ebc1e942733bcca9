"""One STOMP session over any message pipe (raw WebSocket or SockJS), bound to the hub."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Coroutine
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from gateway.auth import Authenticator, Credential, Denied
from gateway.delivery import Delivery, FrameCache
from gateway.envelope import Envelope
from gateway.errors import JournalUnavailable
from gateway.hub import StaleNotice, Subscriber, SubscriberStale
from gateway.ids import BadRequest, conversation_id, seq_cursor
from gateway.limits import limit_key
from gateway.presence import DISCONNECTED_BY_ADMIN, Viewer
from gateway.protocols.stomp import (
    ConnectRequest,
    DisconnectRequest,
    MessageTemplate,
    ProtocolViolation,
    SendRequest,
    SessionState,
    StompServerSession,
    SubscribeRequest,
    UnsubscribeRequest,
)
from gateway.transports.pipe import ConnectionInfo, Pipe, SharedWirePipe
from gateway.transports.services import ViewerServices
from gateway.upstream.registry import ActivationRefused

log = logging.getLogger("gateway.stomp")

DESTINATION = re.compile(r"^/topic/convengine/audit/(?P<id>[^/]+)$")
TOPIC_PREFIX = "/topic/convengine/audit/"


def destination_of(conversation: str) -> str:
    return TOPIC_PREFIX + conversation


class _StompFrames:
    """Renders one subscription's MESSAGE frames: the template (the MESSAGE tail of one envelope for one
    scope) comes from the conversation's template cache, so it is encoded once and shared by every STOMP
    subscription of that scope whatever its version; the frame adds the subscription's own prefix.

    Objects with slots, not closures: an idle viewer keeps its direct path, and so this, alive."""

    __slots__ = ("destination", "session", "sub_id", "templates", "user")

    def __init__(self, session: StompServerSession, sub_id: str, templates: FrameCache[MessageTemplate],
                 destination: str, user: bool) -> None:  # fmt: skip
        self.session, self.sub_id, self.templates = session, sub_id, templates
        self.destination, self.user = destination, user

    def __call__(self, env: Envelope) -> bytes:
        return self.session.render(self.templates.get(env, self.template), self.sub_id)

    def template(self, env: Envelope) -> MessageTemplate:
        body = env.body_for_user if self.user else env.body
        return MessageTemplate(destination=self.destination, body=body, seq=env.seq)


class _WireFrames:
    """The same frames encoded for a shared-wire pipe (one WebSocket frame, shared by the whole group)."""

    __slots__ = ("encode", "render", "text")

    def __init__(
        self, text: FrameCache[bytes], render: Callable[[Envelope], bytes], encode: Callable[[bytes], bytes]
    ) -> None:
        self.text, self.render, self.encode = text, render, encode

    def __call__(self, env: Envelope) -> bytes:
        return self.encode(self.text.get(env, self.render))


class _DirectWriter:
    """Write now or say no: the connection must be open, the subscription live and the socket ready."""

    __slots__ = ("conn", "sub_id", "write")

    def __init__(self, conn: StompConnection, sub_id: str | None, write: Callable[[bytes], bool]) -> None:
        self.conn, self.sub_id, self.write = conn, sub_id, write

    def __call__(self, data: bytes) -> bool:
        conn = self.conn
        if conn._closed or (self.sub_id is not None and not conn.session.subscribed(self.sub_id)):
            return False
        if not self.write(data):
            return False
        conn._last_out = time.monotonic()
        return True


@dataclass(slots=True)
class _Subscription:
    conversation: str
    subscriber: Subscriber
    task: asyncio.Task[None] | None = None
    user: bool = False  # user scope: diagnostic/accounting envelopes skipped, stripped bodies sent
    seen: Viewer | None = None  # its presence record


class StompConnection:
    """PipeHandler: feeds the sans-I/O session, acts on its events, delivers envelopes."""

    def __init__(self, gw: ViewerServices, pipe: Pipe, info: ConnectionInfo, *, auth: Authenticator) -> None:
        s = gw.settings
        self._gw = gw
        self._auth = auth
        self._credential: Credential | None = None
        self._expires_at: float | None = None  # epoch seconds: the session ends when its token does
        self._pipe = pipe
        self._info = info
        self.session = StompServerSession(
            server_name="hq-gateway/0.1",
            heartbeat_ms=(s.stomp_heartbeat_ms, s.stomp_heartbeat_ms),
            max_subscriptions=s.stomp_max_subscriptions,
            max_frame_bytes=s.stomp_max_frame_bytes,
            max_headers=s.stomp_max_headers,
        )
        self._subs: dict[str, _Subscription] = {}
        self._write_lock = asyncio.Lock()
        self._writing = False
        self._aborted = False
        self._last_in = self._last_out = time.monotonic()
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._connect_deadline = time.monotonic() + s.stomp_connect_timeout_s
        self._timer: asyncio.TimerHandle | None = None
        self._action: asyncio.Task[None] | None = None  # what the timer started (heart-beat, close)
        self._arm_timer()
        log.info("stomp open session=%s transport=%s client=%s", self.session.session_id, info.transport, info.client)
        gw.metrics.connections.labels(info.transport).inc()

    async def on_message(self, message: str) -> None:
        self._last_in = time.monotonic()
        for event in self.session.receive_data(message.encode()):
            if isinstance(event, ConnectRequest):
                if not await self._connect(event):
                    break
            elif isinstance(event, SubscribeRequest):
                await self._subscribe(event)
            elif isinstance(event, UnsubscribeRequest):
                self._unsubscribe(event.id)
            elif isinstance(event, SendRequest):
                self.session.reject(
                    f"SEND is not supported: {event.destination[:200]} is a read-only stream; "
                    "submit turns with POST /api/v1/conversation/message",
                    event.receipt,
                )
            elif isinstance(event, DisconnectRequest | ProtocolViolation):
                if isinstance(event, ProtocolViolation):
                    log.info("stomp protocol violation client=%s: %s", self._info.client, event.message)
                break
        await self._flush()
        if self.session.state is SessionState.CLOSED:
            await self._pipe.close(1000, "")

    async def _connect(self, req: ConnectRequest) -> bool:
        self._credential = self._auth.stomp_credential(req.headers, self._info.headers, self._info.query)
        try:
            principal = await self._auth.connect(self._credential)
        except Denied as refusal:
            log.info("stomp connect refused client=%s: %s", self._info.client, refusal.message)
            self.session.reject(f"{refusal.code}: {refusal.message}")
            return False
        self._expires_at = principal.expires_at if principal is not None else None
        self.session.accept_connect()
        self._arm_timer()  # the negotiated heart-beats (and token expiry) replace the CONNECT deadline
        return True

    async def _subscribe(self, req: SubscribeRequest) -> None:
        match = DESTINATION.match(req.destination)
        if match is None:
            self.session.reject(f"Unknown destination {req.destination[:200]!r}: subscribe to "
                                f"{TOPIC_PREFIX}<conversationId>", req.receipt)  # fmt: skip
            return
        try:
            conv = conversation_id(match.group("id"))
            since = seq_cursor(_header(req, "since-seq"), "since-seq")
            snapshot = _header(req, "snapshot")
            if snapshot not in (None, "turn"):
                raise BadRequest("snapshot header must be 'turn'")
            coalesce = _header(req, "coalesce") != "false"
        except BadRequest as exc:
            self.session.reject(str(exc), req.receipt)
            return
        try:
            principal = await self._auth.authorize(self._credential, conv, _header(req, "scope"))
        except Denied as refusal:
            self.session.reject(f"{refusal.code}: {refusal.message}", req.receipt)
            return
        user = not principal.scope.full
        self._auth.audit_attach(principal, conv, self._info.transport, self._info.client)
        upstream_holder = self._gw.upstreams
        try:
            who = limit_key(self._auth.mode, principal.subject, self._info.client.rpartition(":")[0])
            upstream_holder.hold(conv, who=who)
        except ActivationRefused as refusal:
            log.info("stomp subscribe refused session=%s conversation=%s: %s", self.session.session_id, conv,
                     refusal.code)  # fmt: skip
            self.session.reject(f"{refusal.code}: {refusal.message}", req.receipt)
            return
        first: Envelope | None = None
        try:
            if snapshot is not None and since is None:
                subscriber, first = await self._gw.hub.subscribe_with_snapshot(
                    conv, int(time.time() * 1000), coalesce=coalesce
                )
                notice = None
            else:
                subscriber, notice = await self._gw.hub.subscribe(conv, since, coalesce=coalesce)
        except JournalUnavailable as exc:
            upstream_holder.release(conv)
            log.warning("stomp subscribe refused session=%s conversation=%s: %s", self.session.session_id, conv, exc)
            self._gw.metrics.disconnects.labels("unavailable").inc()
            self.session.reject(SubscriberStale("unavailable", since or 0).stomp_message(), req.receipt)
            return
        subscriber.on_fail = self._on_subscriber_fail
        # Decide even when a DISCONNECT packed behind this SUBSCRIBE already closed the session:
        # its RECEIPT still goes out in order; the subscription itself is then not registered.
        self.session.accept_subscribe(req)
        if req.id not in self.session.subscriptions or self._closed:
            self._gw.hub.unsubscribe(subscriber)
            upstream_holder.release(conv)
            return
        entry = self._subs[req.id] = _Subscription(conv, subscriber, user=user)
        log.info("stomp subscribe session=%s id=%s conversation=%s since=%s snapshot=%s cursor=%d",
                 self.session.session_id, req.id, conv, since, snapshot, subscriber.cursor)  # fmt: skip
        metrics = self._gw.metrics
        metrics.viewers.labels(self._info.transport).inc()
        entry.seen = self._gw.presence.attach(conv, self._info.transport, principal.subject)
        if since is not None:
            metrics.resumes.labels(notice.reason if notice else "exact").inc()
        # The RECEIPT must precede the first MESSAGE: flush before delivery starts.
        await self._flush()
        if first is not None:
            body = first.body_for_user if user else first.body
            await self._write([self.session.message(req.id, destination_of(conv), body, first.seq).decode()])
        entry.task = asyncio.create_task(self._deliver(req.id, entry, notice), name=f"stomp-deliver:{conv}")

    def _unsubscribe(self, sub_id: str) -> None:
        entry = self._subs.pop(sub_id, None)
        if entry is None:
            return
        log.info("stomp unsubscribe session=%s id=%s conversation=%s cursor=%d",
                 self.session.session_id, sub_id, entry.conversation, entry.subscriber.cursor)  # fmt: skip
        if entry.task is not None and entry.task is not asyncio.current_task():
            entry.task.cancel()
        self._gw.hub.unsubscribe(entry.subscriber)
        self._gw.upstreams.release(entry.conversation)
        self._gw.metrics.viewers.labels(self._info.transport).dec()
        if entry.seen is not None:
            self._gw.presence.detach(entry.seen)

    async def _deliver(self, sub_id: str, entry: _Subscription, notice: StaleNotice | None) -> None:
        session = self.session
        subscriber = entry.subscriber
        try:
            delivery = self._delivery(sub_id, entry)
            while True:
                if notice is None and subscriber.direct is None:
                    self._attach_direct(sub_id, entry, delivery)
                if notice is None and subscriber.park(lambda: self._resume(sub_id, entry)):
                    entry.task = None  # an idle viewer holds no task: the fan-out starts one when needed
                    return
                batch = await subscriber.next_batch()
                frames, shown = delivery.prepare(batch)
                if notice is not None and shown:
                    # DESIGN: a resume that is not exact says so on its first MESSAGE.
                    stale = f"oldest={notice.oldest},newest={notice.newest},reason={notice.reason}"
                    env = shown[0]
                    body = env.body_for_user if entry.user else env.body
                    destination = destination_of(entry.conversation)
                    frames[0] = session.message(sub_id, destination, body, env.seq, (("stale", stale),))
                    notice = None
                if frames:
                    await self._write([f.decode() for f in frames])
                delivery.count(batch, shown)
        except SubscriberStale as exc:
            await self._cut_loose(exc)
        except KeyError:
            pass  # unsubscribed while a batch was in flight
        except Exception:
            # A delivery task never dies silently: the viewer is told and closed.
            log.exception("stomp delivery failed session=%s id=%s", session.session_id, sub_id)
            await self._cut_loose(SubscriberStale("internal", subscriber.cursor))

    def _delivery(self, sub_id: str, entry: _Subscription) -> Delivery:
        """This subscription's delivery of STOMP frames, through the frame cache it shares with every
        subscription of the conversation that renders alike (render key: id, version, ack mode; scope)."""
        session, user, conv, hub = self.session, entry.user, entry.conversation, self._gw.hub
        render = _StompFrames(session, sub_id, hub.frames(conv, ("stomp-template", user)), destination_of(conv), user)
        frames: FrameCache[bytes] = hub.frames(conv, ("stomp", session.render_key(sub_id), user))
        metrics, transport = self._gw.metrics, self._info.transport
        return Delivery(entry.subscriber, user, frames, render, metrics.delivered.labels(transport),
                        metrics.live_latency(transport))  # fmt: skip

    def _attach_direct(self, sub_id: str, entry: _Subscription, text: Delivery) -> None:
        """The synchronous fan-out path for this subscription, when the pipe offers one: one encoded
        WebSocket frame per (render key, wire format, scope) shared by every viewer of the group."""
        pipe = self._pipe
        send_nowait = getattr(pipe, "send_nowait", None)
        if send_nowait is None:
            return
        wired = pipe.wire_encoder() if isinstance(pipe, SharedWirePipe) else None
        if wired is not None and isinstance(pipe, SharedWirePipe):
            wire_format, encode = wired
            key = (wire_format, self.session.render_key(sub_id), entry.user)
            render = _WireFrames(text.frames, text.render, encode)
            metrics, transport = self._gw.metrics, self._info.transport
            Delivery(entry.subscriber, entry.user, self._gw.hub.frames(entry.conversation, key), render,
                     metrics.delivered.labels(transport), metrics.live_latency(transport),
                     _DirectWriter(self, sub_id, pipe.write_wire_nowait)).attach()  # fmt: skip
            return
        text.write_nowait = _DirectWriter(self, None, send_nowait)
        text.attach(batch=False)  # a burst goes out frame by frame (one SockJS message each), as ever

    def _resume(self, sub_id: str, entry: _Subscription) -> None:
        """A parked subscription has work its direct path could not do: deliver from a task again."""
        if not self._closed and self._subs.get(sub_id) is entry:
            entry.task = asyncio.create_task(self._deliver(sub_id, entry, None), name="stomp-deliver")

    async def _cut_loose(self, exc: SubscriberStale) -> None:
        if self._aborted:
            return
        self._gw.metrics.disconnects.labels(exc.reason).inc()
        if exc.reason == "shutdown":
            await self._pipe.close(1001, "server shutting down; reconnect and resume with since-seq")
            return
        if exc.reason == DISCONNECTED_BY_ADMIN:
            self.session.reject(DISCONNECTED_BY_ADMIN, body="an operator ended this conversation's viewers; "
                                f"reconnect later and resume with since-seq:{exc.cursor}")  # fmt: skip
            await self._flush()
            await self._pipe.close(1008, "disconnected by admin")
            return
        self.session.reject(exc.stomp_message())
        await self._flush()
        await self._pipe.close(1008, f"stale: {exc.reason}")

    def _arm_timer(self) -> None:
        """Schedule the next check of heart-beats out, dead peer in, CONNECT timeout and token expiry.

        One timer handle per connection, no task, and none at all when nothing is due (heart-beats
        0,0 and no token expiry): idle viewers cost no wake-ups (STOMP 1.2 §Heart-beating).
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._closed:
            return
        session, now = self.session, time.monotonic()
        send_ms, timeout_ms = session.send_heartbeat_ms, session.peer_timeout_ms
        due: list[float] = []
        if session.state is SessionState.AWAIT_CONNECT:
            due.append(self._connect_deadline)
        else:
            if send_ms:
                due.append(self._last_out + send_ms / 1000)
            if timeout_ms:
                due.append(self._last_in + timeout_ms / 1000)
        if self._expires_at is not None:
            due.append(now + self._expires_at - time.time())
        if due:
            self._timer = self._loop.call_later(max(0.005, min(due) - now), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._closed:
            return
        session, now = self.session, time.monotonic()
        send_ms, timeout_ms = session.send_heartbeat_ms, session.peer_timeout_ms
        if self._expires_at is not None and time.time() >= self._expires_at:
            self._timer_action(self._expire())
        elif session.state is SessionState.AWAIT_CONNECT and now >= self._connect_deadline:
            self._timer_action(self._connect_timeout())
        elif timeout_ms and now - self._last_in >= timeout_ms / 1000:
            log.info("stomp peer silent for %.1fs, closing client=%s", now - self._last_in, self._info.client)
            self._timer_action(self._pipe.close(1001, "heart-beat timeout"))
        elif send_ms and now - self._last_out >= send_ms / 1000 and not self._heartbeat_nowait():
            self._timer_action(self._heartbeat(), rearm=True)
        else:
            self._arm_timer()

    def _timer_action(self, action: Coroutine[Any, Any, None], *, rearm: bool = False) -> None:
        async def run() -> None:
            await action
            if rearm:
                self._arm_timer()

        self._action = asyncio.create_task(run(), name="stomp-timer")

    def _heartbeat_nowait(self) -> bool:
        send_nowait = getattr(self._pipe, "send_nowait", None)
        if self._writing or send_nowait is None or not send_nowait(self.session.heartbeat_bytes()):
            return False
        self._last_out = time.monotonic()
        return True

    async def _heartbeat(self) -> None:
        await self._write([self.session.heartbeat_bytes().decode()])

    async def _connect_timeout(self) -> None:
        self.session.reject("no CONNECT frame in time")
        await self._flush()
        await self._pipe.close(1008, "connect timeout")

    async def _expire(self) -> None:
        self._gw.metrics.disconnects.labels("token_expired").inc()
        self.session.reject("token_expired: the viewer's token expired; reconnect with a fresh token and resume "
                            "with since-seq")  # fmt: skip
        await self._flush()
        await self._pipe.close(1008, "token expired")

    async def _flush(self) -> None:
        data = self.session.data_to_send()
        if data:
            await self._write([data.decode()])

    async def _write(self, messages: list[str]) -> None:
        async with self._write_lock:
            self._writing = True
            try:
                if len(messages) == 1:
                    await self._pipe.send(messages[0])
                else:
                    await self._pipe.send_many(messages)
            finally:
                self._writing = False
            self._last_out = time.monotonic()

    def _on_subscriber_fail(self, reason: str) -> None:
        """A subscription was cut loose while a write is stuck on a peer that stopped reading."""
        abort = getattr(self._pipe, "abort", None)
        if not self._writing or abort is None or reason == "shutdown" or self._aborted:
            return  # the delivery loop will see it and send ERROR itself
        self._aborted = True
        self._gw.metrics.disconnects.labels(reason).inc()
        log.info("stomp viewer stuck, cut loose (%s) client=%s", reason, self._info.client)
        abort()

    async def on_close(self) -> None:
        log.info("stomp close session=%s client=%s", self.session.session_id, self._info.client)
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        for sub_id in list(self._subs):
            entry = self._subs[sub_id]
            self._unsubscribe(sub_id)
            if entry.task is not None:
                with suppress(asyncio.CancelledError):
                    await entry.task
        action = self._action
        if action is not None and action is not asyncio.current_task():
            action.cancel()
            with suppress(asyncio.CancelledError):
                await action
        self._gw.metrics.connections.labels(self._info.transport).dec()


def _header(req: SubscribeRequest, name: str) -> str | None:
    for key, value in req.headers:
        if key == name:
            return value
    return None
