"""SockJS echo services for the integration tests: ``uvicorn --factory tests.integration.sockjs_echo_app:create_app``.

Services (each a prefix): ``/echo`` sockjs-node defaults; ``/fast`` short heartbeat, disconnect delay,
response limit and queue; ``/close`` closes every session at once (sockjs-protocol's ``close``);
``/strict`` allows one origin; ``/cookie`` needs JSESSIONID; ``/bye`` is reserved for shutdown tests.
The echo handler answers ``close!`` by closing with 3000 and ``burst:N`` with N messages at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.routing import BaseRoute

from gateway.transports.pipe import ConnectionInfo, Pipe, PipeHandler
from gateway.transports.sockjs_http import SockJsServer, sockjs_routes

GOOD_ORIGIN = "http://good.example"


@dataclass
class EchoLog:
    """What the handlers saw, for assertions: transports opened and closed, in order."""

    opened: list[ConnectionInfo] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


class EchoHandler:
    """Echoes every message back, with two commands for tests."""

    def __init__(self, pipe: Pipe, info: ConnectionInfo, log: EchoLog) -> None:
        self.pipe, self.info, self.log = pipe, info, log

    async def on_message(self, message: str) -> None:
        if message == "close!":
            await self.pipe.close(3000, "Go away!")
        elif message.startswith("burst:"):
            await self.pipe.send_many([f"m{i}" for i in range(int(message[6:]))])
        else:
            await self.pipe.send(message)

    async def on_close(self) -> None:
        self.log.closed.append(self.info.transport)


@dataclass
class EchoApp:
    """The app, its SockJS servers by prefix, and the shared log."""

    app: Starlette
    servers: dict[str, SockJsServer]
    log: EchoLog


def build() -> EchoApp:
    """Assemble every echo service into one Starlette app."""
    log = EchoLog()

    async def echo(pipe: Pipe, info: ConnectionInfo) -> PipeHandler:
        log.opened.append(info)
        return EchoHandler(pipe, info, log)

    async def closing(pipe: Pipe, info: ConnectionInfo) -> PipeHandler:
        await pipe.close(3000, "Go away!")
        return EchoHandler(pipe, info, log)

    services = {
        "/echo": sockjs_routes("/echo", echo),
        "/fast": sockjs_routes(
            "/fast", echo, heartbeat_s=0.3, disconnect_delay_s=0.5, response_limit=4096, max_queue=5
        ),
        "/close": sockjs_routes("/close", closing),
        "/strict": sockjs_routes("/strict", echo, allowed_origins=[GOOD_ORIGIN]),
        "/cookie": sockjs_routes("/cookie", echo, cookie_needed=True),
        "/bye": sockjs_routes("/bye", echo),
    }
    servers = {prefix: routes.server for prefix, routes in services.items()}

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await asyncio.gather(*(s.close_all() for s in servers.values()))

    routes: list[BaseRoute] = [r for rs in services.values() for r in rs]
    return EchoApp(Starlette(routes=routes, lifespan=lifespan), servers, log)


def create_app() -> Starlette:
    """For ``uvicorn --factory``."""
    return build().app
