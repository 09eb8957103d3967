"""The on-disk forecast cache (models.forecast_cache) used by ``mmbot backtest`` and tuning:
a hit gives exactly the miss's backtest without importing torch, a corrupted entry is
recomputed with a warning, and the key follows the data, the model, the grid and the config.
Real data: the first 30,000 lines of the Binance USD-M BTC/USDT capture."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from forecast_helpers import forecast_config, short_warmup_model
from models import forecast_cache
from paper_trading.backtest import precomputed_forecaster
from real_data import needs
from tune_helpers import ROOT, btc_slice

pytestmark = needs("binance/usdm/btcusdt_20240808.gz")

# `mmbot backtest ...` in this process, then whether torch was imported, and the summary
PROBE = """
import json, runpy, sys
sys.argv = ["mmbot"] + sys.argv[1:]
try:
    runpy.run_module("bot.cli", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("TORCH=" + json.dumps(["torch" in sys.modules, "pandas" in sys.modules]))
"""


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    return btc_slice(tmp_path_factory)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return short_warmup_model(tmp_path_factory)


def _cli_backtest(rec, cfg_file, db, cache, *extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMBOT_CACHE_DIR": str(cache)}
    p = subprocess.run([sys.executable, "-c", PROBE, "backtest", "--data", str(rec), "--config", str(cfg_file), "--db", str(db),
                        "--no-progress", "--json", *extra], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    torch = json.loads(lines[-1].removeprefix("TORCH="))  # [torch imported?, pandas imported?]
    summary = json.loads(lines[-2])
    return summary, torch


def test_cached_backtest_equals_the_uncached_one_and_does_not_import_torch(rec, model, tmp_path):
    cfg = forecast_config(model, "torchscript")
    cfg_file = tmp_path / "bt.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    cache = tmp_path / "cache"
    miss, torch_miss = _cli_backtest(rec, cfg_file, tmp_path / "a.db", cache)
    assert torch_miss[0] is True  # computed: the TorchScript module ran
    assert len(list((cache / "forecasts").glob("*.npz"))) == 1
    hit, torch_hit = _cli_backtest(rec, cfg_file, tmp_path / "b.db", cache)
    assert torch_hit == [False, False]  # nor pandas (pyarrow imports it unless the chunks are read without it)
    step, _ = _cli_backtest(rec, cfg_file, tmp_path / "c.db", cache, "--no-forecast-cache")  # the engine steps the model
    keys = ("fills", "pnl", "orders_placed", "orders_canceled", "volume_quote", "inventory", "forecaster", "metrics")

    def outcome(s):  # the run's figures, without its wall-clock start and end, nor the backend's name
        drop = {"metrics": ("started_ns", "ended_ns"), "forecaster": ("backend",)}
        return {k: ({m: v for m, v in s[k].items() if m not in drop[k]} if k in drop else s[k]) for k in keys}

    assert outcome(hit) == outcome(miss) == outcome(step)
    assert hit["forecaster"]["backend"] == step["forecaster"]["backend"] == "torchscript"
    assert hit["fills"] > 0 and hit["forecaster"]["warmed_up"] is True


def test_a_corrupted_entry_is_recomputed_with_a_warning(rec, model, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MMBOT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = forecast_config(model, "torchscript")
    first = precomputed_forecaster(rec, cfg)
    (entry,) = (tmp_path / "cache" / "forecasts").glob("*.npz")
    good = entry.read_bytes()
    for bad in (b"not an npz", good[: len(good) // 2]):
        entry.write_bytes(bad)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="models.forecast_cache"):
            again = precomputed_forecaster(rec, cfg)
        assert any("unreadable" in r.getMessage() and entry.name in r.getMessage() for r in caplog.records)
        assert again.by_ts == first.by_ts and again.status() == first.status()
        assert entry.read_bytes() != bad  # rewritten
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="models.forecast_cache"):
            read = precomputed_forecaster(rec, cfg)
        assert not caplog.records  # read back without a warning
        assert read.by_ts == first.by_ts and read.status() == first.status()
        assert read.table.switches() == first.table.switches() and read.table.switches()  # the guard's, with its lines
        assert read.table.log_msg == first.table.log_msg and list(read.table.log_row) == list(first.table.log_row)


def test_an_unwritable_cache_is_a_warning_not_a_crash(rec, model, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("MMBOT_CACHE_DIR", str(blocker))
    with caplog.at_level(logging.WARNING, logger="models.forecast_cache"):
        fc = precomputed_forecaster(rec, forecast_config(model, "torchscript"))
    assert len(fc.table) > 0
    assert any("not written" in r.getMessage() for r in caplog.records)


def test_the_key_follows_data_model_grid_and_config(rec, model, tmp_path):
    cfg = forecast_config(model, "torchscript")
    d = forecast_cache.recording_digest(rec)
    k = forecast_cache.cache_key(d, model, cfg, None)
    assert k == forecast_cache.cache_key(forecast_cache.recording_digest(rec), model, cfg, None)
    other_model = tmp_path / "m.pt"
    other_model.write_bytes(model.read_bytes() + b"\0")
    copy = tmp_path / "rec"
    shutil.copytree(rec, copy)
    assert forecast_cache.recording_digest(copy) == d  # content, not path
    meta = json.loads((copy / "meta.json").read_text())
    chunk = copy / meta["chunks"][0]["file"]
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    keys = {k, forecast_cache.cache_key(forecast_cache.recording_digest(copy), model, cfg, None),
            forecast_cache.cache_key(d, other_model, cfg, None),
            forecast_cache.cache_key(d, model, cfg, 123),
            forecast_cache.cache_key(d, model, forecast_config(model, "torchscript", **{"replay.interval_s": 0.2}), None),
            forecast_cache.cache_key(d, model, forecast_config(model, "torchscript", **{"replay.warmup_s": 2.0}), None),
            forecast_cache.cache_key(d, model, forecast_config(model, "torchscript", **{"forecaster.guard_enter": 0.5}), None)}
    assert len(keys) == 7
