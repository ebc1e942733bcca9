"""The cluster journal: one Redis Stream per conversation, appended atomically with its cursor by Lua.

Keys of one conversation share the Redis Cluster hash tag ``{<conversationId>}`` so every script
runs unchanged on one Redis, Sentinel or Redis Cluster:

* ``<prefix>:{<id>}:journal`` — Stream; entry id ``<seq>-0``; fields stage, body, created_ms, scope
  and user_body when present.
* ``<prefix>:{<id>}:meta`` — Hash: seq (last assigned), first (of this incarnation), cursor.
* ``<prefix>:{<id>}:lease`` — the upstream lease (gateway.cluster); value = owner id.

Journal and meta carry a TTL of the retention age, refreshed on every append: a conversation idle
past retention costs nothing, and its next append starts a new incarnation (see JournalHead).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from gateway.envelope import Envelope
from gateway.errors import ConfigError, JournalConflict
from gateway.journal.availability import UNAVAILABLE as UNAVAILABLE
from gateway.journal.availability import JournalUnavailable as JournalUnavailable
from gateway.journal.availability import unavailable_as_error as unavailable_as_error
from gateway.journal.base import JournalHead
from gateway.journal.keys import conversation_key as conversation_key

# Shared by both scripts. Entries are dense in seq and non-decreasing in created_ms, so the first
# entry young enough to keep is found by binary search over seq: O(log n) XRANGE probes, and one
# probe in the common case where nothing expired.
_LUA_HELPERS = """
local function created(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'created_ms' then return tonumber(f[i + 1]) end
  end
  return 0
end
local function seq_of(entry)
  return tonumber(string.match(entry[1], '^(%d+)'))
end
local function first_keeper(key, cutoff)
  local head = redis.call('XRANGE', key, '-', '+', 'COUNT', 1)
  if #head == 0 then return nil end
  if created(head[1]) >= cutoff then return seq_of(head[1]) end
  local tail = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)
  if created(tail[1]) < cutoff then return nil end
  local lo, hi = seq_of(head[1]), seq_of(tail[1])
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    local probe = redis.call('XRANGE', key, string.format('%d', mid), '+', 'COUNT', 1)
    if created(probe[1]) >= cutoff then hi = mid else lo = mid end
  end
  return hi
end
"""

# KEYS: journal, meta, lease. ARGV: owner ('' = unfenced), now_ms, max_age_ms, max_events, ttl_ms,
# has_cursor, cursor, n, then 7 per envelope: seq, stage, body, created_ms, scope, has_user, user_body.
# Returns {0, ''} on success, else {code, detail} and nothing was written: 1 = lease not held
# (detail: holder), 2 = no journal to set a cursor on, 3 = seq is not meta.seq + 1 (detail: meta.seq).
_APPEND = (
    _LUA_HELPERS
    + """
local journal, meta, lease = KEYS[1], KEYS[2], KEYS[3]
local owner = ARGV[1]
if owner ~= '' then
  local holder = redis.call('GET', lease)
  if holder ~= owner then return {1, holder or ''} end
end
local n = tonumber(ARGV[8])
local last = redis.call('HGET', meta, 'seq')
if not last then
  if n == 0 then return {2, ''} end
  -- A new incarnation: drop any leftover stream so its ids cannot collide with the new seqs.
  redis.call('DEL', journal)
  redis.call('HSET', meta, 'first', ARGV[9])
elseif n > 0 and tonumber(ARGV[9]) ~= tonumber(last) + 1 then
  return {3, last}
end
for i = 0, n - 1 do
  local b = 9 + i * 7
  local fields = {'stage', ARGV[b + 1], 'body', ARGV[b + 2], 'created_ms', ARGV[b + 3], 'scope', ARGV[b + 4]}
  if ARGV[b + 5] == '1' then
    fields[#fields + 1] = 'user_body'
    fields[#fields + 1] = ARGV[b + 6]
  end
  if i == n - 1 and ARGV[6] == '1' then
    -- The HQ cursor rides on the entry too: a tailer knows where HQ stood even if meta is lost.
    fields[#fields + 1] = 'cursor'
    fields[#fields + 1] = ARGV[7]
  end
  redis.call('XADD', journal, ARGV[b] .. '-0', unpack(fields))
end
if n > 0 then redis.call('HSET', meta, 'seq', ARGV[9 + (n - 1) * 7]) end
if ARGV[6] == '1' then redis.call('HSET', meta, 'cursor', ARGV[7]) end
redis.call('XTRIM', journal, 'MAXLEN', '=', ARGV[4])
local keeper = first_keeper(journal, tonumber(ARGV[2]) - tonumber(ARGV[3]))
if keeper then
  redis.call('XTRIM', journal, 'MINID', '=', string.format('%d', keeper))
else
  redis.call('XTRIM', journal, 'MAXLEN', '=', 0)
end
redis.call('PEXPIRE', journal, ARGV[5])
redis.call('PEXPIRE', meta, ARGV[5])
return {0, ''}
"""
)

# Read-only. KEYS: journal, meta. ARGV: now_ms, max_age_ms, max_events, after (-1: the last entry), limit.
# Returns {} without a journal, else {seq, first, cursor|nil, oldest, entries after `after`}; `oldest`
# applies count and age retention at read time, exactly like the memory journal.
_VIEW = (
    _LUA_HELPERS
    + """
local journal, meta = KEYS[1], KEYS[2]
local m = redis.call('HMGET', meta, 'seq', 'first', 'cursor')
if not m[1] then return {} end
local seq = tonumber(m[1])
local oldest = seq + 1
local keeper = first_keeper(journal, tonumber(ARGV[1]) - tonumber(ARGV[2]))
if keeper then oldest = math.max(keeper, seq - tonumber(ARGV[3]) + 1) end
local entries = {}
local limit = tonumber(ARGV[5])
if limit > 0 then
  local after = tonumber(ARGV[4])
  if after < 0 then after = seq - 1 end
  local start = math.max(after + 1, oldest)
  if start <= seq then
    entries = redis.call('XRANGE', journal, string.format('%d', start), '+', 'COUNT', limit)
  end
end
return {m[1], m[2], m[3], oldest, entries}
"""
)


# KEYS: journal, meta, lease. ARGV: owner. Drops the conversation's journal only while the lease is ours.
_DISCARD = """
if redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2])
return 1
"""


def decode_entry(entry_id: bytes | str, raw: Mapping[bytes, bytes] | Sequence[bytes]) -> Envelope:
    """One stream entry (XREAD's dict form or a script's flat list) as an Envelope."""
    fields = dict(raw) if isinstance(raw, Mapping) else dict(zip(raw[::2], raw[1::2], strict=True))
    ident = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return Envelope(
        seq=int(ident.partition("-")[0]),
        stage=fields[b"stage"].decode(),
        body=fields[b"body"],
        created_ms=int(fields[b"created_ms"]),
        scope=fields[b"scope"].decode(),
        user_body=fields.get(b"user_body"),
    )


class RedisJournal:
    """Journal in Redis Streams; same semantics as MemoryJournal, plus lease fencing on append.

    The client must return bytes (``decode_responses=False``). It belongs to the caller: ``close``
    leaves it open.
    """

    def __init__(
        self,
        redis: redis.asyncio.Redis,
        *,
        prefix: str,
        max_events: int,
        max_age_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if "{" in prefix or "}" in prefix:
            # A brace in the prefix would become the hash tag and scatter a conversation's keys.
            raise ConfigError(f"GATEWAY_REDIS_KEY_PREFIX: must not contain '{{' or '}}', got {prefix!r}")
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisJournal needs a Redis client with decode_responses=False (bodies are bytes)")
        self._redis = redis
        self.prefix = prefix
        self._max_events = max_events
        self._max_age_ms = int(max_age_s * 1000)
        self._ttl_ms = max(1, math.ceil(max_age_s * 1000))
        self._clock = clock
        self._append = redis.register_script(_APPEND)
        self._view = redis.register_script(_VIEW)
        self._discard = redis.register_script(_DISCARD)

    def key(self, conversation_id: str, kind: str) -> str:
        return conversation_key(self.prefix, conversation_id, kind)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def _view_call(self, conversation_id: str, after: int, limit: int) -> list[Any]:
        keys = [self.key(conversation_id, "journal"), self.key(conversation_id, "meta")]
        args = [self._now_ms(), self._max_age_ms, self._max_events, after, limit]
        with unavailable_as_error(f"journal read of {conversation_id}"):
            reply: list[Any] = await self._view(keys, args)
        return reply

    async def head(self, conversation_id: str) -> JournalHead:
        reply = await self._view_call(conversation_id, 0, 0)
        if not reply:
            return JournalHead()
        seq, first, cursor, oldest, _ = reply
        return JournalHead(int(seq), int(oldest), cursor.decode() if cursor is not None else None, int(first))

    async def head_and_last(self, conversation_id: str) -> tuple[JournalHead, Envelope | None]:
        """The head and the newest retained envelope, in one round trip (a compare-and-append reads both)."""
        reply = await self._view_call(conversation_id, -1, 1)
        if not reply:
            return JournalHead(), None
        seq, first, cursor, oldest, entries = reply
        head = JournalHead(int(seq), int(oldest), cursor.decode() if cursor is not None else None, int(first))
        return head, decode_entry(*entries[0]) if entries else None

    async def append(
        self,
        conversation_id: str,
        envelopes: Sequence[Envelope],
        cursor: str | None,
        *,
        owner: str | None = None,
    ) -> None:
        if not envelopes and cursor is None:
            return
        # Density inside the batch and positivity are checked here; the link to meta.seq in Lua.
        for i, env in enumerate(envelopes):
            expected = envelopes[0].seq + i
            if env.seq != expected or env.seq < 1:
                raise JournalConflict(f"{conversation_id}: expected seq {max(expected, 1)}, got {env.seq}")
        args: list[str | bytes | int] = [
            owner or "",
            self._now_ms(),
            self._max_age_ms,
            self._max_events,
            self._ttl_ms,
            "0" if cursor is None else "1",
            cursor or "",
            len(envelopes),
        ]
        for env in envelopes:
            has_user = env.user_body is not None
            args += [env.seq, env.stage, env.body, env.created_ms, env.scope, "1" if has_user else "0"]
            args.append(env.user_body or b"")
        keys = [self.key(conversation_id, k) for k in ("journal", "meta", "lease")]
        with unavailable_as_error(f"journal append to {conversation_id}"):
            code, detail = await self._append(keys, args)
        if code == 1:
            holder = detail.decode() or "nobody"
            raise JournalConflict(f"{conversation_id}: lease held by {holder}, not {owner}")
        if code == 2:
            raise JournalConflict(f"{conversation_id}: a new journal starts with an envelope")
        if code == 3:
            raise JournalConflict(f"{conversation_id}: expected seq {int(detail) + 1}, got {envelopes[0].seq}")

    async def discard(self, conversation_id: str, owner: str) -> bool:
        """Drop a rolled-back incarnation (fenced by the lease) so the next append starts a new one."""
        keys = [self.key(conversation_id, k) for k in ("journal", "meta", "lease")]
        with unavailable_as_error(f"journal discard of {conversation_id}"):
            return bool(await self._discard(keys, [owner]))

    async def read(self, conversation_id: str, after: int, limit: int) -> list[Envelope]:
        if limit <= 0:
            return []
        reply = await self._view_call(conversation_id, after, limit)
        if not reply:
            return []
        return [decode_entry(entry_id, fields) for entry_id, fields in reply[4]]

    async def close(self) -> None:
        """Nothing to release: the Redis client belongs to whoever created it."""
