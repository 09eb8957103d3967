"""Tick-to-quote latency: from a book update arriving to the quotes decided.

Per update we time (time.perf_counter_ns): applying the level diff to the L2 book,
[the forecaster's update, when one is configured], and the strategy's on_update (model,
controls, rounding). A second figure adds the order manager's diff against working orders.
Updates are a synthetic random walk of a 20-level book (one bid and one ask level change
per update, the best levels moving with the mid), so the figure measures our code, not I/O.

With ``--forecaster PATH|default`` the LSTM forecaster (models/forecaster.py) runs inside the
timed region: ``forecaster.update(book, ts, trades)`` before the strategy, its forecast
passed to the strategy. Updates come every 10 ms of simulated time, so with the model's
1 s grid one update in 100 runs an LSTM step (features + one LSTMCell step); those are
also reported separately (``grid_step_p50_us``/``grid_step_p99_us``). About one update in
ten carries a synthetic public trade (made outside the timed region).

With ``--backend torchscript_async`` (or ``numba_async``) the whole grid step -- feature row,
baselines, the model step, the guard -- runs on the forecaster's worker thread
(models/step_worker.py, models/forecaster.py ``AsyncLstmForecaster``): at a grid time the
timed region holds only the snapshot of the top book levels, the hand-over of the trades
received since the previous grid row, and reading the newest forecast the worker has
published. Reported apart: ``regular_p50_us``/``regular_p99_us`` (updates without a grid
time) and ``grid_step_*`` (updates that cross one). Reported too: ``forecast_age_steps``
(at each grid row's decision, the age in grid rows of the forecast in use: "0" fresh, "1",
"2+", "none" = none published yet), ``forecast_age_ms_p50/p99`` (event time minus the
inputs' grid time, over all updates, ms) and the load average (1/5/15 min,
``os.getloadavg``) before and after the run, since the worker competes for a core.

Measured 2026-12-05 (2 cores shared with other jobs; paced ``--n 30000 --pace-us 1000``; old =
before the grid step moved to the worker, interleaved, medians of 2 runs each; "loaded" = two
extra ``sh -c 'while :; do :; done'`` spinners, load average 1.4-2.8 against 0.5-1.8 without):
p99 / p99 incl. order diff / grid-step p50 and p99, us:

    backend              idle: p99  diff  grid p50/p99    loaded: p99  diff  grid p50/p99
    numba                      50    67    85 / 162               45    52    61 / 161
    numba_async                34    49    23 /  60               21    28    18 /  51
    torchscript_async          41    76    27 /  66               24    33    20 /  44
    (old) numba                46    59    70 / 145               56    61    68 / 224
    (old) torchscript_async    74    85    99 / 156               54    60    83 / 2888

The regular updates' p99 (20-40 us) now bounds the async backends' p99; the numba backend's
p99 is still its grid steps (one update in 100, cold caches).

With ``--pace-us P`` the updates arrive every P us of wall time (time compression 10 ms / P)
instead of back to back: the thread sleeps between them (without the GIL, as the engine does
while it awaits its feed; the last 300 us are spun, holding the GIL, to limit sleep overshoot).
The timed region starts when the loop starts the update, as without pacing; how late that was
after the scheduled arrival is reported apart (``lateness_p50_us``/``lateness_p99_us``: on a
loaded machine mostly the OS scheduler, plus any wait for the GIL on waking). Back to back, a
worker thread cannot keep up with 100x compressed event time and only gets the GIL at forced
switches (5 ms); paced runs are the ones to compare backends on.

With ``--metrics`` the Prometheus observer (bot/observability/metrics.py) runs after every
update as it does in the engine: the update's tick-to-quote time into the latency histogram,
and its copy of the state every ``update_interval_s`` (0.25 s). That work is outside the timed
region (it follows the decision), so compare the p50 with and without ``--metrics`` for its
effect on the decision itself; ``observer_p50_us``/``observer_p99_us`` give its own cost.

Prints one JSON line: {"n": ..., "model": ..., "p50_us": ..., "p99_us": ..., ...}.
Usage: python bench/tick_to_quote.py [--n 200000] [--model avellaneda_stoikov|glft]
       [--forecaster PATH|default] [--backend numba|torchscript|torchscript_async|numba_async] [--metrics]
       [--pace-us P]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.exchanges.base import OrderAck  # noqa: E402
from bot.market import MarketInfo  # noqa: E402
from bot.order_manager import OrderManager  # noqa: E402
from bot.orderbook import OrderBook  # noqa: E402
from bot.orders import OrderState  # noqa: E402
from strategies.market_maker import MarketMaker  # noqa: E402
from strategies.params import ModelParams, QuoteControls, StrategyParams  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--model", default="avellaneda_stoikov")
    ap.add_argument("--levels", type=int, default=1)
    ap.add_argument("--forecaster", default=None, help="model file or 'default' (the shipped model): time the forecaster too")
    ap.add_argument("--backend", default="numba", help="forecaster backend: numba | torchscript | torchscript_async | numba_async")
    ap.add_argument("--metrics", action="store_true", help="run the Prometheus metrics observer after every update")
    ap.add_argument("--pace-us", type=float, default=0.0,
                    help="wall-clock spacing of the updates, us (0: back to back); the thread sleeps between them "
                         "as the engine waits on its feed, and the time is taken from the scheduled arrival")
    args = ap.parse_args()

    fc = None
    if args.forecaster:
        import torch

        from bot.market_data.base import Trade
        from models.forecaster import GuardConfig, load_forecaster

        torch.set_num_threads(1)
        fc = load_forecaster(args.forecaster, backend=args.backend, guard=GuardConfig())

    mkt = MarketInfo("BTC/USDT", "BTC", "USDT", Decimal("0.01"), Decimal("0.00001"), maker_fee=0.0)
    params = StrategyParams(
        pricing=ModelParams(model=args.model, gamma=0.05, k=0.5, A=5.0, horizon="rolling", tau_s=1.0, initial_sigma=1.0),
        controls=QuoteControls(order_size=0.01, max_inventory=1.0, levels=args.levels, refresh_tolerance_ticks=2),
    )
    strat = MarketMaker(params, mkt)
    om = OrderManager(mkt, tolerance_ticks=2)
    rng = np.random.default_rng(0)
    n = args.n
    steps = rng.choice([-1, 0, 0, 1], size=n)
    sizes = rng.uniform(0.001, 2.0, size=(n, 2))
    book = OrderBook("BTC/USDT")
    mid_t = 6_000_000  # mid in ticks (60000.00)
    book.apply_snapshot([((mid_t - 1 - j) / 100, 1.0) for j in range(20)], [((mid_t + 1 + j) / 100, 1.0) for j in range(20)])
    t_quote = np.empty(n, dtype=np.int64)
    t_orders = np.empty(n, dtype=np.int64)
    grid = np.zeros(n, dtype=bool)
    trade_at = rng.random(n) < 0.1
    ts = 1_700_000_000_000_000_000
    q = 0.0
    pc = time.perf_counter_ns
    obs = eng = None
    t_obs = np.zeros(n, dtype=np.int64)
    if args.metrics:
        from types import SimpleNamespace

        from bot.engine import EngineState
        from bot.inventory import Inventory
        from bot.observability.metrics import MetricsObserver, MmbotMetrics

        eng = SimpleNamespace(state=EngineState(), inventory=Inventory(), source=SimpleNamespace(), forecaster=fc,
                              config_snapshot={"exchange": "bench"}, market=mkt, mode="bench",
                              store=SimpleNamespace(run_id=0), exchange_name=lambda: "bench")
        from bot.observability import Observers

        mo = MetricsObserver(MmbotMetrics())
        mo.labels = ("bench", mkt.symbol)  # run_started without a running loop (no lag probe here)
        mo._hist = mo.m.tick_to_quote.labels(*mo.labels)
        obs = Observers(mo)  # as the CLI gives it to the engine
    age_ns = np.full(n, -1, dtype=np.int64)
    load_before = os.getloadavg()
    pace_ns = int(args.pace_us * 1000)
    spin_ns = 300_000  # paced: sleep until this long before the arrival, then spin (sleep overshoots)
    late = np.zeros(n, dtype=np.int64)
    ts_all = np.zeros(n, dtype=np.int64)
    t_arrive = pc() + pace_ns
    for i in range(n):
        # the update as it arrives from a feed: new best levels after a mid move
        mid_t += int(steps[i])
        bid_px, ask_px = (mid_t - 1) / 100, (mid_t + 1) / 100
        ts += 10_000_000
        trades = [Trade(ts - 1_000_000, ask_px if steps[i] >= 0 else bid_px, 0.01, "buy" if steps[i] >= 0 else "sell")] if (
            fc is not None and trade_at[i]) else ()
        if pace_ns:
            t_arrive += pace_ns
            wait = t_arrive - pc() - spin_ns
            if wait > 0:
                time.sleep(wait / 1e9)  # without the GIL, like the engine awaiting its feed
            while pc() < t_arrive:
                pass
            t0 = pc()
            late[i] = t0 - t_arrive
        else:
            t0 = pc()
        book.apply_diff(((bid_px, sizes[i, 0]),), ((ask_px, sizes[i, 1]),), ts)
        forecast = fc.update(book, ts, trades) if fc is not None else None
        quotes = strat.on_update(book, q, ts, forecast)
        t1 = pc()
        if fc is not None:
            grid[i] = (ts // fc.S) != ((ts - 10_000_000) // fc.S)  # this update crossed a grid time
            ts_all[i] = ts
            if forecast is not None and forecast.inputs_ns is not None:
                age_ns[i] = ts - forecast.inputs_ns
        cancels, places = om.plan(quotes, ts)
        t2 = pc()
        t_quote[i] = t1 - t0
        t_orders[i] = t2 - t0
        if fc is not None and hasattr(fc, "after_decision"):  # as Engine.step does, after the decision
            fc.after_decision()  # the async backends' hand-over to the worker thread
        if obs is not None:  # as Engine.step does after the decision: state, then the observer
            st = eng.state
            st.tick_to_quote_ns, st.mid, st.quotes = t1 - t0, quotes.mid, quotes
            st.events += 1
            t3 = pc()
            obs.tick(eng)
            t_obs[i] = pc() - t3
        # acknowledge outside the timed region, keep the book consistent
        for o in cancels:
            om.on_ack(OrderAck(o.client_id, OrderState.CANCELED, ts))
        for o in places:
            om.submitted(o)
            om.on_ack(OrderAck(o.client_id, OrderState.OPEN, ts))
        # remove levels that are now inside the spread (the book moved)
        for p in [p for p in book.bids.sizes if p > bid_px]:
            book.bids.set(p, 0.0)
        for p in [p for p in book.asks.sizes if p < ask_px]:
            book.asks.set(p, 0.0)
        q = math.sin(i / 1000.0) * 0.5
    load_after = os.getloadavg()
    us = lambda a, p: float(np.percentile(a, p)) / 1000.0
    extra = {}
    if fc is not None:
        g = t_quote[grid]
        st = fc.status()
        a = age_ns[age_ns >= 0]
        S = fc.S
        with_out = age_ns >= 0
        rows_old = (ts_all[with_out] // S) - ((ts_all[with_out] - age_ns[with_out]) // S)  # grid rows between inputs and decision
        n_all = max(1, n)
        extra = {"backend": args.backend, "sample_s": fc.fcfg.sample_s, "grid_steps": int(grid.sum()),
                 "grid_step_p50_us": round(us(g, 50), 2) if len(g) else None,
                 "grid_step_p99_us": round(us(g, 99), 2) if len(g) else None,
                 "regular_p50_us": round(us(t_quote[~grid], 50), 2), "regular_p99_us": round(us(t_quote[~grid], 99), 2),
                 "grid_step_with_order_diff_p99_us": round(us(t_orders[grid], 99), 2) if len(g) else None,
                 "forecast_source": forecast.source if forecast is not None else None,
                 "forecast_age_steps_at_grid_rows": st["forecast_age_steps"],
                 "forecast_age_rows_share": {"0": round(float((rows_old == 0).sum()) / n_all, 4),
                                             "1": round(float((rows_old == 1).sum()) / n_all, 4),
                                             "2+": round(float((rows_old >= 2).sum()) / n_all, 4),
                                             "none": round(float((~with_out).sum()) / n_all, 4)},
                 "forecast_age_ms_p50": round(float(np.percentile(a, 50)) / 1e6, 3) if len(a) else None,
                 "forecast_age_ms_p99": round(float(np.percentile(a, 99)) / 1e6, 3) if len(a) else None,
                 **({"worker_overruns": st["worker_overruns"]} if "worker_overruns" in st else {})}
        if hasattr(fc, "close"):
            fc.close()
    print(json.dumps({
        "bench": "tick_to_quote", "n": n, "model": args.model, "levels": args.levels, "forecaster": args.forecaster,
        "p50_us": round(us(t_quote, 50), 2), "p99_us": round(us(t_quote, 99), 2), "mean_us": round(t_quote.mean() / 1000, 2),
        "with_order_diff_p50_us": round(us(t_orders, 50), 2), "with_order_diff_p99_us": round(us(t_orders, 99), 2),
        **({"metrics": True, "observer_p50_us": round(us(t_obs, 50), 2), "observer_p99_us": round(us(t_obs, 99), 2),
            "observer_mean_us": round(t_obs.mean() / 1000, 2)} if obs is not None else {"metrics": False}),
        "python": platform.python_version(), "machine": platform.machine(),
        **({"pace_us": args.pace_us, "lateness_p50_us": round(us(late, 50), 2), "lateness_p99_us": round(us(late, 99), 2)}
           if pace_ns else {}),
        "loadavg_before": [round(x, 2) for x in load_before], "loadavg_after": [round(x, 2) for x in load_after], **extra,
    }))


if __name__ == "__main__":
    main()
