"""Which conversations have an upstream, and why: viewers, pins and in-flight turns, plus linger."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.upstream.supervisor import UpstreamState

log = logging.getLogger("gateway.upstream")


class Activation(Protocol):
    """What runs for an active conversation: Activation, or its clustered counterpart."""

    conversation_id: str
    state: UpstreamState
    connected: asyncio.Event
    turn_ended: asyncio.Event
    ended_at: float | None

    async def run(self) -> None: ...

    async def originate(self, name: str, data: dict[str, Any]) -> None: ...


UpstreamFactory = Callable[[str], Activation]


@dataclass(slots=True)
class _Active:
    upstream: Activation
    task: asyncio.Task[None]
    holds: int = 0
    linger: asyncio.TimerHandle | None = None
    holders: dict[str, int] = field(default_factory=dict)


class UpstreamRegistry:
    """Starts a conversation's upstream on first interest and stops it a linger after the last."""

    def __init__(self, factory: UpstreamFactory, linger_s: float, refused_cooldown_s: float = 30.0) -> None:
        self._factory = factory
        self._linger_s = linger_s
        # After HQ refused a conversation (401/403/404), new viewers within this window see the
        # journaled error instead of triggering another attempt: no hammering.
        self._refused_cooldown_s = refused_cooldown_s
        self._active: dict[str, _Active] = {}

    def hold(self, conversation_id: str, kind: str = "viewer") -> Activation:
        active = self._active.get(conversation_id)
        if active is None or (active.task.done() and not self._cooling_down(active)):
            upstream = self._factory(conversation_id)
            task = asyncio.create_task(self._run(upstream), name=f"upstream:{conversation_id}")
            active = self._active[conversation_id] = _Active(upstream, task)
        if active.linger is not None:
            active.linger.cancel()
            active.linger = None
        active.holds += 1
        active.holders[kind] = active.holders.get(kind, 0) + 1
        return active.upstream

    def _cooling_down(self, active: _Active) -> bool:
        ended = active.upstream.ended_at
        refused = active.upstream.state is UpstreamState.FAILED
        return refused and ended is not None and time.monotonic() - ended < self._refused_cooldown_s

    def release(self, conversation_id: str, kind: str = "viewer") -> None:
        active = self._active.get(conversation_id)
        if active is None:
            return
        active.holds -= 1
        active.holders[kind] -= 1
        if active.holds <= 0:
            loop = asyncio.get_running_loop()
            active.linger = loop.call_later(self._linger_s, self._stop_if_idle, conversation_id)

    @asynccontextmanager
    async def interest(self, conversation_id: str, kind: str = "viewer") -> AsyncIterator[Activation]:
        upstream = self.hold(conversation_id, kind)
        try:
            yield upstream
        finally:
            self.release(conversation_id, kind)

    def _stop_if_idle(self, conversation_id: str) -> None:
        active = self._active.get(conversation_id)
        if active is not None and active.holds <= 0:
            del self._active[conversation_id]
            active.task.cancel()
            log.info("upstream closed after linger conversation=%s", conversation_id)

    async def _run(self, upstream: Activation) -> None:
        try:
            await upstream.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("upstream crashed conversation=%s", upstream.conversation_id)
            upstream.state = UpstreamState.FAILED
        finally:
            upstream.connected.clear()
            upstream.ended_at = time.monotonic()
            if upstream.state is not UpstreamState.FAILED:
                upstream.state = UpstreamState.STOPPED

    def get(self, conversation_id: str) -> Activation | None:
        active = self._active.get(conversation_id)
        return active.upstream if active else None

    def states(self) -> dict[str, str]:
        return {cid: a.upstream.state.value for cid, a in self._active.items()}

    async def close(self) -> None:
        actives = list(self._active.values())
        self._active.clear()
        for active in actives:
            if active.linger is not None:
                active.linger.cancel()
            active.task.cancel()
        if actives:
            # Bounded: a task stuck in a Redis call that swallowed its cancel must not hang shutdown.
            await asyncio.wait([a.task for a in actives], timeout=5)
