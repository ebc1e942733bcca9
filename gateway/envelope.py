"""HQ event → ConvEngine v2 envelope: a pure function driven by the mapping table.

The envelope is serialized exactly once (``Envelope.body``); every transport frames those bytes.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import orjson

from gateway.errors import ConfigError

DEFAULT_MAPPING = Path(__file__).parent / "data" / "mapping.toml"


class TurnPhase(StrEnum):
    """Derived turn state carried in ``payload._meta.state``."""

    IDLE = "IDLE"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class HqEvent:
    """One event as HQ sent it (or one the gateway originates, named ``gateway.*``)."""

    name: str
    data: Any
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """How one HQ event name maps onto an envelope."""

    envelope: str = "AUDIT"
    stage: str = ""
    error_stage: str = ""
    error_field: str = ""
    verbose_type: str = "VERBOSE_PROGRESS"
    level: str = "INFO"
    determinant: str | None = None
    text_field: str = ""
    tool_field: str = ""
    scope: str = ""
    strip_user: tuple[str, ...] = ()
    drop: bool = False


@dataclass(frozen=True, slots=True)
class Mapping:
    """The whole table: rules per event name plus the policy for names nobody declared."""

    rules: dict[str, Rule]
    unknown_prefix: str = "HQ_"
    keep_unknown: bool = True

    def rule_for(self, name: str) -> Rule | None:
        rule = self.rules.get(name)
        if rule is not None:
            return rule
        if not self.keep_unknown:
            return None
        return Rule(envelope="AUDIT", stage=self.unknown_prefix + _upper_snake(name))


_RULE_FIELDS = set(Rule.__dataclass_fields__)


def load_mapping(path: str | Path | None = None, *, keep_unknown: bool = True) -> Mapping:
    """Load the built-in table, then let ``path`` replace any of its rules."""
    rules, prefix = _read_table(DEFAULT_MAPPING)
    if path:
        extra, prefix = _read_table(Path(path), prefix)
        rules.update(extra)
    return Mapping(rules=rules, unknown_prefix=prefix, keep_unknown=keep_unknown)


def _read_table(path: Path, prefix: str = "HQ_") -> tuple[dict[str, Rule], str]:
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"GATEWAY_NORMALIZE_MAPPING_FILE: cannot read {path}: {exc}") from None
    rules: dict[str, Rule] = {}
    for name, body in table.get("events", {}).items():
        unknown = set(body) - _RULE_FIELDS
        if unknown:
            raise ConfigError(f"GATEWAY_NORMALIZE_MAPPING_FILE: [events.{name}] unknown keys {sorted(unknown)}")
        if body.get("envelope", "AUDIT") not in ("AUDIT", "VERBOSE"):
            raise ConfigError(f"GATEWAY_NORMALIZE_MAPPING_FILE: [events.{name}] envelope must be AUDIT|VERBOSE")
        if "strip_user" in body:
            body = {**body, "strip_user": tuple(body["strip_user"])}
        rule = Rule(**body)
        if rule.envelope == "AUDIT" and not rule.stage and not rule.drop:
            rule = replace(rule, stage=prefix + _upper_snake(name))
        rules[name] = rule
    return rules, str(table.get("unknown", {}).get("stage_prefix", prefix))


def _upper_snake(name: str) -> str:
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return re.sub(r"[^A-Za-z0-9]+", "_", snake).strip("_").upper() or "EVENT"


@dataclass(frozen=True, slots=True)
class TurnState:
    """Running per-conversation turn tracking, advanced by every normalized event."""

    turn: int = 0
    phase: TurnPhase = TurnPhase.IDLE
    reply_length: int = 0

    def advance(self, name: str, data: Any) -> TurnState:
        if name == "done" or name.startswith("gateway.upstream"):
            return self
        turn, phase, length = self.turn, self.phase, self.reply_length
        if phase is not TurnPhase.RUNNING:
            turn, phase, length = turn + 1, TurnPhase.RUNNING, 0
        if name == "text_delta" and isinstance(data, dict):
            length += len(str(data.get("text", "")))
        elif name == "final":
            phase = TurnPhase.COMPLETED
        elif name == "error":
            phase = TurnPhase.FAILED
        return TurnState(turn, phase, length)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TurnState:
        """Rebuild the tracker from the ``_meta`` of the last journaled envelope."""
        try:
            phase = TurnPhase(meta.get("state", "IDLE"))
        except ValueError:
            phase = TurnPhase.IDLE
        return cls(int(meta.get("turn") or 0), phase, int(meta.get("replyLength") or 0))


@dataclass(frozen=True, slots=True)
class Envelope:
    """One journaled envelope: its seq, stage and the JSON bytes every viewer receives.

    A value, never written to after ``normalize``: the frames transports encode from it live in the
    delivery path's frame caches (gateway/delivery.py), not here.
    """

    seq: int
    stage: str
    body: bytes
    created_ms: int
    scope: str = ""  # "", "diagnostic" or "accounting": what a user-scope viewer may not see
    user_body: bytes | None = None  # body with user-hidden fields stripped, when it differs
    # A coalesced envelope stands for every seq from ``covers_from`` to ``seq`` (0: just ``seq``).
    covers_from: int = 0

    @property
    def first_seq(self) -> int:
        return self.covers_from or self.seq

    @property
    def hidden_from_user(self) -> bool:
        """Diagnostic and accounting envelopes never reach a user-scope viewer (seed 000 ``?scope=user``)."""
        return bool(self.scope)

    @property
    def body_for_user(self) -> bytes:
        return self.body if self.user_body is None else self.user_body

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = orjson.loads(self.body)
        return result


@dataclass(frozen=True, slots=True)
class ConversationInfo:
    """What the gateway learned about a conversation from HQ ``GET /v1/api/conversations/{id}``."""

    agent: str | None = None
    title: str | None = None


_ISO_SECOND: list[Any] = [None, ""]  # the last second formatted: envelopes come many per second


def iso_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds, e.g. 2026-11-24T10:27:35.123Z."""
    second, milli = divmod(ms, 1000)
    if _ISO_SECOND[0] != second:
        _ISO_SECOND[:] = [second, datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")]
    return f"{_ISO_SECOND[1]}{milli:03d}Z"


def _exact(data: bytes) -> bytes:
    """An exactly sized copy: orjson's output keeps its whole write buffer allocated (measured with orjson
    3.13: 8 KiB of RSS for a 1.3 KiB envelope, 4 KiB for a tiny one), and journaled envelopes live long."""
    return bytes(memoryview(data))


def normalize(
    event: HqEvent,
    *,
    seq: int,
    conversation_id: str,
    turn: TurnState,
    mapping: Mapping,
    now_ms: int,
    info: ConversationInfo = ConversationInfo(),
) -> tuple[Envelope | None, TurnState]:
    """Map one HQ event to its envelope (None when the mapping drops it) and the next turn state."""
    rule = mapping.rule_for(event.name)
    if rule is None or rule.drop:
        return None, turn
    data = event.data
    turn = turn.advance(event.name, data)
    stage = rule.stage
    if rule.error_stage and isinstance(data, dict) and data.get(rule.error_field) is True:
        stage = rule.error_stage
    fields: dict[str, Any] = dict(data) if isinstance(data, dict) else {"data": data}
    tool = fields.get(rule.tool_field) if rule.tool_field else None
    meta: dict[str, Any] = {
        "stage": stage if rule.envelope == "AUDIT" else "VERBOSE",
        "conversationId": conversation_id,
        "intent": None,
        "state": turn.phase.value,
        "turn": turn.turn,
        "sourceEvent": event.name,
        "sourceEventId": event.id,
    }
    if event.name == "text_delta":
        meta["replyLength"] = turn.reply_length
    if tool is not None:
        meta["toolCode"] = tool
    if info.agent is not None:
        meta["agent"] = info.agent
    if info.title is not None:
        meta["title"] = info.title
    created = iso_ms(now_ms)
    if rule.envelope == "AUDIT":
        body: dict[str, Any] = {
            "eventType": "AUDIT",
            "auditId": seq,
            "stage": stage,
            "createdAt": created,
            "payload": {**fields, "_meta": meta},
            "verbose": None,
        }
    else:
        stage = "VERBOSE"
        verbose = {
            "verboseId": seq,
            "eventType": rule.verbose_type,
            "stepName": "HqStream",
            "determinant": rule.determinant,
            "intent": None,
            "state": turn.phase.value,
            "ruleId": None,
            "toolCode": tool,
            "level": rule.level,
            "text": str(fields.get(rule.text_field, "")) if rule.text_field else "",
        }
        body = {
            "eventType": "VERBOSE",
            "auditId": None,
            "stage": "VERBOSE",
            "createdAt": created,
            "payload": {**fields, "verbose": verbose, "_meta": meta},
            "verbose": verbose,
        }
    user_body = None
    if rule.strip_user and any(k in fields for k in rule.strip_user):
        payload = {k: v for k, v in body["payload"].items() if k not in rule.strip_user}
        user_body = _exact(orjson.dumps({**body, "payload": payload}))
    envelope = Envelope(seq, stage, _exact(orjson.dumps(body)), now_ms, rule.scope, user_body)
    return envelope, turn
