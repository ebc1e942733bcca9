"""Baseline: a bare ``websockets`` server fanning each upstream event out with ``websockets.broadcast()``.

The ceiling of the WebSocket library as commonly used. It speaks just enough STOMP for the benchmark
viewers to attach (CONNECTED, RECEIPT for SUBSCRIBE); every event is one STOMP MESSAGE frame, built
once and broadcast as the same bytes to every viewer of the conversation.

    python -m benchmarks.baselines.ws_broadcast --port 9001 --hq http://127.0.0.1:8090 --token T
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from benchmarks.baselines.upstream import Upstreams, stomp_message

TOPIC = "/topic/convengine/audit/"


class Broadcaster:
    def __init__(self, hq_url: str, token: str) -> None:
        self.viewers: dict[str, set[ServerConnection]] = {}
        self.upstreams = Upstreams(hq_url, token, self.publish)

    def publish(self, conversation: str, seq: int, stage: str, body: bytes) -> None:
        viewers = self.viewers.get(conversation)
        if viewers:
            broadcast(viewers, stomp_message(conversation, seq, body), text=True)

    async def handler(self, ws: ServerConnection) -> None:
        subscribed: list[str] = []
        try:
            async for message in ws:
                frame = message if isinstance(message, str) else message.decode()
                command, _, rest = frame.partition("\n")
                headers = dict(line.split(":", 1) for line in rest.split("\n\n", 1)[0].split("\n") if ":" in line)
                if command in ("CONNECT", "STOMP"):
                    await ws.send("CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0")
                elif command == "SUBSCRIBE":
                    conversation = headers.get("destination", "").removeprefix(TOPIC)
                    self.viewers.setdefault(conversation, set()).add(ws)
                    subscribed.append(conversation)
                    self.upstreams.ensure(conversation)
                    if "receipt" in headers:
                        await ws.send(f"RECEIPT\nreceipt-id:{headers['receipt']}\n\n\0")
        except ConnectionClosed:
            pass
        finally:
            for conversation in subscribed:
                self.viewers.get(conversation, set()).discard(ws)


async def main(port: int, hq_url: str, token: str) -> None:
    broadcaster = Broadcaster(hq_url, token)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    protocols = [Subprotocol("v12.stomp"), Subprotocol("v11.stomp"), Subprotocol("v10.stomp")]
    async with serve(
        broadcaster.handler, "127.0.0.1", port, subprotocols=protocols, compression=None, max_queue=None, backlog=4096
    ):
        print(f"ws-broadcast baseline on 127.0.0.1:{port}", flush=True)
        await stop
    with contextlib.suppress(Exception):
        await broadcaster.upstreams.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hq", required=True, help="simulator base URL")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    uvloop.run(main(args.port, args.hq, args.token))
