"""Presence without I/O: the local registry, merging process entries, what admins and users are shown."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_settings
from gateway.presence import LocalPresence, merge_presence, merge_snapshots

A, B = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"


def test_local_registry_counts_on_attach_and_detach_and_marks_what_changed() -> None:
    local = LocalPresence(max_subjects=2)
    viewers = [local.attach(A, "sse", "alice"), local.attach(A, "websocket", "bob"), local.attach(A, "sse", "carol")]
    local.attach(B, "xhr-streaming", "dave")
    assert local.dirty == {A, B}
    entry = local.entry(A)
    assert entry is not None and entry["t"] == {"sse": 2, "websocket": 1}
    assert len(entry["s"]) == 2  # subjects capped; counts stay exact
    local.dirty.clear()
    for v in viewers:
        local.detach(v)
    local.detach(viewers[0])  # twice: no effect, never negative
    assert local.entry(A) is None and local.conversations() == [B] and local.dirty == {A}


def test_presence_sums_processes_and_lists_subjects_for_admins_only() -> None:
    p1 = {"t": {"sse": 2}, "s": [["alice", "sse", 1_700_000_000_000], ["bob", "sse", 1_700_000_000_500]]}
    p2 = {"t": {"websocket": 1, "sse": 0}, "s": [["carol", "websocket", 1_700_000_001_000]]}
    seen = merge_presence(A, [p1, p2])
    assert seen.as_dict(with_subjects=False) == {"conversationId": A, "viewers": 3,
                                                 "byTransport": {"sse": 2, "websocket": 1}}  # fmt: skip
    subjects = seen.as_dict(with_subjects=True)["subjects"]
    assert [s["subject"] for s in subjects] == ["alice", "bob", "carol"]
    assert subjects[0]["since"] == "2023-11-14T22:13:20.000Z"


def test_merged_snapshots_take_the_lease_holders_view_of_the_upstream() -> None:
    bystander = {A: {"t": {"sse": 1}, "u": {"state": "live", "holder": None}}}
    holder = {
        A: {"t": {"websocket": 2}, "u": {"state": "live", "holder": "p2", "reconnects": 3}},
        B: {"u": {"state": "idle", "holder": None}},
    }
    for order in ([bystander, holder], [holder, bystander]):
        merged = merge_snapshots(order)
        assert merged[A]["t"] == {"sse": 1, "websocket": 2}
        assert merged[A]["u"]["holder"] == "p2" and merged[A]["u"]["reconnects"] == 3
        assert merged[B] == {"t": {}, "u": {"state": "idle", "holder": None}}


def test_a_ttl_shorter_than_two_heartbeats_is_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_PRESENCE_TTL_S"):
        load_settings(env={"GATEWAY_PRESENCE_INTERVAL_S": "1", "GATEWAY_PRESENCE_TTL_S": "1.5"})
    assert load_settings(env={"GATEWAY_PRESENCE_INTERVAL_S": "0.5", "GATEWAY_PRESENCE_TTL_S": "1"}).presence_ttl_s == 1
