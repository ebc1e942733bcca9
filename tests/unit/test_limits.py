"""Abuse limits and the user-scope serialization, without sockets."""

from __future__ import annotations

import io
import logging

import orjson

from gateway.delivery import sse_frame, sse_user_frame
from gateway.envelope import Envelope, HqEvent, TurnState, load_mapping, normalize
from gateway.limits import TokenBuckets
from gateway.logs import _ScrubFilter, scrub


def test_token_bucket_burst_then_rate_and_bounded_keys() -> None:
    now = [0.0]
    buckets = TokenBuckets(rate_per_s=2.0, burst=3, max_keys=2, clock=lambda: now[0])
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == 0.5
    now[0] = 0.5
    assert buckets.take("a") == 0.0
    buckets.take("b")
    buckets.take("c")  # "a" is evicted: bounded memory, it starts again full
    assert buckets.take("a") == 0.0


def test_user_scope_frames_strip_fields() -> None:
    mapping = load_mapping()
    env, _ = normalize(HqEvent("tool_call", {"id": "t", "name": "sql", "args_digest": "sha256:x"}, "1"),
                       seq=4, conversation_id="c", turn=TurnState(), mapping=mapping, now_ms=0)  # fmt: skip
    assert env is not None and not env.hidden_from_user
    assert b"args_digest" in sse_frame(env) and b"args_digest" not in sse_user_frame(env)
    assert sse_user_frame(env).startswith(b"id: 4\nevent: MCP_TOOL_CALL\n")
    assert "args_digest" not in orjson.loads(env.body_for_user)["payload"]
    for name in ("agent_active", "token_usage"):
        hidden, _ = normalize(HqEvent(name, {"hint": "x"}), seq=5, conversation_id="c", turn=TurnState(),
                              mapping=mapping, now_ms=0)  # fmt: skip
        assert hidden is not None and hidden.hidden_from_user
    plain = Envelope(6, "S", b"{}", 0)
    assert sse_user_frame(plain) == sse_frame(plain) and plain.body_for_user is plain.body


def test_scrub_removes_every_token_shape() -> None:
    jwt_text = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.sig-nature_x"
    lines = [
        f"CONNECT\npasscode:{jwt_text}\n",
        "Authorization: Bearer opaque-viewer-token",
        "GET /x?access_token=abc.def&since_seq=1",
        "cookie: hq_session=hq_pat_secret; other=1",
        f"bare {jwt_text} in text",
    ]
    for line in lines:
        out = scrub(line)
        for secret in (jwt_text, "opaque-viewer-token", "abc.def", "hq_pat_secret"):
            assert secret not in out, out
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom %s", ("Bearer t0ken",), None)
    try:
        raise ValueError(f"bad credential {jwt_text}")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    _ScrubFilter().filter(record)
    assert "t0ken" not in record.getMessage() and record.exc_text and jwt_text not in record.exc_text


def test_a_logged_value_never_starts_a_line_and_stomp_session_ids_stay_readable() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ScrubFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log = logging.getLogger("test.injection")
    log.addHandler(handler)
    log.propagate = False
    try:
        forged = "x\nINFO gateway.audit: attach subject=admin\r\x85\u2028INFO gateway.audit: more"
        log.warning("stomp subscribe session=sess-1f2e id=%s", forged)
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("WARNING test.injection: stomp subscribe session=sess-1f2e id=x")
    assert "\\x0aINFO gateway.audit" in lines[0]
