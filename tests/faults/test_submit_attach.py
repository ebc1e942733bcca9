"""A submitted turn is never lost to a slow attach: 202 means the viewers get the whole turn, else 503."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import StartGateway, StartSimulator, sim_faults, sim_stats


async def submit_async(base_url: str, conversation_id: str, message: str, **extra: Any) -> httpx.Response:
    body = {"conversationId": conversation_id, "message": message, **extra}
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{base_url}/api/v1/conversation/message", json=body)


def turn_of(viewer: SseViewer) -> list[dict[str, Any]]:
    """The envelopes from USER_INPUT on (the upstream notices before it are not part of the turn)."""
    envs = viewer.envelopes
    start = next(i for i, e in enumerate(envs) if e["stage"] == "USER_INPUT")
    return envs[start:]


def test_hq_503_at_attach_shorter_than_the_wait_delivers_the_whole_turn(
    start_simulator: StartSimulator, start_gateway: StartGateway, conv: str
) -> None:
    # Each refused open costs a backoff (full jitter up to 0.3 s here): 6 of them keep the stream down ~1 s,
    # past the 0.25 s after which the old code gave up waiting and posted the turn into the void.
    sim = start_simulator()
    gw = start_gateway(sim.url, GATEWAY_HQ_BACKOFF_INITIAL_S="0.3", GATEWAY_HQ_BACKOFF_MAX_S="0.3")
    sim_faults(sim, {"status": 503, "count": 6})

    async def main() -> None:
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        began = time.monotonic()
        reply = await submit_async(gw.url, conv, "slow attach [deltas=12] [tools=1]")
        assert reply.status_code == 202, reply.text
        assert time.monotonic() - began > 0.25, "answered before HQ's stream could be live"
        assert sim_stats(sim)["stream_opens"][conv] == 7  # six 503s, then the stream that carried the turn
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=20)
        assert_dense(viewer.seqs)
        turn = turn_of(viewer)
        assert turn[0]["payload"]["message"] == "slow attach [deltas=12] [tools=1]"
        stages = [e["stage"] for e in turn]
        assert stages.count("ASSISTANT_OUTPUT_DELTA") == 12
        assert stages[-1] == "ENGINE_RETURN"
        assert "ASSISTANT_OUTPUT" in stages and "MCP_TOOL_CALL" in stages and "MCP_TOOL_RESULT" in stages
        hq_ids = [int(e["payload"]["_meta"]["sourceEventId"]) for e in turn if e["payload"]["_meta"]["sourceEventId"]]
        assert hq_ids == list(range(1, len(hq_ids) + 1)), "every HQ event of the turn, once, in order"
        reply_text = "".join(e["payload"]["text"] for e in turn if e["stage"] == "ASSISTANT_OUTPUT_DELTA")
        assert reply_text == next(e["payload"]["text"] for e in turn if e["stage"] == "ASSISTANT_OUTPUT")
        await viewer.stop()

    asyncio.run(main())


def test_hq_down_longer_than_the_wait_is_503_and_nothing_submitted(
    start_simulator: StartSimulator, start_gateway: StartGateway, conv: str
) -> None:
    sim = start_simulator("--fail-status", "503", "--fail-count", "100000")
    gw = start_gateway(sim.url, GATEWAY_HQ_ATTACH_TIMEOUT_S="1.5")

    async def main() -> None:
        began = time.monotonic()
        reply = await submit_async(gw.url, conv, "nobody would see this [deltas=3]", idempotencyKey="k-1")
        waited = time.monotonic() - began
        assert reply.status_code == 503, reply.text
        assert reply.json()["error"] == "upstream_not_ready"
        assert "1.5 s" in reply.json()["message"]
        assert int(reply.headers["retry-after"]) >= 1
        assert 1.4 < waited < 5, f"waited {waited:.2f} s instead of the configured attach wait"
        assert conv not in sim_stats(sim)["messages"], "the turn reached HQ although the caller was told 503"
        audit = httpx.get(f"{gw.url}/api/v1/conversation/audit/{conv}").json()
        assert "USER_INPUT" not in [e["stage"] for e in audit["items"]]

        # HQ comes back: the caller's retry with the same key is the one and only submission.
        sim_faults(sim, {"clear": True})
        viewer = SseViewer(gw.url, conv).start()
        await viewer.wait_connected()
        retry = await submit_async(gw.url, conv, "nobody would see this [deltas=3]", idempotencyKey="k-1")
        assert retry.status_code == 202, retry.text
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=15)
        assert sim_stats(sim)["messages"][conv] == 1
        turn = turn_of(viewer)
        assert [e["stage"] for e in turn].count("USER_INPUT") == 1
        assert [e["stage"] for e in turn].count("ASSISTANT_OUTPUT_DELTA") == 3
        assert_dense([e["auditId"] or e["verbose"]["verboseId"] for e in turn])
        await viewer.stop()

    asyncio.run(main())


def test_cluster_non_holder_answers_202_only_once_the_holders_stream_is_live(
    start_simulator: StartSimulator, start_gateway: StartGateway, redis_url: str, conv: str
) -> None:
    """A process without the lease used to take "someone holds the lease" for "HQ's stream is up"."""
    sim = start_simulator()
    env = {"GATEWAY_REDIS_URL": redis_url, "GATEWAY_REDIS_LEASE_TTL_MS": "1500",
           "GATEWAY_HQ_BACKOFF_INITIAL_S": "0.3", "GATEWAY_HQ_BACKOFF_MAX_S": "0.3"}  # fmt: skip
    holder, other = (start_gateway(sim.url, **env) for _ in range(2))
    sim_faults(sim, {"status": 503, "count": 8})

    async def main() -> None:
        viewer = SseViewer(holder.url, conv).start()  # the holder: the lease is taken, its stream refused
        await viewer.wait_connected()
        await eventually(lambda: sim_stats(sim)["stream_opens"].get(conv, 0) >= 1, 5, "the holder's first open")
        reply = await submit_async(other.url, conv, "through the other process [deltas=12]")
        assert reply.status_code == 202, reply.text
        assert sim_stats(sim)["stream_opens"][conv] == 9, "posted before the holder's stream was up"
        await viewer.wait_for_stage("ENGINE_RETURN", timeout=20)
        assert_dense(viewer.seqs)
        stages = [e["stage"] for e in turn_of(viewer)]
        assert stages.count("ASSISTANT_OUTPUT_DELTA") == 12 and stages[-1] == "ENGINE_RETURN"
        assert sim_stats(sim)["open_streams"][conv] == 1  # one upstream for the cluster
        await viewer.stop()

    asyncio.run(main())
