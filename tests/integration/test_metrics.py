"""Metrics move by exactly what a turn did; label sets stay bounded."""

from __future__ import annotations

import asyncio
import re

import httpx

from tests.clients import SseViewer
from tests.integration.conftest import StartGateway, submit
from tests.servers import ServerProcess


def scrape(gw: ServerProcess) -> dict[str, float]:
    values: dict[str, float] = {}
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_counters_after_a_simulated_turn(simulator: ServerProcess, start_gateway: StartGateway, conv: str) -> None:
    gw = start_gateway(simulator.url)

    async def main() -> None:
        before = scrape(gw)
        viewers = [SseViewer(gw.url, conv).start() for _ in range(3)]
        for v in viewers:
            await v.wait_connected()
        during = scrape(gw)
        assert during['hqgw_viewers{transport="sse"}'] == 3
        assert submit(gw, conv, "count me [deltas=7] [tools=2]").status_code == 202
        for v in viewers:
            await v.wait_for_stage("ENGINE_RETURN")
        n = len(viewers[0].events)
        after = scrape(gw)

        def delta(name: str) -> float:
            return after.get(name, 0.0) - before.get(name, 0.0)

        audit = sum(1 for e in viewers[0].envelopes if e["eventType"] == "AUDIT")
        verbose = n - audit
        assert delta('hqgw_envelopes_journaled_total{type="AUDIT"}') == audit
        assert delta('hqgw_envelopes_journaled_total{type="VERBOSE"}') == verbose
        assert delta('hqgw_envelopes_delivered_total{transport="sse"}') == 3 * n
        assert delta('hqgw_events_in_total{kind="text_delta"}') == 7
        assert delta('hqgw_events_in_total{kind="tool_call"}') == 2
        assert delta("hqgw_upstream_connects_total") == 1
        assert after["hqgw_upstream_connected"] == 1
        assert delta('hqgw_fanout_latency_seconds_count{transport="sse"}') >= 3  # one observation per batch
        assert after['hqgw_fanout_latency_seconds_bucket{le="1.0",transport="sse"}'] >= 3
        for v in viewers:
            await v.stop()
        text = httpx.get(f"{gw.url}/metrics").text
        assert conv not in text  # never a conversation id as a label
        labels = set(re.findall(r'(\w+)="', text))
        assert labels <= {"transport", "reason", "kind", "type", "outcome", "le", "quantile"}, labels

    asyncio.run(main())
