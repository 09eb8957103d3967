"""Saving and loading a trained model: a frozen TorchScript file with its metadata.

The ``.pt`` file is a TorchScript archive (``torch.jit.save`` of the scripted, frozen
:class:`models.lstm.StepModule`) that carries its metadata inside, as the extra file
``meta.json``; a copy is written beside it as ``<name>.json`` for people and tools. The
embedded copy is the one that counts.

Metadata (``format`` = ``mmbot-forecaster``, ``format_version`` 1):

* ``features``: the feature schema (version, names in input order, feature config:
  sampling interval, levels, windows);
* ``normalization``: mean, std, clip (also baked into the module);
* ``horizon`` (e.g. ``"10s"``), ``horizon_s``, ``sample_s``, ``horizon_steps`` (grid rows of
  the horizon for the online guard), ``warmup_steps`` (rows before the first forecast);
* ``arch`` (n_features, hidden, layers, dropout, ``kind`` plain | correction, and for a
  correction model ``offset_cols`` and ``drift_head``: ``correction`` (the drift is a correction
  of the OFI regression; the default, and what a model saved without the key is) or ``plain``
  (the drift is predicted outright)), ``baseline_inputs`` (correction models: the names of
  the inputs appended to the features and the fitted baselines' spec,
  :mod:`models.baseline_inputs`), ``train`` (hyperparameters, seed, epochs),
  ``data`` (source, exchange, symbol, training span in ns and ISO time, rows);
* ``baseline`` (the EWMA decay per step the online guard compares against) and
  ``var_floor_bp2``;
* ``metrics`` (walk-forward summary), ``versions`` (mmbot, torch, numpy, python), ``created``.

Loading refuses, with :class:`~bot.errors.DataError` naming the file: a missing or unreadable
file, a file that is not TorchScript or has no metadata, another format or a newer format
version, and a feature schema that differs from what the running code computes (names,
order, config or schema version), so a model is never fed features it was not trained on.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import platform
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bot.errors import DataError
from models.features import FEATURE_SCHEMA_VERSION, FeatureConfig, feature_names

FORMAT = "mmbot-forecaster"
FORMAT_VERSION = 1
META_NAME = "meta.json"


def versions() -> dict:
    import torch  # here, not at module import: reading metadata must not pull in torch
    import bot

    return {"mmbot": bot.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def iso(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, _dt.timezone.utc).isoformat(timespec="seconds")


def _quiet():
    """torch 2.9+ marks TorchScript deprecated; it stays this project's artifact format."""
    w = warnings.catch_warnings()
    w.__enter__()
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.jit.*")
    warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated.*")
    return w


def script_module(module: torch.nn.Module) -> torch.jit.ScriptModule:
    """Script and freeze (keeping ``forward_seq`` and ``params``)."""
    import torch  # here, not at module import: reading metadata must not pull in torch
    module = module.eval()
    w = _quiet()
    try:
        sm = torch.jit.script(module)
        return torch.jit.freeze(sm, preserved_attrs=["forward_seq", "params"])
    finally:
        w.__exit__(None, None, None)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_model(module: torch.nn.Module, meta: dict, path: str | Path) -> Path:
    """Script, freeze and save ``module`` with ``meta`` (completed with format and versions)
    to ``path`` (.pt) plus a ``.json`` sidecar. Returns the .pt path."""
    import torch  # here, not at module import: reading metadata must not pull in torch
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    meta.setdefault("format", FORMAT)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("versions", versions())
    meta.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    text = json.dumps(meta, indent=1, default=_json_default, allow_nan=False)
    sm = script_module(module)
    buf = io.BytesIO()
    w = _quiet()
    try:
        torch.jit.save(sm, buf, _extra_files={META_NAME: text})
    finally:
        w.__exit__(None, None, None)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)
    path.with_suffix(".json").write_text(text + "\n", encoding="utf-8")
    return path


def check_schema(meta: dict, where: str) -> FeatureConfig:
    """The model's feature config, after checking it against the running code's schema."""
    feats = meta.get("features")
    if not isinstance(feats, dict):
        raise DataError(f"{where}: metadata has no feature schema")
    ver = feats.get("version")
    if ver != FEATURE_SCHEMA_VERSION:
        raise DataError(f"{where}: feature schema version {ver!r}, this mmbot computes version "
                        f"{FEATURE_SCHEMA_VERSION}; retrain the model (mmbot train)")
    try:
        cfg = FeatureConfig.from_dict(feats["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: invalid feature config in metadata: {e}") from None
    names = feats.get("names")
    expected = feature_names(cfg)
    if names != expected:
        missing = [n for n in expected if n not in (names or [])]
        extra = [n for n in (names or []) if n not in expected]
        detail = []
        if missing:
            detail.append(f"missing {missing}")
        if extra:
            detail.append(f"unknown {extra}")
        if not missing and not extra:
            detail.append("same names in another order")
        raise DataError(f"{where}: feature schema mismatch: the model expects {names}, this code computes {expected} "
                        f"({'; '.join(detail)}); retrain the model (mmbot train)")
    return cfg


def load_model(path: str | Path) -> tuple[torch.jit.ScriptModule, dict]:
    """(module, metadata) of a saved model; DataError naming the file if it cannot be used."""
    import torch  # here, not at module import: reading metadata must not pull in torch
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: model file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file (expected a .pt model written by mmbot train)")
    extra = {META_NAME: ""}
    w = _quiet()
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as e:  # noqa: BLE001 - any failure to read the archive is a data error
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable TorchScript model ({msg[:200]})") from None
    finally:
        w.__exit__(None, None, None)
    raw = extra[META_NAME]
    if not raw:
        raise DataError(f"{path}: no embedded {META_NAME} (not a model written by mmbot train)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: embedded {META_NAME} is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{path}: metadata format {meta.get('format') if isinstance(meta, dict) else None!r}, "
                        f"expected {FORMAT!r}")
    fv = meta.get("format_version")
    if not isinstance(fv, int) or fv < 1 or fv > FORMAT_VERSION:
        raise DataError(f"{path}: unsupported model format_version {fv!r} (this mmbot reads <= {FORMAT_VERSION})")
    check_schema(meta, str(path))
    for key in ("arch", "normalization", "horizon_s", "sample_s", "horizon_steps", "warmup_steps"):
        if key not in meta:
            raise DataError(f"{path}: metadata lacks {key!r}")
    arch = meta["arch"]
    n = len(meta["features"]["names"])
    kind = arch.get("kind", "plain")
    if kind == "correction":
        bi = meta.get("baseline_inputs")
        if not isinstance(bi, dict) or "spec" not in bi or "names" not in bi:
            raise DataError(f"{path}: a correction model without its baseline_inputs in the metadata")
        from models.baseline_inputs import input_names

        cfg = FeatureConfig.from_dict(meta["features"]["config"])
        if bi["names"] != input_names(cfg):
            raise DataError(f"{path}: baseline inputs {bi['names']} differ from what this code computes "
                            f"{input_names(cfg)}; retrain the model (mmbot train --arch correction)")
        n += len(bi["names"])
        if arch.get("drift_head", "correction") not in ("correction", "plain"):
            raise DataError(f"{path}: unknown drift head {arch.get('drift_head')!r} (this mmbot runs correction and plain)")
    elif kind != "plain":
        raise DataError(f"{path}: unknown model architecture {kind!r} (this mmbot runs plain and correction)")
    if int(arch.get("n_features", -1)) != n:
        raise DataError(f"{path}: model input size {arch.get('n_features')} != {n} inputs in its schema")
    _check_network(module, arch, path)
    return module, meta


def _check_network(module, arch: dict, path: Path) -> None:
    """DataError unless ``module`` is mmbot's step network of the size its metadata states
    (another TorchScript network carrying mmbot's metadata would fail later, mid-run)."""
    import torch  # here, not at module import: reading metadata must not pull in torch
    for name in ("params", "forward_seq"):
        if not hasattr(module, name):
            raise DataError(f"{path}: the TorchScript network has no {name}(): not an mmbot forecaster network")
    F, H, L = int(arch["n_features"]), int(arch["hidden"]), int(arch["layers"])
    try:
        n_params = len(module.params())
        with torch.no_grad():
            y, h, c = module.forward(torch.zeros(F), torch.zeros(L, H), torch.zeros(L, H))
        shapes_ok = tuple(y.shape) == (2,) and tuple(h.shape) == (L, H) and tuple(c.shape) == (L, H)
    except Exception as e:  # noqa: BLE001 - any failure to run one step means the network does not fit its metadata
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: the network does not match its metadata (n_features {F}, hidden {H}, layers {L}): "
                        f"{msg[:200]}") from None
    if not shapes_ok or n_params < 4 + 4 * L:
        raise DataError(f"{path}: the network does not match its metadata (n_features {F}, hidden {H}, layers {L})")
