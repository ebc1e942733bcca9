"""Reconnect pacing shared by the upstream client, the cluster lease and the broker bridge."""

from __future__ import annotations

import random
from collections.abc import Callable


class Backoff:
    """Capped exponential backoff with full jitter (AWS architecture blog), randomness injected."""

    def __init__(self, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._rng = rng
        self.attempt = 0
        self.floor_s = 0.0

    def next_delay(self) -> float:
        ceiling = min(self.max_s, self.initial_s * 2.0 ** min(self.attempt, 40))
        self.attempt += 1
        return max(self.floor_s, ceiling * float(self._rng()))

    def reset(self) -> None:
        self.attempt = 0
