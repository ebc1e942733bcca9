"""The simulated HQ: conversations, queued turns, fault switches and counters, shared by all routes."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import random
import time
from collections.abc import Mapping

from gateway.simulator.config import SimulatorConfig
from gateway.simulator.conversation import Conversation
from gateway.simulator.faults import Faults
from gateway.simulator.script import build_turn, parse_directives
from gateway.simulator.stats import Stats
from gateway.simulator.turns import TurnPlayer

SESSION_COOKIE = "hq_session"


class SimulatedHq:
    """State behind every simulator route; one per app, closed by the app's lifespan."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.faults = Faults()
        self.faults.apply(config.faults)
        self.stats = Stats()
        self.closing = False
        self._conversations: dict[str, Conversation] = {}
        self._player = TurnPlayer(self.stats)
        self._streams: set[asyncio.Task[None]] = set()

    def conversation(self, conv_id: str) -> Conversation:
        """The conversation with this canonical id, created on first use (any UUID is valid)."""
        conv = self._conversations.get(conv_id)
        if conv is None:
            conv = self._conversations[conv_id] = Conversation(conv_id, self.config.journal_max)
        return conv

    def find(self, conv_id: str) -> Conversation | None:
        return self._conversations.get(conv_id)

    def token_matches(self, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
        """True when the Bearer header or the session cookie carries the configured token."""
        expected = self.config.token.encode()
        scheme, _, credential = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), expected):
            return True
        cookie = cookies.get(SESSION_COOKIE)
        return cookie is not None and hmac.compare_digest(cookie.encode(), expected)

    def submit(self, conv: Conversation, text: str, idempotency_key: str | None) -> bool:
        """Queue a turn; True (no new turn) for a reused key; DirectiveError before recording anything."""
        now = time.monotonic()
        if idempotency_key is not None and conv.key_seen(idempotency_key, now, self.config.idempotency_ttl_s):
            return True
        seed = self.config.seed
        rng = random.Random(f"{seed}:{conv.id}:{conv.turns_submitted}") if seed is not None else random.Random()
        script = build_turn(text, rng, interval_ms=self.config.delta_interval_ms)
        if idempotency_key is not None:
            conv.remember_key(idempotency_key, now)
        conv.turns_submitted += 1
        if conv.title is None:
            conv.title = parse_directives(text)[0][:60] or None
        self._player.enqueue(conv, script)
        return False

    def track_stream(self, task: asyncio.Task[None]) -> None:
        self._streams.add(task)
        task.add_done_callback(self._streams.discard)

    async def aclose(self) -> None:
        """End every stream cleanly and cancel every turn; later opens are refused."""
        self.closing = True
        streams = list(self._streams)
        for task in streams:
            task.cancel()
        for task in streams:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._player.aclose()
