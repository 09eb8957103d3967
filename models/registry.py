"""A small model registry: one folder per trained model version, plus an index.

Layout (default root ``runs/models``)::

    index.json          {"format": "mmbot-model-registry", "default": "v0001" | null,
                        "versions": [{version, created, path, parent, horizon, sample_s,
                        data span, source, summary metrics}]}
    v0001/model.pt      the TorchScript model with embedded metadata (models.export)
    v0001/model.json    the metadata, readable
    v0001/report.md     the training report (model vs baselines per fold) + *.png plots

``mmbot train --since ... --init-from vNNNN`` fine-tunes a registered version on the latest
window and registers the result as a new version whose ``parent`` is the old one, so
scheduled retraining leaves a traceable chain. ``latest()`` / ``resolve()`` find a version.

The default pointer (``"default"`` in the index, ``resolve("default")``) names the version
to use when none is named. ``mmbot train`` registers every model but moves the pointer only
to a model whose walk-forward evaluation beats the best baselines, or when told to
(``--make-default``); it says which in its output and the report.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from bot.errors import DataError

INDEX = "index.json"
FORMAT = "mmbot-model-registry"
DEFAULT_ROOT = Path("runs/models")
_VER_RE = re.compile(r"^v(\d{4,})$")


class Registry:
    def __init__(self, root: str | Path = DEFAULT_ROOT) -> None:
        self.root = Path(root)

    def _index_path(self) -> Path:
        return self.root / INDEX

    def load_index(self) -> dict:
        p = self._index_path()
        if not p.exists():
            return {"format": FORMAT, "versions": []}
        try:
            idx = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise DataError(f"{p}: unreadable registry index: {e}") from None
        if not isinstance(idx, dict) or idx.get("format") != FORMAT or not isinstance(idx.get("versions"), list):
            raise DataError(f"{p}: not an mmbot model registry index")
        return idx

    def _save_index(self, idx: dict) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        p = self._index_path()
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(idx, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, p)

    def versions(self) -> list[dict]:
        return list(self.load_index()["versions"])

    def next_version(self) -> str:
        nums = [int(m.group(1)) for v in self.versions() if (m := _VER_RE.match(v.get("version", "")))]
        if self.root.exists():
            nums += [int(m.group(1)) for p in self.root.iterdir() if (m := _VER_RE.match(p.name))]
        return f"v{(max(nums) + 1) if nums else 1:04d}"

    def new_dir(self) -> tuple[str, Path]:
        """Reserve the next version folder (created, empty)."""
        self.root.mkdir(parents=True, exist_ok=True)
        while True:
            v = self.next_version()
            d = self.root / v
            try:
                d.mkdir()
                return v, d
            except FileExistsError:
                continue

    def register(self, version: str, meta: dict, parent: str | None = None, make_default: bool = False) -> dict:
        """Add (or replace) ``version`` in the index; ``make_default`` also points the default at it."""
        d = self.root / version
        entry = {
            "version": version,
            "created": meta.get("created"),
            "path": str(d / "model.pt"),
            "parent": parent,
            "horizon": meta.get("horizon"),
            "sample_s": meta.get("sample_s"),
            "data": {k: meta.get("data", {}).get(k) for k in ("source", "exchange", "symbol", "start", "end", "rows")},
            "summary": meta.get("metrics", {}).get("summary_short"),
        }
        idx = self.load_index()
        idx["versions"] = [v for v in idx["versions"] if v.get("version") != version] + [entry]
        idx.setdefault("default", None)
        if make_default:
            idx["default"] = version
        self._save_index(idx)
        return entry

    def default_version(self) -> str | None:
        """The version the default pointer names, or None (no model was made the default)."""
        v = self.load_index().get("default")
        return v if isinstance(v, str) else None

    def set_default(self, version: str) -> None:
        """Point the default at a registered ``version``."""
        idx = self.load_index()
        if not any(e.get("version") == version for e in idx["versions"]):
            raise DataError(f"{self.root}: no model version {version}")
        idx["default"] = version
        self._save_index(idx)

    def latest(self) -> dict | None:
        v = self.versions()
        return v[-1] if v else None

    def resolve(self, ref: str) -> Path:
        """A version name (``v0003``), ``latest``, ``default`` (the registry's default version;
        the shipped pretrained model when the registry has none), or a path to a .pt file."""
        if ref == "default":
            v = self.default_version()
            if v is None:
                from models.forecaster import DEFAULT_MODEL

                return DEFAULT_MODEL
            return self.resolve(v)
        if ref == "latest":
            e = self.latest()
            if e is None:
                raise DataError(f"{self.root}: the model registry is empty")
            return Path(e["path"])
        if _VER_RE.match(ref):
            for e in self.versions():
                if e.get("version") == ref:
                    return Path(e["path"])
            p = self.root / ref / "model.pt"
            if p.exists():
                return p
            raise DataError(f"{self.root}: no model version {ref}")
        return Path(ref)

    def add_adapted(self, model_path: str | Path, meta: dict, parent: str | None, adapt: dict) -> tuple[str, Path]:
        """Register a model made by the online adaptation (:mod:`models.adapt`): copy the saved
        ``model_path`` (and its ``.json`` sidecar) into a new version folder and add it to the
        index with its ``parent`` and an ``adapt`` record (trigger, holdout scores, row counts,
        data span in ns). The default pointer is not moved. Returns (version, path of model.pt)."""
        import shutil

        src = Path(model_path)
        version, d = self.new_dir()
        dst = d / "model.pt"
        shutil.copyfile(src, dst)
        side = src.with_suffix(".json")
        if side.exists():
            shutil.copyfile(side, d / "model.json")
        self.register(version, meta, parent=parent)
        idx = self.load_index()
        for e in idx["versions"]:
            if e.get("version") == version:
                e["source"] = "adapt"
                e["adapt"] = adapt
        self._save_index(idx)
        return version, dst
