"""In-flight order states (pending_new, pending_cancel, unknown) in the state machine and
the order manager, and the risk limits of a live run."""

from decimal import Decimal as D

import pytest

from bot.errors import OrderStateError
from bot.exchanges.base import OrderAck
from bot.live.risk import KillSwitch, OrderRate, RiskLimits, limit_quotes
from bot.market import MarketInfo
from bot.order_manager import OrderManager
from bot.orders import Fill, Order, OrderState, Side
from strategies.base import QuoteLevel, Quotes

MKT = MarketInfo("X/Y", "X", "Y", D("0.01"), D("1"))


def Q(bids=(), asks=()):
    return Quotes([QuoteLevel(D(p), D(s)) for p, s in bids], [QuoteLevel(D(p), D(s)) for p, s in asks])


def fill(o, size, tid="t1"):
    return Fill("x", tid, o.client_id, o.symbol, o.side, o.price, D(size), D(0), "maker", 1, float(o.price))


def test_state_machine_in_flight_transitions():
    o = Order("X/Y", Side.BUY, D("1"), D("2"))
    o.transition(OrderState.PENDING_NEW, 1)
    o.transition(OrderState.UNKNOWN, 2)
    o.transition(OrderState.OPEN, 3)
    o.transition(OrderState.PENDING_CANCEL, 4)
    o.apply_fill(D("1"), 5)  # a partial fill while the cancel is in flight
    assert o.state is OrderState.PENDING_CANCEL and o.filled == 1
    o.transition(OrderState.CANCELED, 6)
    with pytest.raises(OrderStateError):
        o.transition(OrderState.OPEN, 7)
    assert not OrderState.UNKNOWN.terminal and not OrderState.PENDING_NEW.terminal


def test_no_second_order_for_a_level_whose_placement_is_in_flight():
    om = OrderManager(MKT)
    _, places = om.plan(Q([("99.00", "1")]), 0)
    o = places[0]
    om.submitted(o)
    om.on_ack(OrderAck(o.client_id, OrderState.PENDING_NEW, 0))
    # the quote moves while the placement is in flight: cancel it (the adapter waits), no new order
    c, p = om.plan(Q([("98.50", "1")]), 1)
    assert c == [o] and p == []
    # its outcome becomes unknown: still no second order for the level
    om.on_ack(OrderAck(o.client_id, OrderState.UNKNOWN, 2))
    c, p = om.plan(Q([("98.50", "1")]), 3)
    assert p == []
    # resolved as rejected (never placed): the level is free again
    om.on_ack(OrderAck(o.client_id, OrderState.REJECTED, 4, reason="not at the exchange"))
    c, p = om.plan(Q([("98.50", "1")]), 5)
    assert c == [] and len(p) == 1 and p[0].level == 0


def test_an_in_flight_order_that_matches_is_kept():
    om = OrderManager(MKT)
    _, places = om.plan(Q([("99.00", "1")]), 0)
    om.submitted(places[0])
    om.on_ack(OrderAck(places[0].client_id, OrderState.PENDING_NEW, 0))
    assert om.plan(Q([("99.00", "1")]), 1) == ([], [])


def test_never_cancels_twice_and_a_failed_cancel_frees_the_order():
    om = OrderManager(MKT)
    _, places = om.plan(Q([("99.00", "1")]), 0)
    o = places[0]
    om.submitted(o)
    om.on_ack(OrderAck(o.client_id, OrderState.OPEN, 0, "E1"))
    c, _ = om.plan(Q([("98.00", "1")]), 1)
    assert c == [o]
    o.cancel_requested = True
    om.on_ack(OrderAck(o.client_id, OrderState.PENDING_CANCEL, 1))
    assert o.state is OrderState.PENDING_CANCEL
    c, p = om.plan(Q([("98.00", "1")]), 2)
    assert o not in c  # the cancel is in flight: not again
    om.on_ack(OrderAck(o.client_id, OrderState.OPEN, 3, reason="cancel refused: rate limited"))
    assert o.state is OrderState.OPEN and not o.cancel_requested
    c, _ = om.plan(Q([("97.00", "1")]), 4)
    assert o in c  # may be cancelled again now


def test_fill_of_a_pending_order_and_after_a_filled_ack():
    om = OrderManager(MKT)
    _, places = om.plan(Q([("99.00", "2")]), 0)
    o = places[0]
    om.submitted(o)
    om.on_ack(OrderAck(o.client_id, OrderState.PENDING_NEW, 0))
    om.on_fill(fill(o, "1"))
    assert o.state is OrderState.PARTIALLY_FILLED and o.filled == 1
    om.on_ack(OrderAck(o.client_id, OrderState.FILLED, 1))  # the venue's final state first
    om.on_fill(fill(o, "1", "t2"))  # then the last fill
    assert o.state is OrderState.FILLED and o.filled == 2 and o.client_id not in om.working


def test_limit_quotes_notional_and_open_orders():
    q = Q([("100", "1"), ("99", "3")], [("101", "1"), ("102", "1"), ("103", "1")])
    r = limit_quotes(q, RiskLimits(max_order_notional=D("200")))
    assert [lv.price for lv in r.bids] == [D("100")] and len(r.asks) == 3
    r = limit_quotes(q, RiskLimits(max_open_orders=3))
    assert len(r.bids) + len(r.asks) == 3 and r.bids[0].price == D("100") and r.asks[0].price == D("101")
    assert limit_quotes(q, RiskLimits()) is q


def test_order_rate_window():
    r = OrderRate(3, 10.0)
    r.note(0.0, 2)
    assert r.room(1.0) == 1
    r.note(1.0)
    assert r.room(5.0) == 0
    assert r.room(10.0) == 2 and r.room(11.0) == 3
    assert OrderRate(None).room(0.0) > 10**6


def test_kill_switch_loss_drawdown_daily():
    day = 86_400 * 10**9
    k = KillSwitch(RiskLimits(max_loss=10))
    assert k.check(-9.99, 0) is None and "max_loss" in k.check(-10, 1)
    assert "max_loss" in k.check(50, 2)  # stays tripped
    k = KillSwitch(RiskLimits(max_drawdown=5))
    assert k.check(20, 0) is None and k.check(16, 1) is None and "drawdown" in k.check(15, 2)
    k = KillSwitch(RiskLimits(max_daily_loss=5))
    assert k.check(-4, 0) is None
    assert k.check(-8, day) is None  # a new UTC day starts from -8
    assert k.check(-12, day + 1) is None and "today" in k.check(-13, day + 2)


def test_database_decimals_never_in_exponent_form(tmp_path):
    import sqlite3

    from bot.persistence.store import open_store

    store = open_store(str(tmp_path / "d.db"))
    store.start_run("live", "x", "X/Y", {})
    o = Order("X/Y", Side.BUY, D("49950").normalize(), D("1E-7"))
    assert "E" in str(o.price)  # what the order manager's normalized prices look like
    store.record_order(o)
    store.commit()
    store.close()
    row = sqlite3.connect(tmp_path / "d.db").execute("select price, size from orders").fetchone()
    assert row == ("49950", "0.0000001")


def test_live_inventory_skews_around_the_target_and_follows_base_fees():
    from bot.live.engine import LiveInventory

    class Ex:
        base_fees = {"t1": D("0.001")}

    inv = LiveInventory(base=D("2"), cash=D("100"), exchange=Ex(), target=D("2"))
    assert inv.q == 0.0  # a spot balance at start is "flat" for the strategy
    o = Order("X/Y", Side.BUY, D("10"), D("1"))
    inv.apply(fill(o, "1"))
    assert inv.base == D("2.999") and inv.q == pytest.approx(0.999)
    assert inv.cash == D("100") - D("10") + D("0.01")  # the base fee was not paid in cash


def test_a_cancel_that_timed_out_but_did_not_take_frees_the_order():
    om = OrderManager(MKT)
    _, places = om.plan(Q([("99.00", "1")]), 0)
    o = places[0]
    om.submitted(o)
    om.on_ack(OrderAck(o.client_id, OrderState.OPEN, 0, "E1"))
    o.cancel_requested = True
    om.on_ack(OrderAck(o.client_id, OrderState.PENDING_CANCEL, 1))
    om.on_ack(OrderAck(o.client_id, OrderState.UNKNOWN, 2, reason="timeout"))
    om.on_ack(OrderAck(o.client_id, OrderState.OPEN, 3, reason="resolved by client id"))  # the cancel did not take
    assert o.state is OrderState.OPEN and not o.cancel_requested
    c, _ = om.plan(Q([("97.00", "1")]), 4)
    assert o in c
