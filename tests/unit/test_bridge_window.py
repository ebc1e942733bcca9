import pytest

from gateway.bridge.window import ConversationCursor, ReceiptWindow


def test_cursor_advances_only_over_a_contiguous_receipted_prefix() -> None:
    cur = ConversationCursor(10)
    for seq in (11, 12, 13):
        assert cur.record_send(seq) is False
    assert cur.record_receipt(12) is False  # 11 is still unconfirmed
    assert cur.confirmed == 10
    assert cur.record_receipt(11) is True
    assert cur.confirmed == 12 and cur.in_flight == 1
    assert cur.record_receipt(99) is False  # never sent
    assert cur.record_receipt(13) is True
    assert (cur.confirmed, cur.sent, cur.in_flight) == (13, 13, 0)


def test_cursor_skips_seqs_that_were_never_sent() -> None:
    cur = ConversationCursor(0)
    cur.record_send(1_700_000_000_000)  # a journal incarnation starts at wall-clock ms
    cur.record_send(1_700_000_000_001)
    cur.record_receipt(1_700_000_000_000)
    cur.record_receipt(1_700_000_000_001)
    assert cur.confirmed == 1_700_000_000_001


def test_rewind_resends_after_confirmed_and_flags_repeats() -> None:
    cur = ConversationCursor(0)
    for seq in (1, 2, 3, 4):
        cur.record_send(seq)
    cur.record_receipt(1)
    assert cur.rewind() == 3
    assert (cur.confirmed, cur.sent, cur.in_flight) == (1, 1, 0)
    assert cur.record_receipt(2) is False  # a late receipt from the old connection changes nothing
    assert [cur.record_send(s) for s in (2, 3, 4, 5)] == [True, True, True, False]
    with pytest.raises(ValueError):
        cur.record_send(5)


def test_lag_counts_only_retained_envelopes() -> None:
    cur = ConversationCursor(5)
    assert cur.lag(head=9, oldest=1) == 4
    assert cur.lag(head=9, oldest=8) == 2  # 6 and 7 expired: they cannot be sent any more
    assert cur.lag(head=5, oldest=1) == 0
    assert ConversationCursor(0).lag(head=0, oldest=1) == 0


def test_window_bounds_outstanding_sends() -> None:
    window = ReceiptWindow(2)
    a = window.track("c", 1, now=10.0)
    b = window.track("d", 1, now=11.0)
    assert a != b and window.free == 0 and window.outstanding == 2
    with pytest.raises(OverflowError):
        window.track("c", 2, now=12.0)
    assert window.oldest_age(15.0) == 5.0
    sent = window.confirm(a)
    assert sent is not None and (sent.conversation_id, sent.seq) == ("c", 1)
    assert window.confirm(a) is None  # a receipt is used once
    assert window.oldest_age(15.0) == 4.0
    assert window.forget("d") == 1 and window.confirm(b) is None
    assert window.oldest_age(15.0) is None


def test_window_clear_drops_everything_and_ids_stay_unique() -> None:
    window = ReceiptWindow(3)
    old = {window.track("c", s, 0.0) for s in (1, 2, 3)}
    assert window.clear() == 3 and window.free == 3
    new = {window.track("c", s, 0.0) for s in (1, 2, 3)}
    assert not old & new  # a late receipt of the old connection cannot confirm a resend
    with pytest.raises(ValueError):
        ReceiptWindow(0)
