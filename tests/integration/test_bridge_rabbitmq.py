"""The broker bridge against the real RabbitMQ STOMP plugin: a dashboard on the broker sees every envelope."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.integration.conftest import TOKEN, StartGateway, submit
from tests.rabbitmq import BROKER_URL, Dashboard, require_stomp_plugin, stomp_listener_down
from tests.servers import ServerProcess, wait_until

pytestmark = pytest.mark.integration

BRIDGE_ENV = {
    "GATEWAY_BRIDGE_URL": BROKER_URL,
    "GATEWAY_BRIDGE_BACKOFF_INITIAL_S": "0.1",
    "GATEWAY_BRIDGE_BACKOFF_MAX_S": "1",
    "GATEWAY_BRIDGE_HEARTBEAT_MS": "2000",
    "GATEWAY_BRIDGE_RECEIPT_TIMEOUT_S": "5",
}


@pytest.fixture(scope="module")
def broker() -> None:
    require_stomp_plugin()


@pytest.fixture
def dashboard(conv: str) -> Iterator[Dashboard]:
    dash = Dashboard(f"/topic/convengine.audit.{conv}").start()
    yield dash
    dash.close()


def journal(gw: ServerProcess, conv: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{gw.url}/api/v1/conversation/audit/{conv}", params={"after": 0, "limit": 1000})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def seq_of(env: dict[str, Any]) -> int:
    return int(env["auditId"] if env["eventType"] == "AUDIT" else env["verbose"]["verboseId"])


def bridge_detail(gw: ServerProcess) -> dict[str, Any]:
    detail: dict[str, Any] = httpx.get(f"{gw.url}/readyz").json()["checks"]["bridge"]["detail"]
    return detail


def caught_up(gw: ServerProcess, conv: str, dash: Dashboard) -> bool:
    return bridge_detail(gw)["lag"] == 0 and len(dash.unique()) == len(journal(gw, conv))


def assert_dashboard_has_journal(gw: ServerProcess, conv: str, dash: Dashboard) -> list[int]:
    """The dashboard, deduplicating by seq, holds exactly the journal: same order, same bytes, headers."""
    envs = journal(gw, conv)
    got = dash.unique()
    seqs = [seq_of(e) for e in envs]
    assert list(got) == seqs  # first deliveries arrived in journal order
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # dense: nothing skipped
    for (headers, body), env in zip(got.values(), envs, strict=True):
        assert orjson.loads(body) == env
        assert headers["content-type"] == "application/json"
        assert headers["conversation-id"] == conv
        assert headers["stage"] == env["stage"]
    return seqs


def hq_post(sim: ServerProcess, conv: str, text: str) -> None:
    """Submit a turn straight to HQ: the gateway gets it only through an upstream something holds open."""
    r = httpx.post(f"{sim.url}/v1/api/conversations/{conv}/messages", json={"text": text},
                   headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
    assert r.status_code == 202, r.text


def test_turn_reaches_broker_dashboard_in_order(
    broker: None, simulator: ServerProcess, start_gateway: StartGateway, conv: str, dashboard: Dashboard
) -> None:
    gw = start_gateway(simulator.url, **BRIDGE_ENV, GATEWAY_BRIDGE_PIN="submitted")
    assert submit(gw, conv, "bridge me [deltas=30]").status_code == 202
    wait_until(lambda: dashboard.saw_stage("ENGINE_RETURN"), 20, what="ENGINE_RETURN on the broker")
    wait_until(lambda: caught_up(gw, conv, dashboard), 10, 0.05, "bridge caught up")
    seqs = assert_dashboard_has_journal(gw, conv, dashboard)
    assert dashboard.seqs() == seqs  # no fault, no duplicate
    assert len(seqs) > 30
    detail = bridge_detail(gw)
    assert detail["connected"] and detail["pins"] == 1 and detail["lastError"] is None
    assert "broker" in detail and "guest@" in detail["broker"] and ":guest@" not in detail["broker"]
    metrics = httpx.get(f"{gw.url}/metrics").text
    assert "hqgw_bridge_connected 1.0" in metrics and "hqgw_bridge_lag_envelopes 0.0" in metrics
    pins = httpx.get(f"{gw.url}/api/v1/bridge/conversations").json()["conversations"]
    assert [(p["conversationId"], p["kind"], p["cursor"], p["lag"]) for p in pins] == [(conv, "submitted", seqs[-1], 0)]


def test_stomp_listener_down_mid_turn_loses_nothing(
    broker: None, simulator: ServerProcess, start_gateway: StartGateway, conv: str, dashboard: Dashboard
) -> None:
    gw = start_gateway(simulator.url, **BRIDGE_ENV, GATEWAY_BRIDGE_PIN="submitted")
    assert submit(gw, conv, "a long answer [deltas=300] [interval_ms=25]").status_code == 202
    wait_until(lambda: len(dashboard.seqs()) >= 5, 15, what="the turn's first envelopes on the broker")
    # Disabling the plugin takes 3-15 s, so the first turn may or may not outlast it; a second turn
    # submitted during the outage makes sure envelopes are journaled while the broker is away.
    with stomp_listener_down():
        wait_until(lambda: not bridge_detail(gw)["connected"], 15, 0.1, "the bridge to notice")
        at_broker = len(dashboard.unique())
        assert submit(gw, conv, "asked while the broker is away [deltas=40] [interval_ms=25]").status_code == 202
        wait_until(lambda: len(journal(gw, conv)) > at_broker, 10, 0.05, "envelopes journaled during the outage")
        assert httpx.get(f"{gw.url}/readyz").status_code == 200  # a dead broker degrades the bridge only
    wait_until(lambda: dashboard.saw_stage("ENGINE_RETURN", 2), 60, 0.1, "both turns after the outage")
    wait_until(lambda: caught_up(gw, conv, dashboard), 20, 0.1, "bridge caught up after the outage")
    assert_dashboard_has_journal(gw, conv, dashboard)
    assert dashboard.connects >= 2
    detail = bridge_detail(gw)
    assert detail["connected"] and detail["reconnects"] >= 1 and detail["gaps"] == 0


def test_rest_pin_bridges_without_viewers_and_unpin_stops(
    broker: None, simulator: ServerProcess, start_gateway: StartGateway, conv: str, dashboard: Dashboard
) -> None:
    configured = str(uuid.uuid4())
    gw = start_gateway(simulator.url, **BRIDGE_ENV, GATEWAY_BRIDGE_PIN=configured)
    api = f"{gw.url}/api/v1/bridge/conversations"
    listed = httpx.get(api).json()["conversations"]
    assert [(p["conversationId"], p["kind"]) for p in listed] == [(configured, "config")]
    assert httpx.put(f"{api}/not-a-uuid").status_code == 400
    assert httpx.put(f"{api}/{conv}", params={"since_seq": "-1"}).status_code == 400
    created = httpx.put(f"{api}/{conv.upper()}")
    assert created.status_code == 201 and created.json()["conversationId"] == conv and created.json()["kind"] == "api"
    assert httpx.put(f"{api}/{conv}").status_code == 200
    assert httpx.put(f"{api}/{conv}", params={"since_seq": "5"}).status_code == 409
    # Both pins hold their upstream open with no viewer and no submitted turn.
    upstreams = lambda: httpx.get(f"{gw.url}/readyz").json()["checks"]["upstreams"]["detail"]  # noqa: E731
    wait_until(lambda: upstreams().get("live") == 2, 10, 0.05, "both pinned upstreams live")

    hq_post(simulator, conv, "straight to HQ [deltas=12]")
    wait_until(lambda: dashboard.saw_stage("ENGINE_RETURN"), 20, what="the HQ-submitted turn on the broker")
    wait_until(lambda: caught_up(gw, conv, dashboard), 10, 0.05, "bridge caught up")
    seqs = assert_dashboard_has_journal(gw, conv, dashboard)
    pin = httpx.get(f"{api}/{conv}").json()
    assert (pin["cursor"], pin["head"], pin["lag"], pin["inFlight"]) == (seqs[-1], seqs[-1], 0, 0)

    assert httpx.delete(f"{api}/{conv}").status_code == 204
    assert httpx.delete(f"{api}/{conv}").status_code == 404
    assert httpx.get(f"{api}/{conv}").status_code == 404
    delivered = len(dashboard.seqs())
    hq_post(simulator, conv, "nobody bridges this [deltas=5]")
    # "Nothing happened" is read after a later positive marker: a longer turn on the still-pinned
    # conversation, posted after this one, reaching the broker.
    still_pinned = Dashboard(f"/topic/convengine.audit.{configured}").start()
    try:
        hq_post(simulator, configured, "still bridged [deltas=20]")
        wait_until(lambda: still_pinned.saw_stage("ENGINE_RETURN"), 20, what="the still-pinned turn on the broker")
    finally:
        still_pinned.close()
    assert len(dashboard.seqs()) == delivered


def test_bridge_api_answers_503_without_a_broker(gateway: ServerProcess) -> None:
    r = httpx.put(f"{gateway.url}/api/v1/bridge/conversations/{uuid.uuid4()}")
    assert r.status_code == 503 and r.json()["error"] == "bridge_disabled"
    assert "bridge" not in httpx.get(f"{gateway.url}/readyz").json()["checks"]


def test_broker_refusing_the_destination_degrades_only_the_bridge(
    broker: None, simulator: ServerProcess, start_gateway: StartGateway, conv: str
) -> None:
    # RabbitMQ answers ERROR "Invalid destination" to a /topic/ name containing "/" (ActiveMQ's spelling).
    gw = start_gateway(simulator.url, **BRIDGE_ENV, GATEWAY_BRIDGE_PIN="submitted",
                       GATEWAY_BRIDGE_DESTINATION="/topic/convengine/audit/{conversationId}")  # fmt: skip
    assert submit(gw, conv, "nobody at the broker hears this [deltas=5]").status_code == 202
    wait_until(lambda: "Invalid destination" in (bridge_detail(gw)["lastError"] or ""), 15, 0.1, "the broker ERROR")
    wait_until(lambda: any(e["stage"] == "ENGINE_RETURN" for e in journal(gw, conv)), 15, 0.1, "the turn journaled")
    ready = httpx.get(f"{gw.url}/readyz")
    assert ready.status_code == 200
    detail = ready.json()["checks"]["bridge"]["detail"]
    assert detail["lag"] == len(journal(gw, conv))  # nothing confirmed, nothing forgotten
    assert gw.alive


def test_cluster_one_bridger_survives_holder_sigkill_and_pins_persist(
    broker: None, simulator: ServerProcess, start_gateway: StartGateway, redis_url: str, conv: str,
    dashboard: Dashboard,
) -> None:  # fmt: skip
    env = {**BRIDGE_ENV, "GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_LEASE_TTL_MS": "1500"}
    gws = [start_gateway(simulator.url, **env) for _ in range(2)]
    api = f"{gws[0].url}/api/v1/bridge/conversations"
    assert httpx.put(f"{api}/{conv}").status_code == 201
    # The other replica follows the pin through Redis.
    wait_until(lambda: httpx.get(f"{gws[1].url}/api/v1/bridge/conversations/{conv}").status_code == 200, 10,
               0.1, "pin visible on the second replica")  # fmt: skip
    hq_post(simulator, conv, "cluster bridge [deltas=150] [interval_ms=15]")
    wait_until(lambda: len(dashboard.seqs()) >= 20, 15, 0.05, "bridging under way")
    # Exactly one replica sends: the lease holder. Kill it mid-turn.
    leaders = [gw for gw in gws if "hqgw_upstream_connected 1.0" in httpx.get(f"{gw.url}/metrics").text]
    assert len(leaders) == 1
    survivor = next(gw for gw in gws if gw is not leaders[0])
    leaders[0].kill()
    wait_until(lambda: dashboard.saw_stage("ENGINE_RETURN"), 40, 0.1, "the turn completes on the broker")
    wait_until(lambda: caught_up(survivor, conv, dashboard), 20, 0.1, "the survivor caught up")
    assert_dashboard_has_journal(survivor, conv, dashboard)  # at least once, deduplicated by seq: complete
    # The pin survives a restart of the survivor (stored in Redis).
    survivor.stop()
    again = start_gateway(simulator.url, **env)
    assert httpx.get(f"{again.url}/api/v1/bridge/conversations/{conv}").json()["kind"] == "api"
