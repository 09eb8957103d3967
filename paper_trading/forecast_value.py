"""What a forecast is worth in trading: the per-variant metrics of ``mmbot backtest --compare``
(issue 10 item 5), computed from a backtest's database record and the recording's mids.

Units: prices and mids quote per base; sizes and inventory base units; PnL, fees and inventory
value quote currency; times int ns since the epoch (local receive time of the recording).

Metrics of one run (:func:`run_metrics`):

``pnl``
    Mark-to-market PnL at the end of the run, quote, AFTER fees (the last ``pnl_snapshots.pnl``:
    cash with fees subtracted plus inventory at the mid, minus the start).
``fills``
    Number of our fills (rows of ``fills``; a partially filled order may count several).
``adverse_1s_*`` / ``adverse_10s_*``
    Adverse selection per fill: how far the mid moved AGAINST us within 1 s / 10 s of the
    fill. Per fill with side s (+1 buy, -1 sell) at time t:
    ``move = s * (mid(t) - mid(t + h))`` (quote per base; positive = bad: we bought and the
    mid fell, or sold and it rose), and ``move / mid(t) * 1e4`` in bp. ``mid(x)`` is the
    recording's mid after the last event at or before x (:class:`models.reference_forecasts.
    MidSeries`; at the fill time it includes the trade that filled us). Plain means over fills
    (not size-weighted). End of data: a fill whose t + h lies after the recording's last
    event is left out of that horizon's mean and counted in ``adverse_<h>_dropped_end``;
    ``adverse_<h>_n`` is the number of fills averaged. None without such fills.
``inv_risk``
    Inventory risk, quote: the time-weighted mean of |inventory| x mid over the run's PnL
    snapshots (each snapshot holds until the next one; the engine writes one every
    ``pnl_snapshot_interval_s``), i.e. the average notional at risk.
``inv_value_std``
    Standard deviation of the inventory value (inventory x mid, quote) over the same
    snapshots, time-weighted.

Share of the oracle's edge captured (:func:`oracle_edge_share`):
``(PnL_lstm - PnL_baseline) / (PnL_oracle - PnL_baseline)``; ``None`` ("n/a") when the
denominator is not clearly positive (<= :data:`EDGE_TOL_QUOTE` quote or <= 1e-6 of the PnLs'
size): then the oracle had no edge over the baseline to capture. With few fills the number
is noise; :func:`edge_note` says so (fewer than :data:`MIN_FILLS_FOR_SHARE` fills in a
variant).
"""

from __future__ import annotations

import math

import numpy as np

from models.reference_forecasts import BP, MidSeries

NS_PER_S = 1_000_000_000
HORIZONS_S = (1, 10)  # adverse-selection horizons, seconds
EDGE_TOL_QUOTE = 1e-9  # quote: a smaller oracle edge counts as none
MIN_FILLS_FOR_SHARE = 100  # below this many fills in a variant the share is flagged as noise


def adverse_selection(fill_ts: np.ndarray, fill_sign: np.ndarray, mids: MidSeries, horizon_s: float) -> dict:
    """Mean adverse mid move per fill over ``horizon_s`` seconds (see the module docstring):
    ``{"quote": mean move quote per base, "bp": mean move bp, "n": fills averaged,
    "dropped_end": fills left out because t + horizon is past the data}``."""
    ts = np.asarray(fill_ts, dtype=np.int64)
    sign = np.asarray(fill_sign, dtype=np.float64)
    h = int(round(horizon_s * NS_PER_S))
    inside = ts + h <= mids.t_last
    m0 = np.asarray(mids.at(ts[inside]), dtype=np.float64)
    m1 = np.asarray(mids.at(ts[inside] + h), dtype=np.float64)
    ok = np.isfinite(m0) & np.isfinite(m1) & (m0 > 0)
    move = sign[inside][ok] * (m0[ok] - m1[ok])
    n = int(move.size)
    return {"quote": float(move.mean()) if n else None, "bp": float((move / m0[ok]).mean() * BP) if n else None,
            "n": n, "dropped_end": int((~inside).sum())}


def _weights(ts: np.ndarray, t_end_ns: int) -> np.ndarray:
    """Time each snapshot holds (ns) until the next one (the last until ``t_end_ns``)."""
    if ts.size == 0:
        return np.zeros(0)
    nxt = np.append(ts[1:], max(int(t_end_ns), int(ts[-1])))
    return (nxt - ts).astype(np.float64)


def inventory_risk(snap_ts, snap_inv, snap_mid, t_end_ns: int) -> tuple[float | None, float | None]:
    """(time-weighted mean of |inventory| x mid, time-weighted std of inventory x mid), quote;
    a single snapshot (or zero total time) gives that snapshot's value and std 0; None without snapshots."""
    ts = np.asarray(snap_ts, dtype=np.int64)
    if ts.size == 0:
        return None, None
    val = np.asarray(snap_inv, dtype=np.float64) * np.asarray(snap_mid, dtype=np.float64)
    w = _weights(ts, t_end_ns)
    if w.sum() <= 0:
        return float(abs(val[-1])), 0.0
    mean_abs = float(np.average(np.abs(val), weights=w))
    mu = np.average(val, weights=w)
    return mean_abs, float(math.sqrt(max(np.average((val - mu) ** 2, weights=w), 0.0)))


def run_metrics(db_url: str, run_id: int, mids: MidSeries) -> dict:
    """The metrics of one backtest run (module docstring) from its database record."""
    from paper_trading.metrics import load_run_data

    d = load_run_data(db_url, run_id)
    out: dict = {"pnl": float(d.snap_pnl[-1]) if d.snap_pnl.size else 0.0, "fills": int(d.fill_ts.size),
                 "fees": float(d.fill_fee.sum()) if d.fill_fee.size else 0.0}
    for h in HORIZONS_S:
        a = adverse_selection(d.fill_ts, d.fill_sign, mids, h)
        out[f"adverse_{h}s_bp"] = a["bp"]
        out[f"adverse_{h}s_quote"] = a["quote"]
        out[f"adverse_{h}s_n"] = a["n"]
        out[f"adverse_{h}s_dropped_end"] = a["dropped_end"]
    out["inv_risk"], out["inv_value_std"] = inventory_risk(d.snap_ts, d.snap_inv, d.snap_mid, d.t_end_ns)
    out["duration_s"] = d.duration_s
    return out


def oracle_edge_share(pnl_model: float, pnl_baseline: float, pnl_oracle: float) -> float | None:
    """(model - baseline) / (oracle - baseline) PnL; None when the oracle's edge over the
    baseline is not clearly positive (module docstring)."""
    den = pnl_oracle - pnl_baseline
    if not math.isfinite(den) or den <= max(EDGE_TOL_QUOTE, 1e-6 * (abs(pnl_oracle) + abs(pnl_baseline))):
        return None
    return (pnl_model - pnl_baseline) / den


def edge_note(rows: dict) -> str:
    """What the share means here: n/a and why, or the sample-size caveat."""
    need = ("lstm", "baseline", "oracle")
    if not all(k in rows for k in need):
        return "n/a: needs the variants lstm, baseline and oracle"
    s = oracle_edge_share(rows["lstm"]["pnl"], rows["baseline"]["pnl"], rows["oracle"]["pnl"])
    fills = min(int(rows[k]["fills"]) for k in need)
    if s is None:
        return "n/a: the oracle did not beat the baseline (PnL_oracle - PnL_baseline <= 0)"
    caveat = f"; few fills ({fills} < {MIN_FILLS_FOR_SHARE}): noise" if fills < MIN_FILLS_FOR_SHARE else ""
    counts = ", ".join(f"{k} {rows[k]['fills']}" for k in need)
    return f"{s:.3g} (fills: {counts}{caveat})"


def total_row(per_market: list[dict]) -> dict:
    """One variant's totals over markets: PnL, fees and fills summed (quote: meaningful when the
    markets share a quote currency, USD/USDT here); adverse selection in bp the mean over all
    fills of all markets (weighted by each market's ``adverse_<h>_n``), in quote per base None
    (prices of different markets do not add up); inventory risk the duration-weighted mean
    over markets."""
    out: dict = {"pnl": sum(r["pnl"] for r in per_market), "fills": sum(r["fills"] for r in per_market),
                 "fees": sum(r.get("fees") or 0.0 for r in per_market)}
    for h in HORIZONS_S:
        n = sum(r[f"adverse_{h}s_n"] for r in per_market)
        k = f"adverse_{h}s_bp"
        out[k] = (sum(r[k] * r[f"adverse_{h}s_n"] for r in per_market if r[k] is not None) / n) if n else None
        out[f"adverse_{h}s_quote"] = None
        out[f"adverse_{h}s_n"] = n
        out[f"adverse_{h}s_dropped_end"] = sum(r[f"adverse_{h}s_dropped_end"] for r in per_market)
    dur = sum(r["duration_s"] for r in per_market)
    for k in ("inv_risk", "inv_value_std"):
        vals = [(r[k], r["duration_s"]) for r in per_market if r[k] is not None]
        out[k] = (sum(v * w for v, w in vals) / dur) if vals and dur > 0 else None
    out["duration_s"] = dur
    return out
