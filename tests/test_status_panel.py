"""The live status panel and the summary table: the path `mmbot paper` takes on a terminal."""

import asyncio
import io

from rich.console import Console

from bot.app import build_paper_engine
from bot.config import Config, with_overrides
from bot.persistence.store import open_store
from bot.status import LivePanel, status_table, summary_table


def test_live_panel_renders_during_a_run(tmp_path):
    cfg = with_overrides(Config(), **{"database.url": str(tmp_path / "p.db"), "sim.speed": 0.0, "duration_s": 30.0,
                                      "forecaster.model": "none"})
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    store = open_store(cfg.database.url)
    try:
        panel = LivePanel(console, refresh_per_s=1000.0)
        engine = build_paper_engine(cfg, store, on_tick=panel, handle_signals=False)
        with panel:
            summary = asyncio.run(engine.run())
    finally:
        store.close()
    text = out.getvalue()
    for label in ("mid", "bids", "asks", "inventory (base)", "PnL (quote)", "fills / volume"):
        assert label in text
    # the last frame shows the final state
    assert f"{summary['events']}" in text.split("events")[-1]
    console.print(summary_table({**summary, "forecaster": {"source": "lstm", "rows": 3}}))
    assert "source=lstm" in out.getvalue()


def test_status_table_before_any_quote():
    class _E:  # the minimal engine surface the table reads
        from bot.engine import EngineState
        from bot.inventory import Inventory

        state = EngineState()
        inventory = Inventory()
        mode = "paper"
        market = None

    t = status_table(_E())
    out = io.StringIO()
    Console(file=out, width=100).print(t)
    assert "mid" in out.getvalue() and "nan" in out.getvalue()
