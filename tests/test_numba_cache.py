"""Numba kernels compile once per installation: every ``@njit`` of mmbot caches its machine code
(``cache=True``), and an installation whose source tree is not writable gets the cache under
``$MMBOT_CACHE_DIR/numba`` (bot.numba_cache), set before numba is imported, unless the user set
``NUMBA_CACHE_DIR``."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bot import numba_cache

ROOT = Path(__file__).resolve().parents[1]

# runs the replay_top kernels on a tiny book; prints where numba cached and its cache hits
PROBE = """
import json, os, sys
import numpy as np
import bot  # first, as every mmbot entry point
from bot.recording import book_replay as br
from bot.recording.schema import DEPTH, EVENT_DTYPE
ev = np.zeros(3, EVENT_DTYPE)
ev["kind"] = DEPTH
ev["side"] = [1, -1, 1]
ev["px"] = [100.0, 101.0, 100.5]
ev["qty"] = [1.0, 2.0, 3.0]
top = br.replay_top(ev, 0.5)
hits = sum(br._replay_kernel.stats.cache_hits.values())
print(json.dumps({"dir": os.environ.get("NUMBA_CACHE_DIR"), "hits": hits,
                  "bid": float(top["bid_px"][-1])}))
"""


def _readonly_install(tmp_path: Path) -> Path:
    """A copy of the bot package whose __pycache__ cannot be created (a regular file is in the
    way: not writable even for root, unlike permission bits)."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "bot", site / "bot", ignore=shutil.ignore_patterns("__pycache__"))
    for d in (site / "bot").rglob("*"):
        if d.is_dir():
            (d / "__pycache__").write_text("not a directory")
    (site / "bot" / "__pycache__").write_text("not a directory")
    return site


def _probe(site: Path, env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "PYTHONPATH")}
    env.update(PYTHONPATH=str(site), PYTHONDONTWRITEBYTECODE="1", **env_extra)
    p = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=site, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_read_only_install_caches_kernels_in_the_user_cache_and_compiles_once(tmp_path):
    site = _readonly_install(tmp_path)
    cache = tmp_path / "cache"
    first = _probe(site, {"MMBOT_CACHE_DIR": str(cache)})
    assert first["dir"] == str(cache / "numba") and first["bid"] == 100.5
    assert first["hits"] == 0  # compiled
    assert list((cache / "numba").rglob("*.nbi")), "no numba index written in the user cache"
    second = _probe(site, {"MMBOT_CACHE_DIR": str(cache)})
    assert second["hits"] >= 1 and second["bid"] == 100.5  # loaded from the cache, not compiled again


def test_a_user_numba_cache_dir_is_respected(tmp_path):
    site = _readonly_install(tmp_path)
    mine = tmp_path / "mine"
    out = _probe(site, {"MMBOT_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_CACHE_DIR": str(mine)})
    assert out["dir"] == str(mine)
    assert list(mine.rglob("*.nbi")) and not (tmp_path / "cache").exists()


def test_configure_rules(tmp_path):
    writable_root = tmp_path / "w"
    (writable_root / "bot").mkdir(parents=True)
    env = {"MMBOT_CACHE_DIR": str(tmp_path / "c")}
    assert numba_cache.configure(env, writable_root) is None and "NUMBA_CACHE_DIR" not in env  # numba's default
    ro = tmp_path / "ro"
    (ro / "bot").mkdir(parents=True)
    (ro / "bot" / "__pycache__").write_text("x")
    assert numba_cache.configure(env, ro) == str(tmp_path / "c" / "numba") == env["NUMBA_CACHE_DIR"]
    user = {"NUMBA_CACHE_DIR": "/somewhere"}
    assert numba_cache.configure(user, ro) is None and user == {"NUMBA_CACHE_DIR": "/somewhere"}


def test_every_njit_kernel_is_cached():
    """Every numba-compiled function of the package has ``cache=True`` (else each process compiles it)."""
    missing = []
    for pkg in ("bot", "models", "strategies", "paper_trading"):
        for f in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
                if not isinstance(node, ast.FunctionDef):
                    continue
                for d in node.decorator_list:
                    call = d if isinstance(d, ast.Call) else None
                    fn = call.func if call else d
                    name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                    if name in ("njit", "jit", "vectorize", "guvectorize", "cfunc"):
                        kw = {k.arg: k.value for k in (call.keywords if call else [])}
                        if not (isinstance(kw.get("cache"), ast.Constant) and kw["cache"].value is True):
                            missing.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not missing, missing
