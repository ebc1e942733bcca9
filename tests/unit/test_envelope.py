from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.delivery import sse_frame
from gateway.envelope import ConversationInfo, HqEvent, TurnPhase, TurnState, iso_ms, load_mapping, normalize
from gateway.errors import ConfigError

CONV = "9bf7540a-b129-4685-a120-730e8a0cb94b"
NOW = 1_771_064_521_102  # 2026-02-14T10:22:01.102Z
MAPPING = load_mapping()


def run(events: list[HqEvent], turn: TurnState | None = None) -> list[dict]:
    turn = turn or TurnState()
    out = []
    seq = 0
    for ev in events:
        env, turn = normalize(
            ev, seq=seq + 1, conversation_id=CONV, turn=turn, mapping=MAPPING, now_ms=NOW,
            info=ConversationInfo(agent="analyst", title="Q3"),
        )  # fmt: skip
        if env is not None:
            seq = env.seq
            body = orjson.loads(env.body)
            assert env.stage == body["stage"]
            out.append(body)
    return out


def test_iso_ms_is_utc_with_millis() -> None:
    assert iso_ms(NOW) == "2026-02-14T10:22:01.102Z"


@given(st.integers(min_value=-(10**12), max_value=10**13), st.integers(min_value=-(10**12), max_value=10**13))
def test_iso_ms_matches_datetime_whatever_came_before(before: int, ms: int) -> None:
    iso_ms(before)  # the per-second cache must never leak into the next value
    expected = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"
    assert iso_ms(ms) == expected


@pytest.mark.parametrize(
    ("name", "data", "event_type", "stage"),
    [
        ("tool_call", {"id": "t1", "name": "sql.query", "args_digest": "ab"}, "AUDIT", "MCP_TOOL_CALL"),
        ("tool_result", {"id": "t1", "is_error": False}, "AUDIT", "MCP_TOOL_RESULT"),
        ("tool_result", {"id": "t1", "is_error": True}, "AUDIT", "MCP_TOOL_ERROR"),
        ("text_delta", {"text": "Hi"}, "AUDIT", "ASSISTANT_OUTPUT_DELTA"),
        ("token_usage", {"model": "m", "input_tokens": 1}, "AUDIT", "TOKEN_USAGE"),
        ("final", {"text": "Hi", "duration_ms": 5}, "AUDIT", "ASSISTANT_OUTPUT"),
        ("done", {}, "AUDIT", "ENGINE_RETURN"),
        ("artifact_created", {"id": "a"}, "AUDIT", "HQ_ARTIFACT_CREATED"),
        ("status", {"message": "Working"}, "VERBOSE", "VERBOSE"),
        ("agent_active", {"hint": "typing"}, "VERBOSE", "VERBOSE"),
        ("error", {"message": "boom", "recoverable": False}, "VERBOSE", "VERBOSE"),
    ],
)
def test_default_mapping_follows_design_table(name: str, data: dict, event_type: str, stage: str) -> None:
    [env] = run([HqEvent(name, data, "41")])
    assert env["eventType"] == event_type
    assert env["stage"] == stage
    assert env["createdAt"] == "2026-02-14T10:22:01.102Z"
    meta = env["payload"]["_meta"]
    assert meta["conversationId"] == CONV
    assert meta["sourceEvent"] == name and meta["sourceEventId"] == "41"
    assert (meta["agent"], meta["title"], meta["intent"]) == ("analyst", "Q3", None)
    for key, value in data.items():
        assert env["payload"][key] == value  # nothing of HQ's data is dropped
    if event_type == "AUDIT":
        assert env["auditId"] == 1 and env["verbose"] is None and meta["stage"] == stage
    else:
        assert env["auditId"] is None
        assert env["verbose"] == env["payload"]["verbose"]
        assert env["verbose"]["verboseId"] == 1


def test_verbose_fields() -> None:
    status, active, err = run(
        [HqEvent("status", {"message": "Checking"}), HqEvent("agent_active", {"hint": "x"}),
         HqEvent("error", {"message": "boom", "recoverable": True})]
    )  # fmt: skip
    assert status["verbose"] | {} == {
        "verboseId": 1, "eventType": "VERBOSE_PROGRESS", "stepName": "HqStream", "determinant": "STATUS",
        "intent": None, "state": "RUNNING", "ruleId": None, "toolCode": None, "level": "INFO", "text": "Checking",
    }  # fmt: skip
    assert (active["verbose"]["level"], active["verbose"]["determinant"]) == ("DEBUG", "AGENT_ACTIVE")
    assert (err["verbose"]["eventType"], err["verbose"]["level"]) == ("VERBOSE_ERROR", "ERROR")
    assert err["payload"]["recoverable"] is True


def test_stale_is_never_forwarded() -> None:
    assert run([HqEvent("stale", {"reason": "lagged"})]) == []


def test_turn_tracking_across_turns() -> None:
    envs = run(
        [
            HqEvent("gateway.user_input", {"message": "hi"}),
            HqEvent("text_delta", {"text": "ab"}),
            HqEvent("text_delta", {"text": "cde"}),
            HqEvent("final", {"text": "abcde"}),
            HqEvent("done", {}),
            HqEvent("status", {"message": "again"}),
            HqEvent("error", {"message": "x", "recoverable": False}),
        ]
    )
    metas = [e["payload"]["_meta"] for e in envs]
    assert [m["turn"] for m in metas] == [1, 1, 1, 1, 1, 2, 2]
    assert [m["state"] for m in metas] == ["RUNNING"] * 3 + ["COMPLETED"] * 2 + ["RUNNING", "FAILED"]
    assert [m.get("replyLength") for m in metas[1:3]] == [2, 5]
    assert envs[0]["stage"] == "USER_INPUT"


def test_turn_state_round_trips_through_meta() -> None:
    state = TurnState(3, TurnPhase.RUNNING, 12)
    assert TurnState.from_meta({"turn": 3, "state": "RUNNING", "replyLength": 12}) == state
    assert TurnState.from_meta({}) == TurnState()


def test_non_object_data_is_kept() -> None:
    [env] = run([HqEvent("text_delta", "not json", "1")])
    assert env["payload"]["data"] == "not json"


def test_user_body_strips_args_digest() -> None:
    env, _ = normalize(
        HqEvent("tool_call", {"id": "t", "name": "n", "args_digest": "secret"}), seq=1, conversation_id=CONV,
        turn=TurnState(), mapping=MAPPING, now_ms=NOW,
    )  # fmt: skip
    assert env is not None and env.user_body is not None
    assert "args_digest" not in orjson.loads(env.user_body)["payload"]
    assert "args_digest" in orjson.loads(env.body)["payload"]


def test_sse_frame_is_id_event_data(tmp_path: Path) -> None:
    env, _ = normalize(HqEvent("final", {"text": "x"}), seq=7, conversation_id=CONV, turn=TurnState(),
                       mapping=MAPPING, now_ms=NOW)  # fmt: skip
    assert env is not None
    assert sse_frame(env) == b"id: 7\nevent: ASSISTANT_OUTPUT\ndata: " + env.body + b"\n\n"
    assert b"\n" not in env.body


def test_mapping_override_and_unknown_drop(tmp_path: Path) -> None:
    f = tmp_path / "m.toml"
    f.write_text('[events.status]\nenvelope = "AUDIT"\nstage = "STEP_ENTER"\n')
    m = load_mapping(f, keep_unknown=False)
    assert m.rules["status"].stage == "STEP_ENTER"
    assert m.rules["final"].stage == "ASSISTANT_OUTPUT"  # the rest of the defaults stay
    assert m.rule_for("never_seen") is None
    f.write_text('[events.status]\nenvelop = "AUDIT"\n')
    with pytest.raises(ConfigError, match="unknown keys"):
        load_mapping(f)
