"""A self-contained HTML report of one run: metrics, config, plots and fills.

:func:`write_report` writes into ``out_dir``:

* ``mid_quotes_fills.png``: the mid price (from ``pnl_snapshots``), our best working bid and
  best working ask over time as step lines (reconstructed from ``order_events`` + ``orders``:
  an order works from its ``open`` event to its terminal event, see
  :mod:`paper_trading.metrics`), and every fill (buys green triangles up, sells red
  triangles down, at the fill price);
* ``inventory.png``: inventory (base units) as a step plot, from the initial snapshot's
  inventory plus the fills;
* ``pnl.png``: cumulative total PnL (``pnl_snapshots.pnl``) and its split: spread capture
  (cumulative over fills), fees (cumulative over fills) and inventory PnL = total - spread
  capture + fees (evaluated at the snapshot times), all in quote currency;
* ``report.html``: the metrics table, the run's config (``runs.config_json``,
  pretty-printed), the three plots and the first 200 fills. Each plot is embedded as a
  base64 ``data:`` image, so the HTML opens standalone, and links to its PNG by relative
  path. Plain HTML and inline CSS, no JavaScript.

Lines with more than ``MAX_LINE_POINTS`` points are decimated for plotting (the first, last,
minimum and maximum of each bucket are kept, so spikes survive); fills are never dropped.
The x axes show the time since the run's first event in s, min or h (picked from the span).
"""

from __future__ import annotations

import base64
import datetime as _dt
import heapq
import html
import json
import math
from pathlib import Path

import numpy as np

from bot.persistence.report import market_source, run_title
from paper_trading.metrics import MIN_SHARPE_MINUTES, NS_PER_S, RunData, compute_metrics, load_run_data

MAX_LINE_POINTS = 20_000
MAX_FILL_ROWS = 200
PNG_NAMES = ("mid_quotes_fills.png", "inventory.png", "pnl.png")


# -- data helpers -------------------------------------------------------------------------
def _currencies(symbol: str) -> tuple[str, str]:
    """(base, quote) from a ccxt symbol such as ``BTC/USDT`` or ``BTC/USDT:USDT``."""
    if "/" in symbol:
        base, quote = symbol.split("/", 1)
        return base or "base", quote.split(":", 1)[0] or "quote"
    return "base", "quote"


def best_quote_steps(start_ns, end_ns, price, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Best working price over time for one side, as a step function.

    Returns ``(t, p)``: from ``t[i]`` until ``t[i+1]`` the best price (max for ``side="bid"``,
    min for ``"ask"``) among orders working on ``[start, end)`` is ``p[i]`` (NaN when none is
    working). A heap with lazy deletion: O(n log n).
    """
    s = np.asarray(start_ns, dtype=np.int64)
    e = np.asarray(end_ns, dtype=np.int64)
    px = np.asarray(price, dtype=np.float64)
    keep = e > s
    s, e, px = s[keep], e[keep], px[keep]
    if s.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    sgn = -1.0 if side == "bid" else 1.0  # heap holds sgn * price: the top is the best
    n = s.size
    times = np.concatenate([s, e])
    kinds = np.concatenate([np.ones(n, np.int8), np.zeros(n, np.int8)])  # ends before starts at equal t
    ids = np.concatenate([np.arange(n), np.arange(n)])
    order = np.lexsort((kinds, times))
    heap: list[tuple[float, int]] = []
    alive = np.zeros(n, dtype=bool)
    out_t: list[int] = []
    out_p: list[float] = []
    t_sorted, k_sorted, i_sorted = times[order].tolist(), kinds[order].tolist(), ids[order].tolist()
    key = (sgn * px).tolist()
    m = len(t_sorted)
    for j in range(m):
        i = i_sorted[j]
        if k_sorted[j]:
            alive[i] = True
            heapq.heappush(heap, (key[i], i))
        else:
            alive[i] = False
        if j + 1 < m and t_sorted[j + 1] == t_sorted[j]:
            continue  # emit once per distinct time, after all its changes
        while heap and not alive[heap[0][1]]:
            heapq.heappop(heap)
        best = sgn * heap[0][0] if heap else math.nan
        if out_p and (out_p[-1] == best or (math.isnan(best) and math.isnan(out_p[-1]))):
            continue
        out_t.append(t_sorted[j])
        out_p.append(best)
    return np.asarray(out_t, dtype=np.int64), np.asarray(out_p)


def decimate(x: np.ndarray, y: np.ndarray, max_points: int = MAX_LINE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``max_points`` points of a line, keeping each bucket's first, last, min and max."""
    n = len(x)
    if n <= max_points:
        return x, y
    n_buckets = max(1, max_points // 4)
    size = int(math.ceil(n / n_buckets))
    pad = n_buckets * size - n
    yy = np.asarray(y, dtype=np.float64)
    filled = np.concatenate([yy, np.full(pad, np.nan)]).reshape(n_buckets, size)
    base = np.arange(n_buckets) * size
    with np.errstate(all="ignore"):
        allnan = np.all(np.isnan(filled), axis=1)
        safe = np.where(np.isnan(filled), 0.0, filled)
        lo = np.where(np.isnan(filled), np.inf, safe).argmin(axis=1)
        hi = np.where(np.isnan(filled), -np.inf, safe).argmax(axis=1)
    lo = np.where(allnan, 0, lo)
    hi = np.where(allnan, 0, hi)
    last = np.minimum(base + size - 1, n - 1)
    idx = np.unique(np.concatenate([base, base + lo, base + hi, last, [n - 1]]))
    idx = idx[idx < n]
    return x[idx], np.asarray(y)[idx]


def _time_axis(d: RunData) -> tuple[float, str]:
    span = d.duration_s
    if span <= 2 * 3600:
        return 1.0, "s"
    if span <= 2 * 86400:
        return 60.0, "min"
    return 3600.0, "h"


# -- plots --------------------------------------------------------------------------------
def _plots(d: RunData, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, quote = _currencies(d.symbol)
    div, unit = _time_axis(d)
    t0 = d.t_start_ns

    def tx(ts) -> np.ndarray:
        return (np.asarray(ts, dtype=np.int64) - t0) / (NS_PER_S * div)

    xlabel = f"time since start [{unit}]"
    t_end_x = tx([d.t_end_ns])[0]
    title = run_title(d.run_id, d.mode, market_source(d.config, d.exchange), d.symbol)
    paths = []

    # 1. mid, best quotes, fills
    fig, ax = plt.subplots(figsize=(12, 5.5), dpi=100)
    if d.snap_ts.size:
        x, y = decimate(tx(d.snap_ts), d.snap_mid)
        ax.plot(x, y, color="0.25", lw=1.0, label="mid")
    bid = d.order_sign > 0
    for side, mask, color in (("bid", bid, "tab:green"), ("ask", ~bid, "tab:red")):
        t, p = best_quote_steps(d.order_start_ns[mask], d.order_end_ns[mask], d.order_price[mask], side)
        if t.size:
            x, y = tx(np.append(t, d.t_end_ns)), np.append(p, p[-1])
            x, y = decimate(x, y)
            ax.plot(x, y, drawstyle="steps-post", color=color, lw=0.9, alpha=0.8, label=f"our best {side}")
    buys = d.fill_sign > 0
    n_fills = int(d.fill_ts.size)
    ms = 28.0 if n_fills <= 500 else max(3.0, 28.0 * math.sqrt(500.0 / n_fills))  # every fill drawn, smaller if many
    if buys.any():
        ax.scatter(tx(d.fill_ts[buys]), d.fill_price[buys], marker="^", s=ms, color="green",
                   edgecolors="darkgreen", linewidths=0.4, zorder=5, label=f"buy fills ({int(buys.sum())})")
    if (~buys).any():
        ax.scatter(tx(d.fill_ts[~buys]), d.fill_price[~buys], marker="v", s=ms, color="red",
                   edgecolors="darkred", linewidths=0.4, zorder=5, label=f"sell fills ({int((~buys).sum())})")
    ax.set_xlim(0, max(t_end_x, 1e-9))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"price [{quote} per {base}]")
    ax.set_title(f"Mid, our best quotes and fills - {title}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best" if n_fills + d.snap_ts.size < 5000 else "upper left", fontsize=8, framealpha=0.85)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    fig.tight_layout()
    paths.append(out_dir / PNG_NAMES[0])
    fig.savefig(paths[-1])
    plt.close(fig)

    # 2. inventory
    fig, ax = plt.subplots(figsize=(12, 3.8), dpi=100)
    q0 = float(d.snap_inv[0]) if d.snap_inv.size else 0.0
    q = q0 + np.cumsum(d.fill_sign * d.fill_size)
    x = tx(np.concatenate([[t0], d.fill_ts, [d.t_end_ns]]))
    y = np.concatenate([[q0], q, [q[-1] if q.size else q0]])
    x, y = decimate(x, y)
    ax.plot(x, y, drawstyle="steps-post", color="tab:blue", lw=1.0, label="inventory")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_xlim(0, max(t_end_x, 1e-9))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"inventory [{base}]")
    ax.set_title(f"Inventory - {title}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    paths.append(out_dir / PNG_NAMES[1])
    fig.savefig(paths[-1])
    plt.close(fig)

    # 3. PnL split
    fig, ax = plt.subplots(figsize=(12, 4.5), dpi=100)
    sc_cum = np.cumsum(d.fill_spread_capture)
    fee_cum = np.cumsum(d.fill_fee)
    fx = tx(np.concatenate([[t0], d.fill_ts, [d.t_end_ns]]))
    sc_line = np.concatenate([[0.0], sc_cum, [sc_cum[-1] if sc_cum.size else 0.0]])
    fee_line = np.concatenate([[0.0], fee_cum, [fee_cum[-1] if fee_cum.size else 0.0]])
    if d.snap_ts.size:
        x, y = decimate(tx(d.snap_ts), d.snap_pnl)
        ax.plot(x, y, color="black", lw=1.3, label="total PnL (mark to market)")
        k = np.searchsorted(d.fill_ts, d.snap_ts, side="right")  # fills up to each snapshot
        sc_at = np.concatenate([[0.0], sc_cum])[k]
        fee_at = np.concatenate([[0.0], fee_cum])[k]
        x, y = decimate(tx(d.snap_ts), d.snap_pnl - sc_at + fee_at)
        ax.plot(x, y, color="tab:purple", lw=1.0, label="inventory PnL = total - spread + fees")
    x, y = decimate(fx, sc_line)
    ax.plot(x, y, drawstyle="steps-post", color="tab:green", lw=1.0, label="spread capture (cumulative)")
    x, y = decimate(fx, fee_line)
    ax.plot(x, y, drawstyle="steps-post", color="tab:orange", lw=1.0, label="fees paid (cumulative)")
    ax.axhline(0.0, color="0.5", lw=0.6)
    ax.set_xlim(0, max(t_end_x, 1e-9))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"PnL [{quote}]")
    ax.set_title(f"PnL and its split - {title}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best" if n_fills + d.snap_ts.size < 5000 else "upper left", fontsize=8, framealpha=0.85)
    fig.tight_layout()
    paths.append(out_dir / PNG_NAMES[2])
    fig.savefig(paths[-1])
    plt.close(fig)
    return paths


# -- HTML ---------------------------------------------------------------------------------
def _metric_rows(m: dict, base: str, quote: str) -> list[tuple[str, str, str]]:
    """(label, value, unit) rows for the metrics table."""
    spec = [
        ("total_pnl", "total PnL", quote), ("spread_capture", "spread capture", quote),
        ("inventory_pnl", "inventory PnL", quote), ("fees", "fees paid (rebates negative)", quote),
        ("max_drawdown", "max drawdown of PnL", quote), ("sharpe", "Sharpe of per-minute PnL, annualised", ""),
        ("sharpe_minutes", "minutes in Sharpe", "min"), ("duration_s", "duration (event clock)", "s"),
        ("orders", "orders", ""), ("n_orders_worked", "orders that worked", ""),
        ("n_orders_rejected", "orders rejected", ""), ("n_orders_filled", "orders fully filled", ""),
        ("fills", "fills", ""), ("buys", "buy fills", ""), ("sells", "sell fills", ""),
        ("fill_ratio", "fill ratio (fills / orders)", ""), ("volume_base", "volume", base),
        ("volume_quote", "volume", quote), ("final_inventory", "final inventory", base),
        ("max_abs_inventory", "max |inventory|", base), ("mean_inventory", "time-weighted mean inventory", base),
        ("mean_abs_inventory", "time-weighted mean |inventory|", base),
        ("share_quoted_both", "share of time quoted on both sides", "%"),
        ("share_quoted_any", "share of time quoted on at least one side", "%"),
        ("share_quoted_bid", "share of time with a working bid", "%"),
        ("share_quoted_ask", "share of time with a working ask", "%"), ("final_mid", "final mid", f"{quote}/{base}"),
    ]
    rows = []
    for key, label, unit in spec:
        if key not in m:
            continue
        v = m[key]
        if key == "sharpe" and m.get("sharpe_note"):
            s = m["sharpe_note"] if v is None else f"{v:,.3g} ({m['sharpe_note']})"
        elif v is None or (isinstance(v, float) and not math.isfinite(v)):
            s = "n/a"
        elif unit == "%":
            s = f"{100 * v:.2f}"
        elif isinstance(v, int):
            s = f"{v:,}"
        else:
            s = f"{v:,.6g}" if abs(v) < 1e6 else f"{v:,.2f}"
        rows.append((label, s, unit))
    return rows


def _iso(ts_ns: int | None) -> str:
    if ts_ns is None:
        return "-"
    t = _dt.datetime.fromtimestamp(ts_ns / NS_PER_S, tz=_dt.timezone.utc)
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1280px}
h1{font-size:1.5em;margin-bottom:4px} h2{font-size:1.15em;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px} td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f3f3f3;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.buy td.side{color:#0a7a0a} tr.sell td.side{color:#b00}
pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:10px;font-size:12px;overflow:auto;max-height:420px}
img{max-width:100%;border:1px solid #eee} .meta{color:#555;font-size:13px} .note{color:#666;font-size:12px}
"""


def _html(d: RunData, m: dict, pngs: list[Path]) -> str:
    base, quote = _currencies(d.symbol)
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>mmbot run {d.run_id} report</title><style>{_CSS}</style></head><body>",
        f"<h1>mmbot {esc(run_title(d.run_id, d.mode, market_source(d.config, d.exchange), d.symbol))}</h1>",
        f'<p class="meta">status <b>{esc(d.status)}</b> &middot; wall clock {esc(_iso(d.started_ns))} &rarr; '
        f"{esc(_iso(d.ended_ns))} &middot; event clock {esc(_iso(d.t_start_ns))} &rarr; {esc(_iso(d.t_end_ns))} "
        f"({d.duration_s:,.3f} s)</p>",
        "<h2>Metrics</h2>", "<table><tr><th>metric</th><th>value</th><th>unit</th></tr>",
    ]
    for label, value, unit in _metric_rows(m, base, quote):
        parts.append(f'<tr><td>{esc(label)}</td><td class="num">{esc(value)}</td><td>{esc(unit)}</td></tr>')
    parts.append("</table>")
    parts.append('<p class="note">total = spread capture + inventory PnL - fees. Sharpe = mean/std (ddof 1) of the '
                 f"PnL changes on a 1-minute grid (last value) x sqrt(525600); n/a under {MIN_SHARPE_MINUTES} one-minute "
                 "changes (a few minutes of PnL give noise, and annualising it gives numbers in the thousands). Shares of time "
                 "quoted: an order works from its open event to its terminal event.</p>")
    parts.append("<h2>Run config</h2>")
    parts.append(f"<pre>{esc(json.dumps(d.config, indent=2, sort_keys=True, default=str))}</pre>")
    captions = {"mid_quotes_fills.png": "Mid price, our best working bid / ask, fills",
                "inventory.png": "Inventory", "pnl.png": "PnL split"}
    parts.append("<h2>Plots</h2>")
    for p in pngs:
        b64 = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<h3>{esc(captions.get(p.name, p.name))}</h3>")
        parts.append(f'<p><a href="{esc(p.name)}"><img src="data:image/png;base64,{b64}" alt="{esc(p.name)}"></a><br>'
                     f'<span class="note">file: <a href="{esc(p.name)}">{esc(p.name)}</a></span></p>')
    n = d.fill_ts.size
    parts.append(f"<h2>Fills ({n:,}{', first ' + str(MAX_FILL_ROWS) + ' shown' if n > MAX_FILL_ROWS else ''})</h2>")
    parts.append(f"<table><tr><th>#</th><th>time (UTC)</th><th>t [s]</th><th>side</th><th>price [{esc(quote)}/{esc(base)}]</th>"
                 f"<th>size [{esc(base)}]</th><th>fee [{esc(quote)}]</th><th>liquidity</th><th>mid</th>"
                 f"<th>spread capture [{esc(quote)}]</th><th>client id</th><th>trade id</th></tr>")
    sc = d.fill_spread_capture
    for i in range(min(n, MAX_FILL_ROWS)):
        side = "buy" if d.fill_sign[i] > 0 else "sell"
        parts.append(
            f'<tr class="{side}"><td class="num">{i + 1}</td><td>{esc(_iso(int(d.fill_ts[i])))}</td>'
            f'<td class="num">{(int(d.fill_ts[i]) - d.t_start_ns) / NS_PER_S:,.3f}</td><td class="side">{side}</td>'
            f'<td class="num">{d.fill_price[i]:.10g}</td><td class="num">{d.fill_size[i]:.10g}</td>'
            f'<td class="num">{d.fill_fee[i]:.6g}</td><td>{esc(d.fill_liquidity[i])}</td>'
            f'<td class="num">{d.fill_mid[i]:.10g}</td><td class="num">{sc[i]:.6g}</td>'
            f"<td>{esc(d.fill_client_id[i])}</td><td>{esc(d.fill_trade_id[i])}</td></tr>")
    parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(db: str, run_id: int | None, out_dir) -> Path:
    """Write ``report.html`` and the PNG plots of run ``run_id`` (latest if None) into ``out_dir``.

    Returns the path of ``report.html``. Raises :class:`bot.errors.ConfigError` for a missing
    database or run.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = compute_metrics(str(db), run_id)
    d = load_run_data(str(db), m["run_id"])
    pngs = _plots(d, out)
    path = out / "report.html"
    path.write_text(_html(d, m, pngs), encoding="utf-8")
    return path
