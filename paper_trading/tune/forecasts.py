"""Forecasts computed once per segment and shared by every trial (and, on disk, by every run).

The forecaster (``models/``) sees only the market: at each strategy decision the engine
calls ``forecaster.update(book, decision time, public trades since the last decision)``, and
the book of a replay is the recorded one (our orders have no market impact). So for a given
segment, decision grid (``replay.interval_s``, ``replay.warmup_s``) and forecaster config,
the sequence of forecasts is the same for every strategy parameter. :func:`precompute`
computes it once with the TorchScript batch forward (:mod:`models.batch_forecast`, equal to
the step path) and keeps it in the on-disk forecast cache (:mod:`models.forecast_cache`,
keyed by the segment's events, the model file, the grid, the forecaster config and the code),
so other workers and later studies read it; :class:`CachedForecaster` hands the forecasts to a
trial's engine in place of the model. The worker also keeps them in memory per segment
(:func:`cache_key`).
"""

from __future__ import annotations

from bot.config import Config
from models.batch_forecast import TableForecaster

CachedForecaster = TableForecaster  # the forecaster interface over precomputed forecasts


def cache_key(cfg: Config, seg) -> tuple:
    """In-memory key of a segment's forecasts within one worker."""
    import json

    r = cfg.replay
    return (seg, r.interval_s, r.warmup_s, json.dumps(cfg.forecaster.model_dump(mode="json"), sort_keys=True))


def precompute(events, meta, cfg: Config, start_ns: int, *, use_cache: bool = True):
    """The configured forecaster's forecasts at the decisions of a replay of ``events`` starting
    at ``start_ns`` (ns), from the on-disk cache when there (``use_cache``); None when the config
    has no forecaster (see :func:`paper_trading.backtest.precomputed_forecaster`)."""
    from bot.app import FROM_CONFIG
    from paper_trading.backtest import precomputed_forecaster

    fc = precomputed_forecaster(None, cfg, events_meta=(events, meta), start_ns=start_ns, use_cache=use_cache)
    if fc is FROM_CONFIG:  # no torch and nothing cached: step the forecaster once here, shared by the trials
        return _stepped(events, meta, cfg, start_ns)
    return fc


def _stepped(events, meta, cfg: Config, start_ns: int):
    from bot.config import build_forecaster
    from models.batch_forecast import ForecastTable
    from paper_trading.backtest import replay_decisions

    fc = build_forecaster(cfg)
    ts, out = [], []

    def on_decision(t, book, trades):
        ts.append(t)
        out.append(fc.update(book, t, trades))

    replay_decisions(None, cfg, (events, meta), start_ns)(on_decision)
    return ForecastTable.from_forecasts(ts, out, fc.status()).forecaster()
