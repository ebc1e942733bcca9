"""Baseline: a bare starlette SSE fan-out, one ``asyncio.Queue`` per viewer, ``StreamingResponse``.

The ceiling of the SSE stack as commonly used (starlette on uvicorn with uvloop + httptools, as the
gateway runs). Each event's SSE frame is built once and the same bytes are queued for every viewer.

    python -m benchmarks.baselines.sse_fanout --port 9002 --hq http://127.0.0.1:8090 --token T
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from benchmarks.baselines.upstream import Upstreams, sse_frame


class FanOut:
    def __init__(self, hq_url: str, token: str) -> None:
        self.viewers: dict[str, set[asyncio.Queue[bytes]]] = {}
        self.upstreams = Upstreams(hq_url, token, self.publish)

    def publish(self, conversation: str, seq: int, stage: str, body: bytes) -> None:
        frame = sse_frame(seq, stage, body)
        for queue in self.viewers.get(conversation, ()):
            queue.put_nowait(frame)

    async def stream(self, request: Request) -> Response:
        conversation = request.path_params["conversation"]
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.viewers.setdefault(conversation, set()).add(queue)
        self.upstreams.ensure(conversation)

        async def frames() -> AsyncIterator[bytes]:
            try:
                yield b": baseline stream\n\n"
                while True:
                    yield await queue.get()
            finally:
                self.viewers[conversation].discard(queue)

        return StreamingResponse(frames(), media_type="text/event-stream")


def create_app(hq_url: str, token: str) -> Starlette:
    fan_out = FanOut(hq_url, token)
    return Starlette(routes=[Route("/api/v1/conversation/stream/{conversation}", fan_out.stream)])


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hq", required=True, help="simulator base URL")
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    uvicorn.run(
        create_app(args.hq, args.token),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )
