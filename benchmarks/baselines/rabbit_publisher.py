"""Feeds RabbitMQ: follows the simulator's stream of each conversation and SENDs every event over STOMP.

The broker (``rabbitmq_web_stomp``) then fans it out to Web-STOMP viewers of
``/topic/convengine.audit.<id>`` (RabbitMQ refuses ``/`` inside a ``/topic/`` name). Only the
broker's CPU is accounted; this publisher runs as a separate process.

    python -m benchmarks.baselines.rabbit_publisher --hq URL --token T --conversations FILE
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import uvloop

from benchmarks.baselines.upstream import Upstreams
from benchmarks.wire import stomp_frame


def destination(conversation: str) -> str:
    return f"/topic/convengine.audit.{conversation}"


class Publisher:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def publish(self, conversation: str, seq: int, stage: str, body: bytes) -> None:
        head = (
            f"SEND\ndestination:{destination(conversation)}\ncontent-type:application/json\n"
            f"content-length:{len(body)}\nseq:{seq}\n\n"
        )
        self._writer.write(head.encode() + body + b"\0")


async def main(hq_url: str, token: str, conversations: list[str], host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        stomp_frame(
            "CONNECT",
            {"accept-version": "1.2", "host": "/", "login": "guest", "passcode": "guest", "heart-beat": "0,0"},
        )
    )
    reply = await reader.readuntil(b"\0")
    if not reply.startswith(b"CONNECTED"):
        raise SystemExit(f"rabbitmq refused the publisher: {reply[:300]!r}")
    upstreams = Upstreams(hq_url, token, Publisher(writer).publish)
    for conversation in conversations:
        upstreams.ensure(conversation)
    print(f"publishing {len(conversations)} conversations", flush=True)
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    drain = asyncio.create_task(reader.read())  # an ERROR frame or EOF ends the run
    await asyncio.wait([stop, drain], return_when=asyncio.FIRST_COMPLETED)
    if drain.done():
        print(f"rabbitmq closed the publisher: {drain.result()[:300]!r}", flush=True)
    await upstreams.aclose()
    writer.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hq", required=True, help="simulator base URL")
    parser.add_argument("--token", required=True)
    parser.add_argument("--conversations", required=True, type=Path, help="file: one conversation id a line")
    parser.add_argument("--stomp-host", default="127.0.0.1")
    parser.add_argument("--stomp-port", type=int, default=61613)
    args = parser.parse_args()
    ids = args.conversations.read_text().split()
    uvloop.run(main(args.hq, args.token, ids, args.stomp_host, args.stomp_port))
