"""Coalescing a lagging viewer's queue (pure): merge reply-text deltas, drop superseded captions.

Every other stage is kept as is. Each output envelope covers a contiguous seq range
(``covers_from``..``seq``), so the viewer's cursor stays exact: the last seq it was sent.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from gateway.envelope import Envelope

DELTA = "ASSISTANT_OUTPUT_DELTA"


def _facts(env: Envelope) -> tuple[str, int]:
    """(kind, turn): kind is the stage, or the verbose eventType for VERBOSE envelopes."""
    body = env.as_dict()
    turn = int(((body.get("payload") or {}).get("_meta") or {}).get("turn") or 0)
    if env.stage == "VERBOSE":
        return str((body.get("verbose") or {}).get("eventType") or ""), turn
    return env.stage, turn


def _merge_deltas(run: list[Envelope]) -> Envelope:
    first = run[0].as_dict()
    last = run[-1].as_dict()
    texts = []
    for env in run:
        texts.append(str((env.as_dict().get("payload") or {}).get("text", "")))
    payload: dict[str, Any] = dict(last.get("payload") or {})
    meta = dict(payload.get("_meta") or {})
    covered_from = run[0].first_seq
    meta["coalesced"] = {"fromSeq": covered_from, "toSeq": run[-1].seq, "count": run[-1].seq - covered_from + 1}
    payload["text"] = "".join(texts)
    payload["_meta"] = meta
    body = {**first, "auditId": run[-1].seq, "createdAt": last.get("createdAt"), "payload": payload}
    last_env = run[-1]
    return Envelope(last_env.seq, DELTA, orjson.dumps(body), last_env.created_ms, covers_from=covered_from)


def coalesce(queue: Iterable[Envelope]) -> list[Envelope]:
    """The same information in fewer envelopes; never merges or drops any other stage."""
    items = list(queue)
    facts = [_facts(env) for env in items]
    # 1. A VERBOSE_PROGRESS caption followed later by another of the same turn is superseded:
    #    its seq range is absorbed by the envelope right after it.
    # Superseded only by a later caption at least as visible: user viewers never see diagnostic ones.
    superseded = [
        kind == "VERBOSE_PROGRESS"
        and any(
            k == "VERBOSE_PROGRESS" and t == turn and items[j].scope in ("", items[i].scope)
            for j, (k, t) in enumerate(facts[i + 1 :], start=i + 1)
        )
        for i, (kind, turn) in enumerate(facts)
    ]
    kept: list[tuple[Envelope, str, int]] = []
    absorb_from = 0
    for i, (env, (kind, turn)) in enumerate(zip(items, facts, strict=True)):
        if superseded[i]:
            # Absorbed only by an envelope every viewer sees: a user-scope viewer must not lose the
            # caption inside a diagnostic envelope it never receives.
            nxt = next((j for j in range(i + 1, len(items)) if not superseded[j]), None)
            if nxt is not None and not items[nxt].scope:
                absorb_from = absorb_from or env.first_seq
                continue
        if absorb_from:
            env = _widen(env, absorb_from)
            absorb_from = 0
        kept.append((env, kind, turn))
    # 2. Consecutive deltas of the same turn become one.
    out: list[Envelope] = []
    run: list[Envelope] = []
    run_turn = -1
    for env, kind, turn in kept:
        if kind == DELTA and (not run or turn == run_turn):
            run.append(env)
            run_turn = turn
            continue
        out.extend(_flush(run))
        run, run_turn = ([env], turn) if kind == DELTA else ([], -1)
        if kind != DELTA:
            out.append(env)
    out.extend(_flush(run))
    return out


def _flush(run: list[Envelope]) -> list[Envelope]:
    if len(run) > 1:
        return [_merge_deltas(run)]
    return run


def _widen(env: Envelope, covers_from: int) -> Envelope:
    """The same envelope standing also for the dropped seqs before it."""
    return Envelope(env.seq, env.stage, env.body, env.created_ms, env.scope, env.user_body, covers_from=covers_from)
