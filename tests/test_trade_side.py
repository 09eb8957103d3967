"""Trades without an aggressor side (Bitstamp): the quote rule that signs them
(bot/market_data/trade_side.py), its use by the replay venue (they advance our queue and
fill us) and by the forecaster's features, and the count in the backtest summary."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.market_data.trade_side import aggressor_side, aggressor_sides, infer_trade_sides
from bot.recording import CLEAR, DEPTH, SNAPSHOT, TRADE, RecordingWriter, make_events, open_recording
from paper_trading.venue import R_FILL, Venue, VenueParams
from real_data import DATA, needs

NAN = math.nan
LOG = DATA / "bitstamp_2015" / "2015-05-01.log.bz2"
ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("px,bid,ask,side", [
    (101.0, 100.0, 101.0, 1),    # at the ask: a buyer lifted it
    (101.5, 100.0, 101.0, 1),    # through the ask
    (100.0, 100.0, 101.0, -1),   # at the bid
    (99.0, 100.0, 101.0, -1),    # through the bid
    (100.75, 100.0, 101.0, 1),   # inside the spread, above the mid
    (100.25, 100.0, 101.0, -1),  # below the mid
    (100.5, 100.0, 101.0, 0),    # at the mid: unknown
    # crossed (a marketable order published before the orders it matched are removed): the
    # trade is at the resting order's price
    (100.0, 101.0, 100.0, 1),    # a bid at 101 crossed the ask at 100 and traded at 100
    (101.0, 101.0, 100.0, -1),   # an ask at 100 crossed the bid at 101 and traded at 101
    (100.0, 100.0, 100.0, 0),    # locked at the trade price
    # one side empty
    (101.0, NAN, 101.0, 1),
    (100.0, NAN, 101.0, 0),
    (100.0, 100.0, NAN, -1),
    (100.5, 100.0, NAN, 0),
    (100.0, NAN, NAN, 0),
])
def test_the_rule(px, bid, ask, side):
    assert aggressor_side(px, bid, ask) == side
    assert aggressor_sides(np.array([px]), np.array([bid]), np.array([ask])).tolist() == [side]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(90, 110), st.one_of(st.none(), st.integers(90, 110)),
                          st.one_of(st.none(), st.integers(90, 110))), min_size=1, max_size=30))
def test_scalar_and_array_forms_agree(rows):
    px = np.array([r[0] for r in rows], float)
    bid = np.array([NAN if r[1] is None else r[1] for r in rows], float)
    ask = np.array([NAN if r[2] is None else r[2] for r in rows], float)
    assert aggressor_sides(px, bid, ask).tolist() == [aggressor_side(*t) for t in zip(px, bid, ask)]


def _book_and_trades() -> np.ndarray:
    """Snapshot bid 100 x 2 / ask 101 x 2, then side-0 trades at 100 (a sell hitting the bid
    at our price) and at 101 (a buy), and one before the book exists."""
    t = 1_700_000_000_000_000_000
    rows = [
        (TRADE, 0, t, 100.0, 9.0),  # no book yet: stays unknown
        (CLEAR, 1, t + 1, 0.0, 0.0), (CLEAR, -1, t + 1, 0.0, 0.0),
        (SNAPSHOT, 1, t + 1, 100.0, 2.0), (SNAPSHOT, -1, t + 1, 101.0, 2.0),
        (TRADE, 0, t + 100_000_000, 100.0, 1.5),
        (DEPTH, 1, t + 100_000_001, 100.0, 0.5),  # the depth update reporting that trade
        (TRADE, 0, t + 200_000_000, 100.0, 1.5),
        (TRADE, 0, t + 300_000_000, 101.0, 0.7),
        (TRADE, 1, t + 400_000_000, 101.0, 0.1),  # a side given by the source is kept
    ]
    k, s, ts, px, q = zip(*rows)
    return make_events(k, s, -1, ts, px, q)


def test_infer_trade_sides_on_a_book():
    ev = _book_and_trades()
    before = ev.copy()
    out, n = infer_trade_sides(ev, 0.01)
    assert n == 3
    assert out["side"][ev["kind"] == TRADE].tolist() == [0, -1, -1, 1, 1]
    assert np.array_equal(ev, before)  # the caller's array is untouched (a --compare reuses it)
    # nothing to infer: the same array back
    sided = out[1:]
    same, n0 = infer_trade_sides(sided, 0.01)
    assert n0 == 0 and same is sided


def test_unsided_trades_advance_the_queue_and_fill_us():
    """Our bid of 1 at 100 behind 2: the first unsided sell of 1.5 at 100 leaves 0.5 ahead,
    the second fills us 1. Before the fix, the venue ignored both trades."""
    ev, n = infer_trade_sides(_book_and_trades(), 0.01)
    v = Venue(ev, 0.01, 0.01, VenueParams(queue_model="conservative", entry_latency_ns=0))
    t0 = int(ev["local_ts"][1])
    v.advance_to(t0)
    assert v.submit(1, 1, 100.0, 1.0, t0)
    v.advance_to(t0 + 1)
    assert v.queue_ahead(1) == pytest.approx(2.0)
    v.advance_to(t0 + 150_000_000)
    assert v.queue_ahead(1) == pytest.approx(0.5)
    reps = v.advance_to(t0 + 250_000_000)
    fills = [r for r in reps if r.kind == R_FILL]
    assert len(fills) == 1 and fills[0].oid == 1 and fills[0].px == pytest.approx(100.0) and fills[0].qty == pytest.approx(1.0)


def _bitstamp_slice(out: Path, zero_sides: bool, max_lines: int = 40_000) -> tuple[Path, int]:
    """An imported slice of the Bitstamp day, its trades' sides set to 0 when ``zero_sides``
    (as the raw feed gives them: no side). Returns (recording, number of trades)."""
    from bot.importers.bitstamp import import_bitstamp

    raw = out.with_name(out.name + "_raw")
    import_bitstamp(LOG, raw, max_lines=max_lines)
    rec = open_recording(raw)
    ev = rec.events()
    tr = ev["kind"] == TRADE
    if zero_sides:
        ev["side"][tr] = 0
    meta = {k: rec.meta[k] for k in ("exchange", "symbol", "market", "tick_size", "lot_size")}
    w = RecordingWriter(out, meta)
    w.append(ev)
    w.close()
    return out, int(tr.sum())


@needs(LOG)
def test_rule_agrees_with_the_order_based_sides_on_real_trades(tmp_path):
    """On Bitstamp's own day, the importer signs most trades from the orders around them
    (the taker's order_created, the maker's change). The book rule, blind to orders, agrees
    on most of them (0.84 on the whole day, 0.89 where the book was crossed at the trade)."""
    from bot.importers.bitstamp import import_bitstamp

    import_bitstamp(LOG, tmp_path / "rec", max_lines=40_000)
    ev = open_recording(tmp_path / "rec").events()
    tr = ev["kind"] == TRADE
    known = tr & (ev["side"] != 0)
    blind = ev.copy()
    blind["side"][tr] = 0
    out, n = infer_trade_sides(blind, 0.01)
    assert n >= 0.95 * tr.sum()
    agree = (out["side"][known] == ev["side"][known]).mean()
    assert known.sum() > 300 and agree > 0.75, (known.sum(), agree)


@needs(LOG)
def test_backtest_reports_and_replays_inferred_sides(tmp_path):
    """A backtest on Bitstamp trades without sides (as the raw feed gives them): the venue
    replays them with the inferred side, and the summary says how many were inferred.
    (Measured on this slice: our fills barely change, because Bitstamp publishes the
    marketable order first, so the crossed book fills us before the trade row arrives.)"""
    from bot.config import load_config, with_overrides
    from bot.persistence.store import open_store
    from paper_trading.backtest import build_replay_engine, load_recording, run_backtest

    rec, n_trades = _bitstamp_slice(tmp_path / "unsided", zero_sides=True)
    cfg = with_overrides(load_config(ROOT / "config" / "backtest.yaml"), **{
        "database.url": str(tmp_path / "bt.db"), "replay.interval_s": 1.0,
        "strategy.controls.order_size": 0.01, "strategy.controls.max_inventory": 0.1,
        "strategy.pricing.intensity_depth_step": 0.01, "strategy.pricing.initial_sigma": 0.05,
        "strategy.pricing.calibrate_intensity": False, "forecaster.model": "none"})
    events, meta = load_recording(rec)
    store = open_store(cfg.database.url)
    try:
        _, source = build_replay_engine(rec, cfg, store, mode="backtest", speed=0.0, events_meta=(events, meta))
        s = run_backtest(rec, cfg, store, events_meta=(events, meta))
    finally:
        store.close()
    is_tr = source.venue.kind == TRADE
    sides = source.venue.side[is_tr]
    assert n_trades > 300 and (sides != 0).sum() >= 0.95 * n_trades  # before the fix: all 0, ignored
    assert (events["side"][events["kind"] == TRADE] == 0).all()  # the loaded events are untouched
    assert s["status"] == "completed" and s["trades_side_inferred"] == int((sides != 0).sum())


def test_features_sign_unsided_trades_with_the_same_rule():
    """The forecaster's flow features count an unsided trade at the ask as a buy, online and
    offline (the rule is shared with the replay)."""
    from bot.orderbook import OrderBook
    from models.features import FeatureConfig, OnlineFeatures, offline_features

    cfg = FeatureConfig(sample_s=1.0, rv_windows=(2,))
    S = 10**9
    t0 = 1_700_000_000 * S
    rows = [(CLEAR, 1, t0, 0.0, 0.0), (CLEAR, -1, t0, 0.0, 0.0), (SNAPSHOT, 1, t0, 100.0, 2.0),
            (SNAPSHOT, -1, t0, 101.0, 2.0), (TRADE, 0, t0 + S // 2, 101.0, 1.0), (TRADE, 0, t0 + S // 2 + 1, 100.0, 0.25),
            (DEPTH, 1, t0 + 2 * S, 100.0, 2.0)]
    k, s, ts, px, q = zip(*rows)
    ev = make_events(k, s, -1, ts, px, q)
    ff = offline_features(ev, cfg, 0.01)
    i = ff.names.index("flow_imb")
    assert ff.X[1, i] == pytest.approx((1.0 - 0.25) / 1.25)
    on = OnlineFeatures(cfg)
    book = OrderBook("X")
    book.apply_snapshot([(100.0, 2.0)], [(101.0, 2.0)], t0)
    on.step(book, int(ff.ts_ns[0]))
    on.add_trades([(t0 + S // 2, 101.0, 1.0, ""), (t0 + S // 2 + 1, 100.0, 0.25, "")])
    x = on.step(book, int(ff.ts_ns[1]))
    assert x[i] == pytest.approx(ff.X[1, i])
