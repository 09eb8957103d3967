"""Prometheus metrics of a running engine (``prometheus-client``), served over HTTP.

Every market metric carries the labels ``exchange`` (``sim``, a ccxt id, or a recording's
exchange) and ``symbol`` (ccxt unified). Units are in the names: ``_seconds``, ``_quote``
(quote currency), ``_base`` (base units), ``_price`` (quote per base); ``_total`` are
counters. docs/operations.md lists them all.

How values get here: :class:`MetricsObserver` is the engine's observer. On every market
event it observes the tick-to-quote latency (``EngineState.tick_to_quote_ns``, taken by the
engine with ``time.perf_counter_ns``) and notes the wall time of the event (feed staleness is
computed at scrape time from it). The other values are copied from the engine's state at most
every ``update_interval_s`` of wall time, always *after* the engine committed the event to
the database, and once more when the run has ended (after the run's row was closed): a
counter scraped at any moment is therefore <= the matching count in the database read
afterwards, and equal to it once ``mmbot_run_ended`` is 1.
"""

from __future__ import annotations

import math
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

from bot.observability import Observer, classify_order_error, market_labels
from bot.observability.looplag import LoopLagProbe

# tick-to-quote latency buckets, seconds (5 us .. 0.5 s)
LATENCY_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1, 0.5)
# event-loop lag buckets, seconds (100 us .. 5 s)
LAG_BUCKETS = (1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 5.0)

M = ("exchange", "symbol")  # the market labels


class MmbotMetrics:
    """The metric families, registered in their own registry (plus the process collector:
    ``process_resident_memory_bytes``, ``process_cpu_seconds_total``, ...)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        ProcessCollector(registry=r)
        self.run_info = Gauge("mmbot_run_info", "1 for the run being (or last) traded; run_id and mode as labels", (*M, "run_id", "mode"), registry=r)
        self.run_ended = Gauge("mmbot_run_ended", "1 once the run has ended and its final values are in (0 while it runs)", M, registry=r)
        self.mid = Gauge("mmbot_mid_price", "mid price of the book, quote per base", M, registry=r)
        self.quote_price = Gauge("mmbot_quote_price", "our best quote on a side, quote per base (NaN: no quote)", (*M, "side"), registry=r)
        self.quote_distance = Gauge("mmbot_quote_distance_price", "distance of our best quote from the mid (mid-bid, ask-mid), quote per base", (*M, "side"), registry=r)
        self.inventory = Gauge("mmbot_inventory_base", "inventory held, base units (negative = short)", M, registry=r)
        self.pnl = Gauge("mmbot_pnl_quote", "PnL since the run's start, quote currency; component = total | spread_capture | inventory | fees "
                         "(total = spread_capture + inventory - fees)", (*M, "component"), registry=r)
        self.fills = Counter("mmbot_fills", "fills of our orders", M, registry=r)
        self.volume = Counter("mmbot_volume_quote", "traded notional, quote currency", M, registry=r)
        self.events = Counter("mmbot_market_events", "market events processed", M, registry=r)
        self.placed = Counter("mmbot_orders_placed", "orders placed (accepted by the venue)", M, registry=r)
        self.canceled = Counter("mmbot_orders_canceled", "cancel requests sent", M, registry=r)
        self.rejected = Counter("mmbot_orders_rejected", "orders rejected by the venue", M, registry=r)
        self.order_errors = Counter("mmbot_order_errors", "order errors by type (post_only, insufficient_funds, rate_limit, min_size, "
                                    "network, invalid_order, other)", (*M, "type"), registry=r)
        self.rate_budget = Gauge("mmbot_rate_limit_budget_per_second", "request budget of the market-data client, requests per second "
                                 "(NaN: no rate-limited client, e.g. the simulated market)", M, registry=r)
        self.rate_used = Gauge("mmbot_rate_limit_window_used", "requests made in the client's current rate-limit window", M, registry=r)
        self.requests = Counter("mmbot_rate_limit_requests", "REST requests made by the market-data client", M, registry=r)
        self.staleness = Gauge("mmbot_feed_staleness_seconds", "wall seconds since the last market event (book update) was processed", M, registry=r)
        self.forecast_source = Gauge("mmbot_forecast_source", "1 for the forecast source in use (lstm, lstm-warmup, vol:ewma,drift:lstm, ...), 0 for the others seen",
                                     (*M, "source"), registry=r)
        self.guard_fallback = Gauge("mmbot_forecast_guard_fallback", "1 while the guard has a forecast head on its baseline, else 0", (*M, "head"), registry=r)
        self.guard_switches = Counter("mmbot_forecast_guard_switches", "forecaster guard switches per head", (*M, "head"), registry=r)
        self.tick_to_quote = Histogram("mmbot_tick_to_quote_seconds", "from a market event's arrival to the quotes decided, seconds",
                                       M, buckets=LATENCY_BUCKETS, registry=r)
        self.loop_lag = Histogram("mmbot_event_loop_lag_seconds", "event-loop scheduling delay of a periodic probe, seconds", buckets=LAG_BUCKETS, registry=r)
        self.loop_lag_last = Gauge("mmbot_event_loop_lag_last_seconds", "the last event-loop lag measured, seconds", registry=r)


class MetricsServer:
    """The HTTP endpoint (``/metrics``) on ``host:port``; port 0 binds a free port
    (:attr:`port` is the bound one). Serves from a daemon thread until :meth:`close`."""

    def __init__(self, port: int, host: str = "127.0.0.1", metrics: MmbotMetrics | None = None) -> None:
        self.metrics = metrics or MmbotMetrics()
        self.httpd, self.thread = start_http_server(port, addr=host, registry=self.metrics.registry)
        self.host = host
        self.port = int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _nan(x) -> float:
    return float("nan") if x is None else float(x)


class MetricsObserver(Observer):
    """Feeds :class:`MmbotMetrics` from an engine (see the module docstring).

    ``update_interval_s``: wall seconds between copies of the engine's state (the latency
    histogram and the feed's last-event time are updated on every event).
    ``loop_lag_interval_s``: period of the event-loop lag probe, seconds (None: no probe --
    one per process is enough when several engines share the loop)."""

    def __init__(self, metrics: MmbotMetrics, update_interval_s: float = 0.25, loop_lag_interval_s: float | None = 0.25) -> None:
        self.m = metrics
        self.update_interval_s = update_interval_s
        self.probe = LoopLagProbe(loop_lag_interval_s, self._lag) if loop_lag_interval_s else None
        self._next = 0.0
        self._last_event = time.monotonic()
        self._seen: dict[str, float] = {}
        self._sources: set[str] = set()
        self._hist = None
        self.labels: tuple[str, str] = ("", "")

    def _lag(self, s: float) -> None:
        self.m.loop_lag.observe(s)
        self.m.loop_lag_last.set(s)

    # -- the engine's hooks ----------------------------------------------------------------
    def run_started(self, engine) -> None:
        self.labels = lb = market_labels(engine)
        m = self.m
        m.run_info.labels(*lb, str(engine.store.run_id), engine.mode).set(1)
        m.run_ended.labels(*lb).set(0)
        self._hist = m.tick_to_quote.labels(*lb)
        self._last_event = time.monotonic()
        m.staleness.labels(*lb).set_function(lambda: time.monotonic() - self._last_event)
        if self.probe is not None:
            self.probe.start()
        self._update(engine)

    def tick(self, engine) -> None:
        self._hist.observe(engine.state.tick_to_quote_ns * 1e-9)  # type: ignore[union-attr]
        now = self._last_event = time.monotonic()
        if now >= self._next:
            self._next = now + self.update_interval_s
            self._update(engine)

    def order_error(self, engine, ack) -> None:
        self.m.order_errors.labels(*self.labels, classify_order_error(ack.reason)).inc()

    def run_ended(self, engine, summary: dict) -> None:
        if self.probe is not None:
            self.probe.stop()
        self._update(engine)
        self.m.run_ended.labels(*self.labels).set(1)

    # -- copying the state ---------------------------------------------------------------
    def _count(self, counter, key: str, value: float) -> None:
        """Advance a counter to ``value`` (counters only go up: a smaller value is ignored)."""
        d = value - self._seen.get(key, 0.0)
        if d > 0:
            counter.inc(d)
            self._seen[key] = value

    def _update(self, engine) -> None:
        m, lb, st, inv = self.m, self.labels, engine.state, engine.inventory
        mid = st.mid
        m.mid.labels(*lb).set(mid)
        q = st.quotes
        bid = float(q.bids[0].price) if q is not None and q.bids else None
        ask = float(q.asks[0].price) if q is not None and q.asks else None
        m.quote_price.labels(*lb, "bid").set(_nan(bid))
        m.quote_price.labels(*lb, "ask").set(_nan(ask))
        m.quote_distance.labels(*lb, "bid").set(mid - bid if bid is not None else math.nan)
        m.quote_distance.labels(*lb, "ask").set(ask - mid if ask is not None else math.nan)
        m.inventory.labels(*lb).set(float(inv.base))
        fees = float(inv.fees_paid)
        m.pnl.labels(*lb, "total").set(st.pnl)
        m.pnl.labels(*lb, "spread_capture").set(inv.spread_capture)
        m.pnl.labels(*lb, "inventory").set(st.pnl - inv.spread_capture + fees)
        m.pnl.labels(*lb, "fees").set(fees)
        self._count(m.fills.labels(*lb), "fills", inv.n_fills)
        self._count(m.volume.labels(*lb), "volume", float(inv.volume))
        self._count(m.events.labels(*lb), "events", st.events)
        self._count(m.placed.labels(*lb), "placed", st.placed)
        self._count(m.canceled.labels(*lb), "canceled", st.canceled)
        self._count(m.rejected.labels(*lb), "rejected", st.rejected)
        self._rate_limit(engine.source)
        self._forecaster(engine)

    def _rate_limit(self, source) -> None:
        m, lb = self.m, self.labels
        rate = getattr(source, "rate_limit_per_s", None)
        m.rate_budget.labels(*lb).set(_nan(rate))
        throttler = getattr(source, "_throttler", None)
        logs = getattr(throttler, "_task_logs", None)  # asyncio_throttle: request times in the window
        m.rate_used.labels(*lb).set(len(logs) if logs is not None else math.nan)
        req = getattr(source, "requests", None)
        if isinstance(req, int):
            self._count(m.requests.labels(*lb), "requests", req)

    def _forecaster(self, engine) -> None:
        m, lb = self.m, self.labels
        src = engine.state.forecast_source
        if src and src not in self._sources:
            self._sources.add(src)
        for s in self._sources:
            m.forecast_source.labels(*lb, s).set(1.0 if s == src else 0.0)
        fc = engine.forecaster
        status = fc.status() if hasattr(fc, "status") else None
        if status:
            for head in ("vol", "drift"):
                m.guard_fallback.labels(*lb, head).set(1.0 if status.get(f"{head}_fallback") else 0.0)
                n = (status.get("guard_switches") or {}).get(head)
                if isinstance(n, int):
                    self._count(m.guard_switches.labels(*lb, head), f"switches_{head}", n)
