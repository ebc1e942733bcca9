"""What the gateway last learned about HQ with its service token: reachable, token refused, or unreachable."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any


class HqReachability(StrEnum):
    UNKNOWN = "unknown"  # nothing asked yet (no active conversation since start)
    OK = "ok"
    TOKEN_REFUSED = "token_refused"  # HQ answered 401 to the service token
    UNREACHABLE = "unreachable"  # connection failed, timed out, or HQ answered 5xx


class HqState:
    """Fed by the HQ client on every stream open and request made with the service token (no I/O)."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self.state = HqReachability.UNKNOWN
        self.last_error: str | None = None
        self.since: float | None = None  # when the current state began
        self.checked_at: float | None = None  # the last answer (or failure) of any kind

    def _set(self, state: HqReachability, error: str | None) -> None:
        now = self._clock()
        if state is not self.state:
            self.state, self.since = state, now
        if error is not None:
            self.last_error = error
        self.checked_at = now

    def answered(self, status: int) -> None:
        """HQ answered: 401 means the token is refused; 5xx that HQ is not usable; anything else that it is."""
        if status == 401:
            self._set(HqReachability.TOKEN_REFUSED, "HQ answered 401 to the service token")
        elif status >= 500:
            self._set(HqReachability.UNREACHABLE, f"HQ answered {status}")
        else:
            self._set(HqReachability.OK, None)

    def failed(self, error: str) -> None:
        self._set(HqReachability.UNREACHABLE, error)

    def readiness(self) -> dict[str, Any]:
        """The /readyz ``hq`` entry. It never fails readiness: an HQ outage is shared by every replica."""
        now = self._clock()
        return {
            "ok": self.state in (HqReachability.OK, HqReachability.UNKNOWN),
            "affectsReadiness": False,
            "detail": {
                "state": self.state.value,
                "lastError": self.last_error,
                "forS": None if self.since is None else round(now - self.since, 1),
                "checkedAgoS": None if self.checked_at is None else round(now - self.checked_at, 1),
            },
        }
