"""Order-manager diffing: cancel/replace only what changed."""

from decimal import Decimal as D

from bot.exchanges.base import OrderAck
from bot.market import MarketInfo
from bot.orders import Fill, OrderState, Side
from bot.order_manager import OrderManager
from strategies.base import QuoteLevel, Quotes

MKT = MarketInfo("X/Y", "X", "Y", D("0.01"), D("1"))


def opened(om, quotes, t=0):
    """Plan, then acknowledge every placement as open and every cancel as canceled."""
    cancels, places = om.plan(quotes, t)
    for o in cancels:
        om.on_ack(OrderAck(o.client_id, OrderState.CANCELED, t))
    for o in places:
        om.submitted(o)
        om.on_ack(OrderAck(o.client_id, OrderState.OPEN, t, "E" + o.client_id))
    return cancels, places


def Q(bids=(), asks=()):
    return Quotes([QuoteLevel(D(p), D(s)) for p, s in bids], [QuoteLevel(D(p), D(s)) for p, s in asks])


def test_first_plan_places_everything_then_identical_quotes_do_nothing():
    om = OrderManager(MKT)
    c, p = opened(om, Q([("99.00", "1"), ("98.90", "2")], [("101.00", "1")]))
    assert c == [] and len(p) == 3 and len(om.working) == 3
    assert [o.level for o in p] == [0, 1, 0]
    c, p = om.plan(Q([("99.00", "1"), ("98.90", "2")], [("101.00", "1")]), 1)
    assert c == [] and p == []


def test_only_the_changed_level_is_replaced():
    om = OrderManager(MKT)
    opened(om, Q([("99.00", "1"), ("98.90", "1")], [("101.00", "1")]))
    c, p = om.plan(Q([("99.00", "1"), ("98.80", "1")], [("101.00", "1")]), 1)
    assert [o.price for o in c] == [D("98.90")] and [o.price for o in p] == [D("98.80")]


def test_refresh_tolerance_keeps_orders_within_ticks():
    om = OrderManager(MKT, tolerance_ticks=2)
    opened(om, Q([("99.00", "1")], [("101.00", "1")]))
    c, p = om.plan(Q([("99.02", "1")], [("100.99", "1")]), 1)
    assert c == [] and p == []
    c, p = om.plan(Q([("99.03", "1")], [("101.00", "1")]), 1)
    assert len(c) == 1 and c[0].side is Side.BUY and p[0].price == D("99.03")
    c, p = om.plan(Q([("99.00", "2")], [("101.00", "1")]), 1)  # size changed -> replace
    assert len(c) == 1 and p[0].size == D("2")


def test_empty_side_cancels_its_orders():
    om = OrderManager(MKT)
    opened(om, Q([("99.00", "1")], [("101.00", "1")]))
    c, p = om.plan(Q([], [("101.00", "1")]), 1)
    assert [o.side for o in c] == [Side.BUY] and p == []


def test_max_order_age_replaces_old_orders():
    om = OrderManager(MKT, max_age_s=1.0)
    opened(om, Q([("99.00", "1")], []), t=0)
    assert om.plan(Q([("99.00", "1")], []), 500_000_000) == ([], [])
    c, p = om.plan(Q([("99.00", "1")], []), 1_000_000_001)
    assert len(c) == 1 and len(p) == 1 and p[0].price == D("99.00")


def test_fills_move_states_and_leave_working_set():
    seen = []
    om = OrderManager(MKT, on_change=lambda o: seen.append(o.state))
    _, (bid,) = opened(om, Q([("99.00", "3")], []))
    mk = lambda tid, sz: Fill("paper", tid, bid.client_id, "X/Y", Side.BUY, D("99.00"), D(sz), D(0), "maker", 5, 99.5)
    om.on_fill(mk("1", "1"))
    assert bid.state is OrderState.PARTIALLY_FILLED and bid.client_id in om.working
    # a partially filled order of the same original size at the same price is kept
    assert om.plan(Q([("99.00", "3")], []), 6) == ([], [])
    om.on_fill(mk("2", "2"))
    assert bid.state is OrderState.FILLED and bid.client_id not in om.working
    assert seen == [OrderState.NEW, OrderState.OPEN, OrderState.PARTIALLY_FILLED, OrderState.FILLED]


def test_rejection_is_terminal():
    om = OrderManager(MKT)
    _, places = om.plan(Q([("99.00", "1")], []), 0)
    om.submitted(places[0])
    om.on_ack(OrderAck(places[0].client_id, OrderState.REJECTED, 0, reason="would cross"))
    assert places[0].state is OrderState.REJECTED and not om.working


def test_terminal_orders_are_forgotten_beyond_keep_terminal():
    """A long run replaces its quotes tens of thousands of times an hour: the manager must
    not keep every order of the run (the soak benchmark saw RSS grow ~17 MB per hour)."""
    om = OrderManager(MKT, keep_terminal=50)
    for i in range(400):  # each step moves both quotes: cancel the pair, place a new pair
        opened(om, Q([(f"{90 + i * 0.01:.2f}", "1")], [(f"{110 + i * 0.01:.2f}", "1")]), t=i)
    assert len(om.working) == 2
    assert len(om.orders) == 2 + 50  # the working pair and the last 50 terminal orders
    # the most recent terminal orders are still known: a fill racing behind a cancel counts
    last = next(reversed(om._terminal))
    o = om.on_fill(Fill("paper", "t1", last, "X/Y", om.orders[last].side, om.orders[last].price, D("1"), D("0"), "maker", 500, 100.0))
    assert o is not None and o.state is OrderState.CANCELED and o.filled == D("1")
    # the working orders are never forgotten, whatever the bound
    assert all(cid in om.orders for cid in om.working)
