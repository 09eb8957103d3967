"""Structured logs: one JSON object per line for each event worth logging, to a rotating file.

Events (the ``event`` key) and their fields:

* ``run_start`` -- mode; ``run_end`` -- status, stop_reason, events, fills, pnl (quote);
* ``fill`` -- trade_id, client_id, side, price (quote per base), size (base), fee (quote),
  liquidity, market_ts_ns, mid, inventory (base, after the fill);
* ``order_error`` -- client_id, type (see :func:`bot.observability.classify_order_error`), reason;
* ``guard_switch`` -- head (vol | drift), fallback (true = now on the baseline), loss_ratio, market_ts_ns;
* ``kill_switch`` -- reason (any stop reason that names a kill switch, or :func:`emit` by risk code);
* ``reconnect`` -- a market-data feed's warning that it retries or restarts a stream (message);
* ``log`` -- any other warning or error logged by mmbot or a library (message, logger).

Every line also has ``ts`` (wall time, ISO 8601 UTC, ms), ``level``, ``run_id``, ``exchange``,
``symbol`` and ``mode`` (null before the run's row exists). Warnings keep going to the console
as before; INFO events go to the file only.

Secrets: every line is passed through :class:`Redactor`, which replaces the values of the
environment variables ``MMBOT_API_KEY``, ``MMBOT_API_SECRET`` and ``MMBOT_API_PASSWORD``
(values of 4 characters or more, raw and JSON-escaped) with ``***`` wherever they occur.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from bot.errors import MmbotError
from bot.observability import Observer, classify_order_error, market_labels

EVENTS_LOGGER = "mmbot.events"
CONTEXT_KEYS = ("run_id", "exchange", "symbol", "mode")
SECRET_ENV = ("MMBOT_API_KEY", "MMBOT_API_SECRET", "MMBOT_API_PASSWORD")
MIN_SECRET_LEN = 4  # shorter values would blank out ordinary text; keys and secrets are far longer
REDACTED = "***"

_events = logging.getLogger(EVENTS_LOGGER)


def emit(event: str, level: int = logging.INFO, message: str = "", **fields) -> None:
    """Log one structured event (a JSON line when a JSON log is installed; nothing otherwise
    for INFO events, the message on the console for warnings)."""
    if _events.isEnabledFor(level):
        _events.log(level, message or event, extra={"event": event, "fields": fields})


class Redactor:
    """Replaces secret values (from ``SECRET_ENV``, read when constructed) in text."""

    def __init__(self, env=None) -> None:
        env = os.environ if env is None else env
        vals = {env.get(k, "") for k in SECRET_ENV}
        forms = set()
        for v in vals:
            if len(v) >= MIN_SECRET_LEN:
                forms.add(v)
                forms.add(json.dumps(v)[1:-1])  # as it appears inside a JSON string
        self.secrets = sorted(forms, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, REDACTED)
        return text


class RedactingFilter(logging.Filter):
    """Redacts a record's message and arguments in place (for console handlers)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor.secrets:
            record.msg = self.redactor(record.getMessage())
            record.args = None
        return True


class RunContext:
    """run_id, exchange, symbol and mode of the run, added to every JSON line."""

    def __init__(self) -> None:
        self.run_id: int | None = None
        self.exchange: str | None = None
        self.symbol: str | None = None
        self.mode: str | None = None


def _tag(record: logging.LogRecord) -> str:
    ev = getattr(record, "event", None)
    if ev:
        return ev
    if record.name.startswith("bot.market_data") and record.levelno >= logging.WARNING:
        text = str(record.msg).lower()
        if any(w in text for w in ("retry", "reconnect", "restart")):
            return "reconnect"
    return "log"


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring), secrets redacted."""

    def __init__(self, context: RunContext, redactor: Redactor) -> None:
        super().__init__()
        self.context, self.redactor = context, redactor

    def format(self, record: logging.LogRecord) -> str:
        c = self.context
        d = {"ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "level": record.levelname, "event": _tag(record), "run_id": c.run_id, "exchange": c.exchange,
             "symbol": c.symbol, "mode": c.mode, "logger": record.name, "message": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):  # an engine's own run and market win over the process's context
            for k, v in fields.items():
                if k in CONTEXT_KEYS or k not in d:
                    d[k] = v
        if record.exc_info:
            d["exception"] = self.formatException(record.exc_info)
        return self.redactor(json.dumps(d, default=str, ensure_ascii=False))


class _ConsoleHandler(logging.StreamHandler):
    """What :data:`logging.lastResort` does (WARNING and above, the bare message, to the
    current ``sys.stderr``): installing a handler on the root logger disables lastResort,
    so this keeps the console as it was."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.setLevel(logging.WARNING)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class JsonLog:
    """The installed JSON log: a :class:`~logging.handlers.RotatingFileHandler` on the root
    logger (``max_bytes`` per file, ``backup_count`` rotated files kept: FILE.1, FILE.2, ...)."""

    def __init__(self, path: str | Path, max_bytes: int = 10_000_000, backup_count: int = 5, where: str = "--log-json") -> None:
        self.path = Path(path)
        self.context = RunContext()
        self.redactor = Redactor()
        try:
            if self.path.parent and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.handlers.RotatingFileHandler(self.path, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8")
        except OSError as e:
            raise MmbotError(f"{where} {path}: cannot be opened for writing ({e.strerror or e})") from None
        self.handler.setLevel(logging.INFO)
        self.handler.setFormatter(JsonFormatter(self.context, self.redactor))
        root = logging.getLogger()
        self.console: logging.Handler | None = None
        if not root.handlers:
            self.console = _ConsoleHandler()
            self.console.addFilter(RedactingFilter(self.redactor))
            root.addHandler(self.console)
        root.addHandler(self.handler)
        self._events_level = _events.level
        _events.setLevel(logging.INFO)

    def close(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.handler)
        if self.console is not None:
            root.removeHandler(self.console)
        _events.setLevel(self._events_level)
        self.handler.close()


class JsonLogObserver(Observer):
    """Engine observer writing the run's events (see the module docstring). Each event carries
    this engine's run id and market (several engines in one process each have their own
    observer); the process-wide context, used for other log lines, is the first run's."""

    def __init__(self, jlog: JsonLog) -> None:
        self.process_ctx = jlog.context
        self.ctx = RunContext()
        self._switches = 0

    def _emit(self, event: str, level: int = logging.INFO, message: str = "", **fields) -> None:
        c = self.ctx
        emit(event, level, message, run_id=c.run_id, exchange=c.exchange, symbol=c.symbol, mode=c.mode, **fields)

    def run_started(self, engine) -> None:
        c = self.ctx
        c.exchange, c.symbol = market_labels(engine)
        c.run_id, c.mode = engine.store.run_id, engine.mode
        if self.process_ctx.run_id is None:
            vars(self.process_ctx).update(vars(c))
        sw = getattr(engine.forecaster, "switches", None)
        self._switches = len(sw) if sw is not None else 0
        self._emit("run_start", message=f"run {c.run_id} started: {c.mode} {c.exchange} {c.symbol}")

    def tick(self, engine) -> None:
        sw = getattr(engine.forecaster, "switches", None)
        if sw is not None and len(sw) > self._switches:
            for t_ns, head, fallback, ratio in sw[self._switches:]:
                self._emit("guard_switch", logging.INFO, f"forecaster {head} head {'on the baseline' if fallback else 'on the model'}",
                     head=head, fallback=bool(fallback), loss_ratio=ratio, market_ts_ns=t_ns)
            self._switches = len(sw)

    def fill(self, engine, fill) -> None:
        self._emit("fill", message=f"fill {fill.side.value if hasattr(fill.side, 'value') else fill.side} {fill.size} @ {fill.price}",
             trade_id=fill.trade_id, client_id=fill.client_id, side=getattr(fill.side, "value", str(fill.side)),
             price=str(fill.price), size=str(fill.size), fee=str(fill.fee), liquidity=fill.liquidity,
             market_ts_ns=fill.ts_ns, mid=fill.mid, inventory=str(engine.inventory.base))

    def order_error(self, engine, ack) -> None:
        self._emit("order_error", logging.INFO, f"order {ack.client_id} rejected: {ack.reason}",
             client_id=ack.client_id, type=classify_order_error(ack.reason), reason=ack.reason, market_ts_ns=ack.ts_ns)

    def run_ended(self, engine, summary: dict) -> None:
        reason = str(summary.get("stop_reason") or "")
        if "kill" in reason.lower():
            self._emit("kill_switch", logging.INFO, f"kill switch: {reason}", reason=reason)
        self._emit("run_end", message=f"run {self.ctx.run_id} ended: {summary.get('status')} ({reason})",
             status=summary.get("status"), stop_reason=reason, events=summary.get("events"), fills=summary.get("fills"),
             pnl=summary.get("pnl"), orders_placed=summary.get("orders_placed"), orders_rejected=summary.get("orders_rejected"))
