"""The authoritative record of a phase, taken beside the viewers (never through the gateways).

``JournalRecorder`` tails each conversation's Redis Stream every 200 ms from its own connection and
keeps every envelope's seq and ``created_ms``: what the journal held even if Redis later loses it.
A journal whose newest seq falls below what was recorded started a new incarnation; both are kept.
``UpstreamSampler`` reads the simulator's open streams every 250 ms: the most upstreams any
conversation had open at once during the phase.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis
import redis.exceptions

from benchmarks.soak.cluster import journal_key

POLL_S = 0.2


@dataclass(slots=True)
class Truth:
    """One conversation's journal as recorded: seq -> created_ms, per incarnation."""

    incarnations: list[dict[int, float]] = field(default_factory=lambda: [{}])
    resets_ms: list[float] = field(default_factory=list)
    vanished_ms: list[float] = field(default_factory=list)
    stages: dict[int, str] = field(default_factory=dict)  # seq -> stage (of the first incarnation using it)
    turns_done: int = 0  # ENGINE_RETURN envelopes recorded: turns that reached the journal whole

    @property
    def current(self) -> dict[int, float]:
        return self.incarnations[-1]

    @property
    def newest(self) -> int:
        return max(self.current, default=0)

    def merged(self) -> tuple[dict[int, float], int]:
        """Every seq with its first creation time, and how many seqs two incarnations both used."""
        out: dict[int, float] = {}
        reused = 0
        for inc in self.incarnations:
            for seq, created in inc.items():
                if seq in out:
                    reused += 1
                else:
                    out[seq] = created
        return out, reused


class JournalRecorder:
    """Polls the journals of ``conversations`` in a thread until stopped."""

    def __init__(self, redis_url: str, conversations: list[str]) -> None:
        self._client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
        self.truth: dict[str, Truth] = {c: Truth() for c in conversations}
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-recorder", daemon=True)
        self._thread.start()

    def newest(self) -> dict[str, int]:
        return {c: t.newest for c, t in self.truth.items()}

    def _run(self) -> None:
        while not self._stop.is_set():
            for conversation, truth in self.truth.items():
                try:
                    self._poll(conversation, truth)
                except (redis.exceptions.RedisError, OSError):
                    self.errors += 1
            self._stop.wait(POLL_S)

    def _poll(self, conversation: str, truth: Truth) -> None:
        key = journal_key(conversation)
        head = self._client.xrevrange(key, "+", "-", count=1)
        newest = truth.newest
        if not head:
            # Noted once per incarnation: the journal we recorded is gone from Redis.
            if newest and len(truth.vanished_ms) < len(truth.incarnations):
                truth.vanished_ms.append(time.time() * 1000)
            return
        head_seq = int(head[0][0].split(b"-")[0])
        if head_seq < newest:
            truth.incarnations.append({})
            truth.resets_ms.append(time.time() * 1000)
            newest = 0
        if head_seq <= newest:
            return
        start = f"{newest + 1}-0" if newest else "-"
        for entry_id, fields in self._client.xrange(key, start, "+"):
            seq = int(entry_id.split(b"-")[0])
            truth.current[seq] = float(fields.get(b"created_ms", 0) or 0)
            stage = fields.get(b"stage", b"")
            truth.stages.setdefault(seq, stage.decode(errors="replace"))
            truth.turns_done += stage == b"ENGINE_RETURN"

    def stop(self) -> None:
        """One last read of everything, then stop."""
        self._stop.set()
        self._thread.join(5)
        for conversation, truth in self.truth.items():
            try:
                self._poll(conversation, truth)
            except (redis.exceptions.RedisError, OSError):
                self.errors += 1
        self._client.close()


class UpstreamSampler:
    """The most upstream streams each conversation had open at one time, from the simulator's stats."""

    def __init__(self, sim_url: str, token: str, conversations: list[str]) -> None:
        self._url = f"{sim_url}/_sim/stats"
        self._auth = {"Authorization": f"Bearer {token}"}
        self.conversations = conversations
        self.max_open: dict[str, int] = dict.fromkeys(conversations, 0)
        self.samples = 0
        self.over_one = 0  # samples in which some conversation had more than one stream open
        self.over_one_ms: list[float] = []  # when (wall clock ms)
        self.opens_before = self._opens()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="upstream-sampler", daemon=True)
        self._thread.start()

    def _stats(self) -> dict[str, Any]:
        reply = httpx.get(self._url, headers=self._auth, timeout=5)
        reply.raise_for_status()
        result: dict[str, Any] = reply.json()
        return result

    def _opens(self) -> dict[str, int]:
        opens = self._stats()["stream_opens"]
        return {c: opens.get(c, 0) for c in self.conversations}

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            try:
                open_streams = self._stats()["open_streams"]
            except httpx.HTTPError:
                continue
            self.samples += 1
            over = False
            for c in self.conversations:
                n = open_streams.get(c, 0)
                self.max_open[c] = max(self.max_open[c], n)
                over |= n > 1
            self.over_one += over
            if over:
                self.over_one_ms.append(time.time() * 1000)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        opens = self._opens()
        return {
            "samples": self.samples,
            "samples_with_two_or_more": self.over_one,
            "two_or_more_ms": [round(self.over_one_ms[0]), round(self.over_one_ms[-1])] if self.over_one_ms else None,
            "max_open": max(self.max_open.values(), default=0),
            "conversations_over_one": sum(1 for n in self.max_open.values() if n > 1),
            "stream_opens": sum(opens[c] - self.opens_before.get(c, 0) for c in self.conversations),
        }
