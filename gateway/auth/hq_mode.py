"""``hq`` mode: HQ itself decides. The viewer's credential is tried on ``GET /v1/api/conversations/{id}``.

200 allows (``viewing_as: admin`` makes an admin principal), 401 refuses the credential, 403/404
refuse the conversation; other answers and network failures refuse for now without being cached.
Decisions are cached per (credential digest, conversation) for a short TTL, a bounded number of
them, and concurrent checks of the same pair share one HQ call: a reconnect storm is not an HQ storm.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.auth.principal import Denied, Principal, Scope
from gateway.errors import UpstreamUnavailable

MAX_IN_FLIGHT = 64  # concurrent authorization calls towards HQ


class HqAnswer(Protocol):
    """HQ's answer to a conversation lookup (``gateway.upstream.client.HqReply``)."""

    @property
    def status(self) -> int: ...

    @property
    def body(self) -> Any: ...


class ConversationLookup(Protocol):
    async def get_conversation(self, conversation_id: str, token: str | None = None) -> HqAnswer: ...


@dataclass(frozen=True, slots=True)
class _Decision:
    until: float
    principal: Principal | None
    refusal: Denied | None


def credential_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class HqVerifier:
    """Authorizes (credential, conversation) pairs by asking HQ, with a bounded TTL cache."""

    def __init__(
        self,
        hq: ConversationLookup,
        *,
        scope: Scope,
        ttl_s: float,
        negative_ttl_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.monotonic,
        on_lookup: Callable[[str], None] | None = None,
    ) -> None:
        self._hq = hq
        self._scope = scope
        self._ttl = ttl_s
        self._negative_ttl = negative_ttl_s
        self._max = max_entries
        self._clock = clock
        self._on_lookup = on_lookup or (lambda outcome: None)
        self._cache: OrderedDict[tuple[bytes, str], _Decision] = OrderedDict()
        self._in_flight: dict[tuple[bytes, str], asyncio.Task[_Decision]] = {}
        self._gate = asyncio.Semaphore(MAX_IN_FLIGHT)

    @property
    def cached(self) -> int:
        return len(self._cache)

    async def authorize(self, token: str, conversation_id: str) -> Principal:
        key = (credential_digest(token), conversation_id)
        decision = self._cache.get(key)
        if decision is not None and decision.until > self._clock():
            self._cache.move_to_end(key)
        else:
            task = self._in_flight.get(key)
            if task is None:
                # Owned by the verifier, not the caller: a viewer that goes away does not cancel the
                # answer others are waiting for. HqClient's timeouts bound its life.
                task = asyncio.create_task(self._ask(key[0], token, conversation_id), name="hq-authorize")
                self._in_flight[key] = task
                task.add_done_callback(lambda _: self._in_flight.pop(key, None))
            decision = await asyncio.shield(task)
        if decision.refusal is not None:
            refusal = decision.refusal  # a fresh exception each time: a shared one would grow its traceback
            raise Denied(refusal.status, refusal.code, refusal.message)
        assert decision.principal is not None
        return decision.principal

    async def _ask(self, digest: bytes, token: str, conversation_id: str) -> _Decision:
        try:
            async with self._gate:
                reply = await self._hq.get_conversation(conversation_id, token=token)
        except UpstreamUnavailable:
            self._on_lookup("error")
            return _Decision(
                0.0, None, Denied(503, "auth_unavailable", "HQ did not answer the authorization check; retry")
            )
        now = self._clock()
        if reply.status == 200:
            self._on_lookup("allowed")
            body = reply.body if isinstance(reply.body, dict) else {}
            scope = Scope.ADMIN if body.get("viewing_as") == "admin" else self._scope
            subject = "hq:" + digest.hex()[:16]
            principal = Principal(subject, scope, frozenset({conversation_id}), True, None, token)
            return self._remember((digest, conversation_id), _Decision(now + self._ttl, principal, None))
        if reply.status in (401, 403, 404):
            self._on_lookup("denied")
            refusal = (
                Denied(401, "invalid_token", "HQ refused the credential")
                if reply.status == 401
                else Denied(
                    403, "forbidden", f"not allowed to view conversation {conversation_id} (or it does not exist)"
                )
            )
            return self._remember((digest, conversation_id), _Decision(now + self._negative_ttl, None, refusal))
        self._on_lookup("error")
        return _Decision(
            0.0, None, Denied(503, "auth_unavailable", f"HQ answered {reply.status} to the authorization check; retry")
        )

    def _remember(self, key: tuple[bytes, str], decision: _Decision) -> _Decision:
        if decision.until > self._clock():
            self._cache[key] = decision
            self._cache.move_to_end(key)
            while len(self._cache) > self._max:
                self._cache.popitem(last=False)
        return decision
