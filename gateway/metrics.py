"""Prometheus metrics. Label sets are bounded: never a conversation id, a token or a client address."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    """One registry per gateway instance (tests run several in one process)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.viewers = Gauge("hqgw_viewers", "Connected viewer subscriptions by transport", ["transport"], registry=r)
        self.connections = Gauge("hqgw_connections", "Open client connections by transport", ["transport"], registry=r)
        self.conversations = Gauge("hqgw_active_conversations", "Conversations with a local upstream", registry=r)
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
            "Upstream receipt to write to a viewer",
            ["transport"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.submissions = Counter("hqgw_submissions", "Turn submissions by outcome", ["outcome"], registry=r)
        self.redis_up = Gauge("hqgw_redis_up", "1 when Redis answers (cluster mode)", registry=r)
        self.redis_data_loss = Counter("hqgw_redis_data_loss", "Times Redis lost or rolled back journal data under "
                                       "this process (viewers told reset)", registry=r)  # fmt: skip
        self.bridge_connected = Gauge("hqgw_bridge_connected", "1 when the broker bridge is connected", registry=r)
        self.bridge_lag = Gauge("hqgw_bridge_lag_envelopes", "Envelopes journaled but not yet confirmed by the broker",
                                registry=r)  # fmt: skip
        self.bridge_resends = Counter("hqgw_bridge_resends", "Envelopes resent to the broker after a reconnect",
                                      registry=r)  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def metrics_endpoint(request: Request) -> Response:
    metrics: Metrics = request.app.state.gateway.metrics
    return Response(metrics.render(), media_type=CONTENT_TYPE)
