"""Helpers for the ``mmbot tune`` tests: a short real recording (the first 30,000 lines,
about two minutes, of the Binance USD-M BTC/USDT capture, imported once per test process)
and a CLI runner."""

from __future__ import annotations

import gzip
import itertools
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTURE = ROOT.parent / "shared" / "data" / "binance" / "usdm" / "btcusdt_20240808.gz"
SLICE_LINES = 30_000
_CACHE: dict[str, Path] = {}


def btc_slice(tmp_path_factory) -> Path:
    """Recording directory of the capture's first SLICE_LINES lines (imported once)."""
    if "rec" not in _CACHE:
        from bot.importers.binance import import_binance

        d = tmp_path_factory.mktemp("tune_rec")
        raw = d / "btcusdt_slice.gz"
        with gzip.open(CAPTURE, "rt") as src, gzip.open(raw, "wt") as dst:
            dst.writelines(itertools.islice(src, SLICE_LINES))
        import_binance([raw], d / "rec")
        _CACHE["rec"] = d / "rec"
    return _CACHE["rec"]


def mmbot(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "bot.cli", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout, **kw)


def mmbot_popen(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "bot.cli", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, **kw)
