"""Forecaster features and targets: online/offline parity on real recordings, no look-ahead,
the sampled OFI against Cont-Kukanov-Stoikov's event OFI, targets on known paths."""

from __future__ import annotations

import numpy as np
import pytest

from bot.recording.io import open_recording
from bot.recording.schema import ASK, BID, CLEAR, DEPTH, SNAPSHOT, TRADE, make_events
from models.features import FeatureConfig, Normalizer, OnlineFeatures, feature_names, grid_times, offline_features
from models.targets import Horizon, direction_classes, event_targets, make_targets
from models_helpers import binance_recording, bitstamp_recording, change_future, replay_online


@pytest.fixture(scope="module")
def binance(tmp_path_factory):
    rec = open_recording(binance_recording(tmp_path_factory.mktemp("bn") / "rec"))
    ev = rec.events()
    ev = ev[ev["local_ts"] <= ev["local_ts"][0] + 240 * 10**9]  # 4 minutes
    return ev, rec.meta


@pytest.fixture(scope="module")
def bitstamp(tmp_path_factory):
    rec = open_recording(bitstamp_recording(tmp_path_factory.mktemp("bs") / "rec", max_lines=40_000))
    return rec.events(), rec.meta


def _parity(ev, meta, cfg):
    ff = offline_features(ev, cfg, meta["tick_size"])
    on = OnlineFeatures(cfg)

    def step(book, t, trades):
        on.add_trades(trades)
        return on.step(book, t)

    rows = [x for x in replay_online(ev, meta["tick_size"], meta["lot_size"], grid_times(ev["local_ts"][0], ev["local_ts"][-1], cfg.sample_ns), step)
            if x is not None]
    X = np.array(rows)
    assert X.shape == ff.X.shape
    return X, ff


def test_online_offline_parity_binance(binance):
    ev, meta = binance
    X, ff = _parity(ev, meta, FeatureConfig(sample_s=0.1, n_levels=5, rv_windows=(5, 50, 300)))
    assert len(X) > 2000
    assert np.allclose(X, ff.X, rtol=1e-9, atol=1e-8), np.abs(X - ff.X).max(axis=0)
    # the features are alive (not constant), including trade flow
    assert np.all(ff.X.std(axis=0) > 0)


def test_online_offline_parity_bitstamp(bitstamp):
    """Bitstamp: trades without aggressor side, transiently crossed books (forward fill)."""
    ev, meta = bitstamp
    X, ff = _parity(ev, meta, FeatureConfig(sample_s=1.0, n_levels=3, rv_windows=(10, 60)))
    assert np.allclose(X, ff.X, rtol=1e-9, atol=1e-8), np.abs(X - ff.X).max(axis=0)
    assert ff.X[:, feature_names(ff.cfg).index("n_trades")].max() > 0


def test_no_lookahead(binance):
    """Changing everything after a cut time moves no feature at or before it, and no target
    whose horizon ends before it."""
    ev, meta = binance
    cfg = FeatureConfig(sample_s=0.1, n_levels=5, rv_windows=(5, 50))
    ff = offline_features(ev, cfg, meta["tick_size"])
    cut = int(ff.ts_ns[len(ff) // 2])
    ev2 = change_future(ev, cut)
    ff2 = offline_features(ev2, cfg, meta["tick_size"])
    past = ff.ts_ns <= cut
    n = int(past.sum())
    assert np.array_equal(ff.ts_ns[:n], ff2.ts_ns[:n])
    assert np.array_equal(ff.X[:n], ff2.X[:n])
    assert not np.array_equal(ff.X[n:n + 500], ff2.X[n:n + 500])  # the future did change
    t1, t2 = make_targets(ff, "1s"), make_targets(ff2, "1s")
    H = 10
    assert np.array_equal(t1.drift[: n - H], t2.drift[: n - H])
    assert np.array_equal(t1.var[: n - H], t2.var[: n - H])
    # event horizon: every target whose 20th mid change comes at or before the cut is unchanged
    e1, e2 = make_targets(ff, "20ev", ev, meta["tick_size"]), make_targets(ff2, "20ev", ev2, meta["tick_size"])
    ends = ff.ts_ns[:n] + np.nan_to_num(e1.duration_s[:n] * 1e9, nan=np.inf)
    before = ends <= cut
    assert before.sum() > n // 2 and not before[n - 1]
    for a, b in ((e1.drift, e2.drift), (e1.var, e2.var), (e1.duration_s, e2.duration_s)):
        assert np.array_equal(a[:n][before], b[:n][before])
    assert not np.allclose(e1.duration_s[n : n + 500], e2.duration_s[n : n + 500], equal_nan=True)
    # online: the same features whatever comes after
    on1, on2 = OnlineFeatures(cfg), OnlineFeatures(cfg)
    grid = ff.ts_ns[:n]
    r1 = replay_online(ev, meta["tick_size"], meta["lot_size"], grid, lambda b, t, tr: (on1.add_trades(tr), on1.step(b, t))[1])
    r2 = replay_online(ev2, meta["tick_size"], meta["lot_size"], grid, lambda b, t, tr: (on2.add_trades(tr), on2.step(b, t))[1])
    assert all(np.array_equal(a, b) for a, b in zip(r1, r2))


def test_event_targets_stop_at_the_span_end(binance):
    """With the span cut (``--until``), an event horizon's targets use no mid change after the
    cut: features and targets of the cut span are the same whatever the recording holds after
    it, and rows whose horizon reaches past the cut get no target."""
    ev, meta = binance
    cfg = FeatureConfig(sample_s=0.1, n_levels=5, rv_windows=(5, 50))
    tick = meta["tick_size"]
    cut = (int(ev["local_ts"][0]) + int(ev["local_ts"][-1])) // 2
    ev2 = change_future(ev, cut)
    ff1 = offline_features(ev, cfg, tick, t_end_ns=cut)
    ff2 = offline_features(ev2, cfg, tick, t_end_ns=cut)
    assert np.array_equal(ff1.X, ff2.X) and np.array_equal(ff1.ts_ns, ff2.ts_ns)
    t1, t2 = make_targets(ff1, "20ev", ev, tick), make_targets(ff2, "20ev", ev2, tick)
    for a, b in ((t1.drift, t2.drift), (t1.var, t2.var), (t1.duration_s, t2.duration_s)):
        assert np.array_equal(a, b, equal_nan=True)
    ok = t1.valid
    assert ok.sum() > len(ff1) // 2 and not ok[-1]
    assert np.all(ff1.ts_ns[ok] + t1.duration_s[ok] * 1e9 <= ff1.ts_ns[-1] + 1)  # every horizon ends in the span
    # an explicit end earlier than the frame's end cuts there
    end = int(ff1.ts_ns[len(ff1) // 2])
    t3 = make_targets(ff1, "20ev", ev, tick, end_ns=end)
    ok3 = t3.valid
    assert 0 < ok3.sum() < ok.sum()
    assert np.all(ff1.ts_ns[ok3] + t3.duration_s[ok3] * 1e9 <= end + 1)
    assert np.array_equal(t3.drift[ok3], t1.drift[ok3])
    s1, s3 = make_targets(ff1, "1s"), make_targets(ff1, "1s", end_ns=end)  # seconds horizons alike
    ok = s3.valid
    assert ok.sum() == np.sum(ff1.ts_ns + 10**9 <= end) and np.array_equal(s3.var[ok], s1.var[ok])


def test_sampled_ofi_equals_cks_with_one_event_per_interval():
    """With one book change per grid interval the sampled OFI is CKS's e_n of that event."""
    S = 10**9
    t0 = 10 * S
    book = {BID: {100.0: 2.0, 99.5: 1.0}, ASK: {101.0: 3.0, 101.5: 2.0}}
    rows = [(CLEAR, BID, t0, 0.0, 0.0), (CLEAR, ASK, t0, 0.0, 0.0)]
    rows += [(SNAPSHOT, sd, t0, px, q) for sd in (BID, ASK) for px, q in book[sd].items()]
    # one change each second, at k s + 0.5 s: (side, price, new size)
    changes = [(BID, 100.0, 5.0), (ASK, 100.5, 1.0), (BID, 100.0, 0.0), (ASK, 100.5, 0.0), (BID, 99.0, 4.0),
               (ASK, 102.0, 2.0), (BID, 100.2, 1.0), (ASK, 101.0, 7.0)]

    def top():
        b, a = max(book[BID]), min(book[ASK])
        return b, book[BID][b], a, book[ASK][a]

    expect = []
    for k, (side, px, q) in enumerate(changes):
        pb, pq, pa, paq = top()
        if q > 0:
            book[side][px] = q
        else:
            del book[side][px]
        b, bq, a, aq = top()
        e = (bq if b >= pb else 0) - (pq if b <= pb else 0) - (aq if a <= pa else 0) + (paq if a >= pa else 0)
        expect.append(e / (0.25 * (bq + aq + pq + paq)))
        rows.append((DEPTH, side, t0 + k * S + S // 2, px, q))
    rows.append((DEPTH, BID, t0 + len(changes) * S + S // 2, 50.0, 1.0))  # far from the top: ends the data
    kind, side, ts, px, q = zip(*rows)
    ev = make_events(kind, side, ts, ts, px, q)
    cfg = FeatureConfig(sample_s=1.0, n_levels=1, rv_windows=(2,))
    ff = offline_features(ev, cfg)
    ofi = ff.X[:, feature_names(cfg).index("ofi")]
    assert ff.ts_ns[0] == t0
    assert np.allclose(ofi[1 : len(changes) + 1], expect)
    assert np.count_nonzero(expect) >= 5


def test_targets_on_a_known_path():
    from models.features import FeatureFrame

    cfg = FeatureConfig(sample_s=1.0, n_levels=1, rv_windows=(2,))
    mid = np.array([100.0, 100.0, 101.0, 100.0, 100.0, 102.0])
    ret = np.zeros(6)
    ret[1:] = np.log(mid[1:] / mid[:-1]) * 1e4
    r2u = np.rint(ret**2 / 1e-9).astype(np.int64)
    X = np.zeros((6, len(feature_names(cfg))))
    X[:, 0] = ret
    ff = FeatureFrame(np.arange(6) * 10**9, X, mid, r2u, np.zeros(6, bool), cfg, feature_names(cfg))
    t = make_targets(ff, "2s")
    assert np.allclose(t.drift[:4], np.log(mid[2:] / mid[:4]) * 1e4)
    assert np.isnan(t.drift[4:]).all() and np.isnan(t.var[4:]).all()
    assert t.var[0] == pytest.approx(ret[1] ** 2 + ret[2] ** 2, rel=1e-9)
    assert t.var[1] == pytest.approx(ret[2] ** 2 + ret[3] ** 2, rel=1e-9)
    assert list(direction_classes(t.drift[:4])) == [1, 0, -1, 1]
    # event horizon: the next 2 mid changes
    d, v, dur = event_targets(np.array([0, 10]), np.array([100.0, 101.0]), np.array([3, 5, 12, 20]), np.array([101.0, 100.0, 102.0, 101.0]), 2)
    assert d[0] == pytest.approx(0.0) and dur[0] == pytest.approx(5e-9)
    assert v[0] == pytest.approx((np.log(1.01) * 1e4) ** 2 + (np.log(100 / 101) * 1e4) ** 2)
    assert d[1] == pytest.approx(np.log(101 / 101) * 1e4) and v[1] > 0
    assert Horizon.parse("50ev") == Horizon(50, "ev") and Horizon.parse("2.5s").value == 2.5
    with pytest.raises(ValueError):
        Horizon.parse("3 apples")


def test_normalizer_uses_training_rows_only():
    X = np.vstack([np.random.default_rng(0).normal(0, 1, (100, 3)), np.full((100, 3), 1e6)])
    n = Normalizer.fit(X[:100])
    assert np.all(np.abs(n.mean) < 0.5) and np.all(n.std < 2)
    assert np.all(n.transform(X[100:]) == n.clip)  # test rows clipped, never refitted
