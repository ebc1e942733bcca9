"""Prometheus metrics. Label sets are bounded: never a conversation id, a token or a client address."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway.envelope import Envelope

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """One registry per gateway instance (tests run several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.viewers = Gauge("hqgw_viewers", "Connected viewer subscriptions by transport", ["transport"], registry=r)
        self.connections = Gauge("hqgw_connections", "Open client connections by transport", ["transport"], registry=r)
        self.conversations = Gauge(
            "hqgw_active_conversations",
            "Conversations active in this process (upstream running or lingering)",
            registry=r,
        )
        self.upstream_connected = Gauge("hqgw_upstream_connected", "Upstream HQ streams currently open", registry=r)
        self.upstream_connects = Counter("hqgw_upstream_connects", "Upstream HQ stream opens", registry=r)
        self.upstream_reconnects = Counter(
            "hqgw_upstream_reconnects", "Upstream reconnects by reason", ["reason"], registry=r
        )
        self.events_in = Counter("hqgw_events_in", "HQ events received by event kind", ["kind"], registry=r)
        self.envelopes = Counter("hqgw_envelopes_journaled", "Envelopes journaled by eventType", ["type"], registry=r)
        self.delivered = Counter("hqgw_envelopes_delivered", "Envelopes written to viewers", ["transport"], registry=r)
        self.disconnects = Counter(
            "hqgw_viewer_disconnects", "Viewers cut loose by the server, by reason", ["reason"], registry=r
        )
        self.resumes = Counter(
            "hqgw_resumes", "Viewer resumes by outcome (exact|expired|ahead)", ["outcome"], registry=r
        )
        self.fanout_latency = Histogram(
            "hqgw_fanout_latency_seconds",
            "Envelope creation to its first live write per transport (one observation per envelope and transport)",
            ["transport"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.server_hooks = Gauge("hqgw_server_hooks", "1 when a server-specific connection hook is active",
                                  ["hook"], registry=r)  # fmt: skip
        self.submissions = Counter("hqgw_submissions", "Turn submissions by outcome", ["outcome"], registry=r)
        self.redis_up = Gauge("hqgw_redis_up", "1 when Redis answers (cluster mode)", registry=r)
        self.redis_data_loss = Counter("hqgw_redis_data_loss", "Times Redis lost or rolled back journal data under "
                                       "this process (viewers told reset)", registry=r)  # fmt: skip
        self.bridge_connected = Gauge("hqgw_bridge_connected", "1 when the broker bridge is connected", registry=r)
        self.bridge_lag = Gauge("hqgw_bridge_lag_envelopes", "Envelopes journaled but not yet confirmed by the broker",
                                registry=r)  # fmt: skip
        self.bridge_resends = Counter("hqgw_bridge_resends", "Envelopes resent to the broker after a reconnect",
                                      registry=r)  # fmt: skip

        self._live: dict[str, LiveLatency] = {}

    def live_latency(self, transport: str) -> LiveLatency:
        """The fan-out latency recorder of one transport, shared by every viewer of it."""
        live = self._live.get(transport)
        if live is None:
            live = self._live[transport] = LiveLatency(self.fanout_latency.labels(transport).observe)
        return live

    def render(self) -> bytes:
        return generate_latest(self.registry)


class LiveLatency:
    """Observes hqgw_fanout_latency_seconds once per live envelope and transport: at its first viewer.

    An envelope counts when it is written to the first viewer of the transport, as ``now -
    created_ms``; the other viewers of the same envelope cost one dict lookup. Envelopes a viewer
    replays from the journal (``seq <= live_after``, the journal head when it subscribed) are not
    live and never observed: their age is not fan-out latency.
    """

    __slots__ = ("_last", "_observe")
    MAX_CONVERSATIONS = 10_000

    def __init__(self, observe: Callable[[float], None]) -> None:
        self._observe = observe
        self._last: dict[str, int] = {}  # conversation id -> highest seq observed

    def written(self, conversation_id: str, live_after: int, envs: Sequence[Envelope]) -> None:
        top = envs[-1].seq
        last = self._last.get(conversation_id, 0)
        if top <= last or top <= live_after:
            return
        floor, now = max(last, live_after), time.time()
        for env in envs:
            if env.seq > floor:
                self._observe(now - env.created_ms / 1000)
        if last == 0 and len(self._last) >= self.MAX_CONVERSATIONS:
            del self._last[next(iter(self._last))]  # bounded: the oldest conversation starts afresh
        self._last[conversation_id] = top


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.gateway.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)
