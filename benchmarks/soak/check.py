"""Every viewer against the recorded journal, envelope by envelope.

A viewer's expected envelopes are the journal's seqs from its start (after its ``since-seq`` when it
subscribed with one; else the first envelope created after its subscription was confirmed, or its
first received seq if earlier) to its end (the last seq
it saw when it left on purpose, else the journal's newest). Across all its connections it must have
received each exactly once, in order, or have been told (a server notice, or at least a dropped
connection) and then got the rest by resuming.

Silence: for each expected envelope, the time from its ``created_ms`` in the journal to its first
receipt (or to the end of the phase when it never came), unless in between the viewer was told,
dropped or reloading (from the notice until its next subscription). The longest such wait is the phase's max silence.
"""

from __future__ import annotations

import bisect
from array import array
from collections import Counter
from typing import Any

from benchmarks.soak.recorder import Truth
from benchmarks.soak.viewers import DROPPED, RELOAD


def notice_kind(text: str) -> str:
    """A short label of a notice: its first words without ids or numbers."""
    if text in (DROPPED, RELOAD):
        return text
    words = text.replace(":", " ").replace("{", " ").split()
    keep = [w for w in words[:4] if not any(ch.isdigit() for ch in w)]
    return " ".join(keep)[:60]


def check_viewer(record: dict[str, Any], truth: dict[int, float], end_ms: float) -> dict[str, Any]:
    seqs = array("q")
    seqs.frombytes(record["seqs"])
    rx = array("d")
    rx.frombytes(record["rx_ms"])
    notices: list[tuple[float, str]] = record["notices"]
    # From each notice (or drop, or reload) until the viewer's next subscription: it knows it is not watching.
    reconnects = sorted(record["connected_ms"])
    windows = []
    for t, _ in notices:
        i = bisect.bisect_right(reconnects, t)
        windows.append((t, reconnects[i] if i < len(reconnects) else end_ms))
    server_notices = [w for _, w in notices if w not in (DROPPED, RELOAD)]
    dropped = sum(1 for _, w in notices if w == DROPPED)

    first_rx: dict[int, float] = {}
    duplicates = out_of_order = 0
    previous = 0
    for seq, t in zip(seqs, rx, strict=True):
        if seq in first_rx:
            duplicates += 1
            continue
        first_rx[seq] = t
        if seq < previous:
            out_of_order += 1
        previous = max(previous, seq)

    ordered = sorted(truth)
    if record["since"] is not None:  # subscribed with a cursor: everything after it
        start = next((s for s in ordered if s > record["since"]), ordered[-1] + 1 if ordered else 1)
    else:
        # Live from the subscription: owed is every envelope created once it was confirmed (RECEIPT /
        # first SSE byte); one created while it was still being set up may or may not be replayed.
        subscribed = record["connected_ms"][0] if record["connected_ms"] else record["started_ms"]
        after = next((s for s in ordered if truth[s] >= subscribed), None)
        candidates = [s for s in (min(first_rx, default=None), after) if s is not None]
        start = min(candidates) if candidates else (ordered[-1] + 1 if ordered else 1)
    end = record["left_at_seq"] if record["left_at_seq"] is not None else (ordered[-1] if ordered else 0)
    expected = [s for s in ordered if start <= s <= end]
    missing = [s for s in expected if s not in first_rx]
    phantom = sum(1 for s in first_rx if s not in truth)

    max_wait = 0.0
    max_wait_seq = 0
    waits_untold: list[float] = []
    for s in expected:
        created = truth[s]
        got = first_rx.get(s, end_ms)
        if any(start <= got and stop >= created for start, stop in windows):
            continue  # told (or dropped, or reloading) while this envelope was owed: not silence
        wait = max(0.0, got - created)
        waits_untold.append(wait)
        if wait > max_wait:
            max_wait, max_wait_seq = wait, s
    told = bool(server_notices) or dropped > 0
    return {
        "kind": record["kind"],
        "role": record["role"],
        "port": record["port"],
        "max_wait_seq_index": ordered.index(max_wait_seq) if max_wait_seq else None,
        "reloads": sum(1 for _, w in notices if w == RELOAD),
        "deliveries": len(seqs),
        "expected": len(expected),
        "lost": len(missing),
        "first_lost": missing[:5],
        "missing": missing,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "phantom": phantom,
        "told": told,
        "server_notices": server_notices,
        "dropped": dropped,
        "resumes": record["resumes"],
        "gave_up": record["gave_up"],
        "stalled": record["stalled"],
        "connected": record["connected"],
        "left": record["left_at_seq"] is not None,
        "max_wait_ms": max_wait,
        "lag_ms": waits_untold,
    }


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def check_phase(records: list[dict[str, Any]], truths: dict[str, Truth], end_ms: float) -> dict[str, Any]:
    """The phase's row: viewers, deliveries, lost, duplicated, told-and-resumed, max silence."""
    merged = {c: t.merged() for c, t in truths.items()}
    rows = [check_viewer(r, merged[r["conversation"]][0], end_ms) for r in records]
    lost_stages: Counter[str] = Counter()
    for r, row in zip(records, rows, strict=True):
        stages = truths[r["conversation"]].stages
        lost_stages.update(stages.get(s, "?") for s in row["missing"])
    reasons: Counter[str] = Counter()
    for row in rows:
        reasons.update(notice_kind(n) for n in row["server_notices"])
        if row["dropped"]:
            reasons["dropped"] += row["dropped"]
    normal = [r for r in rows if not r["stalled"]]
    silence = max((r["max_wait_ms"] for r in normal), default=0.0)
    lags = [w for r in normal for w in r["lag_ms"]]
    clean = [r for r in rows if not r["lost"] and not r["duplicates"] and not r["out_of_order"]]
    by_kind = Counter(r["kind"] for r in rows)
    worst = sorted((r for r in rows if r["lost"] or r["duplicates"]), key=lambda r: -r["lost"])[:5]
    return {
        "viewers": len(rows),
        "by_kind": dict(by_kind),
        "deliveries": sum(r["deliveries"] for r in rows),
        "expected": sum(r["expected"] for r in rows),
        "lost": sum(r["lost"] for r in rows),
        "duplicated": sum(r["duplicates"] for r in rows),
        "out_of_order": sum(r["out_of_order"] for r in rows),
        "phantom": sum(r["phantom"] for r in rows),
        "viewers_complete": len(clean),
        "viewers_told": sum(1 for r in rows if r["told"]),
        "told_and_resumed": sum(1 for r in clean if r["told"]),
        "lost_after_told": sum(1 for r in rows if r["told"] and r["lost"]),
        "lost_silently": sum(1 for r in rows if not r["told"] and r["lost"]),
        "viewers_with_loss": sum(1 for r in rows if r["lost"]),
        "viewers_with_duplicates": sum(1 for r in rows if r["duplicates"]),
        "gave_up": sum(1 for r in rows if r["gave_up"]),
        "resumes": sum(r["resumes"] for r in rows),
        "max_silence_ms": round(silence, 1),
        "lag_p50_ms": round(percentile(lags, 50), 1),
        "lag_p99_ms": round(percentile(lags, 99), 1),
        "stalled_viewers": sum(1 for r in rows if r["stalled"]),
        "stalled_told": sum(1 for r in rows if r["stalled"] and r["told"]),
        "stalled_lost": sum(r["lost"] for r in rows if r["stalled"]),
        "notices": dict(reasons.most_common(8)),
        "lost_by_stage": dict(lost_stages.most_common(8)),
        "lost_by_transport": dict(Counter(r["kind"] for r in rows for _ in r["missing"])),
        "journal": {
            c: {
                "newest": t.newest,
                "envelopes": len(merged[c][0]),
                "incarnations": len(t.incarnations),
                "reused_seqs": merged[c][1],
                "vanished": len(t.vanished_ms),
            }
            for c, t in truths.items()
        },
        "silentest": [
            {k: r[k] for k in ("kind", "role", "port", "max_wait_ms", "max_wait_seq_index", "reloads", "lost", "told")}
            for r in sorted(normal, key=lambda r: -r["max_wait_ms"])[:3]
        ],
        "worst": [
            {k: r[k] for k in ("kind", "expected", "deliveries", "lost", "first_lost", "duplicates", "told")}
            | {"notices": r["server_notices"][:2]}
            for r in worst
        ],
    }
