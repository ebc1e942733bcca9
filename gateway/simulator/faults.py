"""Switchable faults: the spec posted to ``/_sim/faults`` (or given at start) and the live switches."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from gateway.errors import GatewayError
from gateway.simulator.ids import parse_conversation_id


class FaultError(GatewayError):
    """A fault spec is malformed; the message names the offending key."""


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One change to the fault switches; None leaves a switch as it is, ``clear`` resets all first."""

    clear: bool = False
    drop_every: int | None = None
    status: int | None = None
    count: int | None = None
    stall: bool | None = None
    unauthorized: bool | None = None
    missing: tuple[str, ...] | None = None
    garbage: bool | None = None
    stale_after: int | None = None

    @classmethod
    def from_json(cls, obj: object) -> FaultSpec:
        """Validate a decoded JSON object such as ``{"status": 503, "count": 2}``."""
        if not isinstance(obj, Mapping):
            raise FaultError("fault spec: expected a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise FaultError(f"fault spec: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for key in ("clear", "stall", "unauthorized", "garbage"):
            if key in obj:
                if not isinstance(obj[key], bool):
                    raise FaultError(f"fault spec: {key} must be true or false")
                values[key] = obj[key]
        for key in ("drop_every", "count", "stale_after"):
            if key in obj:
                values[key] = _non_negative(key, obj[key])
        if "status" in obj:
            status = obj["status"]
            if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
                raise FaultError("fault spec: status must be an HTTP error status 400-599")
            values["status"] = status
        if "missing" in obj:
            values["missing"] = _uuid_list(obj["missing"])
        return cls(**values)


def _non_negative(key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FaultError(f"fault spec: {key} must be a non-negative integer (0 switches it off)")
    return value


def _uuid_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise FaultError("fault spec: missing must be a list of conversation UUIDs")
    ids = []
    for raw in value:
        conv_id = parse_conversation_id(raw)
        if conv_id is None:
            raise FaultError(f"fault spec: missing: {raw!r} is not a UUID")
        ids.append(conv_id)
    return tuple(ids)


class Faults:
    """The live fault switches every request and stream consults."""

    def __init__(self) -> None:
        self._unstalled = asyncio.Event()
        self.reset()

    def reset(self) -> None:
        self.drop_every = 0
        self.stale_after = 0
        self.status = 503
        self.status_count = 0
        self.unauthorized = False
        self.missing: frozenset[str] = frozenset()
        self.garbage = False
        self._unstalled.set()

    @property
    def stalled(self) -> bool:
        return not self._unstalled.is_set()

    def apply(self, spec: FaultSpec) -> None:
        """Apply one spec on top of the current switches."""
        if spec.clear:
            self.reset()
        if spec.drop_every is not None:
            self.drop_every = spec.drop_every
        if spec.stale_after is not None:
            self.stale_after = spec.stale_after
        if spec.status is not None:
            self.status = spec.status
            self.status_count = 1 if spec.count is None else spec.count
        elif spec.count is not None:
            self.status_count = spec.count
        if spec.unauthorized is not None:
            self.unauthorized = spec.unauthorized
        if spec.missing is not None:
            self.missing = frozenset(spec.missing)
        if spec.garbage is not None:
            self.garbage = spec.garbage
        if spec.stall is True:
            self._unstalled.clear()
        elif spec.stall is False:
            self._unstalled.set()

    def take_status(self) -> int | None:
        """The status the next stream open must answer, consuming one of the armed count."""
        if self.status_count <= 0:
            return None
        self.status_count -= 1
        return self.status

    def take_garbage(self) -> bool:
        """True once after ``garbage`` was armed: the caller injects it."""
        armed, self.garbage = self.garbage, False
        return armed

    async def wait_unstalled(self) -> None:
        await self._unstalled.wait()

    def snapshot(self) -> dict[str, Any]:
        return {
            "drop_every": self.drop_every,
            "stale_after": self.stale_after,
            "status": self.status if self.status_count else None,
            "count": self.status_count,
            "stall": self.stalled,
            "unauthorized": self.unauthorized,
            "missing": sorted(self.missing),
            "garbage": self.garbage,
        }
