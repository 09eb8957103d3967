"""On-disk cache of a forecaster's packed weights, so the numba backend runs without torch.

A model file (``.pt``, a TorchScript archive) can only be read with torch, whose import costs
seconds. The numba backend needs only the packed float32 weights and their layout
(:func:`models.lstm.pack_params`) and the model's metadata. The first load of a model file
reads it with torch and stores ``(weights, layout, metadata)`` here; later loads of the same
file (same bytes: the key is the SHA-256 of the file) read the cache with numpy only.

Location: ``$MMBOT_CACHE_DIR/forecasters/`` (default ``~/.cache/mmbot/forecasters/``), one
``<sha256>-v<version>.npz`` per model. A missing, unreadable or stale entry is ignored (the
model is then read with torch and the entry rewritten); writing is best effort and atomic
(a temporary file renamed into place), so concurrent runs never see a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

VERSION = 1  # bump when pack_params' layout changes


def cache_dir() -> Path:
    base = os.environ.get("MMBOT_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "mmbot") / "forecasters"


def _entry(model_path: Path) -> Path:
    digest = hashlib.sha256(model_path.read_bytes()).hexdigest()
    return cache_dir() / f"{digest}-v{VERSION}.npz"


def load_packed(model_path: Path) -> tuple[dict, np.ndarray, np.ndarray] | None:
    """(metadata, weights float32, layout int64) of ``model_path`` from the cache, or None."""
    try:
        entry = _entry(model_path)
        if not entry.exists():
            return None
        with np.load(entry, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            W = np.ascontiguousarray(z["W"], dtype=np.float32)
            layout = np.ascontiguousarray(z["layout"], dtype=np.int64)
    except (OSError, ValueError, KeyError) as e:
        log.debug("forecaster weights cache unusable for %s: %s", model_path, e)
        return None
    if not isinstance(meta, dict):
        return None
    return meta, W, layout


def store_packed(model_path: Path, meta: dict, W: np.ndarray, layout: np.ndarray) -> Path | None:
    """Write the cache entry of ``model_path``; returns its path, or None if it could not be written."""
    try:
        entry = _entry(model_path)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = entry.with_name(f"{entry.name}.{os.getpid()}.tmp.npz")
        np.savez(tmp, W=np.asarray(W, np.float32), layout=np.asarray(layout, np.int64),
                 meta=np.array(json.dumps(meta, default=str)))
        os.replace(tmp, entry)
        return entry
    except OSError as e:
        log.debug("forecaster weights cache not written for %s: %s", model_path, e)
        return None
