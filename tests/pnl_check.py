"""An independent check of a replayed run's PnL, for the real-data tests.

``total == spread_capture + inventory_pnl - fees`` cannot fail (inventory PnL is defined from
it). Here the PnL is recomputed from first principles instead: the fills as stored in the
database (read with plain ``sqlite3``, exact decimal text), giving the final cash and
inventory, marked at the mid of the recorded book at the run's last decision time (replayed
from the recording, not taken from the engine):

    PnL = cash + inventory x mid,   cash = -sum(sign x price x size) - sum(fees)

(the runs start flat: no initial inventory or cash). It is compared with the PnL the run
reports (the engine's summary, the report's ``total_pnl``), and the inventory with the
engine's. Units: prices quote/base, sizes base, cash/PnL/fees quote currency.
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest

from bot.recording import open_recording
from bot.recording.book_replay import replay_top


def fills_cash_inventory(db_path: str | Path, run_id: int) -> tuple[Decimal, Decimal, int]:
    """(cash, inventory, number of fills) of a run from its fills table alone."""
    con = sqlite3.connect(str(db_path))
    try:
        rows = con.execute("SELECT side, price, size, fee FROM fills WHERE run_id = ?", (run_id,)).fetchall()
    finally:
        con.close()
    cash = Decimal(0)
    inv = Decimal(0)
    for side, price, size, fee in rows:
        assert side in ("buy", "sell"), side
        sign = 1 if side == "buy" else -1
        inv += sign * Decimal(size)
        cash -= sign * Decimal(price) * Decimal(size) + Decimal(fee)
    return cash, inv, len(rows)


def last_decision_ns(db_path: str | Path, run_id: int) -> int:
    con = sqlite3.connect(str(db_path))
    try:
        return int(con.execute("SELECT MAX(ts_ns) FROM pnl_snapshots WHERE run_id = ?", (run_id,)).fetchone()[0])
    finally:
        con.close()


def recorded_mid_at(recording: str | Path, ts_ns: int) -> float:
    """Mid of the recorded book after every row with local_ts <= ts_ns (the last two-sided one)."""
    rec = open_recording(recording)
    ev = rec.events()
    top = replay_top(ev, rec.tick_size)
    i = int(np.searchsorted(ev["local_ts"], ts_ns, side="right")) - 1
    ok = np.flatnonzero(np.isfinite(top["bid_px"][: i + 1]) & np.isfinite(top["ask_px"][: i + 1]))
    assert ok.size, "no two-sided book before the run's end"
    j = int(ok[-1])
    return 0.5 * (float(top["bid_px"][j]) + float(top["ask_px"][j]))


def check_pnl(db_path: str | Path, summary: dict, recording: str | Path) -> float:
    """Assert that the run's reported PnL and inventory equal the ones recomputed from its
    fills and the recording. Returns the recomputed PnL (quote currency)."""
    run_id = summary["run_id"]
    cash, inv, n = fills_cash_inventory(db_path, run_id)
    mid = recorded_mid_at(recording, last_decision_ns(db_path, run_id))
    pnl = float(cash) + float(inv) * mid
    tol = dict(rel=1e-9, abs=1e-7 * max(1.0, float(summary.get("volume_quote") or 0.0)))
    assert n == summary["fills"]
    assert float(inv) == pytest.approx(summary["inventory"], abs=1e-12)
    assert summary["final_mid"] == pytest.approx(mid, rel=1e-12)
    assert summary["pnl"] == pytest.approx(pnl, **tol), (summary["pnl"], pnl)
    if "metrics" in summary:
        assert summary["metrics"]["total_pnl"] == pytest.approx(pnl, **tol), (summary["metrics"]["total_pnl"], pnl)
    return pnl
