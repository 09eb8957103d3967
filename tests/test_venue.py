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
    """(kind, price, size in base units) of one order's reports."""
    return [(r.kind, r.px, r.qty) for r in reports if r.oid == oid]


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
    assert v.lots_left(7) == 1


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


def test_trade_through_a_swept_level_fills_everything():
    """Recorded size stood ahead of us at our price and a trade printed below it: the level
    was swept, our whole remainder fills (the classic trade-through rule)."""
    v = venue([(TRADE, ASK, 10, 99.5, 0.1)])  # a sell below our bid, 5 recorded ahead of us
    v.advance_to(1)
    v.submit(7, BID, 100.0, 2.0, 1)
    assert kinds(v.advance_to(10))[-1] == (R_FILL, 100.0, 2.0)


def test_trade_through_an_improving_order_is_bounded_by_the_trade():
    """Nothing recorded at our price (we improve the best bid): a sell printed below us
    brings only its own size; a 1-lot print does not fill our 10."""
    v = venue([(TRADE, ASK, 10, 100.0, 1.0), (TRADE, ASK, 11, 99.5, 2.0), (TRADE, ASK, 12, 99.5, 30.0)])
    v.advance_to(1)
    v.submit(7, BID, 100.5, 10.0, 1)
    assert kinds(v.advance_to(10)) == [(R_ACTIVE, 0.0, 0.0), (R_FILL, 100.5, 1.0)]
    assert v.lots_left(7) == 9
    assert kinds(v.advance_to(11)) == [(R_FILL, 100.5, 2.0)]
    assert kinds(v.advance_to(12)) == [(R_FILL, 100.5, 7.0)]  # capped by what is left
    assert v.lots_left(7) is None


def test_opposite_liquidity_posted_at_our_price_fills_only_its_size():
    """An ask posted at our (improving) bid trades with us for the size posted, once."""
    v = venue([(DEPTH, ASK, 10, 100.5, 2.0), (DEPTH, ASK, 11, 100.5, 3.0), (DEPTH, ASK, 12, 100.5, 1.0),
               (DEPTH, BID, 13, 99.0, 4.0), (DEPTH, ASK, 14, 100.0, 20.0)])
    v.advance_to(1)
    v.submit(7, BID, 100.5, 10.0, 1)
    assert kinds(v.advance_to(10))[-1] == (R_FILL, 100.5, 2.0)
    assert kinds(v.advance_to(11)) == [(R_FILL, 100.5, 1.0)]  # 1 more posted
    assert kinds(v.advance_to(13)) == []  # a decrease, or rows elsewhere: nothing more
    assert v.lots_left(7) == 7
    assert kinds(v.advance_to(14)) == [(R_FILL, 100.5, 7.0)]  # an ask posted through our bid


def test_one_trade_is_shared_by_our_orders_at_a_level():
    """Two of our orders at one price (nothing recorded there): a sell of 4 gives 4 in all,
    the first arrival first; a print through them likewise."""
    for px in (100.5, 100.0):  # at their price, and through it
        v = venue([(TRADE, ASK, 10, px, 4.0)])
        v.advance_to(1)
        v.submit(7, BID, 100.5, 3.0, 1)
        v.submit(8, BID, 100.5, 3.0, 2)
        r = v.advance_to(10)
        assert kinds(r, 7)[-1] == (R_FILL, 100.5, 3.0) and kinds(r, 8)[-1] == (R_FILL, 100.5, 1.0)
        assert sum(x.qty for x in r if x.kind == R_FILL) == 4.0
    # better price first: our bids at 100.5 (3) and 100.0 (behind 5 recorded):
    # a sell of 2 at 100.0 goes to the 100.5 bid; the 100.0 bid stays behind its queue
    v = venue([(TRADE, ASK, 10, 100.0, 2.0)])
    v.advance_to(1)
    v.submit(7, BID, 100.0, 3.0, 1)
    v.submit(8, BID, 100.5, 3.0, 1)
    r = v.advance_to(10)
    assert kinds(r, 8)[-1] == (R_FILL, 100.5, 2.0) and kinds(r, 7) == [(R_ACTIVE, 0.0, 0.0)]
    assert v.queue_ahead(7) == pytest.approx(3.0)


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
    with pytest.raises(ValueError, match="tick"):
        Venue(events(BOOK), 0.0)
    v = venue([], lot=0.5)
    assert v.submit(7, BID, 0.0, 1.0, 1) is False and v.submit(7, BID, -1.0, 1.0, 1) is False  # no price
    assert v.submit(7, BID, 100.0, 0.2, 1) is False  # under one lot
    assert v.submit(8, ASK, 1e9, 1.0, 1) is True  # any price on the tick grid can rest


def test_probabilistic_queue_does_not_count_a_trade_twice():
    """18 ahead of us, 2 behind; a sell of 5 at our price, then the depth update reporting
    it (20 -> 15): 13 ahead, not 9.1 (the decrease is the trade, already counted)."""
    rows = [(DEPTH, BID, 1, 100.0, 18.0), (DEPTH, BID, 3, 100.0, 20.0), (TRADE, ASK, 5, 100.0, 5.0),
            (DEPTH, BID, 6, 100.0, 15.0), (DEPTH, BID, 7, 100.0, 14.0)]
    for queue in ("prob", "conservative"):
        v = venue(rows, queue=queue, queue_power=2.0)
        v.advance_to(1)
        v.submit(7, BID, 100.0, 1.0, 1)
        v.advance_to(5)
        assert v.queue_ahead(7) == pytest.approx(13.0)
        v.advance_to(6)
        assert v.queue_ahead(7) == pytest.approx(13.0), queue
    # a later cancel of 1 is split by the power rule: front 13, back 2, p = 4 / (4 + 169)
    v.advance_to(7)  # conservative: behind us
    assert v.queue_ahead(7) == pytest.approx(13.0)
    v = venue(rows, queue="prob", queue_power=2.0)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)
    v.advance_to(7)
    p = 4 / (4 + 169)
    assert v.queue_ahead(7) == pytest.approx(13 - (1 - p) * 1 + min(2 - p * 1, 0))


def test_traded_volume_is_forgotten_at_the_next_depth_update():
    """A trade whose depth update shows an increase (more joined than traded): the next
    decrease is all cancellations again."""
    rows = [(DEPTH, BID, 1, 100.0, 10.0), (TRADE, ASK, 5, 100.0, 4.0), (DEPTH, BID, 6, 100.0, 12.0),
            (DEPTH, BID, 7, 100.0, 8.0)]
    v = venue(rows, queue="prob", queue_power=1.0)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)
    v.advance_to(6)
    assert v.queue_ahead(7) == pytest.approx(6.0)
    v.advance_to(7)  # front 6, back 6, cancel 4: p = 1/2 -> 6 - 2
    assert v.queue_ahead(7) == pytest.approx(4.0)


def test_quantities_are_whole_lots_and_a_filled_order_has_none_left():
    """0.23705822 BTC in 1e-8 lots: float arithmetic reads it back as one lot short; the
    venue keeps lots as integers, so a full fill leaves exactly 0 and frees the order."""
    book = [(CLEAR, BID, 1, 0.0, 0.0), (CLEAR, ASK, 1, 0.0, 0.0), (SNAPSHOT, BID, 1, 60000.0, 1.0),
            (SNAPSHOT, ASK, 1, 60000.1, 1.0), (TRADE, ASK, 10, 60000.0, 0.1), (TRADE, ASK, 11, 60000.0, 5.0)]
    v = Venue(events(book), tick=0.1, lot=1e-8, params=VenueParams(entry_latency_ns=0))
    v.advance_to(1)
    assert v.submit(7, BID, 60000.0, 0.23705822, 1)
    assert v.lots_left(7) == 23705822
    r = v.advance_to(10)
    assert v.queue_ahead(7) == pytest.approx(0.9)
    r += v.advance_to(11)  # 5 sold: 0.9 ahead, then all of ours
    fills = [x for x in r if x.kind == R_FILL]
    assert [x.lots for x in fills] == [23705822] and v.lots_left(7) is None
    assert v.o_status[v._slot_of[7]] == 0


def test_stub_quotes_do_not_allocate_by_price_range():
    """Bids at 0.01 and asks at 1e8 beside a book at 100 (tick 0.01): the book is stored per
    recorded price, not per tick of the range (1e10 ticks would be 80 GB a side)."""
    rows = [(CLEAR, BID, 1, 0.0, 0.0), (CLEAR, ASK, 1, 0.0, 0.0),
            (SNAPSHOT, BID, 1, 0.01, 1000.0), (SNAPSHOT, BID, 1, 100.0, 2.0), (SNAPSHOT, BID, 1, 99.99, 3.0),
            (SNAPSHOT, ASK, 1, 100.01, 2.0), (SNAPSHOT, ASK, 1, 1e8, 0.5),
            (TRADE, ASK, 10, 100.0, 3.0), (DEPTH, BID, 11, 100.0, 0.0), (DEPTH, BID, 11, 99.99, 0.0),
            (DEPTH, ASK, 12, 100.01, 0.0)]
    v = Venue(events(rows), tick=0.01, lot=0.01, params=VenueParams(entry_latency_ns=0))
    assert v.bid.nbytes + v.ask.nbytes < 1_000
    v.advance_to(1)
    b = ArrayBookView(v, "X/Y")
    assert b.best_bid() == (100.0, 2.0) and b.best_ask() == (100.01, 2.0)
    assert b.bids.levels() == [(100.0, 2.0), (99.99, 3.0), (0.01, 1000.0)] and b.asks.levels()[-1] == (1e8, 0.5)
    assert v.submit(7, BID, 100.0, 1.0, 1) and v.submit(8, ASK, 5e7, 1.0, 1)  # 5e7: a price never recorded
    r = v.advance_to(10)
    assert kinds(r) == [(R_ACTIVE, 0.0, 0.0), (R_FILL, 100.0, 1.0)]  # 2 ahead, 3 sold
    v.advance_to(12)
    assert b.best_bid() == (0.01, 1000.0) and b.best_ask() == (1e8, 0.5)
    assert v.queue_ahead(8) == 0.0


def test_marketable_order_takes_at_once_walking_the_book():
    """Post-only off: a buy at 101.5 against asks 101 x 5, 101.5 x 2 takes 5 at 101 and the
    rest at 101.5, as taker, when it reaches the venue; what the book cannot give rests at
    the limit as a maker order and is not filled again by the liquidity it already took."""
    v = venue([(DEPTH, BID, 10, 99.0, 1.0), (DEPTH, BID, 11, 99.5, 4.0), (TRADE, ASK, 12, 101.5, 1.0)], latency_ns=5)
    v.advance_to(1)
    v.submit(7, BID, 101.5, 6.0, 1, post_only=False)
    v.submit(8, BID, 101.5, 10.0, 1, post_only=False)
    r = v.advance_to(10)
    assert kinds(r, 7) == [(R_TAKER_FILL, 101.0, 5.0), (R_TAKER_FILL, 101.5, 1.0)]
    assert all(x.ts_ns == 6 for x in r)  # at arrival (1 + 5 ns latency)
    assert kinds(r, 8) == [(R_TAKER_FILL, 101.0, 5.0), (R_TAKER_FILL, 101.5, 2.0), (R_ACTIVE, 0.0, 0.0)]
    assert v.lots_left(7) is None and v.lots_left(8) == 3
    assert kinds(v.advance_to(11), 8) == []  # later book rows do not fill the remainder again
    assert kinds(v.advance_to(12), 8) == [(R_FILL, 101.5, 1.0)]  # a sell at its price does, as maker
    # a sell order walks the bids down to its limit
    v = venue([(DEPTH, BID, 10, 99.0, 1.0)], latency_ns=0)
    v.advance_to(1)
    v.submit(9, ASK, 99.5, 9.0, 1, post_only=False)
    assert kinds(v.advance_to(10), 9) == [(R_TAKER_FILL, 100.0, 5.0), (R_TAKER_FILL, 99.5, 3.0), (R_ACTIVE, 0.0, 0.0)]


def test_reports_carry_the_book_at_the_event():
    """A fill is stamped with the best bid/ask when it happened, not at the next decision."""
    v = venue([(TRADE, ASK, 10, 99.5, 1.0), (DEPTH, BID, 20, 100.0, 0.0), (DEPTH, ASK, 21, 99.0, 3.0),
               (DEPTH, ASK, 21, 101.0, 0.0), (DEPTH, ASK, 21, 101.5, 0.0)], latency_ns=0)
    v.advance_to(1)
    v.submit(7, BID, 100.0, 1.0, 1)
    v.submit(8, ASK, 102.0, 1.0, 1)
    r = v.advance_to(30)
    f = [x for x in r if x.kind == R_FILL]
    assert len(f) == 1 and (f[0].bid, f[0].ask, f[0].mid, f[0].ts_ns) == (100.0, 101.0, 100.5, 10)
    assert ArrayBookView(v).mid() == 99.25  # the book at the next decision: bid 99.5, ask 99


def test_a_fill_by_a_depth_message_is_marked_against_the_book_before_it():
    """One message (rows sharing local_ts) deletes the bid 100 and the asks and posts an ask
    at our improving bid 100.5: the fill is marked against the quote before the message
    (100 / 101, mid 100.5), not the book half-way through it (bid 99.5, no ask)."""
    v = venue([(DEPTH, BID, 20, 100.0, 0.0), (DEPTH, ASK, 20, 101.0, 0.0), (DEPTH, ASK, 20, 101.5, 0.0),
               (DEPTH, ASK, 20, 100.5, 2.0)], latency_ns=0)
    v.advance_to(1)
    v.submit(7, BID, 100.5, 1.0, 1)
    f = [x for x in v.advance_to(20) if x.kind == R_FILL]
    assert len(f) == 1 and (f[0].px, f[0].lots, f[0].bid, f[0].ask, f[0].mid) == (100.5, 1, 100.0, 101.0, 100.5)


def test_price_ranks_match_numpy_unique_on_both_paths():
    """The book's price axis: the tick-span bitmap (small spans) and np.unique (stub quotes)
    give the same ranks."""
    from paper_trading.venue import _ranks

    rng = np.random.default_rng(0)
    for ticks in (rng.integers(-50, 50, 77), rng.integers(6_000_000, 6_000_900, 5000), np.array([1, 10**12, 5, 5])):
        ticks = ticks.astype(np.int64)
        got, inv = _ranks(ticks)
        want, want_inv = np.unique(ticks, return_inverse=True)
        assert (got == want).all() and (inv == want_inv.reshape(-1)).all()


def test_order_ids_of_done_orders_are_forgotten_when_their_slot_is_reused():
    """A looped 24-hour replay sends ~9,000 orders an hour: the id -> slot map must hold
    the live orders (at most one stale entry per slot), not every order ever sent."""
    v = venue([(TRADE, ASK, 10**6, 99.5, 1.0)], max_orders=4)
    v.advance_to(1)
    for oid in range(1, 1001):  # place and cancel, one at a time
        assert v.submit(oid, BID, 99.0, 1.0, oid)
        assert v.cancel(oid, oid)
        v.advance_to(oid + 1)
        assert v.lots_left(oid) is None  # done
    assert len(v._slot_of) <= 4
    assert v.submit(5000, BID, 100.0, 1.0, 2000)
    r = v.advance_to(2001)
    assert v.lots_left(5000) == 1 and v.cancel(999, 2001) is False  # live order found; an old one stays unknown
    r += v.advance_to(10**6)
    assert [k for k, _, _ in kinds(r, 5000)] == [R_ACTIVE, R_FILL]
