"""Memory journal: bytes per journaled envelope (tracemalloc) and RSS across rounds of expiring conversations.

1. In process, tracemalloc: envelopes of ~1 KiB normalized, journaled and fanned out the way the
   transports do it (SSE frame and STOMP MESSAGE tails rendered from the published envelope, which
   holds no transport state; a turn view for snapshots), then the published objects dropped: what
   stays per envelope, against its JSON size.
2. A real gateway process (memory journal, ``GATEWAY_JOURNAL_MAX_AGE_S=4``) fed by the real simulator:
   each round opens 8 new conversations with one SSE and one STOMP viewer each, emits 2,500 events of
   ~1 KiB into every conversation, checks both viewers got every envelope, closes them, waits until the
   journal has expired them, and samples the gateway's RSS. Flat RSS across rounds = nothing leaks.

    make bench-journal          # or: .venv/bin/python -m benchmarks.journal_memory --rounds 6

Writes benchmarks/results/journal-memory.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import httpx
import websockets

from benchmarks.procstat import rss_kib
from gateway.delivery import sse_frame
from gateway.envelope import HqEvent, TurnState, load_mapping, normalize
from gateway.hub import Hub
from gateway.journal.memory import MemoryJournal
from gateway.protocols.stomp import MessageTemplate
from tests.servers import ServerProcess, free_port, python_module, start_process

HOST = "127.0.0.1"
TOKEN = "hq_pat_bench_journal_memory"
RESULTS = Path(__file__).parent / "results"
TEXT = "0123456789abcdef" * 60  # ~1 KiB of reply text per event
MAX_AGE_S = 4


def bytes_per_envelope(count: int = 5000) -> dict[str, Any]:
    """tracemalloc: what the journal keeps per envelope once the fan-out is over, without and with a turn view."""
    plain, with_view = _kept(count, view=False), _kept(count, view=True)
    return {
        "envelopes": count,
        "json_bytes_per_envelope": round(plain[1]),
        "kept_bytes_per_envelope": round(plain[0]),
        "ratio_to_json": round(plain[0] / plain[1], 2),
        "kept_with_turn_view_bytes_per_envelope": round(with_view[0]),
        "ratio_with_turn_view": round(with_view[0] / with_view[1], 2),
    }


def _kept(count: int, *, view: bool) -> tuple[float, float]:
    """(bytes kept, JSON bytes) per envelope."""

    async def main() -> tuple[float, float]:
        mapping = load_mapping()
        journal = MemoryJournal(count * 2, 86_400)
        hub = Hub(journal, 1000, 1 << 20, count)
        conv = str(uuid.uuid4())
        destination = f"/topic/convengine/audit/{conv}"
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        if view:
            await hub.snapshot(conv, 0)  # a snapshot viewer came by: the hub keeps the turn so far
        turn, json_bytes = TurnState(), 0
        for i in range(1, count + 1):
            now_ms = int(time.time() * 1000)
            event = HqEvent("text_delta", {"text": TEXT, "emitted_at_ms": now_ms}, str(i))
            env, turn = normalize(event, seq=i, conversation_id=conv, turn=turn, mapping=mapping, now_ms=now_ms)
            assert env is not None
            json_bytes += len(env.body)
            await journal.append(conv, [env], str(i))
            hub.publish(conv, [env])
            assert sse_frame(env)  # what the SSE fan-out renders (cached by the delivery path, not here)
            template = MessageTemplate(destination=destination, body=env.body, seq=env.seq)
            for version in ("1.0", "1.1", "1.2"):  # and the STOMP one, per negotiated version
                assert template.tail(version)  # type: ignore[arg-type]
        del env
        gc.collect()
        journal_only = tracemalloc.take_snapshot()
        kept = sum(s.size_diff for s in journal_only.compare_to(before, "filename"))
        tracemalloc.stop()
        return kept / count, json_bytes / count

    return asyncio.run(main())


def _simulator(log_dir: Path) -> ServerProcess:
    port = free_port()
    args = python_module("gateway.simulator", "--port", str(port), "--token", TOKEN, "--keepalive-s", "5",
                         "--no-access-log", "--log-level", "warning", "--journal-max", "3000")  # fmt: skip
    return start_process(args, ready_url=f"http://{HOST}:{port}/_sim/healthz", log_dir=log_dir, name="simulator")


def _gateway(log_dir: Path, hq_url: str) -> ServerProcess:
    port = free_port()
    env = {
        "GATEWAY_HOST": HOST,
        "GATEWAY_PORT": str(port),
        "GATEWAY_HQ_BASE_URL": hq_url,
        "GATEWAY_HQ_TOKEN": TOKEN,
        "GATEWAY_HQ_LINGER_S": "1",
        "GATEWAY_JOURNAL_MAX_AGE_S": str(MAX_AGE_S),
        "GATEWAY_LOG_LEVEL": "warning",
        "GATEWAY_LIMITS_MAX_CONNECTIONS_PER_CLIENT": "0",
        "GATEWAY_LIMITS_UPSTREAM_ACTIVATION_BURST": "0",
    }
    return start_process(python_module("gateway.cli", "serve"), env=env, log_dir=log_dir, name="gateway",
                         ready_url=f"http://{HOST}:{port}/healthz")  # fmt: skip


async def _sse_viewer(base: str, conv: str, expect: int, ready: asyncio.Event) -> int:
    got = 0
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as client,
        client.stream("GET", f"{base}/api/v1/conversation/stream/{conv}") as response,
    ):
        buf = b""
        async for chunk in response.aiter_raw():
            ready.set()
            buf += chunk
            end = buf.rfind(b"\n\n")
            if end >= 0:  # whole frames only; each starts at a frame boundary with "id: "
                done, buf = buf[: end + 2], buf[end + 2 :]
                got += done.count(b"\nid: ") + done.startswith(b"id: ")
            if got >= expect:
                return got
    return got


async def _stomp_viewer(ws_url: str, conv: str, expect: int, ready: asyncio.Event) -> int:
    got = 0
    async with websockets.connect(ws_url, subprotocols=[websockets.Subprotocol("v12.stomp")], max_size=None) as ws:
        await ws.send("CONNECT\naccept-version:1.2\nhost:bench\nheart-beat:0,0\n\n\0")
        await ws.recv()
        await ws.send(f"SUBSCRIBE\nid:sub-0\ndestination:/topic/convengine/audit/{conv}\nreceipt:r\n\n\0")
        while got < expect:
            message = await asyncio.wait_for(ws.recv(), 60)
            text = message if isinstance(message, str) else message.decode()
            if text.startswith("RECEIPT"):
                ready.set()
            got += text.count("MESSAGE\n")
    return got


async def _round(gw: ServerProcess, sim: ServerProcess, conversations: int, events: int) -> dict[str, Any]:
    ws_url = gw.url.replace("http://", "ws://") + "/ws-convengine"
    convs = [str(uuid.uuid4()) for _ in range(conversations)]
    readies = [asyncio.Event() for _ in range(2 * conversations)]
    viewers = [asyncio.create_task(_sse_viewer(gw.url, c, events, readies[2 * i])) for i, c in enumerate(convs)]
    viewers += [asyncio.create_task(_stomp_viewer(ws_url, c, events, readies[2 * i + 1])) for i, c in enumerate(convs)]
    async with asyncio.timeout(30):
        await asyncio.gather(*(r.wait() for r in readies))
    began = time.monotonic()
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def emit(conv: str) -> None:
        async with httpx.AsyncClient(base_url=sim.url, headers=headers, timeout=30) as client:
            for i in range(events):
                reply = await client.post(f"/_sim/conversations/{conv}/emit",
                                          json={"event": "text_delta", "data": {"text": TEXT, "n": i}})  # fmt: skip
                reply.raise_for_status()

    await asyncio.gather(*(emit(c) for c in convs))
    async with asyncio.timeout(120):
        received = await asyncio.gather(*viewers)
    peak = rss_kib(gw.pid)
    fed_s = time.monotonic() - began
    # Nobody reads the journal from here on: only the sweeper can free it.
    deadline = time.monotonic() + MAX_AGE_S + 10
    await asyncio.sleep(MAX_AGE_S + 2)
    audit_url = f"{gw.url}/api/v1/conversation/audit/{convs[0]}?limit=1"
    async with httpx.AsyncClient(timeout=10) as client:
        audit = (await client.get(audit_url)).json()
        while audit["items"] and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            audit = (await client.get(audit_url)).json()
    return {
        "fed_s": round(fed_s, 1),
        "all_delivered": all(n >= events for n in received),
        "expired": not audit["items"],
        "rss_peak_mib": round(peak / 1024, 1),
        "rss_after_expiry_mib": round(rss_kib(gw.pid) / 1024, 1),
    }


def rss_rounds(rounds: int, conversations: int, events: int, log_dir: Path) -> dict[str, Any]:
    sim = _simulator(log_dir)
    gw = _gateway(log_dir, sim.url)
    try:
        start_mib = round(rss_kib(gw.pid) / 1024, 1)
        per_round = []
        for n in range(1, rounds + 1):
            result = asyncio.run(_round(gw, sim, conversations, events))
            per_round.append(result)
            print(f"round {n}: {json.dumps(result)}", flush=True)
    finally:
        gw.stop()
        sim.stop()
    after = [r["rss_after_expiry_mib"] for r in per_round]
    settled = after[1:] or after
    return {
        "rounds": rounds,
        "conversations_per_round": conversations,
        "events_per_conversation": events,
        "max_age_s": MAX_AGE_S,
        "rss_start_mib": start_mib,
        "per_round": per_round,
        "rss_spread_after_round_1_mib": round(max(settled) - min(settled), 1),
        "flat_within_12_mib": max(settled) - min(settled) <= 12,
    }


def markdown(data: dict[str, Any]) -> str:
    b, r = data["bytes_per_envelope"], data["rss"]
    lines = [
        f"# Memory journal ({data['date']}, {data['machine']})",
        "",
        "## Bytes kept per journaled envelope (tracemalloc, in process)",
        "",
        f"{b['envelopes']} envelopes of {b['json_bytes_per_envelope']} B JSON, fanned out with SSE and STOMP "
        f"(1.0/1.1/1.2) caches: **{b['kept_bytes_per_envelope']} B kept per envelope ({b['ratio_to_json']}x its "
        f"JSON)**; {b['kept_with_turn_view_bytes_per_envelope']} B ({b['ratio_with_turn_view']}x) while a turn "
        "view for snapshot viewers also holds the running turn's reply text.",
        "",
        f"## RSS across rounds (real gateway, GATEWAY_JOURNAL_MAX_AGE_S={r['max_age_s']})",
        "",
        f"{r['conversations_per_round']} new conversations x {r['events_per_conversation']} events of ~1 KiB per "
        f"round, one SSE + one STOMP viewer each. Gateway RSS at start: {r['rss_start_mib']} MiB.",
        "",
        "| round | fed in s | every viewer got every envelope | journal expired | RSS peak MiB | RSS expired MiB |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(r["per_round"], 1):
        lines.append(f"| {i} | {row['fed_s']} | {row['all_delivered']} | {row['expired']} | {row['rss_peak_mib']} | "
                     f"{row['rss_after_expiry_mib']} |")  # fmt: skip
    verdict = "met" if r["flat_within_12_mib"] else "NOT met"
    lines += ["", f"Spread after round 1: {r['rss_spread_after_round_1_mib']} MiB (target ±12 MiB: {verdict})."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--conversations", type=int, default=8)
    parser.add_argument("--events", type=int, default=2500)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    import platform

    data: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} cores, "
        f"Python {platform.python_version()}",
        "bytes_per_envelope": bytes_per_envelope(),
    }
    print(json.dumps(data["bytes_per_envelope"]), flush=True)
    log_dir = Path(__import__("tempfile").mkdtemp(prefix="hqgw-bench-journal-"))
    data["rss"] = rss_rounds(args.rounds, args.conversations, args.events, log_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "journal-memory.json").write_text(json.dumps(data, indent=2) + "\n")
    (args.out / "journal-memory.md").write_text(markdown(data))
    print(markdown(data))
    return 0 if data["rss"]["flat_within_12_mib"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
