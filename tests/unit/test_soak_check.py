"""The soak's measuring instrument: each viewer's receipts judged against the recorded journal."""

from __future__ import annotations

from array import array
from typing import Any

from benchmarks.soak.check import check_phase, check_viewer
from benchmarks.soak.recorder import Truth
from benchmarks.soak.viewers import DROPPED, RELOAD

# seq -> created_ms: ten envelopes, one every 100 ms from t = 1,000 ms.
JOURNAL = {seq: 1000.0 + 100 * (seq - 101) for seq in range(101, 111)}
END_MS = 5000.0


def record(seqs: list[int], rx: list[float] | None = None, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "vid": 1,
        "kind": "stomp",
        "conversation": "c",
        "port": 1,
        "role": "initial",
        "since": None,
        "stalled": False,
        "seqs": array("q", seqs).tobytes(),
        "rx_ms": array("d", rx if rx is not None else [JOURNAL.get(s, 0.0) + 5 for s in seqs]).tobytes(),
        "notices": [],
        "connected_ms": [900.0],
        "resumes": 0,
        "resume_failures": 0,
        "left_at_seq": None,
        "started_ms": 890.0,
        "no_seq": 0,
        "gave_up": False,
        "connected": True,
    }
    return base | over


def test_a_viewer_that_got_every_envelope_once_in_order_is_complete() -> None:
    row = check_viewer(record(list(JOURNAL)), JOURNAL, END_MS)
    assert (row["lost"], row["duplicates"], row["out_of_order"], row["told"]) == (0, 0, 0, False)
    assert row["max_wait_ms"] == 5.0


def test_a_gap_nobody_told_the_viewer_about_is_lost_silently_and_is_silence_until_the_end() -> None:
    seqs = [s for s in JOURNAL if s not in (104, 105)]
    row = check_viewer(record(seqs), JOURNAL, END_MS)
    assert row["lost"] == 2 and row["missing"] == [104, 105] and not row["told"]
    assert row["max_wait_ms"] == END_MS - JOURNAL[104]


def test_told_then_resumed_with_the_rest_is_complete_and_not_silence() -> None:
    # Told at 1,250 ms (after 103), resubscribed at 1,900 ms, replay of 104.. arrives from 1,950 ms.
    seqs = list(JOURNAL)
    rx = [JOURNAL[s] + 5 if s <= 103 else max(JOURNAL[s] + 5, 1950.0) for s in seqs]
    notices = [(1250.0, "STOMP ERROR slow consumer")]
    row = check_viewer(record(seqs, rx, notices=notices, connected_ms=[900.0, 1900.0]), JOURNAL, END_MS)
    assert row["lost"] == 0 and row["told"] and row["server_notices"] == ["STOMP ERROR slow consumer"]
    # 104-109 were owed while the viewer knew it was not subscribed: only 110's 5 ms count.
    assert row["max_wait_ms"] < 100


def test_a_drop_counts_as_told_but_a_reload_does_not() -> None:
    seqs = [s for s in JOURNAL if s != 106]
    dropped = check_viewer(record(seqs, notices=[(1450.0, DROPPED)], connected_ms=[900.0, 1600.0]), JOURNAL, END_MS)
    reloaded = check_viewer(record(seqs, notices=[(1450.0, RELOAD)], connected_ms=[900.0, 1600.0]), JOURNAL, END_MS)
    assert dropped["told"] and dropped["lost"] == 1
    assert not reloaded["told"] and reloaded["lost"] == 1


def test_duplicates_and_out_of_order_receipts_are_counted() -> None:
    row = check_viewer(record([101, 102, 102, 104, 103, 105, 106, 107, 108, 109, 110]), JOURNAL, END_MS)
    assert row["duplicates"] == 1 and row["out_of_order"] == 1 and row["lost"] == 0


def test_a_viewer_without_a_cursor_owes_only_what_was_created_after_its_subscription() -> None:
    # Subscribed (RECEIPT) at 1,350 ms: 101-104 were journaled before, so it owes 105 on.
    late = record(list(range(105, 111)), connected_ms=[1350.0])
    assert check_viewer(late, JOURNAL, END_MS)["lost"] == 0
    missed = record(list(range(106, 111)), connected_ms=[1350.0])
    assert check_viewer(missed, JOURNAL, END_MS)["missing"] == [105]
    # With since-seq 0 it owes the whole journal.
    assert check_viewer(record(list(range(105, 111)), since=0), JOURNAL, END_MS)["lost"] == 4


def test_a_viewer_that_left_owes_nothing_after_its_last_seq() -> None:
    row = check_viewer(record([101, 102, 103], left_at_seq=103, connected=False), JOURNAL, END_MS)
    assert row["expected"] == 3 and row["lost"] == 0


def test_the_phase_sums_viewers_and_keeps_a_seq_reused_by_a_new_incarnation_once() -> None:
    truth = Truth(incarnations=[dict(JOURNAL), {110: 2000.0, 111: 2100.0}])
    records = [record([*JOURNAL, 111]), record([101, 102], vid=2)]
    phase = check_phase(records, {"c": truth}, END_MS)
    assert phase["journal"]["c"]["reused_seqs"] == 1
    assert (phase["viewers"], phase["lost"], phase["lost_silently"], phase["viewers_complete"]) == (2, 9, 1, 1)
