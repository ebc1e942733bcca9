"""The core promise, event by event: one upstream, every viewer sees every envelope in order."""

from __future__ import annotations

import asyncio

import httpx

from tests.clients import SseViewer, assert_dense, eventually
from tests.integration.conftest import TOKEN, sim_stats, submit
from tests.servers import ServerProcess


def test_many_viewers_one_upstream_full_turn_in_order(
    gateway: ServerProcess, simulator: ServerProcess, conv: str
) -> None:
    async def main() -> None:
        viewers = [SseViewer(gateway.url, conv).start() for _ in range(8)]
        for v in viewers:
            await v.wait_connected()
        r = submit(gateway, conv, "What changed in revenue? [deltas=30] [tools=2]")
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["accepted"] is True and body["idempotent"] is False
        assert body["conversationId"] == conv
        assert body["streamUrl"].endswith(f"/api/v1/conversation/stream/{conv}")
        assert body["stompDestination"] == f"/topic/convengine/audit/{conv}"
        for v in viewers:
            await v.wait_for_stage("ENGINE_RETURN")
        reference = viewers[0]
        assert_dense(reference.seqs)
        for v in viewers[1:]:
            assert v.seqs == reference.seqs
            assert [e.data for e in v.events] == [e.data for e in reference.events]
        stages = reference.stages()
        assert stages[0] == "USER_INPUT"
        assert stages.count("ASSISTANT_OUTPUT_DELTA") == 30
        assert stages.count("MCP_TOOL_CALL") == 2 and stages.count("MCP_TOOL_RESULT") == 2
        assert {"VERBOSE", "TOKEN_USAGE", "ASSISTANT_OUTPUT", "HQ_ARTIFACT_CREATED"} <= set(stages)
        envs = reference.envelopes
        reply = "".join(e["payload"]["text"] for e in envs if e["stage"] == "ASSISTANT_OUTPUT_DELTA")
        final = next(e for e in envs if e["stage"] == "ASSISTANT_OUTPUT")
        assert reply == final["payload"]["text"]
        for e in envs:
            assert e["payload"]["_meta"]["conversationId"] == conv
            assert e["payload"]["_meta"]["turn"] == 1
            if e["eventType"] == "AUDIT":
                assert e["auditId"] == int(reference.events[envs.index(e)].id)
        stats = sim_stats(simulator)
        assert stats["open_streams"].get(conv) == 1
        assert stats["stream_opens"][conv] == 1
        for v in viewers:
            await v.stop()

    asyncio.run(main())


def test_resume_with_last_event_id_and_since_seq(gateway: ServerProcess, conv: str) -> None:
    async def main() -> None:
        first = SseViewer(gateway.url, conv).start()
        await first.wait_connected()
        assert submit(gateway, conv, "one [deltas=10]").status_code == 202
        await first.wait_for_stage("ENGINE_RETURN")
        seqs = first.seqs
        mid = seqs[len(seqs) // 2]
        await first.stop()
        # Resume from the middle: header (EventSource reconnect) and query (fresh attach).
        by_header = SseViewer(gateway.url, conv).start(last_event_id=str(mid))
        by_query = SseViewer(gateway.url, conv).start(params={"since_seq": str(mid)})
        await eventually(lambda: by_header.seqs[-1:] == seqs[-1:] and by_query.seqs[-1:] == seqs[-1:], 10)
        assert by_header.seqs == by_query.seqs == [s for s in seqs if s > mid]
        # Then live continues on the same streams with no gap.
        assert submit(gateway, conv, "two [deltas=5]").status_code == 202
        await by_header.wait_for_stage("ENGINE_RETURN", 1)
        await by_query.wait_for_stage("ASSISTANT_OUTPUT", 2)
        await eventually(lambda: by_query.stages().count("ENGINE_RETURN") == 2, 10, "second turn")
        assert_dense(by_query.seqs, first=mid + 1)
        await by_header.stop()
        await by_query.stop()

    asyncio.run(main())


def test_bad_input_is_answered_400(gateway: ServerProcess, conv: str) -> None:
    with httpx.Client(base_url=gateway.url) as c:
        r = c.get("/api/v1/conversation/stream/not-a-uuid")
        assert r.status_code == 400 and r.json()["error"] == "bad_request"
        for bad in ("abc", "-1", "1.5", "99999999999999999999999"):
            r = c.get(f"/api/v1/conversation/stream/{conv}", headers={"Last-Event-ID": bad})
            assert r.status_code == 400, bad
            assert "Last-Event-ID" in r.json()["message"]
        assert c.get(f"/api/v1/conversation/stream/{conv}?since_seq=x").status_code == 400
        assert c.post("/api/v1/conversation/message", content=b"{").status_code == 400
        assert c.post("/api/v1/conversation/message", json={"conversationId": conv}).status_code == 400
        assert c.post("/api/v1/conversation/message", json={"conversationId": "x", "message": "m"}).status_code == 400
        assert c.get("/api/v1/conversation/audit/nope").status_code == 400
        assert c.get("/healthz").json()["status"] == "ok"


def test_idempotent_resubmit_starts_no_second_turn(gateway: ServerProcess, simulator: ServerProcess, conv: str) -> None:
    async def main() -> None:
        viewer = SseViewer(gateway.url, conv).start()
        await viewer.wait_connected()
        r1 = submit(gateway, conv, "hello [deltas=3]", idempotencyKey="key-1")
        r2 = submit(gateway, conv, "hello [deltas=3]", idempotencyKey="key-1")
        assert (r1.status_code, r2.status_code) == (202, 202)
        assert r1.json()["idempotent"] is False and r2.json()["idempotent"] is True
        await viewer.wait_for_stage("ENGINE_RETURN")
        # A later, different turn is the marker: a second start of the first would come before it.
        assert submit(gateway, conv, "later [deltas=1]", idempotencyKey="key-2").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN", count=2)
        assert viewer.stages().count("USER_INPUT") == 2
        assert viewer.stages().count("ENGINE_RETURN") == 2
        assert sim_stats(simulator)["turns_started"][conv] == 2
        await viewer.stop()

    asyncio.run(main())


def test_audit_paging_and_trace(gateway: ServerProcess, conv: str) -> None:
    async def main() -> None:
        viewer = SseViewer(gateway.url, conv).start()
        await viewer.wait_connected()
        assert submit(gateway, conv, "trace me [deltas=4] [tools=2] [tool_error]").status_code == 202
        await viewer.wait_for_stage("ENGINE_RETURN")
        await viewer.stop()
        seqs = viewer.seqs
        with httpx.Client(base_url=gateway.url) as c:
            page1 = c.get(f"/api/v1/conversation/audit/{conv}", params={"limit": 5}).json()
            assert [e.get("auditId") or e["verbose"]["verboseId"] for e in page1["items"]] == seqs[:5]
            assert page1["nextAfter"] == seqs[4]
            rest = c.get(f"/api/v1/conversation/audit/{conv}", params={"after": page1["nextAfter"], "limit": 1000})
            assert len(rest.json()["items"]) == len(seqs) - 5 and rest.json()["nextAfter"] is None
            trace = c.get(f"/api/v1/conversation/audit/{conv}/trace").json()
        [turn] = trace["turns"]
        assert turn["userInput"].startswith("trace me")
        tools = [s for s in turn["steps"] if s["type"] == "tool"]
        assert len(tools) == 2
        for tool in tools:
            assert tool["endedAt"] is not None and tool["durationMs"] >= 0 and tool["resultSeq"] > tool["callSeq"]
        assert [t["status"] for t in tools].count("error") == 1
        assert turn["usage"]["output_tokens"] > 0
        assert turn["final"]["text"] == turn["reply"] and turn["durationMs"] >= 0
        assert turn["state"] == "COMPLETED"

    asyncio.run(main())


def test_token_never_reaches_viewers_or_logs(gateway: ServerProcess, conv: str) -> None:
    async def main() -> None:
        viewer = SseViewer(gateway.url, conv).start()
        await viewer.wait_connected()
        submit(gateway, conv, "secret check [deltas=2]")
        await viewer.wait_for_stage("ENGINE_RETURN")
        await viewer.stop()
        assert all(TOKEN not in e.data for e in viewer.events)
        with httpx.Client(base_url=gateway.url) as c:
            for path in ("/readyz", "/metrics", f"/api/v1/conversation/audit/{conv}"):
                assert TOKEN not in c.get(path).text
        assert TOKEN not in gateway.log()

    asyncio.run(main())
