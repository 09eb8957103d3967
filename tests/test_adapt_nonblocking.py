"""The quoting loop is not blocked while a retrain runs: a paper run on the simulated market
with ``forecaster.adapt`` on (built from the config, as ``mmbot paper`` does) submits a job
whose worker process is held at a gate (test hook) until the engine has made 300 more
decisions. The simulated run is far longer than the test (200 000 s at speed 0): the test
stops it once the job's result has been taken. If any decision waited for the job, the gate would never open (the job cannot
finish before it) and the run would stop at its wall-clock ceiling without a result. Once
the gate opens, the result is taken by the loop between decisions and the run completes;
the retrainer process is shut down with the run."""

from __future__ import annotations

import asyncio
import time

from rich.console import Console

from adapt_helpers import train_tiny_model
from bot.app import build_paper_engine
from bot.config import Config, build_forecaster, with_overrides
from bot.persistence.store import open_store
from bot.status import status_table
from models.adapt.swap import AdaptiveForecaster

DECISIONS_WHILE_GATED = 300
CEILING_S = 300.0  # wall-clock ceiling of the whole run (a failure, not a timing assertion)


def test_quoting_continues_while_a_retrain_runs(tmp_path):
    model = train_tiny_model(tmp_path / "tiny.pt", rows=1500, epochs=2)
    cfg = with_overrides(Config(), **{"database.url": str(tmp_path / "run.db"), "sim.speed": 0.0, "sim.dt_s": 0.5,
                                      "duration_s": 200_000.0, "forecaster.model": str(model)})
    cfg = cfg.model_copy(update={"forecaster": cfg.forecaster.model_copy(update={"adapt": cfg.forecaster.adapt.model_copy(
        update={"enabled": True, "schedule_s": 200.0, "min_new_samples": 150, "registry": str(tmp_path / "registry"),
                "tune": cfg.forecaster.adapt.tune.model_copy(update={"epochs": 2, "baselines": ["ewma"]})})})})
    fc = build_forecaster(cfg)
    assert isinstance(fc, AdaptiveForecaster)
    gate = tmp_path / "gate"
    fc._gate_for_test = str(gate)
    seen = {"gated": 0, "after": 0, "future": None}
    t_end = time.monotonic() + CEILING_S

    def on_tick(engine):
        if fc.future is not None and seen["future"] is None:
            seen["future"] = fc.future
        fut = seen["future"]
        if fut is not None and not gate.exists():
            assert not fut.done()  # the worker is held at the gate
            seen["gated"] += 1
            if seen["gated"] >= DECISIONS_WHILE_GATED:
                gate.write_text("go")
        elif fut is not None and fc.last_result is not None:
            seen["after"] += 1
            if seen["after"] >= 10:
                engine.stop("test: result taken")
        if time.monotonic() > t_end:
            engine.stop("test: ceiling")

    store = open_store(cfg.database.url)
    try:
        engine = build_paper_engine(cfg, store, on_tick=on_tick, handle_signals=False, forecaster=fc)
        summary = asyncio.run(engine.run())
    finally:
        store.close()
    assert seen["gated"] == DECISIONS_WHILE_GATED  # decisions went on while the job was under way
    assert summary["status"] == "completed" and summary["stop_reason"] == "test: result taken"
    ad = summary["forecaster"]["adapt"]
    assert ad["jobs"] >= 1 and ad["failed"] == 0 and ad["last_result"]["rows"]["n"] >= 150
    assert fc.retrainer._pool is None  # the engine closed the retrainer with the run
    # the status panel shows the model running and the jobs
    console = Console(width=200, record=True)
    console.print(status_table(engine))
    text = console.export_text()
    assert "forecaster model" in text and f"{ad['jobs']} retrain jobs" in text and f"{ad['swaps']} swaps" in text
