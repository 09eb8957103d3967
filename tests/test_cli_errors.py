"""Bad input to the real ``mmbot`` CLI, run in subprocesses with ``click`` made unimportable
(as in a fresh install: typer 0.29 vendors click and does not install it).

Every case must end with exit code 2 and exactly one line on stderr, ``mmbot: error: ...``,
naming what was wrong and where; never a traceback. Cases that fail before the forecaster is
loaded do not import torch (config files here set ``forecaster.model: none``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
HYPERLIQUID = DATA / "binance" / "hyperliquid" / "btcusd_20250126.gz"

# `import click` (and `from click import ...`) fails in the child, as when click is not installed
NO_CLICK = "import sys; sys.modules['click'] = None; sys.argv = ['mmbot'] + sys.argv[1:]; from bot.cli import main; main()"


def mmbot(*args: str, timeout: float = 300, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100", **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", NO_CLICK, *args], capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=timeout)


def error_line(out: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed run (asserts exit 2, one line, no traceback)."""
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2, f"exit {out.returncode}\nstdout: {out.stdout[-2000:]}\nstderr: {out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("mmbot: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad and good inputs: a directory, a plain file, a non-SQLite file, config files, a
    database with one real (tiny) run."""
    d = tmp_path_factory.mktemp("bad")
    f = {"dir": d / "adir", "file": d / "afile", "notdb": d / "notdb.db", "good": d / "good.db"}
    f["dir"].mkdir()
    f["file"].write_text("hello\n")
    f["notdb"].write_text("this is not an SQLite database\n" * 4)
    configs = {
        "none": "forecaster:\n  model: none\n",
        "s0_inf": "forecaster:\n  model: none\nsim:\n  s0: .inf\n",
        "fee_nan": "forecaster:\n  model: none\npaper:\n  maker_fee: .nan\n",
        "fee_500": "forecaster:\n  model: none\npaper:\n  taker_fee: 5.0\n",
        "tau_inf": "forecaster:\n  model: none\nstrategy:\n  pricing:\n    tau_s: .inf\n",
    }
    for name, text in configs.items():
        f[name] = d / f"{name}.yaml"
        f[name].write_text(text)
    f["latin1"] = d / "latin1.yaml"
    f["latin1"].write_bytes("forecaster:\n  model: none\nsymbol: 'BTC/\u20ac'\n".encode("cp1252"))
    from bot.inventory import Inventory
    from bot.persistence.store import open_store

    st = open_store(str(f["good"]))
    st.start_run("paper", "paper", "SIM/USD", {"exchange": "sim"}, started_ns=1_700_000_000_000_000_000)
    st.record_pnl(1_700_000_000_000_000_000, 100.0, Inventory(), 0.0)
    st.end_run("completed", {}, ended_ns=1_700_000_001_000_000_000)
    st.close()
    return f


def _paper(f, *extra: str, config: str = "none") -> list[str]:
    return ["paper", "--config", str(f[config]), "--speed", "0", "--duration", "2", "--no-live", "--json", *extra]


# (case id, argv builder, fragments the error line must hold)
CASES = [
    ("unknown-option", lambda f: ["paper", "--bogus"], ["mmbot paper", "--bogus"]),
    ("unknown-top-option", lambda f: ["--bogus"], ["--bogus"]),
    ("missing-db", lambda f: ["report"], ["mmbot report", "--db"]),
    ("duration-abc", lambda f: ["paper", "--duration", "abc"], ["--duration"]),
    ("paths-0", lambda f: ["simulate", "as2008", "--paths", "0"], ["--paths"]),
    ("unknown-command", lambda f: ["tarde"], ["tarde"]),
    ("seed-negative", lambda f: _paper(f, "--seed", "-1", "--db", str(f["dir"] / "x.db")), ["--seed", "-1"]),
    ("duration-inf", lambda f: ["paper", "--config", str(f["none"]), "--duration", "inf"], ["--duration", "finite"]),
    ("replay-speed-negative", lambda f: ["paper", "--replay", str(f["dir"]), "--replay-speed", "-1"], ["--replay-speed"]),
    ("gamma-nan", lambda f: ["simulate", "as2008", "--gamma", "nan", "--paths", "10"], ["--gamma", "nan"]),
    ("gamma-inf", lambda f: ["simulate", "as2008", "--gamma", "inf", "--paths", "10"], ["--gamma", "inf"]),
    ("config-s0-inf", lambda f: _paper(f, config="s0_inf"), ["s0_inf.yaml", "sim.s0", "finite"]),
    ("config-fee-nan", lambda f: _paper(f, config="fee_nan"), ["fee_nan.yaml", "paper.maker_fee", "finite"]),
    ("config-fee-500pct", lambda f: _paper(f, config="fee_500"), ["fee_500.yaml", "paper.taker_fee", "0.05"]),
    ("config-strategy-inf", lambda f: _paper(f, config="tau_inf"), ["tau_inf.yaml", "strategy.pricing.tau_s", "finite"]),
    ("config-not-utf8", lambda f: _paper(f, config="latin1"), ["latin1.yaml", "UTF-8", "offset"]),
    ("db-is-directory", lambda f: _paper(f, "--db", str(f["dir"])), ["database", "adir", "directory"]),
    ("db-parent-is-file", lambda f: _paper(f, "--db", str(f["file"] / "x.db")), ["database", "afile", "not a folder"]),
    ("db-unwritable", lambda f: _paper(f, "--db", "/proc/mmbot-test.db"), ["database /proc/mmbot-test.db", "cannot"]),
    ("db-not-sqlite", lambda f: _paper(f, "--db", str(f["notdb"])), ["notdb.db", "not an SQLite"]),
    ("report-db-not-sqlite", lambda f: ["report", "--db", str(f["notdb"])], ["notdb.db", "not an SQLite"]),
    ("report-db-directory", lambda f: ["report", "--db", str(f["dir"])], ["adir", "directory"]),
    ("report-db-missing", lambda f: ["report", "--db", str(f["dir"] / "nope.db")], ["nope.db", "does not exist"]),
    ("report-html-is-file", lambda f: ["report", "--db", str(f["good"]), "--html", str(f["file"])], ["--html", "afile"]),
    ("import-out-is-file", lambda f: ["import", "bitstamp", str(f["file"]), "--out", str(f["file"])], ["--out", "afile"]),
    ("record-minutes-inf", lambda f: ["record", "-e", "binance", "-s", "BTC/USDT", "--minutes", "inf", "--out", str(f["dir"] / "r")],
     ["--minutes", "inf"]),
    ("record-rotate-nan", lambda f: ["record", "-e", "binance", "-s", "BTC/USDT", "--rotate-minutes", "nan",
                                     "--out", str(f["dir"] / "r")], ["--rotate-minutes", "nan"]),
    ("import-input-missing", lambda f: ["import", "binance", str(f["dir"] / "nope.gz"), "--out", str(f["dir"] / "o")],
     ["nope.gz", "does not exist"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2(case, files):
    _, argv, fragments = case
    line = error_line(mmbot(*argv(files)))
    for frag in fragments:
        assert frag in line, (frag, line)


def test_no_arguments_prints_help_and_one_error_line():
    for argv in ([], ["import"], ["simulate"]):
        out = mmbot(*argv)
        line = error_line(out)
        assert "missing command" in line
        assert "Usage" in out.stdout and "Commands" in out.stdout  # the help, to choose a command from


def test_version():
    out = mmbot("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("mmbot ") and len(out.stdout.strip().splitlines()) == 1
    assert out.stderr == ""


def test_help_still_works_without_click():
    out = mmbot("paper", "--help")
    assert out.returncode == 0, out.stderr
    assert "--replay-speed" in out.stdout


def test_torchscript_of_another_network_with_mmbot_metadata(tmp_path):
    """A TorchScript file carrying mmbot's metadata but holding some other network."""
    import torch

    from models.export import META_NAME, load_model

    _, meta = load_model(ROOT / "models" / "pretrained" / "default.pt")

    class Other(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(16, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    class WrongSize(torch.nn.Module):  # mmbot's method names, the wrong shapes
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)

        def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
            return self.lin(x), h, c

        @torch.jit.export
        def forward_seq(self, X: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
            return self.lin(X), h, c

        @torch.jit.export
        def params(self) -> list[torch.Tensor]:
            return [self.lin.weight, self.lin.bias]

    for cls, expect in ((Other, "no params()"), (WrongSize, "does not match its metadata")):
        model = tmp_path / f"{cls.__name__}.pt"
        torch.jit.save(torch.jit.script(cls()), str(model), _extra_files={META_NAME: json.dumps(meta)})
        cfg = tmp_path / f"{cls.__name__}.yaml"
        cfg.write_text(f"forecaster:\n  model: {model}\n")
        line = error_line(mmbot("paper", "--config", str(cfg), "--speed", "0", "--duration", "2", "--no-live",
                                "--db", str(tmp_path / "x.db")))
        assert str(model) in line and expect in line, line
        assert not (tmp_path / "x.db").exists()  # the model is checked before the database is touched


@pytest.fixture(scope="module")
def hl_recording(tmp_path_factory) -> Path:
    """The 26-second Hyperliquid capture as a recording (real data)."""
    if not HYPERLIQUID.exists():
        pytest.skip(f"real market data not found at {HYPERLIQUID}")
    from bot.importers.hyperliquid import import_hyperliquid

    out = tmp_path_factory.mktemp("hl") / "rec"
    import_hyperliquid([HYPERLIQUID], out)
    return out


def test_train_trials_on_short_data(hl_recording, tmp_path):
    line = error_line(mmbot("train", str(hl_recording), "--trials", "2", "--registry", str(tmp_path / "reg"), "--json"))
    assert str(hl_recording) in line and "--trials" in line and "usable rows" in line
    line = error_line(mmbot("train", str(hl_recording), "--lr", "nan", "--registry", str(tmp_path / "reg")))
    assert "--lr" in line and "nan" in line


def test_import_refuses_existing_recording_unless_forced(hl_recording, tmp_path):
    """Item 27: an existing recording is never replaced silently."""
    from bot.recording.io import open_recording

    out = tmp_path / "rec"
    first = mmbot("import", "hyperliquid", str(HYPERLIQUID), "--out", str(out), "--json")
    assert first.returncode == 0, first.stderr
    meta_before = (out / "meta.json").read_bytes()
    n = len(open_recording(out).events())
    line = error_line(mmbot("import", "binance", str(HYPERLIQUID), "--out", str(out)))
    assert "already holds a recording" in line and "--force" in line and str(out) in line
    assert (out / "meta.json").read_bytes() == meta_before and len(open_recording(out).events()) == n
    forced = mmbot("import", "hyperliquid", str(HYPERLIQUID), "--out", str(out), "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["events"] == n


def test_import_of_nothing_fails_and_leaves_nothing(tmp_path):
    """Item 28: an empty file, or a capture of another exchange, is exit 2, and --out stays empty."""
    import gzip

    empty_gz = tmp_path / "empty.gz"
    with gzip.open(empty_gz, "wb"):
        pass
    empty_log = tmp_path / "empty.log"
    empty_log.write_text("")
    for kind, src in (("binance", empty_gz), ("bitstamp", empty_log)):
        out = tmp_path / f"out_{kind}"
        line = error_line(mmbot("import", kind, str(src), "--out", str(out)))
        assert str(src) in line and "empty" in line
        assert not out.exists()
    if HYPERLIQUID.exists():
        out = tmp_path / "out_wrong_format"
        line = error_line(mmbot("import", "binance", str(HYPERLIQUID), "--out", str(out)))
        assert str(HYPERLIQUID) in line and "no Binance market events" in line
        assert not out.exists()
