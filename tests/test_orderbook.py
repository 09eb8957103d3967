"""L2 order book: snapshot and diff application, best prices, mid, microprice, depth, guards."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import BookError
from bot.orderbook import OrderBook

prices = st.integers(min_value=1, max_value=400).map(lambda t: t * 0.25)
sizes = st.floats(min_value=0.0, max_value=100.0, allow_nan=False).map(lambda x: round(x, 3))
updates = st.lists(st.tuples(st.sampled_from(["bid", "ask"]), prices, sizes), max_size=200)


@settings(max_examples=200, deadline=None)
@given(updates)
def test_book_matches_a_reference_dict_model(ups):
    """After any sequence of level updates the book equals a plain dict model of it."""
    ob = OrderBook("X/Y")
    ref = {"bid": {}, "ask": {}}
    for side, p, s in ups:
        ob.set_level(side, p, s)
        if s > 0:
            ref[side][p] = s
        else:
            ref[side].pop(p, None)
    assert ob.bids.levels() == sorted(ref["bid"].items(), reverse=True)
    assert ob.asks.levels() == sorted(ref["ask"].items())
    bb = max(ref["bid"]) if ref["bid"] else None
    ba = min(ref["ask"]) if ref["ask"] else None
    assert ob.bids.best_price() == bb and ob.asks.best_price() == ba
    assert ob.is_empty() == (bb is None or ba is None)
    assert ob.is_crossed() == (bb is not None and ba is not None and bb >= ba)
    for n in (1, 3, 10):
        assert ob.depth("bid", n) == pytest.approx(sum(s for _, s in sorted(ref["bid"].items(), reverse=True)[:n]))
    # levels are strictly ordered from the best outwards and have positive size
    bl = ob.bids.levels()
    assert all(a[0] > b[0] for a, b in zip(bl, bl[1:])) and all(s > 0 for _, s in bl)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(prices, sizes.filter(lambda s: s > 0)), min_size=1, max_size=30),
       st.lists(st.tuples(prices, sizes.filter(lambda s: s > 0)), min_size=1, max_size=30))
def test_mid_and_microprice_lie_between_best_prices(bids, asks):
    ob = OrderBook()
    ob.apply_snapshot(bids, asks)
    if ob.is_crossed():
        with pytest.raises(BookError, match="crossed"):
            ob.validate()
        return
    ob.validate()
    bb, ba = ob.best_bid()[0], ob.best_ask()[0]
    assert bb < ob.mid() < ba
    assert bb <= ob.microprice() <= ba
    assert -1.0 <= ob.imbalance(5) <= 1.0


def test_snapshot_then_diffs_hand_example():
    ob = OrderBook("BTC/USDT")
    ob.apply_snapshot([[100.0, 1.0], [99.5, 2.0]], [[101.0, 3.0], [102.0, 1.0]], ts_ns=5, update_id=10)
    assert ob.mid() == 100.5 and ob.spread() == 1.0
    # microprice = (100*3 + 101*1) / 4: leans toward the bid, the ask is heavier
    assert ob.microprice() == pytest.approx(100.25)
    ob.apply_diff(bids=[[100.0, 0.0], [100.5, 4.0]], asks=[[101.0, 0.0]], ts_ns=6, update_id=11)
    assert ob.best_bid() == (100.5, 4.0) and ob.best_ask() == (102.0, 1.0)
    assert ob.depth("bid", 2) == 6.0 and ob.update_id == 11 and ob.ts_ns == 6
    # a snapshot replaces everything
    ob.apply_snapshot([[1.0, 1.0]], [[2.0, 1.0]])
    assert len(ob.bids) == 1 and len(ob.asks) == 1


def test_empty_and_crossed_guards():
    ob = OrderBook("A/B")
    assert ob.mid() is None and ob.microprice() is None and ob.is_empty()
    with pytest.raises(BookError, match="empty on the bid side"):
        ob.validate()
    ob.apply_snapshot([[10.0, 1.0]], [[10.0, 1.0]])
    with pytest.raises(BookError, match="crossed"):
        ob.validate()


def test_copy_is_independent():
    ob = OrderBook()
    ob.apply_snapshot([[1.0, 1.0]], [[2.0, 1.0]])
    c = ob.copy()
    ob.set_level("bid", 1.5, 2.0)
    assert c.best_bid() == (1.0, 1.0) and ob.best_bid() == (1.5, 2.0)
