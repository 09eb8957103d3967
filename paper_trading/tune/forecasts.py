"""Forecasts computed once per segment and shared by every trial.

The forecaster (``models/``) sees only the market: at each strategy decision the engine
calls ``forecaster.update(book, decision time, public trades since the last decision)``, and
the book of a replay is the recorded one (our orders have no market impact). So for a given
segment, decision grid (``replay.interval_s``, ``replay.warmup_s``) and forecaster config,
the sequence of forecasts is the same for every strategy parameter. :func:`precompute`
drives the replay source over the segment once, without a strategy, and records the
forecast returned at each decision time (ns); :class:`CachedForecaster` hands them to a
trial's engine in place of the model. The result equals running the model inside each
backtest (tested), at the cost of one pass per segment and worker instead of one per trial.
"""

from __future__ import annotations

import asyncio

from bot.config import Config, build_forecaster


class CachedForecaster:
    """Forecaster interface over precomputed forecasts: ``update`` returns the forecast
    recorded for that decision time (None for a time that was not precomputed)."""

    def __init__(self, by_ts: dict, status: dict) -> None:
        self.by_ts = by_ts
        self._status = status

    def update(self, book, now_ns: int, trades=()):
        return self.by_ts.get(now_ns)

    def status(self) -> dict:
        return dict(self._status)


def cache_key(cfg: Config, seg) -> tuple:
    import json

    r = cfg.replay
    return (seg, r.interval_s, r.warmup_s, json.dumps(cfg.forecaster.model_dump(mode="json"), sort_keys=True))


def precompute(events, meta, cfg: Config, start_ns: int) -> CachedForecaster | None:
    """Run the configured forecaster over the decisions of a replay of ``events`` starting at
    ``start_ns`` (ns); None when the config has no forecaster."""
    from paper_trading.backtest import market_from_meta
    from paper_trading.replay import ReplaySource
    from paper_trading.venue import Venue

    fc = build_forecaster(cfg)
    if fc is None:
        return None
    market = market_from_meta(meta, cfg)
    source = ReplaySource(Venue(events, float(market.tick), float(market.lot)), market, interval_s=cfg.replay.interval_s,
                          speed=0.0, start_ns=start_ns, warmup_s=cfg.replay.warmup_s, with_trades=True)
    out: dict = {}

    async def run() -> None:
        await source.start()
        while (ev := await source.next()) is not None:
            out[ev.ts_ns] = fc.update(ev.book, ev.ts_ns, ev.trades)

    asyncio.run(run())
    return CachedForecaster(out, fc.status() if hasattr(fc, "status") else {})
