import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.simulator.script import DirectiveError, build_turn, parse_directives, split_chunks


def names(events):
    return [e.event for e in events]


def turn(text, seed=1, interval_ms=10.0):
    return build_turn(text, random.Random(seed), interval_ms=interval_ms)


@given(seed=st.integers(), deltas=st.integers(1, 300), prompt=st.text(max_size=200))
def test_deltas_concatenate_to_the_final_text(seed, deltas, prompt):
    events = build_turn(f"{prompt} [deltas={deltas}]", random.Random(seed), interval_ms=0)
    chunks = [e.data["text"] for e in events if e.event == "text_delta"]
    final = next(e for e in events if e.event == "final")
    assert len(chunks) == deltas
    assert all(chunks)
    assert "".join(chunks) == final.data["text"]


@given(text=st.text(min_size=1, max_size=500), data=st.data())
def test_split_chunks_is_lossless(text, data):
    n = data.draw(st.integers(1, len(text)))
    chunks = split_chunks(text, n, random.Random(data.draw(st.integers())))
    assert len(chunks) == n and all(chunks) and "".join(chunks) == text


def test_default_turn_shape():
    events = turn("What changed in revenue?")
    seq = names(events)
    assert seq[0] == "status" and seq[1] == "agent_active"
    assert seq[-3:] == ["token_usage", "final", "done"]
    for name in ("tool_call", "tool_result", "artifact_created", "text_delta"):
        assert name in seq
    call = next(e.data for e in events if e.event == "tool_call")
    result = next(e.data for e in events if e.event == "tool_result")
    assert set(call) == {"id", "name", "scope", "args_summary", "args_digest"}
    assert result == {"id": call["id"], "is_error": False, "summary": result["summary"]}
    usage = next(e.data for e in events if e.event == "token_usage")
    assert set(usage) == {"model", "input_tokens", "output_tokens", "cost_usd"}
    assert set(next(e.data for e in events if e.event == "final")) == {"text", "duration_ms"}
    assert set(next(e.data for e in events if e.event == "artifact_created")) == {"id", "kind", "title"}
    assert events[-1].data == {}


def test_same_seed_same_turn_other_seed_other_turn():
    assert turn("hello", seed=42) == turn("hello", seed=42)
    assert turn("hello", seed=42) != turn("hello", seed=43)


def test_tools_and_tool_error_directives():
    events = turn("look [tools=3] [tool_error]")
    calls = [e.data for e in events if e.event == "tool_call"]
    results = [e.data for e in events if e.event == "tool_result"]
    assert len(calls) == len(results) == 3
    assert [r["id"] for r in results] == [c["id"] for c in calls]
    assert [r["is_error"] for r in results] == [True, False, False]
    assert "final" in names(events)
    assert "tool_call" not in names(turn("[tools=0]"))


def test_fail_directive_ends_with_error_then_done():
    events = turn("broken [fail] [deltas=10]")
    seq = names(events)
    assert "final" not in seq and "token_usage" not in seq
    assert seq[-2:] == ["error", "done"]
    assert seq.count("text_delta") == 5
    assert events[-2].data["recoverable"] is False
    assert turn("[fail=recoverable]")[-2].data["recoverable"] is True


def test_interval_directive_sets_pacing_and_final_reports_plan():
    events = turn("[interval_ms=5] [deltas=4]", interval_ms=100)
    deltas = [e for e in events if e.event == "text_delta"]
    assert {e.delay_ms for e in deltas} == {5.0}
    final = next(e for e in events if e.event == "final")
    assert final.data["duration_ms"] == round(sum(e.delay_ms for e in events))


def test_artifacts_directive():
    assert names(turn("[artifacts=3]")).count("artifact_created") == 3
    assert "artifact_created" not in names(turn("[artifacts=0]"))


def test_directives_are_stripped_and_unknown_brackets_kept():
    clean, opts = parse_directives("see [note] here [deltas=7]  [tool_error]")
    assert clean == "see [note] here"
    assert opts.deltas == 7 and opts.tool_error


@pytest.mark.parametrize(
    "text",
    ["[deltas=0]", "[deltas=x]", "[deltas=]", "[tools=-1]", "[interval_ms=-3]", "[fail=maybe]", "[tool_error=1]"],
)
def test_bad_directive_values_raise(text):
    with pytest.raises(DirectiveError):
        turn(text)
