"""Assembles the simulator's Starlette app: HQ endpoints, the ``/_sim/`` control API, the lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette

from gateway.simulator.api import HqRoutes
from gateway.simulator.config import SimulatorConfig
from gateway.simulator.control import ControlRoutes
from gateway.simulator.hq import SimulatedHq
from gateway.simulator.stream import quiet_dropped_streams

__all__ = ["SimulatorConfig", "create_app", "simulated_hq"]


def create_app(config: SimulatorConfig | None = None) -> Starlette:
    """A simulated HQ; its lifespan ends every stream and cancels every turn on shutdown."""
    hq = SimulatedHq(config or SimulatorConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        quiet_dropped_streams()
        try:
            yield
        finally:
            await hq.aclose()

    app = Starlette(routes=HqRoutes(hq).routes() + ControlRoutes(hq).routes(), lifespan=lifespan)
    app.state.hq = hq
    return app


def simulated_hq(app: Starlette) -> SimulatedHq:
    """The state behind an app built by ``create_app`` (to close streams before a server drains)."""
    hq = app.state.hq
    assert isinstance(hq, SimulatedHq)
    return hq
