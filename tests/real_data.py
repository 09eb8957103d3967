"""Real market data for tests (``../shared/data`` beside the repository) and the one rule
for when it is missing.

A user's fresh clone has no ``../shared``: there, a real-data test is skipped with a reason
naming the missing file. In CI the data is always provisioned, so a missing file is a broken
setup, not a reason to pass: when the environment variable ``CI`` is true (``true``, ``1``,
``yes``; any case, as GitHub Actions and most CI systems set it) the same test FAILS, naming
the file.

Use, in every test that reads real data:

* ``@needs("binance/spot/btcusdt_20240808.gz")`` (or ``pytestmark = needs(...)``): a marker
  checked before the test runs (paths relative to :data:`DATA`, or absolute);
* ``require(path, ...)`` inside a test or fixture (e.g. a module-scoped importer fixture).

This module is a pytest plugin (``tests/conftest.py`` loads it): it registers the
``real_data`` marker and applies the rule in ``pytest_runtest_setup``. A safety net for
tests that skip on their own (a plain ``pytest.skip`` or ``skipif``): in CI, a skip whose
reason mentions ``shared/data`` is turned into a failure as well.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

#: ``../shared/data`` relative to the repository root.
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MARKER = "real_data"


def in_ci() -> bool:
    """True when the environment says this is a CI run (``CI`` = true / 1 / yes)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _path(p: str | os.PathLike) -> Path:
    p = Path(p)
    return p if p.is_absolute() else DATA / p


def missing(*paths: str | os.PathLike) -> list[Path]:
    """The given data files (relative to :data:`DATA`, or absolute) that do not exist."""
    return [q for q in map(_path, paths) if not q.exists()]


def require(*paths: str | os.PathLike) -> list[Path]:
    """Return the absolute paths; when one is missing, skip the test (a fresh clone) or,
    in CI, fail it."""
    miss = missing(*paths)
    if miss:
        names = ", ".join(str(m) for m in miss)
        msg = f"real data not found: {names} (../shared/data is not part of the repository)"
        if in_ci():
            pytest.fail(f"{msg}; CI is set, so a real-data test may not be skipped", pytrace=False)
        pytest.skip(msg)
    return [_path(p) for p in paths]


def needs(*paths: str | os.PathLike) -> pytest.MarkDecorator:
    """Marker: the test reads these data files (see :func:`require`)."""
    return getattr(pytest.mark, MARKER)(*paths)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*paths): the test reads these files of ../shared/data; "
                                       "skipped when absent, failed when absent in CI (CI=true)")


def pytest_runtest_setup(item) -> None:
    for m in item.iter_markers(MARKER):
        require(*m.args)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if not (rep.skipped and in_ci()) or hasattr(rep, "wasxfail"):
        return
    lr = rep.longrepr
    reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    if "shared/data" in reason or "shared" + os.sep + "data" in reason:
        rep.outcome = "failed"
        rep.longrepr = f"{reason}; CI is set, so a real-data test may not be skipped"
