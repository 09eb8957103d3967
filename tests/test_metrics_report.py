"""Backtest metrics (paper_trading.metrics) and the HTML report (paper_trading.report_html)
on a hand-built database with known answers."""

from __future__ import annotations

import math
import statistics
from decimal import Decimal as D

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.errors import ConfigError
from bot.inventory import Inventory
from bot.orders import Fill, Order, OrderState, Side
from bot.persistence.store import open_store
from paper_trading.metrics import compute_metrics, minute_pnl_diffs, quoted_time_ns, sharpe_per_minute
from paper_trading.report_html import best_quote_steps, decimate, write_report

T0 = 1_700_000_000 * 10**9
S = 10**9


def ns(sec: float) -> int:
    return T0 + round(sec * S)


# snapshots: (seconds, inventory after the fills so far as seen by the snapshot, pnl, mid)
SNAPS = [(0, "0", 0.0, 100.0), (30, "0", 0.2, 100.1), (59, "-0.5", 0.5, 100.3), (61, "-0.5", 0.4, 100.2),
         (100, "0.5", 1.0, 99.9), (119.9, "0.5", 1.3, 100.4), (150, "0.5", 1.1, 100.0), (170, "0", 1.6, 100.5),
         (180, "0", 1.5, 100.5)]


def _order(cid, side, px, t):
    return Order("BTC/USDT", side, D(px), D("1"), client_id=cid, created_ns=ns(t), updated_ns=ns(t))


def build_db(path) -> tuple[str, int]:
    """A 3-minute run.

    bids: b1 open 10 s -> canceled 70 s; b2 open 70 s -> filled 100 s; b3 open 130 s -> never
          ends (works to the end, 180 s).                 union = 60 + 30 + 50 = 140 s
    asks: a1 open 20 s -> partial 50 s -> canceled 90 s; a2 rejected at 95 s (never works);
          a3 open 150 s -> canceled 170 s; a4 filled partially from `new` at 165 s (no open
          event) -> canceled 175 s; a5 open 100 s -> canceled 110 s.
                                                          union = 70 + 25 + 10 = 105 s
    both = [20, 90] + [150, 175] = 95 s; either = [10, 110] + [130, 180] = 150 s.
    """
    db = str(path)
    st_ = open_store(db)
    run_id = st_.start_run("backtest", "paper", "BTC/USDT", {"strategy": {"gamma": 0.1, "k": 1.5}}, started_ns=T0)
    inv = Inventory()
    snaps = iter(SNAPS)
    pending = next(snaps)
    fill_n = 0

    def snap_until(t):
        nonlocal pending
        while pending is not None and pending[0] <= t:
            sec, q, pnl, mid = pending
            inv.base = D(q)
            st_.record_pnl(ns(sec), mid, inv, pnl)
            pending = next(snaps, None)

    def do_fill(o, size, px, mid, t):
        nonlocal fill_n
        fill_n += 1
        f = Fill("paper", f"t{fill_n}", o.client_id, "BTC/USDT", o.side, D(px), D(size), D("0.01"), "maker", ns(t), mid)
        st_.record_fill(f)
        o.apply_fill(D(size), ns(t))
        st_.record_order(o)

    timeline = []  # (t, action)
    b1, b2, b3 = _order("b1", Side.BUY, "99.0", 0), _order("b2", Side.BUY, "99.5", 70), _order("b3", Side.BUY, "99.6", 120)
    a1, a2, a3 = _order("a1", Side.SELL, "100.5", 0), _order("a2", Side.SELL, "100.4", 95), _order("a3", Side.SELL, "100.8", 150)
    a4, a5 = _order("a4", Side.SELL, "101.0", 160), _order("a5", Side.SELL, "100.6", 100)

    def rec(o):
        return lambda: st_.record_order(o)

    def tr(o, state, t, reason=""):
        def f():
            o.transition(state, ns(t), reason)
            st_.record_order(o)
        return f

    timeline += [(0, rec(b1)), (0, rec(a1)), (10, tr(b1, OrderState.OPEN, 10)), (20, tr(a1, OrderState.OPEN, 20)),
                 (50, lambda: do_fill(a1, "0.5", "100.5", 100.3, 50)),
                 (70, tr(b1, OrderState.CANCELED, 70)), (70, rec(b2)), (70, tr(b2, OrderState.OPEN, 70)),
                 (90, tr(a1, OrderState.CANCELED, 90)),
                 (95, rec(a2)), (95, tr(a2, OrderState.REJECTED, 95, "post-only would cross")),
                 (100, lambda: do_fill(b2, "1", "99.5", 99.9, 100)),
                 (100, rec(a5)), (100, tr(a5, OrderState.OPEN, 100)), (110, tr(a5, OrderState.CANCELED, 110)),
                 (120, rec(b3)), (130, tr(b3, OrderState.OPEN, 130)),
                 (150, rec(a3)), (150, tr(a3, OrderState.OPEN, 150)), (160, rec(a4)),
                 (165, lambda: do_fill(a4, "0.5", "101.0", 100.5, 165)),
                 (170, tr(a3, OrderState.CANCELED, 170)), (175, tr(a4, OrderState.CANCELED, 175))]
    for t, action in timeline:  # stable: equal times keep their listed order
        snap_until(t - 1e-9)
        action()
        snap_until(t)
    snap_until(1e9)
    st_.end_run("completed", {}, ended_ns=T0 + 5 * S)  # wall clock: deliberately not the event clock
    st_.close()
    return db, run_id


@pytest.fixture(scope="module")
def db3(tmp_path_factory):
    return build_db(tmp_path_factory.mktemp("m") / "run.db")


def test_share_of_time_quoted_exact(db3):
    db, run_id = db3
    m = compute_metrics(db, run_id)
    assert m["duration_s"] == 180.0
    assert m["share_quoted_bid"] == 140 / 180
    assert m["share_quoted_ask"] == 105 / 180
    assert m["share_quoted_both"] == 95 / 180
    assert m["share_quoted_any"] == 150 / 180
    assert m["n_orders"] == 8 and m["n_orders_rejected"] == 1 and m["n_orders_worked"] == 7
    assert m["n_orders_filled"] == 1  # b2
    assert m["fills"] == 3 and m["fill_ratio"] == 3 / 8


def test_inventory_and_sharpe_hand_computed(db3):
    db, run_id = db3
    m = compute_metrics(db, run_id)
    ts = [s[0] for s in SNAPS]
    q = [float(s[1]) for s in SNAPS]
    w = [b - a for a, b in zip(ts, ts[1:])] + [0]
    assert m["mean_inventory"] == pytest.approx(sum(wi * qi for wi, qi in zip(w, q)) / 180)
    assert m["mean_inventory"] == pytest.approx(14.5 / 180)
    assert m["mean_abs_inventory"] == pytest.approx(55.5 / 180)
    # 1-minute grid 0, 60, 120, 180 s, last value: pnl(0 s) = 0, pnl(59 s) = 0.5, pnl(119.9 s) = 1.3, pnl(180 s) = 1.5
    d = [0.5, 0.8, 0.2]
    expected = statistics.mean(d) / statistics.stdev(d) * math.sqrt(525600)
    assert sharpe_per_minute([s[0] * S for s in SNAPS], [s[2] for s in SNAPS], min_minutes=3) == pytest.approx(expected, rel=1e-9)
    # three minutes are too few for a Sharpe ratio: none, and the note says why
    assert m["sharpe"] is None and m["sharpe_minutes"] == 3
    assert m["sharpe_note"] == "n/a: too few samples (3 one-minute PnL changes, need 30)"
    assert m["max_drawdown"] == pytest.approx(0.2)  # 1.3 -> 1.1
    # the PnL split comes from build_report: fills a1 sell 0.5 @100.5 (mid 100.3), b2 buy 1 @99.5 (mid 99.9),
    # a4 sell 0.5 @101 (mid 100.5)
    assert m["spread_capture"] == pytest.approx(0.5 * 0.2 + 0.4 + 0.5 * 0.5)
    assert m["fees"] == pytest.approx(0.03)
    # total from the fills alone: cash 0.5 x 100.5 - 1 x 99.5 + 0.5 x 101 - 3 x 0.01 = 1.22, flat at the end
    # (-0.5 + 1 - 0.5 = 0), nothing held at the start: 1.22; inventory PnL = 1.22 - 0.75 + 0.03
    assert m["total_pnl"] == pytest.approx(1.22, abs=1e-12)
    assert m["inventory_pnl"] == pytest.approx(0.5, abs=1e-12)
    assert m["max_abs_inventory"] == 0.5


def test_sharpe_edge_cases():
    t = np.array([0, 60, 120], dtype=np.int64) * S
    assert sharpe_per_minute(t, [0.0, 1.0, 3.0], min_minutes=2) is not None
    assert sharpe_per_minute(t, [0.0, 1.0, 3.0], min_minutes=3) is None  # only 2 one-minute differences
    t4 = np.arange(4, dtype=np.int64) * 60 * S
    assert sharpe_per_minute(t4, [0.0, 1.0, 2.0, 3.0], min_minutes=3) is None  # zero std
    assert sharpe_per_minute(t4, [0.1 * i for i in range(4)], min_minutes=3) is None  # zero std up to rounding
    assert sharpe_per_minute(t4, [0.0, 1.0, 3.0, 4.0], min_minutes=3) is not None
    # a snapshot every 7 s: the grid takes the last value at or before each minute
    ts = np.arange(0, 200, 7, dtype=np.int64) * S
    v = (ts / S) ** 1.5
    got = minute_pnl_diffs(ts, v)
    last = [max(x for x in range(0, 200, 7) if x <= g) for g in (0, 60, 120, 180)]
    assert np.allclose(got, np.diff([x ** 1.5 for x in last]))


def test_sharpe_needs_30_minutes_and_says_it_is_annualised(tmp_path):
    """A 10-minute run gave an annualised Sharpe of 1,348 as its headline: below 30 one-minute
    PnL changes there is none; from 30 on it is shown with what it is."""
    rng = np.random.default_rng(5)
    for minutes, has_sharpe in ((10, False), (29, False), (30, True), (45, True)):
        db = str(tmp_path / f"r{minutes}.db")
        st_ = open_store(db)
        st_.start_run("paper", "paper", "X/Y", {"exchange": "sim"}, started_ns=T0)
        pnl = np.concatenate([[0.0], np.cumsum(rng.normal(0.01, 0.1, minutes))])
        for i, v in enumerate(pnl):
            st_.record_pnl(T0 + i * 60 * S, 100.0, Inventory(), float(v))
        st_.end_run("completed", {}, ended_ns=T0 + minutes * 60 * S)
        st_.close()
        m = compute_metrics(db)
        assert m["sharpe_minutes"] == minutes
        if has_sharpe:
            d = np.diff(pnl)
            assert m["sharpe"] == pytest.approx(d.mean() / d.std(ddof=1) * math.sqrt(525600), rel=1e-9)
            assert m["sharpe_note"] == f"annualised (x sqrt(525600)) from {minutes} one-minute PnL changes"
        else:
            assert m["sharpe"] is None and "too few samples" in m["sharpe_note"] and f"({minutes} one-minute" in m["sharpe_note"]
        page = write_report(db, None, tmp_path / f"rep{minutes}").read_text(encoding="utf-8")
        assert m["sharpe_note"] in page


def test_latest_run_and_errors(tmp_path, db3):
    db, run_id = db3
    assert compute_metrics(db)["run_id"] == run_id  # latest run
    with pytest.raises(ConfigError):
        compute_metrics(db, run_id + 99)
    with pytest.raises(ConfigError):
        compute_metrics(str(tmp_path / "missing.db"))


def test_empty_run_has_no_undefined_crashes(tmp_path):
    db = str(tmp_path / "e.db")
    st_ = open_store(db)
    st_.start_run("paper", "paper", "X/Y", {}, started_ns=T0)
    st_.record_pnl(T0, 10.0, Inventory(), 0.0)
    st_.end_run("completed", {}, ended_ns=T0)
    st_.close()
    m = compute_metrics(db)
    assert m["n_orders"] == 0 and m["fill_ratio"] is None and m["sharpe"] is None
    assert m["share_quoted_both"] is None  # zero-length span
    path = write_report(db, None, tmp_path / "out")
    assert path.exists()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 20), st.booleans()), max_size=25))
def test_quoted_time_matches_brute_force(intervals):
    grid = np.zeros((2, 100), dtype=bool)
    bs, be, as_, ae = [], [], [], []
    for s0, length, is_bid in intervals:
        grid[0 if is_bid else 1, s0:s0 + length] = True
        (bs if is_bid else as_).append(s0)
        (be if is_bid else ae).append(s0 + length)
    got = quoted_time_ns(bs, be, as_, ae)
    assert got == {"bid": int(grid[0].sum()), "ask": int(grid[1].sum()),
                   "both": int((grid[0] & grid[1]).sum()), "any": int((grid[0] | grid[1]).sum())}


def test_best_quote_steps_and_decimate():
    t, p = best_quote_steps([0, 5, 10], [10, 20, 15], [99.0, 98.0, 99.5], "bid")
    assert t.tolist() == [0, 10, 15, 20]
    assert p[:3].tolist() == [99.0, 99.5, 98.0] and math.isnan(p[3])
    t, p = best_quote_steps([0, 5], [10, 20], [101.0, 100.5], "ask")
    assert t.tolist() == [0, 5, 20] and p[:2].tolist() == [101.0, 100.5] and math.isnan(p[2])  # no step at 10
    x = np.arange(100_000, dtype=float)
    y = np.sin(x / 1000.0)
    y[54_321] = 50.0  # a spike survives decimation
    xd, yd = decimate(x, y, 20_000)
    assert len(xd) <= 20_001 and yd.max() == 50.0 and xd[0] == 0 and xd[-1] == 99_999


def test_html_report_and_pngs(tmp_path, db3):
    db, run_id = db3
    out = tmp_path / "rep"
    path = write_report(db, run_id, out)
    assert path == out / "report.html" and path.exists()
    page = path.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 3
    for name in ("mid_quotes_fills.png", "inventory.png", "pnl.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
        assert f'href="{name}"' in page
    assert "share of time quoted on both sides" in page and f"{100 * 95 / 180:.2f}" in page
    assert "Sharpe" in page and "time-weighted mean inventory" in page
    assert '&quot;gamma&quot;: 0.1' in page  # pretty-printed config
    assert page.count('<tr class="buy">') == 1 and page.count('<tr class="sell">') == 2
    assert "<script" not in page
