"""One delivery path from a journaled envelope to a viewer's socket, used by every transport.

skip hidden → render (once per group) → write → count, written once here. A *group* is every viewer
subscription of one conversation whose bytes are equal: same wire format, same scope and, for STOMP,
the same subscription render key. The encoded frames live in the group's ``FrameCache`` (owned by the
hub, per conversation), never in the ``Envelope``, which stays the frozen journaled value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Generic, TypeVar

from prometheus_client import Counter

from gateway.envelope import Envelope
from gateway.metrics import LiveLatency

if TYPE_CHECKING:
    from gateway.hub import Subscriber

T = TypeVar("T")

# Envelopes per group and conversation: a fan-out renders each once, a viewer lagging further re-renders.
# Small, since a conversation with viewers keeps its groups' caches: 1,000 such conversations with SSE and
# STOMP viewers hold at most 4 groups x 16 frames each.
CACHE_SIZE = 16


class FrameCache(Generic[T]):
    """What one group rendered for its recent envelopes, keyed by seq.

    An entry answers only for the same body bytes object: a coalesced delta, a snapshot (same seq,
    other body) or an envelope re-read from Redis renders afresh; the memory journal hands out the
    published envelope itself, so a replay shares the live frames.
    """

    __slots__ = ("_batch", "_batch_data", "_batch_shown", "_items", "last", "last_item")

    def __init__(self) -> None:
        self._items: dict[int, tuple[bytes, T]] = {}
        # The envelope a fan-out is writing right now, for its other viewers: one identity check.
        self.last: Envelope | None = None
        self.last_item: T | None = None
        self._batch: list[Envelope] | None = None  # the burst last joined (Hub.publish's list)
        self._batch_data = b""
        self._batch_shown: list[Envelope] = []

    def get(self, env: Envelope, render: Callable[[Envelope], T]) -> T:
        hit = self._items.get(env.seq)
        if hit is not None and hit[0] is env.body:
            item = hit[1]
        else:
            item = render(env)
            items = self._items
            if len(items) >= CACHE_SIZE:
                del items[next(iter(items))]
            items[env.seq] = (env.body, item)
        self.last, self.last_item = env, item
        return item

    def joined(
        self, envs: list[Envelope], prepare: Callable[[list[Envelope]], tuple[list[bytes], list[Envelope]]]
    ) -> tuple[bytes, list[Envelope]]:
        """A burst's frames joined for one write, and the envelopes shown: prepared by its first viewer."""
        if self._batch is not envs:
            data, shown = prepare(envs)
            self._batch_data, self._batch_shown, self._batch = b"".join(data), shown, envs
        return self._batch_data, self._batch_shown


def sse_frame(env: Envelope, user: bool = False) -> bytes:
    """The SSE frame of an envelope for one scope: ``id``, ``event`` (its stage) and the JSON body."""
    body = env.body_for_user if user else env.body
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (env.seq, env.stage.encode(), body)


def sse_user_frame(env: Envelope) -> bytes:
    return sse_frame(env, True)


class Delivery:
    """One viewer subscription's delivery: its scope, its group's frames, its writer and its counters.

    The delivery itself (``__call__``) and ``direct_batch`` are the hub's synchronous fast path
    (``Subscriber.direct`` / ``direct_batch``): written
    now through ``write_nowait`` or False (the subscriber then queues and its task delivers through
    ``prepare`` + the transport's own write + ``count``).
    """

    __slots__ = ("_delivered", "_live", "_sub", "_user", "frames", "render", "write_nowait")

    def __init__(
        self, sub: Subscriber, user: bool, frames: FrameCache[bytes], render: Callable[[Envelope], bytes],
        delivered: Counter, live: LiveLatency, write_nowait: Callable[[bytes], bool] | None = None,
    ) -> None:  # fmt: skip
        self._sub, self._user = sub, user
        self.frames, self.render = frames, render
        self._delivered, self._live = delivered, live
        self.write_nowait = write_nowait

    def attach(self, *, batch: bool = True) -> None:
        """Open the subscriber's direct path (when this delivery can write now); ``batch``: a burst too."""
        if self.write_nowait is not None:
            self._sub.direct = self  # called as ``direct``: no bound method kept per idle viewer
            if batch:
                self._sub.direct_batch = self.direct_batch

    def prepare(self, batch: list[Envelope]) -> tuple[list[bytes], list[Envelope]]:
        """The frames of the envelopes this viewer is shown (the others leave a seq gap, by design)."""
        shown = [env for env in batch if not env.scope] if self._user else batch
        get, render = self.frames.get, self.render
        return [get(env, render) for env in shown], shown

    def count(self, batch: Sequence[Envelope], shown: Sequence[Envelope]) -> None:
        """``batch`` was handled, ``shown`` written: hqgw_envelopes_delivered_total counts what was written
        (never a hidden envelope); live latency is observed at the first viewer of the transport to handle
        an envelope, written or skipped, so each live envelope is observed once whatever the viewers' scopes."""
        if shown:
            self._delivered.inc(len(shown))
        if batch:
            sub = self._sub
            self._live.written(sub.conversation_id, sub.catch_up_to, batch)

    def __call__(self, env: Envelope) -> bool:
        """``direct``: one envelope written now, or False."""
        if self._user and env.scope:
            sub = self._sub
            self._live.written(sub.conversation_id, sub.catch_up_to, (env,))
            return True  # the viewer sees a seq gap there, by design
        write, frames = self.write_nowait, self.frames
        if env is frames.last:  # a fan-out's second and later viewers: no call, no lookup
            frame: bytes = frames.last_item  # type: ignore[assignment]
        else:
            try:
                frame = frames.get(env, self.render)
            except KeyError:  # a STOMP subscription ended meanwhile
                return False
        if write is None or not write(frame):
            return False
        self._delivered.inc()
        sub = self._sub
        self._live.written(sub.conversation_id, sub.catch_up_to, (env,))
        return True

    def direct_batch(self, envs: list[Envelope]) -> bool:
        """Several consecutive envelopes in one write; the joined bytes are shared by the group."""
        try:
            data, shown = self.frames.joined(envs, self.prepare)
        except KeyError:  # a STOMP subscription ended meanwhile
            return False
        write = self.write_nowait
        if shown and (write is None or not write(data)):
            return False
        self.count(envs, shown)
        return True
