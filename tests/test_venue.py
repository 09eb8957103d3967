"""The replay venue's realism models on constructed books with known answers: queue
position (conservative and probabilistic), partial fills, trade-through and price-through
fills, order-entry latency, post-only rejection, cancels."""

import numpy as np
import pytest

from bot.recording.schema import CLEAR, DEPTH, EVENT_DTYPE, SNAPSHOT, TRADE
from paper_trading.venue import R_ACTIVE, R_CANCELED, R_FILL, R_REJECT, R_TAKER_FILL, ArrayBookView, Venue, VenueParams

BID, ASK = 1, -1


def events(rows):
    """rows: (kind, side, local_ts, px, qty)."""
    a = np.zeros(len(rows), EVENT_DTYPE)
    for i, (k, s, t, px, q) in enumerate(rows):
        a[i] = (k, s, t, t, px, q, -1, -1)
    return a


BOOK = [(CLEAR, BID, 1, 0.0, 0.0), (CLEAR, ASK, 1, 0.0, 0.0),
        (SNAPSHOT, BID, 1, 100.0, 5.0), (SNAPSHOT, BID, 1, 99.5, 3.0),
        (SNAPSHOT, ASK, 1, 101.0, 5.0), (SNAPSHOT, ASK, 1, 101.5, 2.0)]


def venue(rows, queue="conservative", latency_ns=0, lot=1.0, **kw):
    return Venue(events(BOOK + rows), tick=0.5, lot=lot, params=VenueParams(queue_model=queue, entry_latency_ns=latency_ns, **kw))


def kinds(reports, oid=7):
    return [(k, px, q) for k, i, t, px, q in reports if i == oid]


def test_book_view_matches_the_rows():
    v = venue([])
    v.advance_to(1)
    b = ArrayBookView(v, "X/Y")
    assert b.best_bid() == (100.0, 5.0) and b.best_ask() == (101.0, 5.0) and b.mid() == 100.5
    assert b.bids.levels(5) == [(100.0, 5.0), (99.5, 3.0)] and b.depth("ask", 2) == 7.0
    assert b.copy().best_ask() == (101.0, 5.0)


def test_conservative_queue_only_trades_advance():
    v = venue([(DEPTH, BID, 5, 100.0, 9.0),        # 4 more join behind us
               (DEPTH, BID, 6, 100.0, 8.0),        # a cancel of 1: assumed behind us
               (TRADE, ASK, 10, 100.0, 4.0),       # sells 4 at our price: ahead 5 -> 1
               (TRADE, ASK, 20, 100.0, 3.0)])      # 3 more: 1 ahead, 2 for us (of 3)
    v.advance_to(1)
    assert v.submit(7, BID, 100.0, 3.0, 1)
    r = v.advance_to(2)
    assert v.queue_ahead(7) == 5.0  # joined behind the 5 already there
    r += v.advance_to(10)
    assert v.queue_ahead(7) == pytest.approx(1.0)
    r += v.advance_to(20)
    assert kinds(r) == [(R_ACTIVE, 0.0, 0.0), (R_FILL, 100.0, 2.0)]  # a partial fill
    assert v.o_qty[v._slot_of[7]] == 1.0


def test_conservative_queue_is_capped_by_level_size():
    v = venue([(DEPTH, BID, 5, 100.0, 2.0)])  # level shrinks below our queue estimate
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)
    v.advance_to(5)
    assert v.queue_ahead(7) == 2.0


def test_probabilistic_queue_splits_decreases():
    # ahead 5 (front), nothing behind (back 0): a decrease of 2 must all come from ahead
    v = venue([(DEPTH, BID, 5, 100.0, 3.0)], queue="prob", queue_power=2.0)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)
    v.advance_to(5)
    assert v.queue_ahead(7) == pytest.approx(3.0)
    # with size behind us: front 5, back 5 (after 5 more joined), decrease 4:
    # p = 5^2/(5^2+5^2) = 0.5 -> front' = 5 - 0.5*4 + min(5 - 0.5*4, 0) = 3
    v2 = venue([(DEPTH, BID, 3, 100.0, 10.0), (DEPTH, BID, 5, 100.0, 6.0)], queue="prob", queue_power=2.0)
    v2.advance_to(1)
    v2.submit(7, BID, 100.0, 1.0, 1)
    v2.advance_to(5)
    assert v2.queue_ahead(7) == pytest.approx(3.0)
    # conservative on the same rows keeps the queue at 5 (capped by level size 6)
    v3 = venue([(DEPTH, BID, 3, 100.0, 10.0), (DEPTH, BID, 5, 100.0, 6.0)])
    v3.advance_to(1)
    v3.submit(7, BID, 100.0, 1.0, 1)
    v3.advance_to(5)
    assert v3.queue_ahead(7) == pytest.approx(5.0)


def test_trade_through_and_price_through_fill_everything():
    v = venue([(TRADE, ASK, 10, 99.5, 0.1)])  # a sell below our bid: it traded through us
    v.advance_to(1)
    v.submit(7, BID, 100.0, 2.0, 1)
    assert kinds(v.advance_to(10))[-1] == (R_FILL, 100.0, 2.0)
    v = venue([(DEPTH, ASK, 10, 100.5, 1.0), (DEPTH, ASK, 11, 101.0, 0.0), (DEPTH, ASK, 12, 100.5, 0.0),
               (DEPTH, BID, 12, 100.0, 0.0), (DEPTH, ASK, 12, 100.0, 1.0)])  # the ask comes down to our bid
    v.advance_to(1)
    v.submit(7, BID, 100.0, 2.0, 1)
    r = v.advance_to(11)
    assert kinds(r) == [(R_ACTIVE, 0.0, 0.0)]
    assert kinds(v.advance_to(12))[-1] == (R_FILL, 100.0, 2.0)


def test_trade_on_the_other_side_does_not_fill():
    v = venue([(TRADE, BID, 10, 101.0, 50.0)])  # buyers lift the ask: our bid is untouched
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)
    assert kinds(v.advance_to(10)) == [(R_ACTIVE, 0.0, 0.0)]


def test_partial_fills_are_whole_lots():
    v = venue([(TRADE, ASK, 10, 100.0, 5.7)], lot=0.5)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 2.0, 1)
    assert kinds(v.advance_to(10))[-1] == (R_FILL, 100.0, 0.5)  # 0.7 beyond the queue -> 0.5


def test_entry_latency_delays_activation_and_queue_is_taken_then():
    v = venue([(DEPTH, BID, 5, 100.0, 8.0), (TRADE, ASK, 20, 100.0, 6.0)], latency_ns=10)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)   # reaches the venue at t=11, after the level grew to 8
    v.advance_to(5)
    assert v.queue_ahead(7) is None   # not active yet
    r = v.advance_to(20)
    assert (R_ACTIVE, 0.0, 0.0) in kinds(r)
    assert v.queue_ahead(7) == pytest.approx(2.0)  # 8 ahead, 6 traded


def test_post_only_rejected_when_crossing_and_taker_otherwise():
    v = venue([(DEPTH, BID, 10, 99.0, 1.0)], latency_ns=5)
    v.advance_to(1)
    v.submit(7, BID, 101.0, 1.0, 1, post_only=True)
    v.submit(8, BID, 101.5, 1.0, 1, post_only=False)
    r = v.advance_to(10)
    assert kinds(r, 7) == [(R_REJECT, 0.0, 0.0)]
    assert kinds(r, 8) == [(R_TAKER_FILL, 101.0, 1.0)]  # at the best ask, in full


def test_cancel_after_latency_and_fill_before_cancel_stands():
    v = venue([(TRADE, ASK, 10, 99.5, 1.0)], latency_ns=20)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, -100)  # active at -80
    v.cancel(7, 0)                      # effective at 20: too late, the trade at 10 fills us
    r = v.advance_to(30)
    assert [k for k, _, _ in kinds(r)] == [R_ACTIVE, R_FILL]
    v = venue([(TRADE, ASK, 30, 99.5, 1.0)], latency_ns=0)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)
    v.cancel(7, 5)
    r = v.advance_to(30)
    assert [k for k, _, _ in kinds(r)] == [R_ACTIVE, R_CANCELED]


def test_bad_parameters():
    with pytest.raises(ValueError, match="queue_model"):
        Venue(events(BOOK), 0.5, params=VenueParams(queue_model="fifo"))
    v = venue([])
    assert v.submit(7, BID, 1e9, 1.0, 1) is False  # far outside the price range
