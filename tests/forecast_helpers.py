"""Helpers for the precomputed-forecast tests: the shipped model with a shorter warm-up
(so that it forecasts within the two-minute real slice of :mod:`tune_helpers`), and a config
whose guard decides within that slice."""

from __future__ import annotations

import json
from pathlib import Path

from bot.config import load_config, with_overrides
from tune_helpers import ROOT

_MODELS: dict[tuple, Path] = {}


def short_warmup_model(tmp_path_factory, warmup: int = 20) -> Path:
    """A copy of the shipped model file whose metadata says ``warmup_steps = warmup`` (same weights)."""
    key = ("model", warmup)
    if key not in _MODELS:
        import torch

        from models.export import META_NAME, load_model
        from models.forecaster import DEFAULT_MODEL

        module, meta = load_model(DEFAULT_MODEL)
        meta = dict(meta, warmup_steps=warmup)
        path = tmp_path_factory.mktemp("model") / f"default_warmup{warmup}.pt"
        torch.jit.save(module, str(path), _extra_files={META_NAME: json.dumps(meta)})
        _MODELS[key] = path
    return _MODELS[key]


def forecast_config(model: Path, backend: str = "torchscript", **over):
    """config/backtest.yaml with ``model``, no maker fee, and a guard that decides after 10
    scored forecasts over a window of 30 (the slice has about 120 grid rows)."""
    return with_overrides(load_config(ROOT / "config" / "backtest.yaml"),
                          **{"paper.maker_fee": 0.0, "forecaster.model": str(model), "forecaster.backend": backend,
                             "forecaster.guard_min_obs": 10, "forecaster.guard_window": 30, **over})
