"""The running state of a conversation's current turn, for late joiners (pure).

``TurnView.apply`` folds one envelope in; ``TurnView.envelope`` renders the ``TURN_SNAPSHOT``
envelope describing everything up to ``last_seq``. Live delivery then resumes at ``last_seq + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.envelope import Envelope, iso_ms

STAGE = "TURN_SNAPSHOT"


@dataclass(slots=True)
class TurnView:
    """Turn number, reply so far, tool calls with status, latest caption, running or not."""

    conversation_id: str
    last_seq: int = 0
    turn: int = 0
    state: str = "IDLE"
    first_seq: int | None = None
    started_at: str | None = None
    user_input: str | None = None
    reply: list[str] = field(default_factory=list)
    final: str | None = None
    tools: dict[str, dict[str, Any]] = field(default_factory=dict)
    status: str | None = None
    error: str | None = None
    usage: dict[str, Any] | None = None

    def apply(self, env: Envelope) -> None:
        """Fold in the next envelope (its seq must follow ``last_seq``; coalesced ones cover a range)."""
        self.last_seq = env.seq
        body = env.as_dict()
        payload = body.get("payload") or {}
        meta = payload.get("_meta") or {}
        turn = int(meta.get("turn") or 0)
        source = meta.get("sourceEvent")
        if source in ("gateway.upstream_error", "gateway.upstream_restored") or turn == 0:
            return
        if turn != self.turn:
            self._start(turn, env, body)
        self.state = str(meta.get("state") or self.state)
        fields = {k: v for k, v in payload.items() if k not in ("_meta", "verbose")}
        stage = body.get("stage")
        if source == "gateway.user_input":
            self.user_input = fields.get("message")
        elif stage == "ASSISTANT_OUTPUT_DELTA":
            self.reply.append(str(fields.get("text", "")))
        elif stage == "ASSISTANT_OUTPUT":
            self.final = str(fields.get("text", ""))
        elif stage == "MCP_TOOL_CALL":
            tool_id = str(fields.get("id"))
            self.tools[tool_id] = {
                "id": fields.get("id"),
                "name": fields.get("name"),
                "argsSummary": fields.get("args_summary"),
                "status": "running",
                "startedAt": body.get("createdAt"),
                "endedAt": None,
                "summary": None,
            }
        elif stage in ("MCP_TOOL_RESULT", "MCP_TOOL_ERROR"):
            tool = self.tools.setdefault(str(fields.get("id")), {"id": fields.get("id"), "name": None})
            tool.update(status="error" if stage == "MCP_TOOL_ERROR" else "done", endedAt=body.get("createdAt"),
                        summary=fields.get("summary"))  # fmt: skip
        elif stage == "TOKEN_USAGE":
            self.usage = fields
        elif stage == "VERBOSE":
            verbose = body.get("verbose") or {}
            if verbose.get("eventType") == "VERBOSE_ERROR":
                self.error = verbose.get("text")
            elif verbose.get("determinant") != "AGENT_ACTIVE":
                self.status = verbose.get("text")

    def _start(self, turn: int, env: Envelope, body: dict[str, Any]) -> None:
        self.turn, self.first_seq, self.started_at = turn, env.first_seq, body.get("createdAt")
        self.user_input = self.final = self.status = self.error = None
        self.reply, self.tools, self.usage = [], {}, None

    @property
    def running(self) -> bool:
        return self.state == "RUNNING"

    def payload(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "running": self.running,
            "state": self.state,
            "fromSeq": self.first_seq,
            "startedAt": self.started_at,
            "userInput": self.user_input,
            "reply": self.final if self.final is not None else "".join(self.reply),
            "tools": list(self.tools.values()),
            "status": self.status,
            "error": self.error,
            "usage": self.usage,
        }

    def envelope(self, now_ms: int) -> Envelope:
        """The TURN_SNAPSHOT envelope; ``auditId`` is the last seq it covers."""
        payload = self.payload()
        payload["_meta"] = {
            "stage": STAGE,
            "conversationId": self.conversation_id,
            "intent": None,
            "state": self.state,
            "turn": self.turn,
            "sourceEvent": "gateway.snapshot",
            "sourceEventId": None,
        }
        body = {
            "eventType": "AUDIT",
            "auditId": self.last_seq,
            "stage": STAGE,
            "createdAt": iso_ms(now_ms),
            "payload": payload,
            "verbose": None,
        }
        user_payload = {k: v for k, v in payload.items() if k != "usage"}  # accounting: not for user scope
        user_body = orjson.dumps({**body, "payload": user_payload})
        return Envelope(self.last_seq, STAGE, orjson.dumps(body), now_ms, user_body=user_body)
