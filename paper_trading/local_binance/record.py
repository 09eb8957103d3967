"""The exchange's own record and the checks tests run against a bot's database.

:func:`build_record` renders the state as plain JSON (also served at
``GET /_admin/record``)::

    {"server_time_ms": int,
     "orders": [{"order_id", "client_order_id", "symbol", "side", "type", "price",
                 "orig_qty", "executed_qty", "cum_quote", "status", "time_in_force",
                 "time_ms", "update_ms", "trade_ids", "closed_by"}, ...],   # placement order
     "fills": [{"trade_id", "order_id", "client_order_id", "symbol", "side", "price",
                "qty", "commission", "commission_asset", "maker", "time_ms"}, ...],
     "balances": {asset: {"free": str, "locked": str}},
     "rejections": [{"time_ms", "client_order_id", "code", "msg"}, ...],
     "positions": {symbol id: signed base units}}   # USD-M state only ({} for spot)

Decimal values are 8-decimal strings (Binance style). The helpers below take such a
record (a dict, e.g. fetched over HTTP from a standalone server) and answer the questions a
reconciliation test asks. Units: quantities base units, prices quote/base.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .state import ExchangeState

OPEN = ("NEW", "PARTIALLY_FILLED")


def build_record(state: "ExchangeState") -> dict[str, Any]:
    """The record of ``state`` as plain JSON (see the module docstring)."""
    from .state import ZERO, fmt

    assets = sorted(set(state.free) | set(state.locked))
    return {
        "server_time_ms": state.now_ms(),
        "orders": [o.record() for o in state.orders.values()],
        "fills": [f.record() for f in state.fills],
        "balances": {a: {"free": fmt(state.free.get(a, ZERO)), "locked": fmt(state.locked.get(a, ZERO))}
                     for a in assets},
        "rejections": [{"time_ms": r.time_ms, "client_order_id": r.client_order_id, "code": r.code, "msg": r.msg}
                       for r in state.rejections],
        "positions": {sid: fmt(q) for sid, q in state.positions.items()},  # derivatives only
    }


def open_orders(record: dict[str, Any], symbol: str | None = None) -> dict[str, dict[str, Any]]:
    """Open orders by client order id (``symbol`` as exchange id, e.g. ``"BTCUSDT"``)."""
    return {o["client_order_id"]: o for o in record["orders"]
            if o["status"] in OPEN and (symbol is None or o["symbol"] == symbol)}


def final_states(record: dict[str, Any]) -> dict[str, str]:
    """Exchange order id (as str) -> status (NEW, PARTIALLY_FILLED, FILLED, CANCELED, EXPIRED)."""
    return {str(o["order_id"]): o["status"] for o in record["orders"]}


def fill_ids(record: dict[str, Any], symbol: str | None = None) -> list[int]:
    """Trade ids of our fills, in execution order."""
    return [f["trade_id"] for f in record["fills"] if symbol is None or f["symbol"] == symbol]


def duplicate_client_ids(record: dict[str, Any]) -> list[str]:
    """Client order ids that more than one order carried (Binance allows reuse once the
    earlier order is closed; a bot with unique ids never does it)."""
    c = Counter(o["client_order_id"] for o in record["orders"])
    return sorted(k for k, n in c.items() if n > 1)


def net_base_from_fills(record: dict[str, Any], symbol: str = "BTCUSDT", base: str | None = None) -> Decimal:
    """Signed base-unit position change from our fills of ``symbol`` (exchange id): buys
    minus sells, minus the commissions charged in ``base`` when it is given (Binance charges
    a buy's fee in the base asset)."""
    total = Decimal(0)
    for f in record["fills"]:
        if f["symbol"] != symbol:
            continue
        q = Decimal(f["qty"])
        total += q if f["side"] == "BUY" else -q
        if base is not None and f["commission_asset"] == base:
            total -= Decimal(f["commission"])
    return total


def balance_total(record: dict[str, Any], asset: str) -> Decimal:
    """free + locked of ``asset`` (0 if never held)."""
    b = record["balances"].get(asset)
    return Decimal(b["free"]) + Decimal(b["locked"]) if b else Decimal(0)
