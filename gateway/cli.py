"""Command line: hq-gateway serve | simulate | demo | token."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import gc
import logging
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import uvicorn

from gateway import __version__
from gateway.auth import ALL, Scope, mint_token
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.ids import BadRequest, conversation_id
from gateway.logs import configure
from gateway.transports.server_hooks import ServerHooks

DEFAULT_CONFIG = "config/gateway.toml"


class GatewayServer(uvicorn.Server):
    """uvicorn, but viewers are told before connections are drained, it says where it listens once
    started, and peers (the demo's simulator) stop after it, so no upstream sees HQ vanish first."""

    def __init__(
        self, config: uvicorn.Config, gateway: Any, peers: tuple[uvicorn.Server, ...] = (), banner: str = ""
    ) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._peers = peers
        self._banner = banner

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and self._banner:
            print(self._banner, flush=True)

    async def shutdown(self, sockets: Any = None) -> None:
        if self._gateway is not None:
            await self._gateway.drain()
        await super().shutdown(sockets)

    async def _serve(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super()._serve(sockets)
        finally:
            # Peers stop once the gateway's upstreams are closed, and finish before uvicorn re-raises
            # the captured Ctrl+C (which would cancel them mid-shutdown).
            for peer in self._peers:
                peer.should_exit = True
            waits = [peer.stopped.wait() for peer in self._peers if isinstance(peer, QuietServer)]
            if waits:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        await asyncio.gather(*waits)


_QUIET: contextvars.ContextVar[bool] = contextvars.ContextVar("quiet_uvicorn", default=False)


class _QuietFilter(logging.Filter):
    """Drops uvicorn's INFO lines logged from a QuietServer's tasks (the demo prints its lines once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not _QUIET.get()


class QuietServer(uvicorn.Server):
    """A second server in the same process: the first one owns the signal handlers and the startup lines."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]] | None = None) -> None:
        super().__init__(config)
        self._drain = drain
        self.stopped = asyncio.Event()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        _QUIET.set(True)  # this task and the ones it starts (lifespan, connections) log no INFO lines
        try:
            await super().serve(sockets)
        finally:
            self.stopped.set()

    async def shutdown(self, sockets: Any = None) -> None:
        if self._drain is not None:
            await self._drain()  # end streaming responses, or uvicorn waits for them
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _uvicorn_config(app: Any, host: str, port: int, level: str, settings: Settings | None = None) -> uvicorn.Config:
    limits: dict[str, Any] = {}
    if settings is not None:  # hostile input: bounded request heads and WebSocket messages
        hooks: ServerHooks = app.state.server_hooks
        off_by_request = hooks.active or settings.server_hooks == "off"
        logging.getLogger("gateway.server").log(logging.INFO if off_by_request else logging.WARNING, hooks.describe())
        limits = {
            "http": hooks.http,
            "ws": hooks.ws,
            "h11_max_incomplete_event_size": settings.max_header_bytes,
            "ws_max_size": settings.stomp_max_frame_bytes + 1024,
            "ws_per_message_deflate": settings.websocket_compression,
        }
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        log_level=level,
        lifespan="on",
        timeout_graceful_shutdown=5,
        access_log=False,
        proxy_headers=False,  # forwarded headers are honoured by gateway.clientaddr, from trusted proxies only
        **limits,
    )


def _load(path: str | None) -> Settings:
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    return load_settings(path)


def listen_socket(settings: Settings, *, setting: str = "GATEWAY_HOST/GATEWAY_PORT") -> socket.socket:
    """The listening socket; accepted viewer sockets inherit its SO_SNDBUF (Linux).

    A bounded kernel send buffer keeps a slow viewer's backlog in the gateway's own queue, where
    reply deltas can be coalesced, instead of megabytes of kernel memory nobody can merge.
    """
    return bind_socket(settings.host, settings.port, setting, settings.socket_sndbuf_bytes)


def bind_socket(host: str, port: int, setting: str, sndbuf: int = 0) -> socket.socket:
    """A bound socket, or a ConfigError naming ``setting`` (a busy port is one clear line, not a traceback)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sndbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{setting}: cannot listen on {host}:{port}: {reason}") from None
    sock.set_inheritable(True)
    return sock


def _base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def tune_gc() -> None:
    """Collector settings for a process whose heap is mostly long-lived connection state.

    Measured (bench upstream-heavy, 1,000 conversations x 1 viewer): with CPython's defaults
    (700, 10, 10) full collections paused the loop for up to 330 ms while connections were being
    set up and traffic flowed (p99 275 ms, 433 us CPU per delivery); with everything allocated at
    startup frozen out of the collector's sight and young collections 70x rarer, p99 19.6 ms and
    306 us. Per-event garbage is freed by reference counting; cycles still get collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


def _serve(settings: Settings) -> int:
    from gateway.app import create_app

    sock = listen_socket(settings)
    app = create_app(settings)
    gw = app.state.gateway
    tune_gc()
    banner = f"hq-gateway {__version__} listening on {_base_url(settings.host, settings.port)}"
    config = _uvicorn_config(app, settings.host, settings.port, settings.log_level, settings)
    server = GatewayServer(config, gw, banner=banner)
    server.run(sockets=[sock])
    return 0


def _demo(settings: Settings, sim_port: int) -> None:
    # Both ports first: a busy one is one line naming the option, before anything starts or prints.
    gw_sock = listen_socket(settings, setting="GATEWAY_PORT (make demo PORT=…)")
    try:
        sim_sock = bind_socket("127.0.0.1", sim_port, "--simulator-port (make demo SIM_PORT=…)")
    except ConfigError:
        gw_sock.close()
        raise
    asyncio.run(_run_demo(settings, sim_port, gw_sock, sim_sock))


async def _run_demo(settings: Settings, sim_port: int, gw_sock: socket.socket, sim_sock: socket.socket) -> None:
    from gateway.app import create_app
    from gateway.simulator.app import SimulatorConfig, simulated_hq
    from gateway.simulator.app import create_app as create_simulator

    settings = settings.replace(hq_base_url=f"http://127.0.0.1:{sim_port}")
    sim_app = create_simulator(SimulatorConfig(token=settings.hq_token))
    sim = QuietServer(_uvicorn_config(sim_app, "127.0.0.1", sim_port, "warning"), simulated_hq(sim_app).aclose)
    logging.getLogger("uvicorn.error").addFilter(_QuietFilter())
    app = create_app(settings)
    tune_gc()
    base = _base_url(settings.host, settings.port)
    banner = (
        f"\n  hq-gateway {__version__} demo\n  gateway:   {base}\n  console:   {base}/console"
        f"\n  simulator: http://127.0.0.1:{sim_port} (the built-in HQ)"
        f"\n  try:       curl -N {base}/api/v1/conversation/stream/9bf7540a-b129-4685-a120-730e8a0cb94b\n"
    )
    config = _uvicorn_config(app, settings.host, settings.port, settings.log_level, settings)
    gw_server = GatewayServer(config, app.state.gateway, (sim,), banner=banner)
    await asyncio.gather(sim.serve(sockets=[sim_sock]), gw_server.serve(sockets=[gw_sock]))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hq-gateway", description="HQ conversation-stream gateway")
    p.add_argument("--version", action="version", version=f"hq-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway.")
    serve.add_argument("--config", help=f"TOML settings file (default {DEFAULT_CONFIG} when present)")
    sim = sub.add_parser("simulate", help="run the built-in HQ simulator", description="Run the HQ simulator.")
    from gateway.simulator.cli import add_arguments

    add_arguments(sim)
    demo = sub.add_parser("demo", help="gateway + simulator + console, memory store", description="Run the demo.")
    demo.add_argument("--config", help="TOML settings file")
    demo.add_argument("--port", type=int, help="port of the gateway (default GATEWAY_PORT, else 8080)")
    demo.add_argument("--simulator-port", type=int, default=8090, help="port of the simulator (8090)")
    token = sub.add_parser(
        "token", help="print a signed viewer JWT (auth mode jwt)", description="Print a signed viewer JWT."
    )
    token.add_argument("--config", help=f"TOML settings file (default {DEFAULT_CONFIG} when present)")
    token.add_argument("--sub", required=True, help="the viewer's subject (who), e.g. alice")
    which = token.add_mutually_exclusive_group(required=True)
    which.add_argument("--conv", action="append", metavar="UUID", help="a conversation it may watch (repeatable)")
    which.add_argument("--all", action="store_true", help='every conversation (convs: ["*"])')
    token.add_argument("--scope", choices=[s.value for s in Scope], default="user", help="what it sees (user)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds (default 3600)")
    token.add_argument("--submit", action="store_true", help="also allow message submission")
    token.add_argument("--private-key", metavar="PEM", help="private key file for RS*/PS*/ES*/EdDSA algorithms")
    return p


def _token(args: argparse.Namespace, settings: Settings) -> int:
    if not 1 <= args.ttl <= 366 * 86_400:
        raise ConfigError("--ttl: expected 1 to 31622400 seconds")
    try:
        convs: list[str] | str = ALL if args.all else [conversation_id(c) for c in args.conv]
    except BadRequest:
        raise ConfigError("--conv: expected a conversation UUID") from None
    pem = None
    if args.private_key:
        try:
            with open(args.private_key) as fh:
                pem = fh.read()
        except OSError as exc:
            raise ConfigError(f"--private-key: cannot read {args.private_key}: {exc.strerror}") from None
    token = mint_token(settings, subject=args.sub, conversations=convs, scope=Scope(args.scope), ttl_s=args.ttl,
                       submit=args.submit, private_key_pem=pem)  # fmt: skip
    print(token)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        from gateway.simulator.cli import run_from_args

        return int(run_from_args(args))
    try:
        settings = _load(args.config)
        if args.command == "demo":
            settings = settings.replace(redis_url="")
            if args.port is not None:
                settings = settings.replace(port=args.port)
    except ConfigError as exc:
        print(f"hq-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "token":
            return _token(args, settings)
        configure(settings.log_level, settings.log_format)
        if args.command == "serve":
            return _serve(settings)
        _demo(settings, args.simulator_port)
    except ConfigError as exc:
        print(f"hq-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # uvicorn re-raises Ctrl+C once its graceful shutdown is over: nothing left to report.
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
