"""Which conversations have an upstream, and why: viewers, pins and in-flight turns, plus linger.

Opening an upstream costs an HQ stream, so starting one on a viewer's behalf is bounded: a token
bucket of activations per subject (per client address in auth mode none) and a process-wide cap on
running upstreams. Joining an upstream that already runs (or lingers) is never refused. An upstream
lingers after its last holder at most as long as it was in use (at least ``CHURN_LINGER_S``), so
SUBSCRIBE/UNSUBSCRIBE churn over many conversations does not leave HQ streams open for the full
linger period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import GatewayError
from gateway.limits import TokenBuckets
from gateway.upstream.supervisor import UpstreamState

log = logging.getLogger("gateway.upstream")

CHURN_LINGER_S = 1.0
CAP_RETRY_AFTER_S = 5.0


class ActivationRefused(GatewayError):
    """Starting one more upstream now is over a limit: ``code`` and ``setting`` name it."""

    def __init__(self, code: str, setting: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.code = code
        self.setting = setting
        self.message = message
        self.retry_after_s = retry_after_s


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
    started: float = field(default_factory=time.monotonic)


class UpstreamRegistry:
    """Starts a conversation's upstream on first interest and stops it a linger after the last."""

    def __init__(
        self,
        factory: UpstreamFactory,
        linger_s: float,
        refused_cooldown_s: float = 30.0,
        *,
        max_upstreams: int = 0,
        activations: TokenBuckets | None = None,
    ) -> None:
        self._factory = factory
        self._linger_s = linger_s
        # After HQ refused a conversation (401/403/404), new viewers within this window see the
        # journaled error instead of triggering another attempt: no hammering.
        self._refused_cooldown_s = refused_cooldown_s
        self._active: dict[str, _Active] = {}
        self._max_upstreams = max_upstreams  # 0: no cap
        self._activations = activations  # per-subject bucket; None: no rate limit

    def hold(self, conversation_id: str, kind: str = "viewer", who: str | None = None) -> Activation:
        """Hold the conversation's upstream, starting it if needed.

        With ``who`` (a viewer's subject or address) starting one is subject to the limits and may
        raise ActivationRefused; internal holders (pins) pass no ``who`` and are never refused.
        """
        active = self._active.get(conversation_id)
        if active is None or (active.task.done() and not self._cooling_down(active)):
            if who is not None:
                self._admit(who)
            upstream = self._factory(conversation_id)
            task = asyncio.create_task(self._run(upstream), name=f"upstream:{conversation_id}")
            active = self._active[conversation_id] = _Active(upstream, task)
        if active.linger is not None:
            active.linger.cancel()
            active.linger = None
        active.holds += 1
        active.holders[kind] = active.holders.get(kind, 0) + 1
        return active.upstream

    def _admit(self, who: str) -> None:
        """Raise ActivationRefused unless ``who`` may start one more upstream now."""
        room = True
        if self._max_upstreams:
            room = sum(1 for a in self._active.values() if not a.task.done()) < self._max_upstreams
            if not room and self._lingering() is None:
                raise ActivationRefused(
                    "too_many_upstreams", "GATEWAY_LIMITS_MAX_UPSTREAMS",
                    f"this gateway already streams {self._max_upstreams} conversations from HQ "
                    "(GATEWAY_LIMITS_MAX_UPSTREAMS); retry later", CAP_RETRY_AFTER_S,
                )  # fmt: skip
        if self._activations is not None and (wait := self._activations.take(who)):
            raise ActivationRefused(
                "activation_rate_limited", "GATEWAY_LIMITS_UPSTREAM_ACTIVATIONS_PER_S",
                f"too many new conversations opened (GATEWAY_LIMITS_UPSTREAM_ACTIVATION_BURST, then "
                f"GATEWAY_LIMITS_UPSTREAM_ACTIVATIONS_PER_S); retry in {wait:.1f} s", wait,
            )  # fmt: skip
        if not room:
            lingering = self._lingering()
            if lingering is not None:  # nobody holds it: make room for someone who asks
                self._stop(lingering, "to make room under GATEWAY_LIMITS_MAX_UPSTREAMS")

    def _lingering(self) -> str | None:
        """The longest-running upstream nobody holds, if any."""
        return next((cid for cid, a in self._active.items() if a.holds <= 0 and not a.task.done()), None)

    def _cooling_down(self, active: _Active) -> bool:
        ended = active.upstream.ended_at
        refused = active.upstream.state is UpstreamState.FAILED
        return refused and ended is not None and time.monotonic() - ended < self._refused_cooldown_s

    def reserve(self, conversation_id: str, who: str) -> None:
        """Start (or join) the upstream for a viewer about to attach, within the limits (ActivationRefused).

        For a transport that must answer the refusal before its stream begins: the viewer's own hold
        has to follow within ``CHURN_LINGER_S``, whatever ``linger_s`` is.
        """
        self.hold(conversation_id, "reserved", who)
        self.release(conversation_id, "reserved", linger_s=CHURN_LINGER_S)

    def release(self, conversation_id: str, kind: str = "viewer", *, linger_s: float | None = None) -> None:
        active = self._active.get(conversation_id)
        if active is None:
            return
        active.holds -= 1
        active.holders[kind] -= 1
        if active.holds <= 0:
            if linger_s is None:
                # Lingers at most as long as it was in use: a churned subscription's upstream goes soon.
                used_s = time.monotonic() - active.started
                linger_s = min(self._linger_s, max(CHURN_LINGER_S, used_s))
            active.linger = asyncio.get_running_loop().call_later(linger_s, self._stop_if_idle, conversation_id)

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
            self._stop(conversation_id, "after linger")

    def _stop(self, conversation_id: str, why: str) -> None:
        active = self._active.pop(conversation_id)
        if active.linger is not None:
            active.linger.cancel()
        active.task.cancel()
        log.info("upstream closed %s conversation=%s", why, conversation_id)

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
