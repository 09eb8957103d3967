"""The real-data rule (tests/real_data.py): a test whose ../shared/data file is missing is
skipped in a fresh clone and fails in CI (CI=true). Run in a child pytest on a throw-away
test file that declares data files that do not exist (and one that does)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import real_data

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

CHILD = '''
from pathlib import Path

import pytest

from real_data import needs, require

pytestmark = needs("no-such-dir/module-level.gz")


@needs("no-such-dir/marked.gz")
def test_marked():
    pass


@pytest.fixture(scope="module")
def rec():
    require("no-such-dir/fixture.gz")
    return 1


def test_fixture(rec):
    pass


def test_present():
    assert require(Path(__file__)) == [Path(__file__)]
'''

# tests that skip on their own, without the helper (the safety net), and skips that are not
# about real data (never turned into failures)
OWN_SKIPS = '''
import pytest


def test_plain_skip():
    pytest.skip("capture not found under ../shared/data/binance")


@pytest.mark.skipif(True, reason="real market data not found at /somewhere/shared/data/x.gz")
def test_skipif():
    pass


def test_other_skip():
    pytest.skip("needs a GPU")


@pytest.mark.xfail(reason="shared/data mentioned in an xfail", strict=False)
def test_xfail():
    assert False
'''


def _run_child(tmp_path: Path, ci: str | None, source: str = CHILD) -> tuple[int, str]:
    (tmp_path / "test_child.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "real_data", "-p", "no:cacheprovider", "-q", "-rA",
                          "--rootdir", str(tmp_path), str(tmp_path / "test_child.py")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    return out.returncode, out.stdout + out.stderr


def _counts(out: str) -> dict[str, int]:
    return {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", out)}


def test_missing_data_skips_outside_ci(tmp_path):
    # the module-level marker covers every test of the child file, so even test_present skips
    rc, out = _run_child(tmp_path, None)
    assert rc == 0, out
    assert _counts(out) == {"skipped": 3}, out
    assert "no-such-dir/module-level.gz" in out


def test_missing_data_fails_in_ci(tmp_path):
    rc, out = _run_child(tmp_path, "true")
    assert rc == 1, out
    assert _counts(out).get("skipped", 0) == 0, out
    assert _counts(out).get("failed", 0) + _counts(out).get("error", 0) + _counts(out).get("errors", 0) == 3, out
    assert "CI is set, so a real-data test may not be skipped" in out


def test_the_rule_without_the_module_marker(tmp_path):
    (tmp_path / "sub").mkdir()
    child = CHILD.replace('pytestmark = needs("no-such-dir/module-level.gz")', "")
    (tmp_path / "sub" / "test_child.py").write_text(child)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["CI"] = "TRUE"
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), str(ROOT), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "real_data", "-p", "no:cacheprovider", "-q", "-rA",
                          "--rootdir", str(tmp_path), str(tmp_path / "sub" / "test_child.py")],
                         capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    # the marker test fails at setup, the fixture test at its fixture, the present file passes
    assert re.search(r"(FAILED|ERROR) \S*test_marked", text) and re.search(r"(FAILED|ERROR) \S*test_fixture", text), text
    assert re.search(r"PASSED \S*test_present", text), text


@pytest.mark.parametrize("value,expected", [("true", True), ("True", True), ("1", True), ("yes", True), ("", False),
                                            ("false", False), ("0", False)])
def test_in_ci(monkeypatch, value, expected):
    monkeypatch.setenv("CI", value)
    assert real_data.in_ci() is expected


def test_in_ci_unset(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    assert real_data.in_ci() is False


def test_own_skips_about_real_data_fail_in_ci(tmp_path):
    rc, out = _run_child(tmp_path, "true", OWN_SKIPS)
    assert rc == 1, out
    assert re.search(r"(FAILED|ERROR) \S*test_plain_skip", out) and re.search(r"(FAILED|ERROR) \S*test_skipif", out), out
    assert re.search(r"SKIPPED \S* ?.*needs a GPU", out) and "XFAIL" in out, out


def test_own_skips_outside_ci_stay_skips(tmp_path):
    rc, out = _run_child(tmp_path, None, OWN_SKIPS)
    assert rc == 0, out
    assert _counts(out).get("skipped") == 3 and "failed" not in _counts(out), out
