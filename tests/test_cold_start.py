"""Cold start of a backtest: the forecaster runs from cached packed weights without importing
torch (same forecasts as when read with torch), and ``mmbot backtest`` writes the HTML report
only when asked (``--html`` / ``--out``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HYPERLIQUID = ROOT.parent / "shared" / "data" / "binance" / "hyperliquid" / "btcusd_20250126.gz"

PROBE = """
import json, sys
import numpy as np
from models.forecaster import load_forecaster
fc = load_forecaster("default")
x = np.linspace(-1.0, 1.0, fc.predictor.n_features)
outs = [fc.predictor.step(x * (i + 1) / 3) for i in range(3)]
print(json.dumps({"torch": "torch" in sys.modules, "outs": outs, "W": float(np.sum(fc.predictor.W.astype(np.float64)))}))
"""


def _probe(cache: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMBOT_CACHE_DIR": str(cache)}
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_cached_weights_run_the_forecaster_without_torch_and_give_the_same_forecasts(tmp_path):
    cache = tmp_path / "cache"
    first = _probe(cache)  # reads the .pt with torch, writes the cache entry
    assert first["torch"] is True
    entries = list((cache / "forecasters").glob("*.npz"))
    assert len(entries) == 1
    second = _probe(cache)  # fresh process, same model file: numpy only
    assert second["torch"] is False
    assert second["outs"] == first["outs"] and second["W"] == first["W"]


def test_an_unreadable_cache_entry_is_ignored_and_rewritten(tmp_path):
    cache = tmp_path / "cache"
    first = _probe(cache)
    (entry,) = (cache / "forecasters").glob("*.npz")
    entry.write_bytes(b"not an npz")
    again = _probe(cache)
    assert again["torch"] is True and again["outs"] == first["outs"]
    with np.load(entry) as z:  # rewritten, usable again
        assert z["W"].dtype == np.float32
    assert _probe(cache)["torch"] is False


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> Path:
    if not HYPERLIQUID.exists():
        pytest.skip(f"real market data not found at {HYPERLIQUID}")
    from bot.importers.hyperliquid import import_hyperliquid

    out = tmp_path_factory.mktemp("hl") / "rec"
    import_hyperliquid([HYPERLIQUID], out)
    return out


def _backtest(recording: Path, tmp_path: Path, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    cfg = yaml.safe_load((ROOT / "config" / "backtest.yaml").read_text())
    rep = tmp_path / "rep"
    cfg["replay"]["report_dir"] = str(rep)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg_path = tmp_path / "bt.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MMBOT_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "bot.cli", "backtest", "--data", str(recording), "--config", str(cfg_path),
                        "--db", str(tmp_path / "bt.db"), "--json", *extra], capture_output=True, text=True, cwd=ROOT,
                       env=env, timeout=600)
    return p, rep


def test_backtest_writes_the_html_report_only_when_asked(recording, tmp_path):
    p, rep = _backtest(recording, tmp_path / "a")
    assert p.returncode == 0, p.stderr
    s = json.loads(p.stdout)
    assert not (rep / "report.html").exists()
    assert s["report"].startswith("not written (pass --html") and "--run 1 --html" in s["report"]
    assert set(s["timings_s"]) == {"load", "build", "loop", "metrics", "report"}
    p, rep = _backtest(recording, tmp_path / "b", "--html")
    assert p.returncode == 0, p.stderr
    assert (rep / "report.html").exists() and json.loads(p.stdout)["report"] == str(rep / "report.html")
