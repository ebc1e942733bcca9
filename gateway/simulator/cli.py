"""``hq-gateway simulate`` / ``python -m gateway.simulator``: run the simulated HQ under uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Generator
from typing import Any

import orjson
import uvicorn

from gateway.errors import ConfigError
from gateway.simulator.app import create_app, simulated_hq
from gateway.simulator.config import SimulatorConfig
from gateway.simulator.faults import FaultError, FaultSpec
from gateway.simulator.hq import SimulatedHq
from gateway.simulator.script import DIRECTIVES_HELP

_DEFAULTS = SimulatorConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the simulator's flags to ``parser`` (shared by ``hq-gateway simulate``)."""
    parser.epilog = DIRECTIVES_HELP
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to listen on (default %(default)s)")
    add("--port", type=int, default=8090, help="TCP port (default %(default)s)")
    add("--token", default=_DEFAULTS.token, help="the Bearer token clients must send (default %(default)s)")
    add("--keepalive-s", type=float, default=_DEFAULTS.keepalive_s, help="idle seconds between `: ping` comments")
    add("--delta-interval-ms", type=float, default=_DEFAULTS.delta_interval_ms, help="pause between turn events")
    add("--retry-ms", type=int, default=_DEFAULTS.retry_ms, help="the `retry:` field sent at stream start")
    add("--journal-max", type=int, default=_DEFAULTS.journal_max, help="events kept per conversation")
    add("--seed", type=int, default=None, help="make every scripted turn reproducible")
    faults = parser.add_argument_group("faults (also switchable at runtime: POST /_sim/faults)")
    faults.add_argument("--drop-every", type=int, help="cut each stream abruptly after N events")
    faults.add_argument("--stale-after", type=int, help="send `stale` and close each stream after N events")
    faults.add_argument("--fail-status", type=int, help="answer the next stream opens with this HTTP status")
    faults.add_argument("--fail-count", type=int, help="how many stream opens --fail-status affects (default 1)")
    faults.add_argument("--stall", action="store_true", default=None, help="streams send nothing at all")
    faults.add_argument("--unauthorized", action="store_true", default=None, help="answer 401 to everything")
    faults.add_argument("--missing", action="append", metavar="UUID", help="answer 404 for this conversation")
    faults.add_argument("--garbage", action="store_true", default=None, help="inject one garbage frame")
    faults.add_argument("--faults", metavar="JSON", help='a fault spec as POST /_sim/faults takes, e.g. {"stall":true}')
    add("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    add("--no-access-log", action="store_true", help="do not log every request")


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """Build the config; raises ConfigError naming the flag at fault."""
    spec: dict[str, Any] = {
        key: value
        for key, value in (
            ("drop_every", args.drop_every),
            ("stale_after", args.stale_after),
            ("status", args.fail_status),
            ("count", args.fail_count),
            ("stall", args.stall),
            ("unauthorized", args.unauthorized),
            ("missing", args.missing),
            ("garbage", args.garbage),
        )
        if value is not None
    }
    try:
        if args.faults:
            extra = orjson.loads(args.faults)
            if not isinstance(extra, dict):
                raise FaultError("fault spec: expected a JSON object")
            spec.update(extra)
        faults = FaultSpec.from_json(spec)
    except (FaultError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"--faults / fault flags: {exc}") from None
    if not 0 < args.port < 65536:
        raise ConfigError(f"--port: expected an integer 1-65535, got {args.port}")
    return SimulatorConfig(
        token=args.token,
        keepalive_s=args.keepalive_s,
        delta_interval_ms=args.delta_interval_ms,
        retry_ms=args.retry_ms,
        journal_max=args.journal_max,
        seed=args.seed,
        faults=faults,
    )


class _Server(uvicorn.Server):
    """uvicorn, ending SSE streams before it drains connections (they would never end by themselves)."""

    def __init__(self, config: uvicorn.Config, hq: SimulatedHq) -> None:
        super().__init__(config)
        self._hq = hq

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # Unlike uvicorn's default, do not re-raise the signal afterwards: the CLI returns an exit code.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        sigs = (signal.SIGINT, signal.SIGTERM)
        for sig in sigs:
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in sigs:
                loop.remove_signal_handler(sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._hq.aclose()
        await super().shutdown(sockets)


def run_from_args(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 after a clean shutdown, 1 if the server could not start, 2 on bad flags."""
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"hq-gateway simulate: {exc}", file=sys.stderr)
        return 2
    app = create_app(config)
    server_config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )
    server = _Server(server_config, simulated_hq(app))
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        return exc.code if isinstance(exc.code, int) else 1
    return 0 if server.started else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.simulator", description=__doc__)
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))
