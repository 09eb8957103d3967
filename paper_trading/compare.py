"""``mmbot backtest --compare``: the same recording(s) backtested once per variant, with the
forecast-value metrics of :mod:`paper_trading.forecast_value`.

Variants (all on the same config, recording, decision grid and database):

* ``lstm``: the configured pricing model, skewed by the configured forecaster (the shipped
  model when the config says ``forecaster.model: none``);
* ``baseline``: the same strategy with the forecasts replaced by
  :class:`models.reference_forecasts.BaselineForecaster` (EWMA sigma, zero drift, causal);
* ``oracle``: the same strategy with the forecasts replaced by
  :class:`models.reference_forecasts.OracleForecaster`: the realized drift and variance of
  the recording's mid over the model's horizon. It SEES THE FUTURE: an upper bound, not a
  strategy;
* ``glft``, ``avellaneda_stoikov``, ``symmetric``: that pricing model without a forecaster.

``baseline`` and ``oracle`` use the grid, horizon, warm-up and EWMA decay of the lstm
variant's model (:class:`models.reference_forecasts.GridSpec`), so only the forecast differs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bot.config import Config, build_forecaster, with_overrides
from paper_trading import forecast_value as fv

VARIANTS = ("lstm", "baseline", "oracle", "glft", "avellaneda_stoikov", "symmetric")
FORECAST_VARIANTS = ("lstm", "baseline", "oracle")


def check_variants(names: list[str]) -> None:
    """MmbotError naming the first unknown variant (or that none was given)."""
    from bot.errors import MmbotError

    bad = [n for n in names if n not in VARIANTS]
    if bad or not names:
        raise MmbotError(f"--compare: unknown variant {bad[0]!r} ({', '.join(VARIANTS)})" if bad
                         else f"--compare: no variant given ({', '.join(VARIANTS)})")


def lstm_config(cfg: Config) -> Config:
    """The config of the forecast variants: the configured model, or the shipped one."""
    return with_overrides(cfg, **{"forecaster.model": cfg.forecaster.model if cfg.forecaster.model != "none" else "default"})


def market_label(data: Path, meta: dict, taken: set) -> str:
    """A short unique name for a recording: its directory name (the path when taken)."""
    label = data.name or str(data)
    return str(data) if label in taken else label


def variant_run(name: str, data: Path, cfg: Config, mids, spec) -> tuple[Config, object]:
    """(config, forecaster argument of run_backtest) of one variant on one recording."""
    from bot.app import FROM_CONFIG
    from models.reference_forecasts import BaselineForecaster, OracleForecaster

    if name == "lstm":
        return lstm_config(cfg), FROM_CONFIG
    if name == "baseline":
        return lstm_config(cfg), BaselineForecaster(spec)
    if name == "oracle":
        return lstm_config(cfg), OracleForecaster(spec, mids)
    return with_overrides(cfg, **{"strategy.pricing.model": name, "forecaster.model": "none"}), FROM_CONFIG


def run_compare(datas: list[Path], cfg: Config, names: list[str], open_store: Callable, *, report_dir=None,
                on_variant: Callable[[str, int, int, str], None] | None = None, progress: bool = False,
                exit_code: Callable[[dict], int] = lambda s: 0, start: str | None = None,
                end: str | None = None) -> tuple[dict, int]:
    """Run every variant on every recording; returns (result, exit code of the run that
    stopped it, 0 when all ran). ``result`` = ``{"markets": {label: {"path", "exchange",
    "symbol", "variants": {name: row}, "oracle_edge_share", "oracle_edge_note"}}, "total":
    {"variants": ..., "oracle_edge_share", "oracle_edge_note"}}``, rows holding the run summary
    fields and :func:`paper_trading.forecast_value.run_metrics`. ``start``/``end`` (ISO-8601 UTC
    or ns, as ``mmbot backtest --start/--end``) cut every recording to that window."""
    from bot.recording.io import open_recording
    from models.reference_forecasts import GridSpec, MidSeries
    from paper_trading.backtest import run_backtest

    check_variants(names)
    spec = None
    if any(n in ("baseline", "oracle") for n in names):
        fc = build_forecaster(lstm_config(cfg))
        spec = GridSpec.from_meta(fc.meta)
    markets: dict = {}
    code = 0
    for data in datas:
        data = Path(data)
        meta = open_recording(data).meta
        label = market_label(data, meta, set(markets))
        mids = MidSeries.from_recording(data)
        events_meta = start_ns = None
        if start is not None or end is not None:
            from paper_trading.window import load_window

            events_meta, start_ns = load_window(data, start, end, cfg)
        rows: dict = {}
        markets[label] = {"path": str(data), "exchange": meta.get("exchange"), "market": meta.get("market"),
                          "symbol": meta.get("symbol"), "variants": rows}
        for i, name in enumerate(names, 1):
            if on_variant is not None:
                on_variant(label, i, len(names), name)
            vcfg, forecaster = variant_run(name, data, cfg, mids, spec)
            store = open_store(vcfg.database.url)
            try:
                s = run_backtest(data, vcfg, store, report_dir=Path(report_dir) / label / name if report_dir is not None else None,
                                 progress=progress, forecaster=forecaster, events_meta=events_meta, start_ns=start_ns)
            finally:
                store.close()
            m = s.get("metrics", {})
            row = {"run_id": s["run_id"], "pnl": s["pnl"], "spread_capture": m.get("spread_capture"),
                   "inventory_pnl": m.get("inventory_pnl"), "fees": m.get("fees"), "fills": s["fills"],
                   "max_abs_inventory": s["max_abs_inventory"], "sharpe": m.get("sharpe"),
                   "sharpe_minutes": m.get("sharpe_minutes"), "share_quoted_both": m.get("share_quoted_both"),
                   "forecast": (s.get("forecaster") or {}).get("source", "-"), "status": s.get("status"),
                   "report": s.get("report")}
            value = fv.run_metrics(vcfg.database.url, s["run_id"], mids)
            row.update({k: v for k, v in value.items() if k not in ("pnl", "fills", "fees")})
            rows[name] = row
            code = exit_code(s)
            if code:
                row["stopped"] = f"{s.get('status')} ({s.get('stop_reason')})"
                break
        markets[label]["oracle_edge_share"], markets[label]["oracle_edge_note"] = _edge(rows)
        if code:
            break
    totals = {name: fv.total_row([mk["variants"][name] for mk in markets.values() if name in mk["variants"]])
              for name in names if all(name in mk["variants"] for mk in markets.values())}
    share, note = _edge(totals)
    return {"markets": markets, "total": {"variants": totals, "oracle_edge_share": share, "oracle_edge_note": note}}, code


def _edge(rows: dict) -> tuple[float | None, str]:
    if all(k in rows for k in FORECAST_VARIANTS):
        share = fv.oracle_edge_share(rows["lstm"]["pnl"], rows["baseline"]["pnl"], rows["oracle"]["pnl"])
    else:
        share = None
    return share, fv.edge_note(rows)
