"""The HQ simulator as a real uvicorn subprocess, driven over HTTP like the gateway drives HQ."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import httpx
import pytest

from gateway.protocols.sse import SseEvent, SseParser
from tests.servers import ROOT, ServerProcess, free_port, python_module, start_process
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TOKEN = "hq_pat_test_token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEEPALIVE_S = 0.2
TIMEOUT = 5.0


def start_simulator(log_dir: Any, *extra: str) -> ServerProcess:
    port = free_port()
    args = ["--port", str(port), "--token", TOKEN, "--keepalive-s", str(KEEPALIVE_S)]
    args += ["--delta-interval-ms", "1", "--seed", "7", "--no-access-log", *extra]
    return start_process(
        python_module("gateway.simulator", *args),
        ready_url=f"http://127.0.0.1:{port}/_sim/healthz",
        log_dir=log_dir,
        name="simulator",
    )


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_simulator(tmp_path_factory.mktemp("simulator"))
    yield proc
    assert proc.stop() == 0


@pytest.fixture
def base(sim: ServerProcess) -> Iterator[str]:
    httpx.post(f"{sim.url}/_sim/faults", json={"clear": True}, headers=AUTH).raise_for_status()
    yield sim.url
    httpx.post(f"{sim.url}/_sim/faults", json={"clear": True}, headers=AUTH).raise_for_status()


def run(scenario: Callable[[httpx.AsyncClient], Coroutine[Any, Any, None]], base_url: str) -> None:
    async def main() -> None:
        async with asyncio.timeout(20), httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as client:
            await scenario(client)

    asyncio.run(main())


def stream_path(conv: str, query: str = "") -> str:
    return f"/v1/api/conversations/{conv}/stream{query}"


class Recorder:
    """Reads one SSE stream in a task: the events, the comment count, and how the stream ended."""

    def __init__(self, client: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None) -> None:
        self.parser = SseParser()
        self.events: list[SseEvent] = []
        self.raw = b""
        self.status: int | None = None
        self.content_type = ""
        self.ended: str | None = None  # "eof" (clean end), "abrupt" (cut mid-body) or "refused"
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._run(client, path, {**AUTH, **(headers or {})}))

    async def _run(self, client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> None:
        try:
            async with client.stream("GET", path, headers=headers, timeout=httpx.Timeout(TIMEOUT, read=None)) as r:
                self.status, self.content_type = r.status_code, r.headers.get("content-type", "")
                if r.status_code != 200:
                    self.raw = await r.aread()
                    self.ended = "refused"
                    return
                async for chunk in r.aiter_raw():
                    self.raw += chunk
                    self.events.extend(self.parser.feed(chunk))
                    self._changed.set()
            self.ended = "eof"
        except httpx.RemoteProtocolError:
            self.ended = "abrupt"
        finally:
            self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                if self._task.done():
                    assert predicate(), f"stream ended ({self.ended}) before {what}: {self.names()}"
                self._changed.clear()
                await self._changed.wait()

    async def attached(self) -> None:
        """Wait for the ``retry:`` field the simulator writes once it has subscribed."""
        await self.wait_for(lambda: self.parser.retry_ms is not None or self.ended is not None, "retry field")

    async def turns_done(self, n: int = 1) -> None:
        await self.wait_for(lambda: self.names().count("done") >= n, f"{n} done event(s)")

    async def ends(self) -> None:
        await self.wait_for(lambda: self.ended is not None, "end of stream")

    async def quiet_for(self, seconds: float) -> None:
        """Assert that not one byte arrives for ``seconds``."""
        size = len(self.raw)
        with pytest.raises(TimeoutError):
            await self.wait_for(lambda: len(self.raw) != size, "any byte", timeout=seconds)

    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def ids(self) -> list[int]:
        return [int(e.id) for e in self.events if e.id is not None]

    def data(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(e.data) for e in self.events if e.event == name]

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def post(client: httpx.AsyncClient, conv: str, text: str, **body: Any) -> httpx.Response:
    return await client.post(f"/v1/api/conversations/{conv}/messages", json={"text": text, **body}, headers=AUTH)


async def stats(client: httpx.AsyncClient) -> dict[str, dict[str, int]]:
    r = await client.get("/_sim/stats", headers=AUTH)
    r.raise_for_status()
    result: dict[str, dict[str, int]] = r.json()
    return result


async def faults(client: httpx.AsyncClient, **spec: Any) -> None:
    (await client.post("/_sim/faults", json=spec, headers=AUTH)).raise_for_status()


async def emit(client: httpx.AsyncClient, conv: str, n: int) -> None:
    for i in range(n):
        r = await client.post(
            f"/_sim/conversations/{conv}/emit", json={"event": "status", "data": {"n": i}}, headers=AUTH
        )
        r.raise_for_status()


def new_conv() -> str:
    return str(uuid.uuid4())


# --- HQ endpoints ------------------------------------------------------------------------------


def test_every_endpoint_needs_the_token(base: str) -> None:
    conv = new_conv()
    paths = [("GET", stream_path(conv)), ("POST", f"/v1/api/conversations/{conv}/messages"),
             ("GET", f"/v1/api/conversations/{conv}"), ("GET", "/_sim/stats"), ("POST", "/_sim/faults")]  # fmt: skip
    for method, path in paths:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = httpx.request(method, base + path, headers=headers, json={"text": "x"})
            assert r.status_code == 401, (method, path, headers)
            assert r.json()["error"] == "unauthorized" and TOKEN not in r.text
    assert httpx.get(f"{base}/v1/api/conversations/{conv}", cookies={"hq_session": TOKEN}).status_code == 200


def test_ids_must_be_uuids_and_cursors_integers(base: str) -> None:
    for path in ("/v1/api/conversations/nope/stream", "/v1/api/conversations/nope", "/_sim/conversations/x/emit"):
        method = "POST" if path.endswith("emit") else "GET"
        assert httpx.request(method, base + path, headers=AUTH, json={}).status_code == 400
    assert httpx.post(f"{base}/v1/api/conversations/123/messages", headers=AUTH, json={"text": "x"}).status_code == 400
    conv = new_conv()
    assert httpx.get(base + stream_path(conv, "?since_seq=-1"), headers=AUTH).status_code == 400
    assert httpx.get(base + stream_path(conv), headers={**AUTH, "Last-Event-ID": "7Z9"}).status_code == 400


def test_message_body_validation(base: str) -> None:
    url = f"{base}/v1/api/conversations/{new_conv()}/messages"
    for body in ({}, {"text": ""}, {"text": "  "}, {"text": 3}, [], {"text": "x", "attachments": "a"}):
        r = httpx.post(url, headers=AUTH, json=body)
        assert r.status_code == 422 and r.json()["error"] == "unprocessable", body
    assert httpx.post(url, headers=AUTH, json={"text": "go [deltas=0]"}).status_code == 422
    assert httpx.post(url, headers=AUTH, content=b"{not json").status_code == 400


def test_metadata_follows_the_seed(base: str) -> None:
    conv = new_conv()
    r = httpx.get(f"{base}/v1/api/conversations/{conv}", headers=AUTH)
    meta = r.json()
    assert set(meta) == {"agent", "channel_kind", "conversation_id", "mode", "participants", "read_only",
                         "surface", "viewing_as", "title"}  # fmt: skip
    assert set(meta["agent"]) == {"display_name", "avatar_url", "id", "slug"}
    assert (meta["conversation_id"], meta["channel_kind"], meta["mode"]) == (conv, "web", "standard")
    assert (meta["participants"], meta["read_only"], meta["surface"]) == ({}, False, "web")
    assert (meta["viewing_as"], meta["title"]) == ("participant", None)
    httpx.post(f"{base}/v1/api/conversations/{conv}/messages", headers=AUTH, json={"text": "Q3 revenue [deltas=2]"})
    meta = httpx.get(f"{base}/v1/api/conversations/{conv.upper()}?view=admin", headers=AUTH).json()
    assert (meta["viewing_as"], meta["title"], meta["conversation_id"]) == ("admin", "Q3 revenue", conv)


def test_a_posted_turn_streams_in_order_then_keepalives(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        rec = Recorder(client, stream_path(conv))
        await rec.attached()
        assert rec.status == 200 and rec.content_type.startswith("text/event-stream")
        assert rec.parser.retry_ms == 1000
        r = await post(client, conv, "What changed? [deltas=20] [tools=2]", idempotency_key="k1")
        assert r.status_code == 202
        assert r.json() == {"accepted": True, "idempotent": False, "stream_url": stream_path(conv)}
        await rec.turns_done()
        names = rec.names()
        assert rec.ids() == list(range(1, len(names) + 1))
        assert names[0] == "status" and names[-3:] == ["token_usage", "final", "done"]
        assert names.count("tool_call") == names.count("tool_result") == 2
        assert names.count("text_delta") == 20 and "artifact_created" in names
        deltas = "".join(d["text"] for d in rec.data("text_delta"))
        assert deltas == rec.data("final")[0]["text"]
        stamps = [json.loads(e.data)["emitted_at_ms"] for e in rec.events]
        assert stamps == sorted(stamps)
        comments = rec.parser.comments
        await rec.wait_for(lambda: rec.parser.comments >= comments + 2, "two keepalives")
        assert b": ping\n\n" in rec.raw
        await rec.close()

    run(scenario, base)


def test_turns_queue_one_at_a_time(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        rec = Recorder(client, stream_path(conv))
        await rec.attached()
        for n in range(3):
            assert (await post(client, conv, f"turn {n} [deltas=5]")).json()["idempotent"] is False
        await rec.turns_done(3)
        names = rec.names()
        ends = [i for i, name in enumerate(names) if name == "done"]
        starts = [i for i, e in enumerate(rec.events) if e.event == "status" and "Thinking" in e.data]
        assert starts == [0, ends[0] + 1, ends[1] + 1]
        assert (await stats(client))["turns_started"][conv] == 3
        await rec.close()

    run(scenario, base)


def test_replay_by_last_event_id_and_since_seq_has_no_gap_or_duplicate(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        live = Recorder(client, stream_path(conv))
        await live.attached()
        await post(client, conv, "long one [deltas=150] [interval_ms=4]")
        await live.wait_for(lambda: len(live.events) >= 12, "12 events")
        # Both attach mid-turn: replay from the journal must splice onto live events exactly.
        by_header = Recorder(client, stream_path(conv), {"Last-Event-ID": "5"})
        by_query = Recorder(client, stream_path(conv, "?since_seq=5"))
        for rec in (live, by_header, by_query):
            await rec.turns_done()
        last = live.ids()[-1]
        assert live.ids() == list(range(1, last + 1))
        assert by_header.ids() == by_query.ids() == list(range(6, last + 1))
        assert [e.data for e in by_header.events] == [e.data for e in live.events[5:]]
        fresh = Recorder(client, stream_path(conv))  # no cursor: live events only
        await fresh.attached()
        await emit(client, conv, 1)
        await fresh.wait_for(lambda: bool(fresh.events), "the emitted event")
        assert fresh.ids() == [last + 1]
        for rec in (live, by_header, by_query, fresh):
            await rec.close()

    run(scenario, base)


def test_idempotent_resubmit_starts_no_second_turn(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        rec = Recorder(client, stream_path(conv))
        await rec.attached()
        first = await post(client, conv, "once [deltas=30] [interval_ms=2]", idempotency_key="same")
        again = await post(client, conv, "once [deltas=30] [interval_ms=2]", idempotency_key="same")
        by_header = await client.post(
            f"/v1/api/conversations/{conv}/messages", json={"text": "once"}, headers={**AUTH, "Idempotency-Key": "same"}
        )
        assert [r.status_code for r in (first, again, by_header)] == [202, 202, 202]
        assert [r.json()["idempotent"] for r in (first, again, by_header)] == [False, True, True]
        await rec.turns_done()
        # A duplicate would have been queued already and would start the moment this turn closed.
        counters = await stats(client)
        assert counters["turns_started"][conv] == 1 and counters["messages"][conv] == 3
        await emit(client, conv, 1)
        await rec.wait_for(lambda: rec.names()[-1] == "status", "the marker event")
        assert rec.names().count("final") == 1 and rec.names().count("done") == 1
        await rec.close()

    run(scenario, base)


def test_user_scope_strips_diagnostics_and_accounting(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        full = Recorder(client, stream_path(conv))
        user = Recorder(client, stream_path(conv, "?scope=user"))
        odd = Recorder(client, stream_path(conv, "?scope=superuser"))  # unknown scopes do not narrow
        for rec in (full, user, odd):
            await rec.attached()
        await post(client, conv, "scoped [tools=2]")
        for rec in (full, user, odd):
            await rec.turns_done()
        assert "agent_active" in full.names() and "token_usage" in full.names()
        assert "agent_active" not in user.names() and "token_usage" not in user.names()
        assert all("args_digest" in call for call in full.data("tool_call"))
        assert all("args_digest" not in call for call in user.data("tool_call"))
        assert len(user.data("tool_call")) == 2
        assert set(user.ids()) < set(full.ids()) and odd.names() == full.names()
        for rec in (full, user, odd):
            await rec.close()

    run(scenario, base)


def test_stats_count_open_streams_per_conversation(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        first, second = Recorder(client, stream_path(conv)), Recorder(client, stream_path(conv))
        await first.attached()
        await second.attached()
        counters = await stats(client)
        assert counters["open_streams"][conv] == 2 and counters["stream_opens"][conv] == 2
        await second.close()

        async def one_open() -> bool:
            return (await stats(client))["open_streams"].get(conv) == 1

        await eventually(one_open, TIMEOUT, "one open stream")
        await first.close()

        async def none_open() -> bool:
            return conv not in (await stats(client))["open_streams"]

        await eventually(none_open, TIMEOUT, "no open stream")

    run(scenario, base)


def test_emit_appends_arbitrary_and_raw_events(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        path = f"/_sim/conversations/{conv}/emit"
        r = await client.post(path, json={"event": "brand_new_thing", "data": {"x": 1}}, headers=AUTH)
        assert r.json() == {"id": 1, "event": "brand_new_thing"}
        await client.post(path, json={"event": "status", "raw": "not json"}, headers=AUTH)
        assert (await client.post(path, json={"event": "bad name"}, headers=AUTH)).status_code == 422
        rec = Recorder(client, stream_path(conv, "?since_seq=0"))
        await rec.wait_for(lambda: len(rec.events) == 2, "two events")
        assert json.loads(rec.events[0].data)["x"] == 1 and rec.events[1].data == "not json"
        await rec.close()

    run(scenario, base)


# --- faults --------------------------------------------------------------------------------------


def test_drop_every_cuts_the_connection_and_resume_continues(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        await emit(client, conv, 12)
        await faults(client, drop_every=5)
        first = Recorder(client, stream_path(conv, "?since_seq=0"))
        await first.ends()
        assert (first.ended, first.ids()) == ("abrupt", [1, 2, 3, 4, 5])
        second = Recorder(client, stream_path(conv), {"Last-Event-ID": "5"})
        await second.ends()
        assert (second.ended, second.ids()) == ("abrupt", [6, 7, 8, 9, 10])

    run(scenario, base)


def test_status_fault_answers_the_next_opens(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        await faults(client, status=503, count=2)
        codes = []
        for _ in range(3):
            rec = Recorder(client, stream_path(conv))
            await rec.attached()
            codes.append(rec.status)
            await rec.close()
        assert codes == [503, 503, 200]
        assert (await stats(client))["stream_opens"][conv] == 3

    run(scenario, base)


def test_stall_silences_streams_until_cleared(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        rec = Recorder(client, stream_path(conv))
        await rec.attached()
        await faults(client, stall=True)
        await emit(client, conv, 1)
        await rec.quiet_for(KEEPALIVE_S * 4)
        await faults(client, stall=False)
        await rec.wait_for(lambda: rec.ids() == [1], "the held event")
        await rec.close()

    run(scenario, base)


def test_unauthorized_and_missing_faults(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        gone, fine = new_conv(), new_conv()
        await faults(client, missing=[gone])
        assert (await client.get(stream_path(gone), headers=AUTH)).status_code == 404
        assert (await client.get(f"/v1/api/conversations/{gone}", headers=AUTH)).status_code == 404
        assert (await post(client, gone, "hi")).status_code == 404
        assert (await client.get(f"/v1/api/conversations/{fine}", headers=AUTH)).status_code == 200
        await faults(client, unauthorized=True)
        assert (await client.get(f"/v1/api/conversations/{fine}", headers=AUTH)).status_code == 401
        assert (await client.get(stream_path(fine), headers=AUTH)).status_code == 401
        snapshot = (await client.get("/_sim/faults", headers=AUTH)).json()  # control API keeps working
        assert snapshot["unauthorized"] is True and snapshot["missing"] == [gone]
        await faults(client, clear=True)
        assert (await client.get(f"/v1/api/conversations/{gone}", headers=AUTH)).status_code == 200

    run(scenario, base)


def test_garbage_is_injected_once(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        await emit(client, conv, 1)
        await faults(client, garbage=True)
        dirty = Recorder(client, stream_path(conv, "?since_seq=0"))
        await dirty.wait_for(lambda: 1 in dirty.ids(), "the real event")
        assert b"this line is not an sse field\n" in dirty.raw
        bogus = dirty.events[0]
        assert (bogus.event, bogus.id) == ("text_delta", None)
        with pytest.raises(ValueError):
            json.loads(bogus.data)
        clean = Recorder(client, stream_path(conv, "?since_seq=0"))
        await clean.wait_for(lambda: 1 in clean.ids(), "the real event")
        assert clean.names() == ["status"]
        await dirty.close()
        await clean.close()

    run(scenario, base)


def test_stale_after_sends_stale_and_closes_cleanly(base: str) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        conv = new_conv()
        await emit(client, conv, 5)
        await faults(client, stale_after=3)
        rec = Recorder(client, stream_path(conv, "?since_seq=0"))
        await rec.ends()
        assert rec.ended == "eof" and rec.names() == ["status"] * 3 + ["stale"]
        assert rec.events[-1].id is None and rec.data("stale")[0]["reason"] == "lagged"

    run(scenario, base)


def test_fault_api_validates_and_clears(base: str) -> None:
    r = httpx.post(f"{base}/_sim/faults", headers=AUTH, json={"drop_evry": 1})
    assert r.status_code == 422 and "drop_evry" in r.json()["message"]
    httpx.post(f"{base}/_sim/faults", headers=AUTH, json={"drop_every": 2, "stall": True})
    cleared = httpx.post(f"{base}/_sim/faults", headers=AUTH, json={"clear": True}).json()
    assert cleared["drop_every"] == 0 and cleared["stall"] is False


# --- process lifecycle ---------------------------------------------------------------------------


def test_startup_fault_flags_and_clean_sigterm_mid_turn(tmp_path: Any) -> None:
    gone = new_conv()
    proc = start_simulator(tmp_path, "--drop-every", "3", "--faults", json.dumps({"missing": [gone]}))
    try:

        async def scenario(client: httpx.AsyncClient) -> None:
            assert (await client.get(stream_path(gone), headers=AUTH)).status_code == 404
            conv = new_conv()
            await emit(client, conv, 4)
            dropped = Recorder(client, stream_path(conv, "?since_seq=0"))
            await dropped.ends()
            assert (dropped.ended, dropped.ids()) == ("abrupt", [1, 2, 3])
            await faults(client, clear=True)
            rec = Recorder(client, stream_path(conv))
            await rec.attached()
            await post(client, conv, "never ends [deltas=2000] [interval_ms=5]")
            await rec.wait_for(lambda: "text_delta" in rec.names(), "the first delta")
            code = await asyncio.to_thread(proc.stop, 5.0)
            await rec.ends()
            assert code == 0 and rec.ended == "eof" and "done" not in rec.names()

        run(scenario, proc.url)
    finally:
        proc.kill()


def test_bad_flags_exit_with_status_2(tmp_path: Any) -> None:
    for flags in (["--keepalive-s", "0"], ["--faults", "{nope"], ["--fail-status", "200"]):
        done = subprocess.run(python_module("gateway.simulator", *flags), capture_output=True, timeout=20, cwd=ROOT)
        assert done.returncode == 2 and b"hq-gateway simulate:" in done.stderr, flags
