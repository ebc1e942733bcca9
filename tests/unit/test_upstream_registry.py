"""The upstream registry's bounds: activation bucket, process cap, and linger no longer than use."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.limits import TokenBuckets
from gateway.upstream.registry import ActivationRefused, UpstreamRegistry
from gateway.upstream.supervisor import UpstreamState
from tests.clients import eventually


class FakeUpstream:
    """Runs until cancelled, like an upstream streaming a quiet conversation."""

    def __init__(self, conversation_id: str) -> None:
        self.conversation_id = conversation_id
        self.state = UpstreamState.CONNECTING
        self.connected = asyncio.Event()
        self.turn_ended = asyncio.Event()
        self.ended_at: float | None = None
        self.cancelled = False

    async def run(self) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def originate(self, name: str, data: dict[str, Any]) -> None: ...


def test_bucket_refuses_new_activations_never_joins() -> None:
    async def main() -> None:
        now = [0.0]
        registry = UpstreamRegistry(FakeUpstream, 30, activations=TokenBuckets(1.0, 2, clock=lambda: now[0]))
        registry.hold("a", who="alice")
        registry.hold("b", who="alice")
        with pytest.raises(ActivationRefused) as refused:
            registry.hold("c", who="alice")
        assert refused.value.code == "activation_rate_limited" and 0.9 < refused.value.retry_after_s <= 1.0
        assert "GATEWAY_LIMITS_UPSTREAM_ACTIVATION" in refused.value.message
        registry.hold("a", who="alice")  # joining a running upstream costs nothing
        registry.hold("c", who="bob")  # another subject has its own bucket
        registry.hold("d", "pin")  # internal holders are never refused
        now[0] = 1.0
        registry.hold("e", who="alice")  # refilled
        assert registry.get("c") is not None and registry.get("e") is not None
        await registry.close()

    asyncio.run(main())


def test_cap_closes_a_lingering_upstream_to_make_room_else_refuses() -> None:
    async def main() -> None:
        registry = UpstreamRegistry(FakeUpstream, 30, max_upstreams=2)
        a = registry.hold("a", who="x")
        registry.hold("b", who="x")
        await asyncio.sleep(0)  # both run
        with pytest.raises(ActivationRefused) as refused:
            registry.hold("c", who="x")
        assert refused.value.code == "too_many_upstreams" and refused.value.setting == "GATEWAY_LIMITS_MAX_UPSTREAMS"
        registry.release("a")  # now only lingering
        registry.hold("c", who="x")
        await asyncio.sleep(0)
        assert registry.get("a") is None and isinstance(a, FakeUpstream) and a.cancelled
        assert registry.get("b") is not None and registry.get("c") is not None
        await registry.close()

    asyncio.run(main())


def test_a_briefly_held_upstream_does_not_linger_the_full_period() -> None:
    async def main() -> None:
        registry = UpstreamRegistry(FakeUpstream, linger_s=30)
        registry.hold("churned", who="x")
        registry.release("churned")
        await eventually(lambda: registry.get("churned") is None, 3, "closed after ~1 s, not 30 s")
        await registry.close()

    asyncio.run(main())
