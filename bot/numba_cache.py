"""Where numba keeps mmbot's compiled kernels, so that they compile once per installation.

Every ``@njit`` kernel of mmbot has ``cache=True``: the first call compiles it (seconds to tens
of seconds for the importers and the venue) and writes the machine code to an on-disk cache;
later processes load it (milliseconds). By default numba writes that cache next to the source
files (``__pycache__``). An installation whose source directories are not writable (a system
or read-only site-packages, a container image) would lose it: :func:`configure` then points
``NUMBA_CACHE_DIR`` at ``$MMBOT_CACHE_DIR/numba`` (default ``~/.cache/mmbot/numba``).

Rules: a ``NUMBA_CACHE_DIR`` set by the user is never changed; a writable installation keeps
numba's default. This module is imported by ``bot/__init__.py``, ``models/__init__.py``,
``strategies/__init__.py`` and ``paper_trading/__init__.py`` so that it runs before any of
mmbot's modules imports numba (numba reads the variable at import); if numba was imported
earlier by the user's code, its already-loaded config is updated too.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the directory holding the bot/, models/, ... packages


def user_cache_dir(environ=os.environ) -> Path:
    base = environ.get("MMBOT_CACHE_DIR")
    return (Path(base) if base else Path.home() / ".cache" / "mmbot") / "numba"


def writable(directory: Path) -> bool:
    """Whether files can be created in ``directory`` (created if missing): tried, not guessed
    from permission bits (root ignores those)."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
        return True
    except OSError:
        return False


def configure(environ=os.environ, root: Path = ROOT) -> str | None:
    """Set ``NUMBA_CACHE_DIR`` when the user has not and numba could not cache next to mmbot's
    sources (``root/bot/__pycache__``); returns the directory set, or None when nothing was changed."""
    if environ.get("NUMBA_CACHE_DIR"):
        return None
    if writable(root / "bot" / "__pycache__"):
        return None
    d = user_cache_dir(environ)
    environ["NUMBA_CACHE_DIR"] = str(d)
    cfg = sys.modules.get("numba.core.config")
    if cfg is not None and environ is os.environ:  # numba already imported: it read the variable at import
        cfg.CACHE_DIR = str(d)
    return str(d)


CONFIGURED = configure()
