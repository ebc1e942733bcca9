"""Presence shared through Redis: per-conversation viewer counts, per-process heartbeats, disconnect requests.

Keys (prefix ``GATEWAY_REDIS_KEY_PREFIX``):

* ``<prefix>:{<id>}:presence`` — hash, one field per process instance: that process's viewers of the
  conversation (counts by transport, subjects). Written when viewers join or leave (batched), rewritten
  in full every ``FULL_EVERY`` heartbeats, expires after ``KEY_TTL_S`` without a write.
* ``<prefix>:presence:process:<instance>`` — string, PX = ``GATEWAY_PRESENCE_TTL_S``: the process's
  heartbeat and its snapshot (every conversation it has viewers of or an upstream for). A field of a
  presence hash counts only while its process's key exists, so a SIGKILLed process's viewers vanish
  within the TTL, measured by Redis itself (no clock comparison between hosts).
* ``<prefix>:presence:processes`` — sorted set of instance ids (score: last heartbeat, ms), to find
  the snapshots; names unseen for ``FORGET_S`` are dropped.
* channel ``<prefix>:presence:disconnect`` — ``{"conversationId", "origin"}``: every process ends its
  viewers of that conversation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import orjson
import redis.asyncio
import redis.exceptions

from gateway.ids import BadRequest, conversation_id
from gateway.journal.redis import conversation_key
from gateway.presence import Entry, LocalPresence
from gateway.upstream.client import Backoff

log = logging.getLogger("gateway.presence")

FULL_EVERY = 30  # heartbeats between full rewrites of this process's presence fields
KEY_TTL_S = 600.0  # a presence hash nobody rewrote for this long is gone (every process died)
FORGET_S = 3600.0
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError)


class RedisPresence:
    """This process's side of cluster presence: publish what it has, read what everyone has."""

    def __init__(
        self, client: redis.asyncio.Redis, listen_client: redis.asyncio.Redis, *, prefix: str, instance: str,
        interval_s: float, ttl_s: float,
    ) -> None:  # fmt: skip
        self._redis = client
        self._listen_client = listen_client
        self._prefix = prefix
        self.instance = instance
        self._interval_s = interval_s
        self._ttl_ms = int(ttl_s * 1000)
        self._key_ttl_ms = int(max(KEY_TTL_S, 4 * FULL_EVERY * interval_s) * 1000)
        self.processes_key = f"{prefix}:presence:processes"
        self.channel = f"{prefix}:presence:disconnect"
        self._written: set[str] = set()  # conversations whose hash holds a field of ours
        self._next_beat = 0.0
        self._beats = 0
        self._failing = False
        self._lost = False  # Redis may have lost what we wrote: rewrite everything at the next heartbeat

    def conversation_key(self, conv: str) -> str:
        return conversation_key(self._prefix, conv, "presence")

    def process_key(self, instance: str) -> str:
        return f"{self._prefix}:presence:process:{instance}"

    async def publish(self, local: LocalPresence, snapshot: Callable[[], dict[str, Entry]]) -> None:
        """Write the conversations whose viewers changed; heartbeat (with the snapshot) once per interval."""
        now = time.monotonic()
        beat = now >= self._next_beat
        full = beat and (self._beats % FULL_EVERY == 0 or self._lost)
        dirty, local.dirty = local.dirty, set()
        convs = (set(local.conversations()) | self._written | dirty) if full else dirty
        if not convs and not beat:
            return
        entries = {conv: local.entry(conv) for conv in convs}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for conv, entry in entries.items():
                    key = self.conversation_key(conv)
                    if entry is None:
                        pipe.hdel(key, self.instance)
                    else:
                        pipe.hset(key, self.instance, orjson.dumps(entry))
                        pipe.pexpire(key, self._key_ttl_ms)
                alive_at = len(pipe)
                if beat:
                    now_ms = int(time.time() * 1000)
                    pipe.exists(self.process_key(self.instance))  # gone: Redis lost our data (restart, failover)
                    pipe.set(self.process_key(self.instance), orjson.dumps(snapshot()), px=self._ttl_ms)
                    pipe.zadd(self.processes_key, {self.instance: now_ms})
                    if full:
                        pipe.zremrangebyscore(self.processes_key, "-inf", now_ms - int(FORGET_S * 1000))
                replies = await pipe.execute()
        except REDIS_ERRORS as exc:
            local.dirty |= dirty  # written at the next try
            self._lost = True  # and everything else too: Redis may come back empty
            if not self._failing:
                log.warning("presence not published (retrying): %s", exc)
            self._failing = True
            return
        self._failing = False
        for conv, entry in entries.items():
            if entry is None:
                self._written.discard(conv)
            else:
                self._written.add(conv)
        if beat:
            self._beats += 1
            self._next_beat = now + self._interval_s
            # Our heartbeat should still be there (beats come well within the TTL); if not, rewrite all now.
            self._lost = not full and not replies[alive_at]
            if self._lost:
                log.info("presence: this process's heartbeat was gone from Redis; rewriting its presence")
                self._next_beat = now

    async def conversation(self, conv: str) -> list[Entry]:
        """The entries of every live process for one conversation (dead processes' fields are dropped)."""
        key = self.conversation_key(conv)
        fields: dict[Any, Any] = await self._redis.hgetall(key)
        if not fields:
            return []
        instances = list(fields)
        async with self._redis.pipeline(transaction=False) as pipe:
            for instance in instances:
                pipe.exists(self.process_key(instance.decode()))
            alive = await pipe.execute()
        dead = [i for i, ok in zip(instances, alive, strict=True) if not ok]
        if dead:
            with suppress(*REDIS_ERRORS):
                await self._redis.hdel(key, *dead)
        return [orjson.loads(fields[i]) for i, ok in zip(instances, alive, strict=True) if ok]

    async def snapshots(self) -> list[dict[str, Entry]]:
        """The latest snapshot of every live process."""
        members: list[Any] = await self._redis.zrange(self.processes_key, 0, -1)
        if not members:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.get(self.process_key(member.decode()))
            values = await pipe.execute()
        return [orjson.loads(v) for v in values if v]

    async def publish_disconnect(self, conv: str) -> None:
        await self._redis.publish(self.channel, orjson.dumps({"conversationId": conv, "origin": self.instance}))

    async def listen(self, on_disconnect: Callable[[str], Any]) -> None:
        """Follow the disconnect channel for ever, resubscribing after Redis trouble."""
        backoff = Backoff(0.1, 5.0)
        while True:
            pubsub = self._listen_client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                backoff.reset()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if message is not None and message.get("type") == "message":
                        self._on_message(message["data"], on_disconnect)
            except REDIS_ERRORS as exc:
                delay = backoff.next_delay()
                log.warning("presence disconnect channel lost, resubscribing in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
            finally:
                with suppress(Exception):
                    await pubsub.aclose()

    def _on_message(self, data: bytes, on_disconnect: Callable[[str], Any]) -> None:
        try:
            request = orjson.loads(data)
            conv = conversation_id(str(request["conversationId"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, BadRequest):
            log.warning("presence: ignored a malformed disconnect request")
            return
        if request.get("origin") != self.instance:  # the requesting process already ended its own
            on_disconnect(conv)

    async def leave(self, local: LocalPresence) -> None:
        """Clean shutdown: remove this process's fields and heartbeat now."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for conv in self._written | set(local.conversations()):
                pipe.hdel(self.conversation_key(conv), self.instance)
            pipe.delete(self.process_key(self.instance))
            pipe.zrem(self.processes_key, self.instance)
            await pipe.execute()
        self._written.clear()
