"""Bridge state in Redis (cluster mode): cursors next to each conversation's journal, pins in one hash.

* cursor: ``{prefix}:{<id>}:bridge`` — the last broker-confirmed seq; same hash tag as the journal;
  a cursor never moves backwards (one small Lua script), and expires with the journal's retention.
* pins: ``{prefix}:bridge:pins`` — hash, field = conversation id, value = ``{"kind", "pinnedAt"}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import orjson
import redis.asyncio

from gateway.bridge.store import Pin, PinKind
from gateway.journal.availability import unavailable_as_error
from gateway.journal.keys import conversation_key

_ADVANCE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class RedisCursorStore:
    """BridgeCursorStore shared by every gateway of the cluster."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str, retention_s: float) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = math.ceil(retention_s * 1000)
        self._advance = client.register_script(_ADVANCE)

    async def load(self, conversation_id: str) -> int | None:
        with unavailable_as_error(f"bridge cursor load of {conversation_id}"):
            raw = await self._client.get(conversation_key(self._prefix, conversation_id, "bridge"))
        return int(raw) if raw is not None else None

    async def save(self, cursors: Mapping[str, int]) -> None:
        with unavailable_as_error("bridge cursor save"):
            for conversation_id, seq in cursors.items():
                key = conversation_key(self._prefix, conversation_id, "bridge")
                await self._advance(keys=[key], args=[seq, self._ttl_ms])


class RedisPinStore:
    """PinStore shared by every gateway of the cluster: pins survive restarts and failovers."""

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._client = client
        self._key = f"{prefix}:bridge:pins"

    async def load(self) -> list[Pin]:
        with unavailable_as_error("bridge pins load"):
            raw = await self._client.hgetall(self._key)
        pins = []
        for field, value in raw.items():
            data = orjson.loads(value)
            conversation_id = field.decode() if isinstance(field, bytes) else str(field)
            pins.append(Pin(conversation_id, PinKind(data["kind"]), float(data["pinnedAt"])))
        return pins

    async def put(self, pin: Pin) -> None:
        value = orjson.dumps({"kind": pin.kind.value, "pinnedAt": pin.pinned_at})
        with unavailable_as_error(f"bridge pin of {pin.conversation_id}"):
            await self._client.hset(self._key, pin.conversation_id, value)

    async def delete(self, conversation_id: str) -> None:
        with unavailable_as_error(f"bridge unpin of {conversation_id}"):
            await self._client.hdel(self._key, conversation_id)
