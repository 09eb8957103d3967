"""Online estimation of the fill-intensity parameters A and k from public trades.

Model (Avellaneda-Stoikov 2008, Gueant-Lehalle-Fernandez-Tapia 2013): market orders reach
depth ``delta`` from the mid with intensity::

    lambda(delta) = A * exp(-k * delta)

``delta`` in quote currency per base unit (the same unit as prices), ``A`` in trades per
second, ``k`` in 1 / (quote per base). These are the ``A`` and ``k`` of
``strategies.pricing`` for AS / GLFT on a real market.

Estimator (in the spirit of hummingbot's TradingIntensityIndicator and of hftbacktest's GLFT
example; own implementation):

* per trade message, ``delta = price - mid`` for a buy aggressor and ``mid - price`` for a
  sell aggressor, negative values set to 0. ``mid`` is the mid of the book *before* the
  trade; for a message that swept several levels pass the deepest price (or the list of its
  prices: the deepest is taken). One call per aggressor message: several prints of one
  taker order should be merged by the caller, otherwise they count as several trades;
* trades are counted, not weighted by size (``size`` is accepted for the interface and
  ignored);
* on the depth grid ``delta_j = j * depth_step`` (``j = 0 .. n_depths-1``),
  ``lambda_j = #(trades in the window with delta >= delta_j) / L`` with the window
  ``(now - W, now]`` and ``L = min(W, now - first)`` seconds, ``first`` = ``start_ns`` or
  the first trade seen (so during warm-up the rate is taken over the time observed so far;
  this slightly overstates it for the first few trades);
* ``log(lambda_j) = log(A) - k * delta_j`` fitted by ordinary least squares over the ``j``
  with ``lambda_j > 0``; ``None`` with fewer than 3 such points, a non-positive ``L`` or a
  fitted ``k <= 0``.

Trade depths are kept as bucket indices ``floor(delta / depth_step + 1e-9)`` clipped to
``n_depths - 1`` (a trade deeper than the grid counts for every grid depth); the ``1e-9``
makes a depth that is an exact multiple of the step (prices on a tick grid) land in its own
bucket despite binary rounding.

Timestamps are int ns since the epoch and must not go backwards: an earlier timestamp is
treated as the latest time already seen (in :func:`estimate_batch`, the running maximum).
Trades with a NaN depth (unknown mid) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from strategies import kernels as K

NS_PER_S = 1_000_000_000
_EPS = 1e-9
_CHUNK = 65_536


def side_sign(side) -> int:
    """+1 for a buy aggressor, -1 for a sell: accepts 'buy'/'sell' (any case, or Side), +1/-1."""
    if isinstance(side, str):  # also bot.orders.Side (a str enum)
        s = side.lower()
        if s in ("buy", "b", "bid"):
            return 1
        if s in ("sell", "s", "ask"):
            return -1
        raise ValueError(f"unknown trade side {side!r}")
    v = int(side)
    if v not in (1, -1):
        raise ValueError(f"trade side must be +1 (buy) or -1 (sell), got {side!r}")
    return v


def _side_signs(side) -> np.ndarray:
    a = np.asarray(side)
    if a.dtype.kind == "O":  # e.g. bot.orders.Side members
        a = np.asarray([getattr(x, "value", x) for x in a.tolist()])
    if a.dtype.kind in "US":
        low = np.char.lower(a.astype(str))
        buy = np.isin(low, ("buy", "b", "bid"))
        sell = np.isin(low, ("sell", "s", "ask"))
        if not np.all(buy | sell):
            raise ValueError("trade sides must be 'buy' or 'sell'")
        return np.where(buy, 1, -1).astype(np.int8)
    a = a.astype(np.int64)
    if not np.all((a == 1) | (a == -1)):
        raise ValueError("trade sides must be +1 (buy) or -1 (sell)")
    return a.astype(np.int8)


def fit_intensity(depths: np.ndarray, lambdas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise OLS of ``log(lambda) = log(A) - k * depth`` over the entries with lambda > 0.

    ``lambdas`` has shape (m, J) (or (J,)), ``depths`` shape (J,). Returns arrays ``(A, k)``
    of shape (m,), NaN where fewer than 3 points are positive or the fitted k is not > 0.
    """
    lam = np.atleast_2d(np.asarray(lambdas, dtype=np.float64))
    x = np.asarray(depths, dtype=np.float64)[None, :]
    mask = lam > 0
    n = mask.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(mask, np.log(np.where(mask, lam, 1.0)), 0.0)
        xbar = (mask * x).sum(axis=1) / n
        ybar = y.sum(axis=1) / n
        dx = np.where(mask, x - xbar[:, None], 0.0)
        slope = (dx * (y - ybar[:, None])).sum(axis=1) / (dx * dx).sum(axis=1)
        k = -slope
        a = np.exp(ybar - slope * xbar)
    ok = (n >= 3) & np.isfinite(k) & np.isfinite(a) & (k > 0)
    return np.where(ok, a, np.nan), np.where(ok, k, np.nan)


class IntensityEstimator:
    """Rolling estimate of (A, k) from a stream of public trades; see the module docstring.

    Args:
        window_s: rolling window W, seconds.
        depth_step: grid step of depths, quote per base (e.g. one or a few ticks).
        n_depths: number of grid depths J (>= 3); the grid spans 0 .. (J-1) * depth_step.
        start_ns: when observation started (int ns); default: the first trade's time.

    ``update`` is O(1) amortised (arrays of (ts, bucket) and per-bucket counts, kept by the
    compiled :func:`strategies.kernels.count_trades`; expired trades are dropped from the
    front), ``estimate`` is O(J).
    """

    def __init__(self, window_s: float, depth_step: float, n_depths: int, start_ns: int | None = None) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if not depth_step > 0:
            raise ValueError(f"depth_step must be > 0, got {depth_step}")
        if int(n_depths) < 3:
            raise ValueError(f"n_depths must be >= 3, got {n_depths}")
        self.window_s = float(window_s)
        self.depth_step = float(depth_step)
        self.n_depths = int(n_depths)
        self._win_ns = int(round(self.window_s * NS_PER_S))
        self._depths = np.arange(self.n_depths) * self.depth_step
        # the window: trade times (int ns) and depth buckets in ts_buf/b_buf[head:tail], and
        # the trades per bucket; kept by the compiled functions of strategies.kernels
        self._counts = np.zeros(self.n_depths, dtype=np.int64)
        self._ts_buf = np.zeros(1024, dtype=np.int64)
        self._b_buf = np.zeros(1024, dtype=np.int64)
        self._head = self._tail = 0
        self._first_ns = None if start_ns is None else int(start_ns)
        self._now_ns: int | None = None

    @property
    def depths(self) -> np.ndarray:
        """The depth grid delta_j, quote per base."""
        return self._depths.copy()

    @property
    def n_trades(self) -> int:
        """Trades currently in the window."""
        return self._tail - self._head

    def _reserve(self, n: int) -> None:
        """Room for ``n`` more trades after the tail: move the window to the front, grow if needed."""
        if self._tail + n <= self._ts_buf.size:
            return
        live = self._tail - self._head
        cap = self._ts_buf.size
        while live + n > cap // 2:
            cap *= 2
        ts, b = np.zeros(cap, dtype=np.int64), np.zeros(cap, dtype=np.int64)
        ts[:live] = self._ts_buf[self._head:self._tail]
        b[:live] = self._b_buf[self._head:self._tail]
        self._ts_buf, self._b_buf, self._head, self._tail = ts, b, 0, live

    def _advance(self, ts_ns: int) -> int:
        ts = int(ts_ns)
        if self._now_ns is not None and ts < self._now_ns:
            ts = self._now_ns
        self._now_ns = ts
        self._head = K.expire_trades(self._ts_buf, self._b_buf, self._head, self._tail, self._counts, ts - self._win_ns)
        return ts

    def update(self, ts_ns: int, price: float | Sequence[float], size: float, side, mid: float) -> None:
        """Add one aggressor trade message.

        Args:
            ts_ns: trade time, int ns since the epoch.
            price: trade price (quote per base), or the prices of one message (deepest taken).
            size: traded size, base units (not used: trades are counted).
            side: aggressor side, 'buy' / 'sell' (or :class:`bot.orders.Side`, or +1 / -1).
            mid: mid price just before the trade, quote per base.
        """
        sgn = side_sign(side)
        if isinstance(price, (list, tuple, np.ndarray)):
            px = float(max(price)) if sgn > 0 else float(min(price))
        else:
            px = float(price)
        self._add(np.array([int(ts_ns)], dtype=np.int64), np.array([px]), np.array([sgn], dtype=np.int64), float(mid))

    def update_many(self, ts_ns: np.ndarray, price: np.ndarray, side: np.ndarray, mid: float) -> None:
        """Add many trade messages measured from one mid (same result as calling
        :meth:`update` for each): int ns times, prices, aggressor sides +1/-1 (0 = unknown:
        skipped). Counted by :func:`strategies.kernels.count_trades`."""
        self._add(np.asarray(ts_ns, dtype=np.int64), np.asarray(price, dtype=np.float64),
                  np.asarray(side, dtype=np.int64), float(mid))

    def _add(self, ts_ns: np.ndarray, price: np.ndarray, side: np.ndarray, mid: float) -> None:
        n = ts_ns.shape[0]
        if n == 0:
            return
        self._reserve(n)
        now = self._now_ns
        self._head, self._tail, now, has_now, first, has_first = K.count_trades(
            self._ts_buf, self._b_buf, self._head, self._tail, self._counts, ts_ns, price, side, mid,
            self.depth_step, self.n_depths - 1, 0 if now is None else now, now is not None, self._win_ns)
        if has_now:
            self._now_ns = int(now)
        if self._first_ns is None and has_first:
            self._first_ns = int(first)

    def lambdas(self, now_ns: int | None = None) -> np.ndarray | None:
        """lambda_j (trades per second reaching depth >= delta_j) at ``now_ns`` (default: the
        last trade's time); None before any trade or with a zero-length observation."""
        if self._now_ns is None:
            return None
        now = self._advance(now_ns if now_ns is not None else self._now_ns)
        length_s = min(self._win_ns, now - self._first_ns) / NS_PER_S  # type: ignore[operator]
        if length_s <= 0:
            return None
        cum = np.cumsum(self._counts[::-1].astype(np.float64))[::-1]
        return cum / length_s

    def estimate(self, now_ns: int | None = None) -> tuple[float, float] | None:
        """(A [1/s], k [1/(quote per base)]) at ``now_ns`` (default: the last trade's time), or None."""
        if self._now_ns is None:
            return None
        now = self._advance(now_ns if now_ns is not None else self._now_ns)
        length_s = min(self._win_ns, now - self._first_ns) / NS_PER_S  # type: ignore[operator]
        if length_s <= 0:
            return None
        # the compiled fit the compiled backtest loop calls too (paper_trading.compiled_loop)
        a, k = K.intensity_fit(self._counts, self.depth_step, length_s)
        if math.isnan(a):
            return None
        return float(a), float(k)


def estimate_batch(ts_ns, price, side, mid, window_s: float, depth_step: float, n_depths: int,
                   eval_ns=None, start_ns: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rolling estimate of :class:`IntensityEstimator` for a whole trade array at once.

    Args:
        ts_ns: trade times, int ns, one per aggressor message, in time order (a decrease is
            treated as the running maximum, as online).
        price: trade price per message (the deepest), quote per base.
        side: aggressor sides ('buy'/'sell' or +1/-1).
        mid: mid just before each trade, quote per base.
        window_s, depth_step, n_depths, start_ns: as for :class:`IntensityEstimator`.
        eval_ns: times to evaluate at (non-decreasing is not required). Default: after each
            trade, i.e. exactly what ``IntensityEstimator.estimate()`` returns after each
            ``update`` (trades with the same timestamp are added one at a time).

    Returns:
        ``(A, k)`` float arrays with one entry per evaluation, NaN where the online estimator
        returns None. Vectorized: O((n + m) J log n) time, memory bounded by chunks of
        evaluations.
    """
    if not window_s > 0 or not depth_step > 0 or int(n_depths) < 3:
        raise ValueError("window_s and depth_step must be > 0 and n_depths >= 3")
    J = int(n_depths)
    win_ns = int(round(float(window_s) * NS_PER_S))
    ts = np.maximum.accumulate(np.asarray(ts_ns, dtype=np.int64)) if len(ts_ns) else np.zeros(0, np.int64)
    n = ts.size
    sgn = _side_signs(side) if n else np.zeros(0, np.int8)
    delta = (np.asarray(price, dtype=np.float64) - np.asarray(mid, dtype=np.float64)) * sgn
    valid = ~np.isnan(delta)
    with np.errstate(invalid="ignore"):
        b = np.where(delta > 0, np.floor(np.where(valid, delta, 0.0) / float(depth_step) + _EPS), 0.0)
    b = np.minimum(b, J - 1).astype(np.int64)
    b[~valid] = -1
    first = int(start_ns) if start_ns is not None else (int(ts[0]) if n else 0)

    if eval_ns is None:
        t_eval = ts
        hi = np.arange(1, n + 1, dtype=np.int64)
    else:
        t_eval = np.asarray(eval_ns, dtype=np.int64)
        hi = np.searchsorted(ts, t_eval, side="right").astype(np.int64)
    m = t_eval.size
    a_out = np.full(m, np.nan)
    k_out = np.full(m, np.nan)
    if n == 0 or m == 0:
        return a_out, k_out
    lo = np.searchsorted(ts, t_eval - win_ns, side="right").astype(np.int64)
    length_s = np.minimum(win_ns, t_eval - first) / NS_PER_S
    positions = [np.flatnonzero(b == j) for j in range(J)]
    depths = np.arange(J) * float(depth_step)
    for c0 in range(0, m, _CHUNK):
        c1 = min(m, c0 + _CHUNK)
        h, l_ = hi[c0:c1], lo[c0:c1]
        counts = np.empty((c1 - c0, J), dtype=np.float64)
        for j, pos in enumerate(positions):
            counts[:, j] = np.searchsorted(pos, h) - np.searchsorted(pos, np.minimum(l_, h))
        cum = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1]
        L = length_s[c0:c1]
        ok = L > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            lam = np.where(ok[:, None], cum / np.where(ok, L, 1.0)[:, None], 0.0)
        a, k = fit_intensity(depths, lam)
        a_out[c0:c1] = np.where(ok, a, np.nan)
        k_out[c0:c1] = np.where(ok, k, np.nan)
    return a_out, k_out
