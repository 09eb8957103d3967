"""`mmbot report`: a run's results computed from the database alone.

PnL attribution (quote currency), with inventory starting at the run's first snapshot:
    total          = final mark-to-market - initial mark-to-market
    spread capture = sum over fills of (mid_at_fill - price) * size for buys,
                     (price - mid_at_fill) * size for sells
    fees           = sum of fees paid (rebates negative), in quote currency: a fee the venue
                     charged in another currency counts at the price recorded with the fill
                     (``fills.fee_rate``); one recorded unconverted (no price) counts 0 and
                     is listed in ``unconverted_fees`` (e.g. ``"0.00012 BNB"``)
    inventory PnL  = total - spread capture + fees   (what holding inventory earned or lost)
so that total = spread capture + inventory PnL - fees.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from decimal import Decimal

from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.orm import Session

from bot.errors import ConfigError
from bot.persistence.schema import FillRow, OrderRow, PnlSnapshot, Run
from bot.persistence.store import process_gone


@dataclass
class RunReport:
    run_id: int
    mode: str
    exchange: str
    symbol: str
    status: str
    started_ns: int
    ended_ns: int | None
    orders: int
    fills: int
    buys: int
    sells: int
    volume_base: float
    volume_quote: float
    final_inventory: float
    max_abs_inventory: float
    final_mid: float
    total_pnl: float
    spread_capture: float
    inventory_pnl: float
    fees: float
    source: str = ""  # where the market data came from: "simulated market", "binance recording", ...
    stop_reason: str = ""  # why the run ended (for a crashed run: that its process died)
    unconverted_fees: str = ""  # fees charged in a currency no price converted: "0.00012 BNB; ..."

    def as_dict(self) -> dict:
        return asdict(self)


def market_source(config: dict | None, exchange: str = "") -> str:
    """Where a run's market data came from, from its stored config: ``"simulated market"``,
    ``"binance recording"`` (a backtest or paper --replay), ``"binance live data"``. The
    ``runs.exchange`` column names the venue that filled our orders (``"paper"``), not this."""
    cfg = config if isinstance(config, dict) else {}
    data = cfg.get("data")
    if isinstance(data, dict):
        return f"{data['exchange']} recording" if data.get("exchange") else "a recording"
    ex = cfg.get("exchange")
    if ex == "sim":
        return "the simulated market"
    if ex:
        return f"{ex} live data"
    return exchange or "unknown market"


def run_title(run_id: int, mode: str, source: str, symbol: str) -> str:
    """``Run 3: backtest on binance recording, BTC/USDT``."""
    return f"Run {run_id}: {mode} on {source}, {symbol}"


def _open(db: str) -> Session:
    """A session on an existing mmbot database; ConfigError naming ``db`` otherwise."""
    from sqlalchemy.exc import SQLAlchemyError

    from bot.persistence.dbpath import check_database, engine_url, open_error, redact
    from bot.persistence.migrate import check_readable

    check_database(db, create=False)
    try:
        eng = create_engine(engine_url(db))
        with eng.connect() as c:
            has_runs = inspect(c).has_table("runs")
            if has_runs:
                check_readable(c, redact(db))  # a schema older or newer than the code: one line
    except (SQLAlchemyError, ImportError, ValueError) as e:  # ImportError: a driver mmbot does not install
        raise open_error(db, e) from None
    except ConfigError:
        eng.dispose()
        raise
    if not has_runs:
        eng.dispose()
        raise ConfigError(f"database {redact(db)} holds no mmbot runs (no 'runs' table)")
    return Session(eng)


def build_report(db: str, run_id: int | None = None) -> RunReport:
    with _open(db) as s:
        run = s.get(Run, run_id) if run_id is not None else s.scalars(select(Run).order_by(Run.id.desc()).limit(1)).first()
        if run is None:
            raise ConfigError(f"database {db} has no run {run_id}" if run_id is not None else f"database {db} has no runs")
        fills = s.scalars(select(FillRow).where(FillRow.run_id == run.id).order_by(FillRow.ts_ns, FillRow.id)).all()
        n_orders = s.scalar(select(func.count(OrderRow.id)).where(OrderRow.run_id == run.id)) or 0
        snaps = s.scalars(select(PnlSnapshot).where(PnlSnapshot.run_id == run.id).order_by(PnlSnapshot.ts_ns, PnlSnapshot.id)).all()
        status, stop_reason = run.status, _stop_reason(run.summary_json)
        if status == "running":  # a run whose process is gone died, even before a later start records it
            dead = process_gone(s, run.id)
            if dead is not None:
                status, stop_reason = "crashed", dead

    cash = Decimal(0)
    fees = Decimal(0)
    vol_b = Decimal(0)
    vol_q = Decimal(0)
    spread = 0.0
    unconverted: dict[str, Decimal] = {}  # fee currency -> amount, in its own units
    # the engine writes a snapshot when the run starts, before any fill: it holds q0 and mid0
    q0 = snaps[0].inventory if snaps else Decimal(0)
    q = q0
    max_q = abs(q0)
    for f in fills:
        sign = 1 if f.side == "buy" else -1
        q += sign * f.size
        cash -= sign * f.price * f.size + f.fee
        fees += f.fee
        vol_b += f.size
        vol_q += f.price * f.size
        spread += (f.mid - float(f.price)) * float(f.size) * sign
        max_q = max(max_q, abs(q))
        if f.fee_currency and f.fee_rate is None and f.fee_cost:
            unconverted[f.fee_currency] = unconverted.get(f.fee_currency, Decimal(0)) + f.fee_cost
    if snaps:
        final_mid = snaps[-1].mid
        mid0 = snaps[0].mid
    elif fills:
        final_mid = mid0 = fills[-1].mid
    else:
        final_mid = mid0 = float("nan")
    # holding the initial inventory q0 from mid0 to final_mid is inventory PnL too
    total = float(cash) + float(q) * final_mid - float(q0) * mid0 if (fills or snaps) else 0.0
    if snaps:
        max_q = max(max_q, max(abs(sn.inventory) for sn in snaps))
    return RunReport(
        run_id=run.id, mode=run.mode, exchange=run.exchange, symbol=run.symbol, status=status,
        started_ns=run.started_ns, ended_ns=run.ended_ns, orders=n_orders, fills=len(fills),
        buys=sum(1 for f in fills if f.side == "buy"), sells=sum(1 for f in fills if f.side == "sell"),
        volume_base=float(vol_b), volume_quote=float(vol_q), final_inventory=float(q), max_abs_inventory=float(max_q),
        final_mid=final_mid, total_pnl=total, spread_capture=spread, inventory_pnl=total - spread + float(fees),
        fees=float(fees), source=market_source(_config(run.config_json), run.exchange), stop_reason=stop_reason,
        unconverted_fees="; ".join(f"{format(v, 'f')} {c}" for c, v in sorted(unconverted.items())),
    )


def _config(config_json: str | None) -> dict:
    try:
        return json.loads(config_json or "{}")
    except ValueError:
        return {}


def _stop_reason(summary_json: str | None) -> str:
    try:
        return str((json.loads(summary_json or "{}") or {}).get("stop_reason") or "")
    except (ValueError, AttributeError):
        return ""


def quote_currency(symbol: str) -> str:
    """The quote currency of a ccxt unified symbol: ``BTC/USDT`` -> USDT, ``BTC/USDT:USDT``
    (a perpetual settled in USDT) -> USDT; ``""`` when the symbol has no ``/``."""
    if "/" not in symbol:
        return ""
    return symbol.split("/", 1)[1].split(":", 1)[0]


#: the RunReport fields a session total adds up (all quote currency, or counts)
SUMMED = ("orders", "fills", "volume_quote", "total_pnl", "spread_capture", "inventory_pnl", "fees")


@dataclass
class SessionReport:
    """The runs of one multi-market process (``runs.session_id``): a report per market and
    totals per quote currency (``totals[currency]`` holds the SUMMED fields; amounts in
    different currencies are never added together)."""

    session_id: str
    runs: list[RunReport]
    totals: dict[str, dict]

    @property
    def currencies(self) -> list[str]:
        return list(self.totals)

    def as_dict(self) -> dict:
        return {"session_id": self.session_id, "markets": [r.as_dict() for r in self.runs], "totals": self.totals,
                "currencies_differ": len(self.totals) > 1}


def build_session_report(db: str, session_id: str) -> SessionReport:
    """The report of session ``session_id`` (``"latest"``: the newest session in ``db``)."""
    with _open(db) as s:
        if session_id == "latest":
            sid = s.scalars(select(Run.session_id).where(Run.session_id.is_not(None)).order_by(Run.id.desc()).limit(1)).first()
            if sid is None:
                raise ConfigError(f"database {db} has no multi-market session")
            session_id = sid
        ids = s.scalars(select(Run.id).where(Run.session_id == session_id).order_by(Run.id)).all()
    if not ids:
        raise ConfigError(f"database {db} has no session {session_id!r}")
    runs = [build_report(db, i) for i in ids]
    totals: dict[str, dict] = {}
    for r in runs:
        t = totals.setdefault(quote_currency(r.symbol) or "?", {k: 0 for k in SUMMED} | {"markets": 0})
        t["markets"] += 1
        for k in SUMMED:
            t[k] += getattr(r, k)
    return SessionReport(session_id, runs, totals)
