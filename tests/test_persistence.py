"""The SQLite record: round trip, idempotent fills, WAL mode, and the report's PnL split."""

from decimal import Decimal as D

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from bot.errors import ConfigError
from bot.inventory import Inventory
from bot.orders import Fill, Order, OrderState, Side
from bot.persistence.report import build_report
from bot.persistence.schema import FillRow, OrderEvent, OrderRow
from bot.persistence.store import open_store


def fill(tid, side, px, sz, mid, fee="0", exchange="paper"):
    return Fill(exchange, tid, "c1", "X/Y", side, D(px), D(sz), D(fee), "maker", int(tid) * 10, mid)


def test_round_trip_and_idempotent_fills(tmp_path):
    db = tmp_path / "r.db"
    st = open_store(str(db))
    st.start_run("paper", "paper", "X/Y", {"gamma": 0.1})
    o = Order("X/Y", Side.BUY, D("99.01"), D("2"), client_id="c1", created_ns=1, updated_ns=1)
    st.record_order(o)
    o.transition(OrderState.OPEN, 2)
    st.record_order(o)
    f = fill("1", Side.BUY, "99.01", "2", 100.0, "0.01", exchange="binance")
    assert st.record_fill(f) is True
    assert st.record_fill(f) is False  # replayed: stored once
    o.apply_fill(D("2"), 3)
    st.record_order(o)
    st.commit()
    with st.engine.connect() as c:
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    st.close()

    st2 = open_store(str(db))
    with Session(st2.engine) as s:
        rows = s.scalars(select(FillRow)).all()
        assert len(rows) == 1 and rows[0].price == D("99.01") and rows[0].fee == D("0.01")
        orow = s.scalars(select(OrderRow)).one()
        assert orow.state == "filled" and orow.filled == D("2") and orow.price == D("99.01")
        states = [e.state for e in s.scalars(select(OrderEvent).order_by(OrderEvent.id))]
    assert states == ["new", "open", "filled"]
    # another run on the same database cannot store the same exchange trade again
    st2.start_run("live", "binance", "X/Y", {})
    assert st2.record_fill(f) is False
    # even a paper fill forced in twice is stored once (ON CONFLICT DO NOTHING)
    pf = fill("9", Side.SELL, "100", "1", 100.0)
    st2.record_fill(pf)
    st2.commit()
    st2._fill_keys.clear()
    assert st2.record_fill(pf) is True
    st2.commit()
    with st2.engine.connect() as c:
        assert c.execute(text("select count(*) from fills where trade_id='9'")).scalar() == 1
    st2.close()


def test_report_pnl_split_from_the_database_alone(tmp_path):
    db = str(tmp_path / "p.db")
    st = open_store(db)
    st.start_run("paper", "paper", "X/Y", {})
    inv = Inventory()
    st.record_pnl(0, 100.0, inv, 0.0)  # start snapshot: q0 = 0 at mid 100
    fills = [fill("1", Side.BUY, "99", "1", 100.0, "0.1"), fill("2", Side.SELL, "102", "1", 101.0, "0.1"),
             fill("3", Side.BUY, "100", "2", 101.0, "0.2")]
    for f in fills:
        st.record_fill(f)
        inv.apply(f)
    st.record_pnl(100, 99.0, inv, inv.pnl(99.0, 100.0))  # final mid 99
    st.end_run("completed", {})
    st.close()
    r = build_report(db)
    assert r.fills == 3 and r.buys == 2 and r.sells == 1
    assert r.volume_base == 4.0 and r.volume_quote == pytest.approx(99 + 102 + 200)
    # cash = -99 + 102 - 200 - 0.4 = -197.4 ; q = 2 ; total = -197.4 + 2*99 = 0.6
    assert r.total_pnl == pytest.approx(0.6)
    assert r.spread_capture == pytest.approx(1 + 1 + 2)  # (100-99) + (102-101) + (101-100)*2
    assert r.fees == pytest.approx(0.4)
    assert r.inventory_pnl == pytest.approx(0.6 - 4 + 0.4)
    assert r.total_pnl == pytest.approx(r.spread_capture + r.inventory_pnl - r.fees)
    assert r.max_abs_inventory == 2.0 and r.final_inventory == 2.0


def test_report_errors_are_specific(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_report(str(tmp_path / "nope.db"))
    empty = tmp_path / "empty.db"
    import sqlite3

    sqlite3.connect(empty).execute("create table t(x)").connection.commit()
    with pytest.raises(ConfigError, match="no mmbot runs"):
        build_report(str(empty))
    st = open_store(str(tmp_path / "one.db"))
    st.start_run("paper", "paper", "X/Y", {})
    st.close()
    with pytest.raises(ConfigError, match="no run 7"):
        build_report(str(tmp_path / "one.db"), 7)


def test_store_forgets_old_terminal_orders_but_updates_recent_ones(tmp_path, monkeypatch):
    """The store's set of known client ids must not grow with every order of a long run
    (the soak benchmark places ~37,000 orders per simulated hour); recent terminal orders
    stay known, so a fill racing behind a cancel still updates the row instead of inserting."""
    import bot.persistence.store as store_mod

    monkeypatch.setattr(store_mod, "KEEP_TERMINAL_ORDERS", 20)
    st = open_store(str(tmp_path / "k.db"))
    st.start_run("paper", "paper", "X/Y", {})
    for i in range(200):
        o = Order("X/Y", Side.BUY, D("99"), D("1"), client_id=f"k{i}", created_ns=i, updated_ns=i)
        st.record_order(o)
        o.transition(OrderState.OPEN, i)
        st.record_order(o)
        st.commit()
        o.transition(OrderState.CANCELED, i + 1)
        st.record_order(o)
        st.commit()
    working = Order("X/Y", Side.SELL, D("101"), D("1"), client_id="w", created_ns=300, updated_ns=300)
    st.record_order(working)
    st.commit()
    assert len(st._known_orders) + len(st._known_terminal) <= 20 + 1
    assert "w" in st._known_orders  # a working order is never forgotten
    late = Order("X/Y", Side.BUY, D("99"), D("1"), client_id="k199", state=OrderState.CANCELED, filled=D("1"), updated_ns=400)
    st.record_order(late)  # the last cancelled order gets a late fill: an update, not a second row
    st.commit()
    with Session(st.engine) as s:
        rows = s.execute(select(OrderRow).where(OrderRow.client_id == "k199")).scalars().all()
        assert len(rows) == 1 and D(rows[0].filled) == D("1")
        assert s.execute(select(func.count()).select_from(OrderRow)).scalar() == 201
    st.close()
