"""A normalized per-turn timeline built from journaled envelopes (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def _ms(created: str) -> int:
    return int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp() * 1000)


def _new_turn(number: int, created: str) -> dict[str, Any]:
    return {
        "turn": number,
        "state": "RUNNING",
        "startedAt": created,
        "endedAt": None,
        "durationMs": None,
        "userInput": None,
        "steps": [],
        "reply": "",
        "usage": None,
        "final": None,
        "error": None,
        "firstSeq": None,
        "lastSeq": None,
    }


def build_trace(envelopes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Group envelopes by turn: tool calls paired with results (with durations), usage, outcome."""
    turns: dict[int, dict[str, Any]] = {}
    open_tools: dict[tuple[int, str], dict[str, Any]] = {}
    for env in envelopes:
        payload = env.get("payload") or {}
        meta = payload.get("_meta") or {}
        number = int(meta.get("turn") or 0)
        if number == 0:
            continue
        created = env["createdAt"]
        turn = turns.get(number)
        if turn is None:
            turn = turns[number] = _new_turn(number, created)
        seq = env["auditId"] if env["auditId"] is not None else (env.get("verbose") or {}).get("verboseId")
        turn["firstSeq"] = turn["firstSeq"] or seq
        turn["lastSeq"] = seq
        turn["state"] = meta.get("state", turn["state"])
        source = meta.get("sourceEvent")
        fields = {k: v for k, v in payload.items() if k not in ("_meta", "verbose")}
        if source == "gateway.user_input":
            turn["userInput"] = fields.get("message")
        elif source == "tool_call":
            step = {
                "type": "tool",
                "toolCallId": fields.get("id"),
                "name": fields.get("name"),
                "argsSummary": fields.get("args_summary"),
                "status": "running",
                "startedAt": created,
                "endedAt": None,
                "durationMs": None,
                "summary": None,
                "callSeq": seq,
                "resultSeq": None,
            }
            turn["steps"].append(step)
            open_tools[(number, str(fields.get("id")))] = step
        elif source == "tool_result":
            found = open_tools.pop((number, str(fields.get("id"))), None)
            if found is None:  # a result whose call is outside retention
                found = {"type": "tool", "toolCallId": fields.get("id"), "name": None, "startedAt": None}
                turn["steps"].append(found)
            step = found
            step["status"] = "error" if fields.get("is_error") else "done"
            step["endedAt"] = created
            step["summary"] = fields.get("summary")
            step["resultSeq"] = seq
            if step.get("startedAt"):
                step["durationMs"] = _ms(created) - _ms(step["startedAt"])
        elif source == "status":
            turn["steps"].append({"type": "status", "text": fields.get("message"), "at": created})
        elif source == "text_delta":
            turn["reply"] += str(fields.get("text", ""))
        elif source == "token_usage":
            turn["usage"] = fields
        elif source in ("final", "error"):
            turn[source] = fields
            if source == "final" and isinstance(fields.get("text"), str):
                turn["reply"] = fields["text"]
            turn["endedAt"] = created
            turn["durationMs"] = _ms(created) - _ms(turn["startedAt"])
        elif source in ("gateway.upstream_error", "gateway.upstream_restored"):
            turn["steps"].append({"type": "upstream", "text": fields.get("message"), "at": created})
    return [turns[n] for n in sorted(turns)]
