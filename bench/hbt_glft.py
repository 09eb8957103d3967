"""hftbacktest side of ``bench/backtest_throughput.py --vs-hftbacktest`` (optional; never a dependency).

Runs in its own interpreter (the one that has ``hftbacktest`` installed, e.g. a venv with
``pip install hftbacktest==2.4.4``, which pins numpy < 2.3 and numba 0.61 and so may not share an
environment with mmbot). It imports nothing from mmbot.

Modes:
* ``convert RAW.gz OUT.npz``: hftbacktest's own converter
  (``hftbacktest.data.utils.binancefutures.convert``, combined streams, depth + trades + the
  REST snapshot lines the capture holds) writes OUT.npz; prints one JSON line (rows, seconds).
* ``serve DATA.npz``: a long-lived worker for interleaved repetitions. For every line ``run``
  on stdin it runs one backtest and prints one JSON line; ``quit`` ends it. The first run of a
  process compiles/loads numba code (reported as ``cold``).

The strategy is the GLFT grid market maker of hftbacktest's tutorial "GLFT Market Making Model
and Grid Trading", written out here (not copied): every 100 ms it records the trade arrival
depth, every 5 s it refits A and k (log-linear regression of arrival counts on depth, 10 min
window) and the volatility of the mid (10 min window), computes the GLFT half spread and skew,
and keeps a grid of GTX limit orders (20 per side) around the reservation price. Until the
first fit (the tutorial's 10 min window is longer than the 6-minute test file, so on that file
never) it quotes a half spread of 10 ticks with no skew: a choice of this port, where the
tutorial would price with NaN coefficients. Venue:
``ROIVectorMarketDepthBacktest`` (price range of interest 40,000-80,000 USDT, which holds over 99.9 %
of the file's prices; levels outside it are ignored by hftbacktest), power-probabilistic queue model (power 2), constant 5 ms
entry and 5 ms response latency, partial fills off (hftbacktest's
``no_partial_fill_exchange``), maker 0.02 % / taker 0.05 % fees, tick 0.1 USDT, lot 0.001 BTC,
and hftbacktest's ``Recorder`` called every step as in the tutorial.

Timed region of ``run`` (``elapsed_s``): building the backtest object from the in-memory
converted array (also reported alone as ``build_s``), the whole strategy loop over the file,
and ``close()``. Conversion, numpy
loading of the npz and interpreter start are outside it.

Units: prices in USDT per BTC, sizes in BTC, timestamps int ns, times in seconds.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _convert(raw: str, out: str) -> None:
    from hftbacktest.data.utils import binancefutures

    t = time.perf_counter()
    data = binancefutures.convert(raw, output_filename=out, combined_stream=True)
    print(json.dumps({"rows": int(len(data)), "convert_s": round(time.perf_counter() - t, 3)}), flush=True)


def _build():
    from numba import njit
    from numba.typed import Dict
    from numba import float64, uint64
    from hftbacktest import BUY_EVENT, GTX, LIMIT

    @njit(cache=True)
    def intensity_counts(arrival_depth, out):
        """Count, for each depth in ticks from the mid, the 100 ms steps whose deepest trade reached it."""
        max_tick = 0
        for d in arrival_depth:
            if not np.isfinite(d):
                continue
            tick = int(round(d / 0.5)) - 1
            if tick < 0 or tick >= len(out):
                continue
            out[:tick] += 1
            if tick > max_tick:
                max_tick = tick
        return out[:max_tick]

    @njit(cache=True)
    def fit_line(x, y):
        n = len(x)
        sx = np.sum(x)
        sy = np.sum(y)
        sxx = np.sum(x * x)
        sxy = np.sum(x * y)
        slope = (n * sxy - sx * sy) / (n * sxx - sx * sx)
        return slope, (sy - slope * sx) / n

    @njit(cache=True)
    def glft_coeff(xi, gamma, delta, A, k):
        c1 = 1.0 / (xi * delta) * np.log(1.0 + xi * delta / k)
        c2 = np.sqrt(gamma / (2.0 * A * delta * k) * ((1.0 + xi * delta / k) ** (k / (xi * delta) + 1.0)))
        return c1, c2

    @njit(cache=True)
    def glft_grid(hbt, rec):
        asset = 0
        tick_size = hbt.depth(asset).tick_size
        n_max = 20_000_000
        arrival = np.full(n_max, np.nan)
        dmid = np.full(n_max, np.nan)
        counts = np.zeros(500, np.float64)
        ticks = np.arange(len(counts)) + 0.5
        A = np.nan
        k = np.nan
        vol = np.nan
        gamma = 0.05
        delta = 1.0
        adj1 = 1.0
        adj2 = 0.05
        order_qty = 0.001
        max_position = 0.02
        grid_num = 20
        mid_tick = np.nan
        t = 0
        steps = 0
        while hbt.elapse(100_000_000) == 0:
            steps += 1
            if not np.isnan(mid_tick):
                depth = -np.inf
                for tr in hbt.last_trades(asset):
                    px_tick = tr.px / tick_size
                    if tr.ev & BUY_EVENT == BUY_EVENT:
                        depth = max(px_tick - mid_tick, depth)
                    else:
                        depth = max(mid_tick - px_tick, depth)
                arrival[t] = depth
            hbt.clear_last_trades(asset)
            hbt.clear_inactive_orders(asset)
            book = hbt.depth(asset)
            position = hbt.position(asset)
            orders = hbt.orders(asset)
            bb = book.best_bid_tick
            ba = book.best_ask_tick
            prev = mid_tick
            mid_tick = (bb + ba) / 2.0
            dmid[t] = mid_tick - prev
            if t % 50 == 0 and t >= 6_000 - 1:
                counts[:] = 0.0
                lam = intensity_counts(arrival[t + 1 - 6_000 : t + 1], counts)
                if len(lam) > 2:
                    lam = lam[:70] / 600.0
                    slope, icpt = fit_line(ticks[: len(lam)], np.log(lam))
                    A = np.exp(icpt)
                    k = -slope
                vol = np.nanstd(dmid[t + 1 - 6_000 : t + 1]) * np.sqrt(10.0)
            if np.isfinite(A) and np.isfinite(k) and np.isfinite(vol) and k > 0:
                c1, c2 = glft_coeff(gamma, gamma, delta, A, k)
                half = (c1 + delta / 2.0 * c2 * vol) * adj1
                skew = c2 * vol * adj2
            else:
                half = 10.0
                skew = 0.0
            r = mid_tick - skew * position / order_qty
            bid_tick = min(np.round(r - half), bb)
            ask_tick = max(np.round(r + half), ba)
            interval = max(np.round(half), 1.0)
            bid_tick = np.floor(bid_tick / interval) * interval
            ask_tick = np.ceil(ask_tick / interval) * interval
            new_bids = Dict.empty(np.uint64, np.float64)
            if position < max_position and np.isfinite(bid_tick):
                for i in range(grid_num):
                    p = bid_tick - i * interval
                    new_bids[uint64(p)] = p * tick_size
            new_asks = Dict.empty(np.uint64, np.float64)
            if position > -max_position and np.isfinite(ask_tick):
                for i in range(grid_num):
                    p = ask_tick + i * interval
                    new_asks[uint64(p)] = p * tick_size
            values = orders.values()
            while values.has_next():
                o = values.get()
                if o.cancellable:
                    if o.side == 1 and o.order_id not in new_bids:
                        hbt.cancel(asset, o.order_id, False)
                    elif o.side == -1 and o.order_id not in new_asks:
                        hbt.cancel(asset, o.order_id, False)
            for oid, px in new_bids.items():
                if oid not in orders:
                    hbt.submit_buy_order(asset, oid, px, order_qty, GTX, LIMIT, False)
            for oid, px in new_asks.items():
                if oid not in orders:
                    hbt.submit_sell_order(asset, oid, px, order_qty, GTX, LIMIT, False)
            rec.record(hbt)
            t += 1
            if t >= n_max:
                break
        return steps

    return glft_grid


def _serve(npz: str) -> None:
    from hftbacktest import BacktestAsset, ROIVectorMarketDepthBacktest, Recorder

    data = np.load(npz)["data"]
    glft_grid = _build()
    first = True
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit":
            break
        if cmd != "run":
            continue
        t = time.perf_counter()
        asset = (BacktestAsset().data([data]).linear_asset(1.0).constant_order_latency(5_000_000, 5_000_000)
                 .power_prob_queue_model(2.0).no_partial_fill_exchange().trading_value_fee_model(0.0002, 0.0005)
                 .tick_size(0.1).lot_size(0.001).roi_lb(40_000.0).roi_ub(80_000.0).last_trades_capacity(10_000))
        hbt = ROIVectorMarketDepthBacktest([asset])
        rec = Recorder(1, 5_000_000)
        t_built = time.perf_counter()
        steps = glft_grid(hbt, rec.recorder)
        hbt.close()
        dt = time.perf_counter() - t
        pos = float(rec.get(0)["position"][steps - 1]) if steps else 0.0
        print(json.dumps({"elapsed_s": dt, "build_s": t_built - t, "rows": int(len(data)), "steps": int(steps), "cold": first,
                          "final_position": pos}), flush=True)
        first = False


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "convert":
        _convert(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "serve":
        _serve(sys.argv[2])
    else:
        sys.exit("usage: hbt_glft.py convert RAW.gz OUT.npz | serve DATA.npz")
