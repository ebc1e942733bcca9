"""Plays scripted turns in real time, one at a time per conversation, as tasks it owns."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from gateway.simulator.conversation import Conversation
from gateway.simulator.script import ScriptedEvent
from gateway.simulator.stats import Stats


class TurnPlayer:
    """Queues turns per conversation and plays each queue in a task; ``aclose`` cancels them all."""

    def __init__(self, stats: Stats) -> None:
        self._stats = stats
        self._queues: dict[str, deque[list[ScriptedEvent]]] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def enqueue(self, conv: Conversation, script: list[ScriptedEvent]) -> None:
        """Play ``script`` after every turn already queued for ``conv``."""
        self._queues.setdefault(conv.id, deque()).append(script)
        if conv.id not in self._tasks:
            self._tasks[conv.id] = asyncio.create_task(self._play_queue(conv), name=f"sim-turns-{conv.id}")

    def running(self, conv_id: str) -> bool:
        return conv_id in self._tasks

    async def _play_queue(self, conv: Conversation) -> None:
        queue = self._queues[conv.id]
        try:
            while queue:
                script = queue.popleft()
                self._stats.turns_started[conv.id] += 1
                await play(conv, script)
                self._stats.turns_completed[conv.id] += 1
        finally:
            # No await between the emptiness check above and this: enqueue() cannot slip in between.
            del self._tasks[conv.id]
            if not queue:
                del self._queues[conv.id]

    async def aclose(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def play(conv: Conversation, script: list[ScriptedEvent]) -> None:
    """Append each event to ``conv`` on schedule; ``final`` carries the measured duration."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    due = started
    for step in script:
        # Absolute deadlines so pacing does not drift with scheduling overhead.
        due += step.delay_ms / 1000.0
        await asyncio.sleep(max(0.0, due - loop.time()))
        data = step.data
        if step.event == "final":
            data = {**data, "duration_ms": round((loop.time() - started) * 1000)}
        conv.append(step.event, data)
