"""``mmbot train`` on several markets: one network trained on every recording given, through
:mod:`models.multimarket`'s dataset, exported, registered and reported like a one-market run.

Which inputs form a market (:func:`group_inputs`): every recording directory is one market;
raw capture files are grouped by folder and by the name before the date (``_2024...``), so
``spot/btcusdt_20240808.gz spot/btcusdt_20240809.gz`` is one market (two files of one
capture) and ``spot/ethusdt_20240808.gz`` another; a Bitstamp log is one market.

Per-market normalisation: each market's inputs and targets are standardised on its own rows
(:func:`models.multimarket.fit_markets`); the network sees only the standardised, stacked
markets. The exported TorchScript module holds one market's standardisation (input means and
stds, target scales, variance floor, and with ``--arch correction`` that market's fitted
baselines): the FIRST market given (the "calibration market", ``data.calibrated_for`` in the
metadata), fitted on that market's own training and validation rows, i.e. a recording
of the market the model will run on. A new market is therefore served by training with its
recording first in the list (its standardisation is fitted on its own rows only; the other
markets only shape the network). In the leave-one-market-out evaluation a market the network
never saw is standardised on its own first ``calib_frac`` rows, causally, and scored after
them: that is how well the model transfers to a new market normalised by its own first rows.
Every training market's standardisation is kept in the metadata (``markets``).
:func:`recalibrate` (``mmbot train NEWREC --init-from vX --recalibrate``) does the same for a
deployed model: the same network, the new market's standardisation fitted on the first
``--calib-frac`` of its recording (causal, no training), registered as a new version.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bot.errors import DataError, MmbotError

_DATE_RE = re.compile(r"_\d{6,8}.*$")
MIN_LOMO_MARKETS = 3


def _market_key(p: Path) -> tuple[str, str]:
    if p.is_dir():
        return ("dir", str(p.resolve()))
    if p.name.endswith((".log", ".log.bz2")):
        return ("log", str(p.resolve()))
    stem = _DATE_RE.sub("", p.name.split(".")[0]) or p.name
    return ("raw", f"{p.resolve().parent}/{stem}")


def group_inputs(paths: list[Path]) -> list[list[Path]]:
    """The inputs grouped into markets (order of first appearance); see the module docstring."""
    groups: dict[tuple[str, str], list[Path]] = {}
    for p in paths:
        groups.setdefault(_market_key(p), []).append(p)
    return list(groups.values())


def _market_name(group: list[Path], meta: dict) -> str:
    nm = f"{meta.get('exchange') or ''} {meta.get('market') or ''} {meta.get('symbol') or ''}".split()
    return " ".join(nm) or group[0].name


def load_group(group: list[Path], tmp: Path, i: int, fcfg, hz, warmup: int, say):
    """One market (:class:`models.multimarket.Market`) from a recording directory or raw files;
    a bad input raises :class:`DataError` naming the file."""
    from models.cli import _import_raw
    from models.multimarket import load_market

    if len(group) == 1 and group[0].is_dir():
        rec = group[0]
    else:
        rec = tmp / f"m{i}"
        rec.mkdir()
        try:
            rec = _import_raw(group, rec, say)
        except MmbotError:
            raise
        except Exception as e:  # an importer's parse error: name the file(s)
            raise DataError(f"{', '.join(map(str, group))}: cannot import: {e}") from None
    try:
        m = load_market(rec, fcfg, hz, warmup)
    except MmbotError as e:
        raise DataError(f"{', '.join(map(str, group))}: {e}") from None
    except Exception as e:
        raise DataError(f"{', '.join(map(str, group))}: cannot build features and targets: {e}") from None
    m.name = _market_name(group, m.meta)
    n_use = int(m.ds.usable().sum())
    from models.cli import MIN_USABLE_ROWS

    if n_use < MIN_USABLE_ROWS:
        raise DataError(f"{', '.join(map(str, group))}: too few usable rows ({n_use}) for horizon {hz} and warm-up {warmup}")
    return m


def train_markets(groups: list[list[Path]], *, fcfg, hz, cfg, lomo_on: bool, calib_frac: float, registry: Path,
                  make_default: bool, out: Path | None, name: str, say, json_out: bool, command: str,
                  shrink: bool = False) -> dict:
    """Train one model on every market of ``groups`` (see the module docstring); returns the
    result dict of ``mmbot train``."""
    import json

    from models import baselines as bl
    from models import multimarket as mm
    from models.export import iso, load_model, save_model
    from models.features import schema
    from models.registry import Registry
    from models.train import FitResult, Scales

    t_all = time.perf_counter()
    if lomo_on and len(groups) < MIN_LOMO_MARKETS:
        raise MmbotError(f"--lomo needs at least {MIN_LOMO_MARKETS} markets, got {len(groups)}")
    warmup = max(max(fcfg.rv_windows), cfg.lookback)
    tmp = Path(tempfile.mkdtemp(prefix="mmbot-train-"))
    try:
        markets = []
        for i, g in enumerate(groups):
            m = load_group(g, tmp, i, fcfg, hz, warmup, say)
            say(f"market {i + 1}: {m.name}: {m.ds.n:,} rows, {int(m.ds.usable().sum()):,} usable")
            markets.append(m)
        names = [m.name for m in markets]
        for i, n in enumerate(names):  # two captures of one symbol: tell them apart
            if names.count(n) > 1:
                markets[i].name = f"{n} ({iso(markets[i].start_ns)[:16]})"
        lomo_rows, table = [], ""
        if lomo_on:
            say(f"leave-one-market-out over {len(markets)} markets ...")
            lomo_rows = mm.lomo(markets, cfg, calib_frac, log=say, shrink=shrink)
            table = mm.lomo_table(lomo_rows, mm.arch_label(cfg))
        stds: list = []
        res, kw = mm.fit_markets([m.ds for m in markets], cfg, label="all markets", stds_out=stds)
        say(f"final model: best epoch {res.best_epoch}, validation loss {res.best_val:.4f}, {res.seconds:.1f} s")
        m0, st0 = markets[0], stds[0]
        sc0 = Scales(st0.scales.drift_scale, st0.scales.var_scale, st0.floor)
        final = FitResult(res.net, st0.norm, sc0, cfg, res.history, res.best_epoch, res.best_val, res.seconds)
        ds = m0.ds
        u = ds.usable()
        H, horizon_s = ds.horizon(u)
        r2 = ds.ff.ret_bp ** 2
        init_r2 = float(np.mean(r2[warmup:])) if ds.n > warmup else float(np.mean(r2))
        hl = bl.fit_ewma_halflife(r2, ds.tg.var, u, H, fcfg.sample_s, st0.floor, init_r2)

        def span(m):
            return {"name": m.name, "exchange": m.meta.get("exchange"), "symbol": m.meta.get("symbol"),
                    "market": m.meta.get("market"), "start": iso(m.start_ns), "end": iso(int(m.ds.ff.ts_ns[-1])),
                    "rows": int(m.ds.n), "usable_rows": int(m.ds.usable().sum())}

        mkts = []
        for m, st in zip(markets, stds):
            mkts.append({**span(m), "normalization": st.norm.to_dict(),
                         "scales": {"drift_scale": st.scales.drift_scale, "var_scale": st.scales.var_scale},
                         "var_floor_bp2": float(st.floor),
                         "baseline_spec": st.spec.to_dict() if st.spec is not None else None})
        data_meta = {"source": [str(p) for g in groups for p in g], "exchange": m0.meta.get("exchange"),
                     "symbol": m0.meta.get("symbol"), "market": m0.meta.get("market"),
                     "start_ns": int(ds.ff.ts_ns[0]), "end_ns": int(ds.ff.ts_ns[-1]), "start": iso(int(ds.ff.ts_ns[0])),
                     "end": iso(int(ds.ff.ts_ns[-1])), "rows": int(sum(m.ds.n for m in markets)),
                     "calibrated_for": m0.name, "markets": [m.name for m in markets]}
        wins = [r for r in lomo_rows if "metrics" in r and r["metrics"]["model"]["qlike"] < r["metrics"][r["best_vol"]]["qlike"]]
        scored = [r for r in lomo_rows if "metrics" in r]
        meta = {
            "format": "mmbot-forecaster", "format_version": 1, "name": name,
            "features": schema(fcfg), "normalization": st0.norm.to_dict(),
            "horizon": str(hz), "horizon_s": float(horizon_s), "horizon_steps": int(H), "sample_s": fcfg.sample_s,
            "warmup_steps": int(warmup), "arch": res.net.arch(), "train": cfg.to_dict(),
            "train_result": {"best_epoch": res.best_epoch, "best_val_loss": res.best_val, "seconds": res.seconds},
            "scales": {"drift_scale": sc0.drift_scale, "var_scale": sc0.var_scale}, "var_floor_bp2": float(st0.floor),
            "baseline": {"kind": "ewma", "halflife_s": hl, "lambda_per_row": bl.lambda_from_halflife(hl, fcfg.sample_s),
                         "init_r2_bp2": init_r2},
            "data": data_meta, "markets": mkts,
            "metrics": {"scheme": "leave-one-market-out" if lomo_on else "none", "folds": 0,
                        "lomo": [{k: r[k] for k in r if k in ("market", "test_rows", "metrics", "best_vol", "best_drift",
                                                               "dm_vol", "dm_drift", "shrink", "error")} for r in lomo_rows],
                        "summary_short": None},
            "parent": None, "command": command,
        }
        if st0.spec is not None:
            from models.baseline_inputs import input_names

            meta["baseline_inputs"] = {"names": input_names(fcfg), "spec": st0.spec.to_dict()}
        reg = Registry(registry)
        beats_all = bool(scored) and len(wins) == len(scored) == len(markets)
        promote = make_default or beats_all
        if beats_all:
            note = f"is now the default model: it beats the best volatility baseline on all {len(scored)} held-out markets"
        elif make_default:
            note = "is now the default model because --make-default was given"
        else:
            why = (f"it beats the best volatility baseline on {len(wins)} of {len(scored)} held-out markets" if lomo_on
                   else "it has no leave-one-market-out evaluation (--lomo)")
            note = f"is registered but NOT made the default model: {why}; --make-default makes it the default anyway"
        version, vdir = reg.new_dir()
        meta["version"] = version
        note = f"Registry: {version} {note}."
        mpath = save_model(final.step_module(), meta, vdir / "model.pt")
        _, meta_saved = load_model(mpath)  # round trip: what was written is loadable
        rpath = write_report(vdir, meta_saved, command, note, table, calib_frac)
        reg.register(version, meta_saved, make_default=promote)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mpath, out / f"{name}.pt")
            shutil.copyfile(mpath.with_suffix(".json"), out / f"{name}.json")
            shutil.copyfile(rpath, out / f"{name}_report.md")
        result = {"version": version, "model": str(mpath), "report": str(rpath), "horizon": str(hz),
                  "sample_s": fcfg.sample_s, "rows": data_meta["rows"], "markets": [m.name for m in markets],
                  "seconds": round(time.perf_counter() - t_all, 1), "default": promote, "default_note": note,
                  "arch": cfg.arch, "lomo": meta["metrics"]["lomo"], "lomo_table": table}
        if out is not None:
            result["out"] = str(out / f"{name}.pt")
        if json_out:
            print(json.dumps(result, default=float))
        else:
            import sys

            if table:  # plain text: markdown tables must not be wrapped or read as markup
                print(table, file=sys.stderr)
            print(note, file=sys.stderr)
            say(f"model {version}: {mpath}\nreport: {rpath}\ntotal {result['seconds']} s")
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_report(vdir: Path, meta: dict, command: str, note: str, table: str, calib_frac: float) -> Path:
    """The markdown report of a several-market training run."""
    L = [f"# Forecaster training report: {meta['name']} ({meta['version']}), several markets", "", f"**{note}**", "",
         "Reproduce:", "", "```sh", command, "```", "", "## Markets", "",
         "| market | span (UTC) | grid rows | usable rows | drift scale (bp) | variance scale (bp^2) |",
         "|---|---|---|---|---|---|"]
    for m in meta["markets"]:
        L.append(f"| {m['name']} | {m['start']} to {m['end']} | {m['rows']:,} | {m['usable_rows']:,} | "
                 f"{m['scales']['drift_scale']:.4g} | {m['scales']['var_scale']:.4g} |")
    t = meta["train"]
    dh = meta["arch"].get("drift_head")
    L += ["", f"One network ({meta['arch'].get('kind', 'plain')}{', drift head ' + dh if dh else ''}, hidden {t['hidden']}, lookback {t['lookback']}) trained on "
          "every market, each standardised on its own rows (inputs: z-scores; targets: drift / its std, variance / its "
          "mean), stacked in time order; the last "
          f"{t['val_frac']:.0%} of each market's rows are its validation rows (early stopping). Best epoch "
          f"{meta['train_result']['best_epoch']}.", "",
          f"The exported model carries the standardisation of **{meta['data']['calibrated_for']}** (the first market "
          "given), fitted on that market's own rows: it is meant to run there. To run on another market, train with "
          "that market's recording first. Every market's standardisation is in the metadata (`markets`).", ""]
    if table:
        L += ["## Leave-one-market-out evaluation", "",
              f"For each market M: a model trained on the other markets (a market captured over the same time as M only up "
              f"to M's test start), M standardised on its first {calib_frac:.0%} of rows (calibration prefix, not scored), "
              "scored on the rest. 'best baseline' is chosen after the fact on the test rows; DM = Diebold-Mariano "
              "against it (negative: the model's loss is lower).", "", table, ""]
    else:
        L += ["No leave-one-market-out evaluation (`--lomo`, at least 3 markets).", ""]
    p = vdir / "report.md"
    p.write_text("\n".join(L))
    return p


def train_config_of(pmeta: dict):
    """The :class:`~models.train.TrainConfig` a saved model was trained with: its metadata's
    ``train`` settings, its architecture and (correction arch) the baseline its correction was
    learnt on."""
    from models.train import TrainConfig

    known = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in (pmeta.get("train") or {}).items() if k in known})
    cfg.arch = pmeta["arch"].get("kind", "plain")
    spec = (pmeta.get("baseline_inputs") or {}).get("spec")
    if spec is not None:
        cfg.base = spec["best"]
    return cfg


def unscaled_net(module, pmeta: dict):
    """The trainable network of an exported model (``module``, its metadata ``pmeta``) with the
    market's output scaling that export folds into the heads unfolded again (drift divided by
    its scale, log-variance less the log of its scale), so another market's scales can be
    applied: what recalibration starts from."""
    import math

    import torch

    from models.lstm import net_from_params

    net, _, _ = net_from_params(list(module.params()), pmeta["arch"])
    sc = pmeta.get("scales") or {"drift_scale": 1.0, "var_scale": 1.0}
    with torch.no_grad():
        net.head.weight[0] /= sc["drift_scale"]
        net.head.bias[0] /= sc["drift_scale"]
        if net.skip is not None:
            net.skip.weight[0] /= sc["drift_scale"]
        if net.offset_cols is None:
            net.head.bias[1] -= math.log(sc["var_scale"])
    return net


def recalibrate(init_from: str, group: list[Path], *, calib_frac: float, registry: Path, say, json_out: bool,
                command: str, out: Path | None = None, name: str = "model") -> dict:
    """A registered model, recalibrated for a new market: the same network, with the market's
    own standardisation (inputs, target scales, variance floor and, for a correction model,
    its baselines) fitted causally on the first ``calib_frac`` of the recording's usable rows
    (as the leave-one-market-out evaluation does for a held-out market). No training. The
    result is a new registry version whose parent is ``init_from``."""
    import copy
    import json

    from models import baselines as bl
    from models.export import iso, load_model, save_model
    from models.features import FeatureConfig
    from models.multimarket import _standardise, calib_rows
    from models.registry import Registry
    from models.targets import Horizon
    from models.train import FitResult, Scales

    t_all = time.perf_counter()
    reg = Registry(registry)
    p = reg.resolve(init_from)
    module, pmeta = load_model(p)
    fcfg = FeatureConfig.from_dict(pmeta["features"]["config"])
    hz = Horizon.parse(pmeta["horizon"])
    cfg = train_config_of(pmeta)
    warmup = int(pmeta["warmup_steps"])
    tmp = Path(tempfile.mkdtemp(prefix="mmbot-recal-"))
    try:
        m = load_group(group, tmp, 0, fcfg, hz, warmup, say)
        ds = m.ds
        calib, _, c_end = calib_rows(ds, calib_frac)
        if calib.sum() < 20:
            raise DataError(f"{', '.join(map(str, group))}: too few calibration rows ({int(calib.sum())}) in the first "
                            f"{calib_frac:.0%}; use more data or a larger --calib-frac")
        st = _standardise(ds, cfg, calib)
        net = unscaled_net(module, pmeta)
        sc = Scales(st.scales.drift_scale, st.scales.var_scale, st.floor)
        fr = FitResult(net, st.norm, sc, cfg)
        H, horizon_s = ds.horizon(calib)
        r2 = ds.ff.ret_bp ** 2
        init_r2 = float(np.mean(r2[warmup:c_end])) if c_end > warmup else float(np.mean(r2))
        hl = bl.fit_ewma_halflife(r2, ds.tg.var, calib, H, fcfg.sample_s, st.floor, init_r2)
        meta = copy.deepcopy(pmeta)
        t_end = int(ds.ff.ts_ns[c_end - 1])
        meta.update(
            normalization=st.norm.to_dict(), scales={"drift_scale": sc.drift_scale, "var_scale": sc.var_scale},
            var_floor_bp2=float(st.floor), horizon_steps=int(H), horizon_s=float(horizon_s),
            baseline={"kind": "ewma", "halflife_s": hl, "lambda_per_row": bl.lambda_from_halflife(hl, fcfg.sample_s),
                      "init_r2_bp2": init_r2},
            data={"source": [str(x) for x in group], "exchange": m.meta.get("exchange"), "symbol": m.meta.get("symbol"),
                  "market": m.meta.get("market"), "start_ns": int(ds.ff.ts_ns[0]), "end_ns": t_end,
                  "start": iso(int(ds.ff.ts_ns[0])), "end": iso(t_end), "rows": int(c_end), "calibrated_for": m.name,
                  "recalibrated": {"calib_frac": calib_frac, "calib_rows": int(calib.sum()),
                                   "trained_on": (pmeta.get("data") or {}).get("markets")}},
            metrics={"scheme": "none", "folds": 0, "summary_short": None}, parent=init_from, command=command, name=name)
        if st.spec is not None:
            meta["baseline_inputs"]["spec"] = st.spec.to_dict()
        version, vdir = reg.new_dir()
        meta["version"] = version
        mpath = save_model(fr.step_module(), meta, vdir / "model.pt")
        _, meta_saved = load_model(mpath)
        note = (f"Registry: {version} ({p} recalibrated for {m.name} on its first {int(calib.sum())} usable rows, "
                "no training) is registered but not made the default.")
        rpath = vdir / "report.md"
        rpath.write_text("\n".join([f"# Forecaster recalibration: {name} ({version})", "", f"**{note}**", "", "Reproduce:",
                                    "", "```sh", command, "```", "",
                                    f"The network of `{init_from}` with {m.name}'s own standardisation (inputs, target "
                                    "scales, variance floor" + (", baselines" if st.spec is not None else "") +
                                    f") fitted on the first {calib_frac:.0%} of the recording ({iso(int(ds.ff.ts_ns[0]))} "
                                    f"to {iso(t_end)}); nothing after that is used.", ""]))
        reg.register(version, meta_saved, parent=init_from, make_default=False)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mpath, out / f"{name}.pt")
            shutil.copyfile(mpath.with_suffix(".json"), out / f"{name}.json")
        result = {"version": version, "model": str(mpath), "report": str(rpath), "horizon": str(hz),
                  "sample_s": fcfg.sample_s, "rows": int(c_end), "seconds": round(time.perf_counter() - t_all, 1),
                  "default": False, "default_note": note, "arch": cfg.arch, "calibrated_for": m.name}
        if json_out:
            print(json.dumps(result, default=float))
        else:
            say(note)
            say(f"model {version}: {mpath}")
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
