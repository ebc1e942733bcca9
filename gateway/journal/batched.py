"""Concurrent reads of one conversation's journal share one round trip (cluster mode).

A thousand viewers joining a conversation at once used to send a thousand ``head`` calls to Redis
and drain its connection pool; here they send one. A request joins a batch only while the batch is
still pending: batches are issued on the next loop iteration, so every request in one was made
before the call went out and sees a result at least as new as a call of its own would have.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from gateway.envelope import Envelope
from gateway.journal.base import Journal, JournalHead

T = TypeVar("T")


class BatchedReads:
    """A ``Journal`` whose ``head`` and ``read`` calls are merged per conversation; appends pass through."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._heads: dict[str, asyncio.Future[JournalHead]] = {}
        self._reads: dict[tuple[str, int], tuple[list[int], asyncio.Future[list[Envelope]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0  # round trips actually sent (tests and metrics)

    @property
    def inner(self) -> Journal:
        return self._journal

    async def head(self, conversation_id: str) -> JournalHead:
        future = self._heads.get(conversation_id)
        if future is None:
            future = self._heads[conversation_id] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(self._issue_head, conversation_id)
        return await asyncio.shield(future)

    async def read(self, conversation_id: str, after: int, limit: int) -> list[Envelope]:
        if limit <= 0:
            return []
        key = (conversation_id, after)
        pending = self._reads.get(key)
        if pending is None:
            pending = self._reads[key] = ([limit], asyncio.get_running_loop().create_future())
            asyncio.get_running_loop().call_soon(self._issue_read, key)
        else:
            pending[0].append(limit)
        envelopes = await asyncio.shield(pending[1])
        return envelopes[:limit]

    def _issue_head(self, conversation_id: str) -> None:
        future = self._heads.pop(conversation_id)
        self._run(future, lambda: self._journal.head(conversation_id))

    def _issue_read(self, key: tuple[str, int]) -> None:
        limits, future = self._reads.pop(key)
        self._run(future, lambda: self._journal.read(key[0], key[1], max(limits)))

    def _run(self, future: asyncio.Future[T], call: Callable[[], Awaitable[T]]) -> None:
        async def complete() -> None:
            self.calls += 1
            try:
                result = await call()
            except Exception as exc:  # every waiter gets the same failure
                if not future.done():
                    future.set_exception(exc)
                    future.exception()  # retrieved: nobody may be left waiting to see it
                return
            if not future.done():
                future.set_result(result)

        task = asyncio.create_task(complete())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def append(
        self, conversation_id: str, envelopes: Sequence[Envelope], cursor: str | None, *, owner: str | None = None
    ) -> None:
        await self._journal.append(conversation_id, envelopes, cursor, owner=owner)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self._journal.close()
