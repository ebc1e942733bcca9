"""Upstream faults: the gateway keeps running, loses nothing HQ still has, and tells the viewers."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import StartGateway, StartSimulator, sim_faults, sim_stats, submit


def verbose_errors(viewer: SseViewer) -> list[dict]:
    return [e["verbose"] for e in viewer.envelopes if e["eventType"] == "VERBOSE" and e["verbose"]["level"] == "ERROR"]


def test_drop_every_few_events_loses_nothing(start_simulator: StartSimulator, start_gateway: StartGateway,
                                             conv: str) -> None:  # fmt: skip
    sim = start_simulator("--drop-every", "3")
    gw = start_gateway(sim.url)

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        assert submit(gw, conv, "drops [deltas=40] [tools=2]").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=30)
        assert_dense(viewer.seqs)
        envs = viewer.envelopes
        source_ids = [
            int(e["payload"]["_meta"]["sourceEventId"]) for e in envs if e["payload"]["_meta"]["sourceEventId"]
        ]
        assert source_ids == list(range(1, len(source_ids) + 1)), "every HQ event exactly once, in order"
        reply = "".join(e["payload"]["text"] for e in envs if e["stage"] == "ASSISTANT_OUTPUT_DELTA")
        assert reply == next(e["payload"]["text"] for e in envs if e["stage"] == "ASSISTANT_OUTPUT")
        assert sim_stats(sim)["stream_opens"][conv] > 10  # it really was cut again and again
        assert sim_stats(sim)["open_streams"].get(conv, 0) <= 1
        await viewer.stop()

    asyncio.run(main())


def test_5xx_then_recovery_viewers_told(
    start_simulator: StartSimulator, start_gateway: StartGateway, conv: str
) -> None:
    sim = start_simulator()
    gw = start_gateway(sim.url)
    sim_faults(sim, {"status": 503, "count": 4})

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        await eventually(lambda: verbose_errors(viewer), 10, "upstream error envelope")
        err = verbose_errors(viewer)[0]
        assert err["determinant"] == "UPSTREAM_ERROR" and "503" in err["text"]
        await eventually(lambda: any(e["verbose"] and e["verbose"]["determinant"] == "UPSTREAM_RESTORED"
                                     for e in viewer.envelopes), 10, "restored notice")  # fmt: skip
        assert submit(gw, conv, "after outage [deltas=3]").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN")
        assert_dense(viewer.seqs)
        await viewer.stop()

    asyncio.run(main())


def test_401_and_404_stop_retrying_and_tell_viewers(
    start_simulator: StartSimulator, start_gateway: StartGateway
) -> None:
    missing = str(uuid.uuid4())
    sim = start_simulator("--missing", missing)
    gw = start_gateway(sim.url)

    async def main() -> None:
        viewer = SseViewer(gw.url, missing).start()
        await eventually(lambda: verbose_errors(viewer), 10, "404 error envelope")
        err = verbose_errors(viewer)[0]
        assert "404" in err["text"] and viewer.envelopes[0]["payload"]["recoverable"] is False
        assert sim_stats(sim)["stream_opens"][missing] == 1
        # Submitting to a refused conversation is a clear error, not a hang.
        r = submit(gw, missing, "hello")
        assert r.status_code == 502 and r.json()["error"] == "upstream_refused"
        await viewer.stop()
        # Another conversation on the same gateway is untouched.
        other = str(uuid.uuid4())
        ok = SseViewer(gw.url, other).start()
        await ok.wait_connected()
        # A whole turn streamed over 1 s: had the refused upstream been retrying (backoff <= 0.5 s),
        # it would have reopened by the time this later turn ends.
        assert submit(gw, other, "fine [deltas=5] [interval_ms=200]").status_code == 202
        await ok.wait_for_stage("ENGINE_RETURN")
        await ok.stop()
        assert sim_stats(sim)["stream_opens"][missing] == 1
        # Wrong token: 401, same treatment.
        sim_faults(sim, {"unauthorized": True})
        third = str(uuid.uuid4())
        denied = SseViewer(gw.url, third).start()
        await eventually(lambda: verbose_errors(denied), 10, "401 error envelope")
        assert "401" in verbose_errors(denied)[0]["text"]
        await denied.stop()

    asyncio.run(main())


def test_stall_is_detected_and_stream_reopened(start_simulator: StartSimulator, start_gateway: StartGateway,
                                               conv: str) -> None:  # fmt: skip
    sim = start_simulator()
    gw = start_gateway(sim.url, GATEWAY_HQ_IDLE_TIMEOUT_S="1")

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        await eventually(lambda: sim_stats(sim)["stream_opens"].get(conv) == 1, 5, "upstream open")
        sim_faults(sim, {"stall": True})
        await eventually(lambda: sim_stats(sim)["stream_opens"][conv] >= 2, 10, "watchdog reconnect")
        sim_faults(sim, {"clear": True})
        assert submit(gw, conv, "after stall [deltas=3]").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=15)
        assert_dense(viewer.seqs)
        await viewer.stop()

    asyncio.run(main())


def test_garbage_and_stale_upstream(start_simulator: StartSimulator, start_gateway: StartGateway, conv: str) -> None:
    sim = start_simulator()
    gw = start_gateway(sim.url)

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        await eventually(lambda: sim_stats(sim)["open_streams"].get(conv) == 1, 5, "upstream open")
        sim_faults(sim, {"garbage": True, "stale_after": 7})
        assert submit(gw, conv, "messy [deltas=20]").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=20)
        assert_dense(viewer.seqs)
        assert "stale" not in viewer.stages()  # HQ's stale is handled by the gateway, never forwarded
        deltas = [e["payload"] for e in viewer.envelopes if e["stage"] == "ASSISTANT_OUTPUT_DELTA"]
        # The injected non-JSON data is kept verbatim, never dropped and never fatal.
        assert [d["data"] for d in deltas if "text" not in d] and all(
            isinstance(d.get("data", ""), str) for d in deltas
        )
        reply = "".join(d["text"] for d in deltas if "text" in d)
        final = next(e for e in viewer.envelopes if e["stage"] == "ASSISTANT_OUTPUT")
        assert reply == final["payload"]["text"]
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        await viewer.stop()

    asyncio.run(main())


def test_connection_refused_then_hq_appears(start_simulator: StartSimulator, start_gateway: StartGateway,
                                            conv: str) -> None:  # fmt: skip
    from tests.servers import free_port

    port = free_port()
    gw = start_gateway(f"http://127.0.0.1:{port}")

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await eventually(lambda: verbose_errors(viewer), 10, "unavailable notice")
        assert "unavailable" in verbose_errors(viewer)[0]["text"]
        assert httpx.get(f"{gw.url}/healthz").status_code == 200
        await viewer.stop()

    asyncio.run(main())
