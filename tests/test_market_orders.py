"""Market metadata from ccxt structures, exact rounding, the order state machine, inventory."""

from decimal import Decimal

import ccxt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.errors import OrderStateError
from bot.inventory import Inventory
from bot.market import MarketInfo
from bot.orders import Fill, Order, OrderState, Side

BINANCE_LIKE = {
    "symbol": "BTC/USDT", "base": "BTC", "quote": "USDT", "maker": 0.001, "taker": 0.001,
    "precision": {"price": 0.01, "amount": 0.00001},
    "limits": {"amount": {"min": 0.00001}, "cost": {"min": 5.0}},
}


def test_market_from_ccxt_tick_size_mode():
    m = MarketInfo.from_ccxt(BINANCE_LIKE, ccxt.TICK_SIZE)
    assert m.tick == Decimal("0.01") and m.lot == Decimal("0.00001")
    assert m.min_notional == Decimal("5.0") and m.maker_fee == 0.001


def test_market_from_ccxt_decimal_places_mode():
    m = MarketInfo.from_ccxt({**BINANCE_LIKE, "precision": {"price": 2, "amount": 5}}, ccxt.DECIMAL_PLACES)
    assert m.tick == Decimal("0.01") and m.lot == Decimal("0.00001")


def test_rounding_never_improves_a_quote():
    m = MarketInfo.from_ccxt(BINANCE_LIKE)
    assert m.round_price(100.019, "buy") == Decimal("100.01")
    assert m.round_price(100.011, "sell") == Decimal("100.02")
    assert m.round_price(Decimal("100.01"), "sell") == Decimal("100.01")  # exact stays exact
    assert m.round_size(0.123456789) == Decimal("0.12345")
    assert not m.is_tradeable(Decimal("100"), Decimal("0.01"))  # 1 USDT < 5 USDT min notional


@given(st.floats(min_value=0.01, max_value=1e6, allow_nan=False), st.sampled_from(["0.01", "0.5", "0.0001", "5"]))
def test_rounded_price_is_on_the_tick_and_on_the_right_side(px, tick):
    m = MarketInfo("X/Y", "X", "Y", Decimal(tick), Decimal("1"))
    b, a = m.round_price(px, "buy"), m.round_price(px, "sell")
    assert b % m.tick == 0 and a % m.tick == 0
    assert b <= Decimal(repr(px)) <= a and a - b <= m.tick
    # the float fast path agrees with the Decimal path
    assert m.ticks_to_price(m.price_ticks(px, "buy")) in (b, b + m.tick) or b == 0


def test_order_state_machine():
    o = Order("X/Y", Side.BUY, Decimal("1"), Decimal("3"))
    o.transition(OrderState.OPEN, 1)
    o.apply_fill(Decimal("1"), 2)
    assert o.state is OrderState.PARTIALLY_FILLED and o.remaining == Decimal("2")
    o.apply_fill(Decimal("2"), 3)
    assert o.state is OrderState.FILLED and not o.is_working
    with pytest.raises(OrderStateError):
        o.transition(OrderState.CANCELED, 4)
    o2 = Order("X/Y", Side.SELL, Decimal("1"), Decimal("1"))
    with pytest.raises(OrderStateError):
        o2.apply_fill(Decimal("2"), 1)  # more than the order's size
    o2.transition(OrderState.REJECTED, 1, "post-only would cross")
    assert o2.state.terminal and o2.reason == "post-only would cross"
    assert o.client_id != o2.client_id


def test_inventory_accounting():
    inv = Inventory()
    f = lambda side, px, sz, fee, mid: Fill("x", f"t{px}{side}", "c", "X/Y", side, Decimal(px), Decimal(sz), Decimal(fee), "maker", 1, mid)
    inv.apply(f(Side.BUY, "99", "2", "0.1", 100.0))
    inv.apply(f(Side.SELL, "101", "1", "0.1", 100.0))
    assert inv.base == Decimal("1") and inv.cash == Decimal("-97.2")
    assert inv.spread_capture == pytest.approx(2 * 1 + 1 * 1)
    assert inv.pnl(100.0, 100.0) == pytest.approx(2.8)  # 3 spread - 0.2 fees
    assert inv.max_abs_base == Decimal("2") and inv.volume == Decimal("299")


def test_float_tick_count_is_exact_for_large_quotients():
    """32768.02 / 0.0001 is 327680199.99999994 in floats: the fast path must still count it as
    327680200 ticks on both sides (a fixed 1e-9 guard floored the bid one tick too low)."""
    m = MarketInfo("X/Y", "X", "Y", Decimal("0.0001"), Decimal("1"))
    assert m.price_ticks(32768.02, "buy") == m.price_ticks(32768.02, "sell") == 327680200
    assert m.ticks_to_price(m.price_ticks(32768.02, "buy")) == m.round_price(32768.02, "buy") == Decimal("32768.02")
