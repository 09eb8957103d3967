"""``mmbot train``: features, walk-forward evaluation against the baselines, optional Optuna
search, the final model, its export, the registry entry and the report.

The lead registers :func:`train` as a typer command (``app.command("train")(train)``); it
can also be called as a plain function (tests do). Raw captures are accepted as well as
recordings: a Bitstamp ``.log``/``.log.bz2`` file or Binance capture files are imported to a
temporary recording first. Several markets (several recordings, or raw files of several
symbols) train one model on all of them (:mod:`models.multitrain`; ``--lomo``: the
leave-one-market-out evaluation); ``--init-from vX --recalibrate`` refits a model's
standardisation for a new market without training.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from bot.errors import DataError, MmbotError

_DUR_RE = re.compile(r"^-?\s*(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MIN_USABLE_ROWS = 50  # grid rows with features and a target a training needs, at least
SEARCH_MAX_LOOKBACK = 128  # the longest lookback models.calibrate.tune tries, grid rows


def parse_time(text: str | None, data_start_ns: int, data_end_ns: int) -> int | None:
    """ISO 8601 time (UTC if no zone) or a duration like ``6h`` / ``-6h`` (= 6 hours before
    the end of the data), as ns since epoch."""
    if text is None or text == "":
        return None
    m = _DUR_RE.match(text.strip())
    if m:
        return int(data_end_ns - float(m.group(1)) * _UNITS[m.group(2)] * 1e9)
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise MmbotError(f"invalid time {text!r}: use ISO 8601 (2015-05-01T12:00) or a duration before the data end (6h)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp() * 1e9)


# option -> (lowest, highest, lowest excluded): every number finite and in a sane range
_RANGES = {
    "sample_s": (0.0, 3600.0, True), "dropout": (0.0, 0.9, False), "lr": (0.0, 1.0, True),
    "weight_decay": (0.0, 10.0, False), "drift_weight": (0.0, 1e3, False), "initial_frac": (0.0, 0.95, True),
    "tune_timeout": (0.0, 1e7, True), "hidden": (1, 4096, False), "layers": (1, 16, False), "lookback": (1, 100_000, False),
    "batch": (1, 100_000, False), "max_epochs": (1, 100_000, False), "patience": (1, 100_000, False),
    "threads": (1, 1024, False), "folds": (0, 100, False), "trials": (0, 100_000, False), "tune_epochs": (1, 100_000, False),
    "seed": (0, 2**63 - 1, False), "n_levels": (1, 1000, False), "calib_frac": (0.0, 0.9, True),
}
_OPTION = {"n_levels": "--levels"}


def _check_options(**values) -> None:
    """MmbotError naming the option when a number is NaN, infinite or out of its range."""
    for key, v in values.items():
        if v is None:
            continue
        lo, hi, open_lo = _RANGES[key]
        opt = _OPTION.get(key, "--" + key.replace("_", "-"))
        if not math.isfinite(v) or v > hi or v < lo or (open_lo and v == lo):
            low = f"above {lo}" if open_lo else f"at least {lo}"
            raise MmbotError(f"{opt} must be {low} and at most {hi}, got {v}")


def _import_raw(paths: list[Path], tmp: Path, log) -> Path:
    """Import raw capture files into a temporary recording; returns its directory."""
    out = tmp / "recording"
    names = [p.name for p in paths]
    if len(paths) == 1 and (names[0].endswith((".log", ".log.bz2")) or "bitstamp" in str(paths[0]).lower()):
        from bot.importers.bitstamp import import_bitstamp

        log(f"importing Bitstamp log {paths[0]} ...")
        import_bitstamp(paths[0], out)
    else:
        from bot.importers.binance import import_binance

        log(f"importing Binance capture {', '.join(names)} ...")
        import_binance(paths, out)
    return out


def _unfold_net(module, meta: dict):
    """Training network, normaliser and scales of a saved model (to fine-tune it)."""
    import torch

    from models.features import Normalizer
    from models.lstm import net_from_params
    from models.train import Scales

    net, _, _ = net_from_params(list(module.params()), meta["arch"])
    sc = meta.get("scales") or {"drift_scale": 1.0, "var_scale": 1.0}
    with torch.no_grad():
        net.head.weight[0] /= sc["drift_scale"]
        net.head.bias[0] /= sc["drift_scale"]
        net.head.bias[1] -= math.log(sc["var_scale"])
        if net.skip is not None:
            net.skip.weight[0] /= sc["drift_scale"]
    norm = Normalizer.from_dict(meta["normalization"])  # float64, as fitted (the module holds float32)
    return net, norm, Scales(float(sc["drift_scale"]), float(sc["var_scale"]), float(meta.get("var_floor_bp2", 0.0)))


def train(
    data: Annotated[list[Path], typer.Argument(help="a recording directory (mmbot import), or raw capture files (Bitstamp .log.bz2; Binance .gz of one symbol)")],
    horizon: Annotated[str, typer.Option(help="forecast horizon: seconds ('10s') or mid-change events ('50ev')")] = "10s",
    sample_s: Annotated[float, typer.Option("--sample-s", help="sampling grid interval, seconds")] = 1.0,
    n_levels: Annotated[int, typer.Option("--levels", help="book levels for the imbalance features")] = 5,
    rv_windows: Annotated[str, typer.Option("--rv-windows", help="realised-volatility windows, grid rows, comma separated")] = "10,60,300",
    tick_rv: Annotated[bool, typer.Option("--tick-rv", help="also the intra-second features (tick-level realised variance of the mid on every book update) and, with --arch correction, the tick baseline (--base tick | auto_tick)")] = False,
    hidden: Annotated[int, typer.Option(help="LSTM hidden size")] = 32,
    layers: Annotated[int, typer.Option(help="LSTM layers")] = 1,
    dropout: Annotated[float, typer.Option(help="dropout before the heads (and between layers)")] = 0.1,
    lookback: Annotated[int, typer.Option(help="truncated-BPTT length, grid rows (also part of the warm-up)")] = 64,
    batch: Annotated[int, typer.Option(help="parallel training streams")] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = 3e-3,
    weight_decay: Annotated[float, typer.Option("--weight-decay", help="AdamW weight decay")] = 1e-4,
    max_epochs: Annotated[int, typer.Option("--max-epochs")] = 60,
    patience: Annotated[int, typer.Option(help="early-stopping patience, epochs")] = 8,
    drift_weight: Annotated[float, typer.Option("--drift-weight", help="weight of the drift loss against QLIKE")] = 1.0,
    skip: Annotated[bool, typer.Option("--skip/--no-skip", help="linear skip path from the features to the heads")] = True,
    arch: Annotated[str, typer.Option(help="plain: the LSTM forecasts from the features; correction: it learns a correction of the best baseline's variance (EWMA / GARCH / HAR-RV, chosen on training rows), from scale-free inputs; its drift head: see --drift-head")] = "plain",
    corr_l2: Annotated[float, typer.Option("--corr-l2", help="correction arch: L2 penalty pulling the (standardised) corrections towards zero")] = 1.0,
    base: Annotated[str, typer.Option(help="correction arch: the variance baseline: auto (chosen on training rows), combo, ewma, ewma_fit, garch, har, ewma_mix (geometric mean of the EWMAs), auto_mix (auto, ewma_mix when too few rows to choose), tick (the intra-second baseline, needs --tick-rv), auto_tick (auto with tick among the candidates, tick when too few rows to choose); default auto, or combo with several markets")] = "",
    corr_l2_drift: Annotated[Optional[float], typer.Option("--corr-l2-drift", help="correction arch: L2 penalty on the drift correction, or with --drift-head plain on the drift itself (towards zero drift) (default: --corr-l2)")] = None,
    drift_head: Annotated[str, typer.Option("--drift-head", help="correction arch: the drift head corrects the OFI regression's drift (correction) or predicts the drift itself like the plain LSTM (plain, the default; --corr-l2-drift then pulls it towards zero drift); the volatility head stays a correction")] = "",
    seed: Annotated[int, typer.Option(help="random seed")] = 0,
    threads: Annotated[int, typer.Option(help="torch threads for training")] = 2,
    folds: Annotated[int, typer.Option(help="walk-forward test folds (0 = no evaluation)")] = 4,
    scheme: Annotated[str, typer.Option(help="walk-forward training window: expanding | rolling")] = "expanding",
    initial_frac: Annotated[float, typer.Option("--initial-frac", help="share of rows in the first training window")] = 0.5,
    trials: Annotated[int, typer.Option(help="Optuna TPE trials over hidden, lookback, lr, dropout, weight decay, horizon (0 = no search)")] = 0,
    horizons: Annotated[str, typer.Option(help="horizons the search may pick, comma separated (default: --horizon)")] = "",
    tune_epochs: Annotated[int, typer.Option("--tune-epochs", help="max epochs per search trial")] = 20,
    tune_timeout: Annotated[Optional[float], typer.Option("--tune-timeout", help="stop the search after this many seconds")] = None,
    since: Annotated[Optional[str], typer.Option(help="use data from this time on: ISO 8601 (UTC) or a duration before the data end ('6h')")] = None,
    until: Annotated[Optional[str], typer.Option(help="use data up to this time (ISO 8601 or duration before the end)")] = None,
    init_from: Annotated[Optional[str], typer.Option("--init-from", help="fine-tune this model (registry version, 'latest', 'default' (the registry's default, else the shipped model) or a .pt path) instead of training from scratch")] = None,
    registry: Annotated[Path, typer.Option(help="model registry directory")] = Path("runs/models"),
    make_default: Annotated[bool, typer.Option("--make-default", help="make the new model the registry's default even if its walk-forward evaluation does not show it beating the baselines")] = False,
    out: Annotated[Optional[Path], typer.Option(help="also write the model, metadata, report and plots into this directory")] = None,
    name: Annotated[str, typer.Option(help="model name (file name under --out)")] = "model",
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="show progress bars")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as one JSON object")] = False,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="with --init-from: no training; the model's standardisation (and baselines) refitted on the first --calib-frac of DATA's rows, for a market it was not trained on")] = False,
    lomo: Annotated[bool, typer.Option("--lomo", help="several markets (at least 3): leave-one-market-out evaluation in the report")] = False,
    calib_frac: Annotated[float, typer.Option("--calib-frac", help="--lomo: share of a held-out market's rows that standardise it (not scored); --recalibrate: share of DATA's rows the new standardisation is fitted on")] = 0.3,
    shrink: Annotated[bool, typer.Option("--shrink/--no-shrink", help="several markets, --lomo, correction arch: shrink the correction towards its baseline on each held-out market, weights fitted on its calibration rows (measured: does not help, docs/forecaster.md)")] = False,
) -> dict:
    """Train the LSTM forecaster, evaluate it walk-forward against the baselines, export it, register it, write the report."""
    from rich.console import Console

    from models import calibrate as cal
    from models.export import iso, load_model, save_model
    from models.features import FeatureConfig, offline_features, schema
    from models.registry import Registry
    from models.targets import Horizon
    from models.train import TrainConfig, fit

    console = Console(stderr=True)
    say = (lambda s: console.print(s)) if not json_out else (lambda s: None)
    t_all = time.perf_counter()
    args = dict(locals())
    _check_options(sample_s=sample_s, dropout=dropout, lr=lr, weight_decay=weight_decay, drift_weight=drift_weight,
                   initial_frac=initial_frac, tune_timeout=tune_timeout, hidden=hidden, layers=layers, lookback=lookback,
                   batch=batch, max_epochs=max_epochs, patience=patience, threads=threads, folds=folds, trials=trials,
                   tune_epochs=tune_epochs, seed=seed, n_levels=n_levels, calib_frac=calib_frac)
    if scheme not in ("expanding", "rolling"):
        raise MmbotError(f"--scheme must be 'expanding' or 'rolling', got {scheme!r}")
    if arch not in ("plain", "correction"):
        raise MmbotError(f"--arch must be 'plain' or 'correction', got {arch!r}")
    if drift_head and drift_head not in ("correction", "plain"):
        raise MmbotError(f"--drift-head must be 'correction' or 'plain', got {drift_head!r}")
    if drift_head and arch != "correction":
        raise MmbotError(f"--drift-head applies to --arch correction only (the {arch} arch's drift head is always plain)")
    try:
        hz = Horizon.parse(horizon)
        hz_list = [str(Horizon.parse(h)) for h in horizons.split(",") if h.strip()] or [str(hz)]
        rvw = tuple(int(w) for w in rv_windows.split(",") if w.strip())
        fcfg = FeatureConfig(sample_s=sample_s, n_levels=n_levels, rv_windows=rvw, tick_rv=tick_rv)
        for h in hz_list:
            if Horizon.parse(h).unit == "s":
                Horizon.parse(h).steps(sample_s)
    except ValueError as e:
        raise MmbotError(str(e)) from None
    cfg = TrainConfig(hidden=hidden, layers=layers, dropout=dropout, lookback=lookback, batch=batch, lr=lr,
                      weight_decay=weight_decay, max_epochs=max_epochs, patience=patience, drift_weight=drift_weight,
                      skip=skip, seed=seed, threads=threads, arch=arch, corr_l2=corr_l2, corr_l2_drift=corr_l2_drift,
                      base=base or "auto", drift_head=drift_head or TrainConfig.drift_head)
    if base and base not in ("auto", "auto_mix", "combo", "ewma_mix", "ewma", "ewma_fit", "garch", "har", "tick", "auto_tick"):
        raise MmbotError(f"--base must be auto, auto_mix, combo, ewma_mix, ewma, ewma_fit, garch, har, tick or auto_tick, got {base!r}")
    if base in ("tick", "auto_tick") and not tick_rv:
        raise MmbotError(f"--base {base} needs --tick-rv (the intra-second features it is computed from)")
    from models.multitrain import group_inputs

    for p in data:
        if not Path(p).exists():
            raise DataError(f"{p}: not found")
    groups = group_inputs([Path(p) for p in data])
    if recalibrate:
        if not init_from:
            raise MmbotError("--recalibrate needs --init-from (the model to recalibrate)")
        if len(groups) != 1:
            raise MmbotError(f"--recalibrate takes one market's recording, got {len(groups)} markets")
        from models.multitrain import recalibrate as recal

        return recal(init_from, groups[0], calib_frac=calib_frac, registry=registry, say=say, json_out=json_out,
                     command=_command(args, hz, cfg, 0), out=out, name=name)
    if len(groups) > 1:
        for opt, val in (("--init-from", init_from), ("--since", since), ("--until", until), ("--trials", trials or None)):
            if val:
                raise MmbotError(f"{opt} is not supported with several markets ({len(groups)} given)")
        from models.multitrain import train_markets

        return train_markets(groups, fcfg=fcfg, hz=hz, cfg=replace(cfg, base=base or "combo"), lomo_on=lomo, calib_frac=calib_frac, registry=registry,
                             make_default=make_default, out=out, name=name, say=say, json_out=json_out,
                             command=_command(args, hz, cfg, 0), shrink=shrink)
    if lomo:
        raise MmbotError("--lomo needs several markets (at least 3 recordings)")
    init = None
    parent = None
    reg = Registry(registry)
    if init_from:
        p = reg.resolve(init_from)
        module, pmeta = load_model(p)
        fcfg = FeatureConfig.from_dict(pmeta["features"]["config"])
        hz = Horizon.parse(pmeta["horizon"])
        hz_list = [str(hz)]
        a = pmeta["arch"]
        if a.get("kind", "plain") != "plain":
            raise MmbotError(f"{p}: fine-tuning a {a.get('kind')} model is not supported yet; train it anew (--arch {a.get('kind')})")
        cfg = replace(cfg, hidden=int(a["hidden"]), layers=int(a["layers"]), skip=bool(a.get("skip", False)), arch="plain")
        init = _unfold_net(module, pmeta)
        parent = init_from
        trials = 0
        say(f"fine-tuning {p} (horizon {hz}, grid {fcfg.sample_s} s, hidden {cfg.hidden})")

    tmp = None
    try:
        paths = [Path(p) for p in data]
        for p in paths:
            if not p.exists():
                raise DataError(f"{p}: not found")
        if len(paths) == 1 and paths[0].is_dir():
            rec_dir = paths[0]
        else:
            tmp = Path(tempfile.mkdtemp(prefix="mmbot-train-"))
            rec_dir = _import_raw(paths, tmp, say)
        events, rmeta = cal.load_events(rec_dir)
        lts = events["local_ts"]
        since_ns = parse_time(since, int(lts[0]), int(lts[-1]))
        until_ns = parse_time(until, int(lts[0]), int(lts[-1]))
        t0 = time.perf_counter()
        ff = offline_features(events, fcfg, rmeta.get("tick_size"), t_start_ns=since_ns, t_end_ns=until_ns)
        if len(ff) == 0:
            raise DataError(f"{rec_dir}: no grid rows with a valid book in the selected span")
        say(f"features: {len(ff):,} rows x {ff.X.shape[1]} on a {fcfg.sample_s} s grid in {time.perf_counter() - t0:.1f} s")
        trial_rows = None
        if trials > 0:
            # every trial must have rows to fit: check with the search's longest warm-up first
            warm_search = max(max(fcfg.rv_windows), SEARCH_MAX_LOOKBACK)
            for h in hz_list:
                n_use = int(cal.build_dataset(events, rmeta, fcfg, h, warm_search, ff=ff).usable().sum())
                if n_use < MIN_USABLE_ROWS:
                    raise DataError(f"{rec_dir}: too little data for --trials: {n_use} usable rows for horizon {h} with the "
                                    f"search's longest warm-up ({warm_search} rows of {fcfg.sample_s} s), need {MIN_USABLE_ROWS}; "
                                    "use more data or --trials 0")
            say(f"Optuna TPE search: {trials} trials over hidden, lookback, lr, dropout, horizon {hz_list} ...")
            try:
                cfg, best_h, trial_rows = cal.tune(events, rmeta, fcfg, cfg, hz_list, trials, initial_frac=initial_frac,
                                                   tune_epochs=tune_epochs, seed=seed, ff=ff, log=say, timeout_s=tune_timeout)
            except ValueError as e:
                raise DataError(f"{rec_dir}: search impossible: {e}") from None
            hz = Horizon.parse(best_h)
            say(f"best: horizon {hz}, hidden {cfg.hidden}, lookback {cfg.lookback}, lr {cfg.lr:.2e}, dropout {cfg.dropout:.2f}, "
                f"weight decay {cfg.weight_decay:.2e}")
        warmup = max(max(fcfg.rv_windows), cfg.lookback)
        ds = cal.build_dataset(events, rmeta, fcfg, hz, warmup, ff=ff)
        if ds.usable().sum() < MIN_USABLE_ROWS:
            raise DataError(f"{rec_dir}: too few usable rows ({int(ds.usable().sum())}) for horizon {hz} and warm-up {warmup}")
        results: list = []
        if folds > 0 and init is None:
            try:
                results = cal.walk_forward(ds, cfg, folds, initial_frac, scheme, progress=progress and not json_out, log=say)
            except ValueError as e:
                raise DataError(f"{rec_dir}: walk-forward impossible: {e}") from None
        # the final model: all rows, the last val_frac for early stopping
        use = np.flatnonzero(ds.usable())
        a, b = int(use[0]), int(use[-1]) + 1
        v0 = b - int((b - a) * cfg.val_frac)
        idx = np.arange(ds.n)
        u = ds.usable()
        tr = u & (idx < v0) & (ds.end_row < v0)
        va = u & (idx >= v0)
        from models.targets import variance_floor

        floor = variance_floor(ds.tg.var[tr]) if init is None else init[2].var_floor
        Xf, fkw, spec = cal.model_inputs(ds, cfg, tr | va, floor) if init is None else (ds.ff.X, {}, None)
        final = fit(Xf, ds.tg.drift, ds.tg.var, tr, va, v0, cfg, floor, warmup=warmup,
                    progress=progress and not json_out, label="final", init=init, **fkw)
        say(f"final model: best epoch {final.best_epoch}, validation loss {final.best_val:.4f}, {final.seconds:.1f} s")
        # baseline the online guard compares with: EWMA with the half-life fitted on the training rows
        from models import baselines as bl

        r2 = ds.ff.ret_bp ** 2
        init_r2 = float(np.mean(r2[warmup:v0])) if v0 > warmup else float(np.mean(r2))
        H, horizon_s = ds.horizon(tr | va)  # events: the median length over the final model's rows
        hl = bl.fit_ewma_halflife(r2, ds.tg.var, tr, H, fcfg.sample_s, floor, init_r2)
        summary = cal.summarize(results) if results else {}
        data_meta = {"source": str(data[0]) if len(data) == 1 else [str(p) for p in data],
                     "exchange": rmeta.get("exchange"), "symbol": rmeta.get("symbol"), "market": rmeta.get("market"),
                     "start_ns": int(ds.ff.ts_ns[0]), "end_ns": int(ds.ff.ts_ns[-1]),
                     "start": iso(int(ds.ff.ts_ns[0])), "end": iso(int(ds.ff.ts_ns[-1])), "rows": int(ds.n)}
        command = _command(args, hz, cfg, trials)
        meta = {
            "format": "mmbot-forecaster", "format_version": 1, "name": name,
            "features": schema(fcfg), "normalization": final.normalizer.to_dict(),
            "horizon": str(hz), "horizon_s": float(horizon_s), "horizon_steps": int(H), "sample_s": fcfg.sample_s,
            "warmup_steps": int(warmup), "arch": final.net.arch(), "train": cfg.to_dict(),
            "train_result": {"best_epoch": final.best_epoch, "best_val_loss": final.best_val, "seconds": final.seconds,
                             "rows_train": int(tr.sum()), "rows_val": int(va.sum())},
            "scales": {"drift_scale": final.scales.drift_scale, "var_scale": final.scales.var_scale},
            "var_floor_bp2": float(floor),
            "baseline": {"kind": "ewma", "halflife_s": hl, "lambda_per_row": bl.lambda_from_halflife(hl, fcfg.sample_s),
                         "init_r2_bp2": init_r2},
            "data": data_meta,
            "metrics": {"scheme": scheme, "folds": len(results), "walk_forward_mean": summary,
                        "per_fold": [{"fold": r.fold.index, "test_rows": list(r.fold.test), "metrics": r.metrics} for r in results],
                        "summary_short": ({"lstm_qlike": summary["lstm"]["qlike"], "best_baseline_qlike": min(
                            summary[m]["qlike"] for m in cal.VOL_MODELS if m != "lstm"), "lstm_r2": summary["lstm"]["r2"]}
                            if summary else None)},
            "parent": parent, "command": command,
        }
        if spec is not None:
            from models.baseline_inputs import input_names

            meta["baseline_inputs"] = {"names": input_names(fcfg), "spec": spec.to_dict()}
        dmt = cal.dm_tests(results) if results else {}
        if dmt:
            meta["metrics"]["diebold_mariano"] = dmt
        if trial_rows:
            meta["optuna"] = {"trials": trial_rows}
        version, vdir = reg.new_dir()
        meta["version"] = version
        mpath = save_model(final.step_module(), meta, vdir / "model.pt")
        _, meta_saved = load_model(mpath)  # round trip: what was written is loadable
        notes = [
            "QLIKE = mean(v/h - log(v/h) - 1) of the realised variance v against the forecast h (0 = perfect); it "
            "penalises under-prediction of variance much more than over-prediction, as a market maker should.",
            "The drift target is mostly 0 on short horizons of a tick-sized market (the mid does not move), so R^2 is small "
            "for every model; 'dir. acc.' counts rows where the mid moved.",
            "The online misspecification guard compares the model with the fitted-half-life EWMA "
            f"(half-life {hl:.0f} s) and falls back to it when the model's rolling QLIKE is worse.",
        ]
        # every model is registered; only one that beats the baselines (or --make-default) becomes the default
        good, why = cal.beats_baselines(results)
        promote = good or make_default
        if good:
            default_note = f"Registry: {version} is now the default model: {why}."
        elif make_default:
            default_note = f"Registry: {version} is now the default model because --make-default was given, although {why}."
        else:
            prev = reg.default_version()
            stays = f"The default stays {prev}" if prev else "The registry has no default ('default' is the shipped model)"
            default_note = (f"Registry: {version} is registered but NOT made the default model: {why}. {stays}; "
                            "--make-default makes it the default anyway.")
        title = f"Forecaster training report: {name} ({version})"
        rpath = cal.write_report(vdir, title=title, command=command, meta=meta_saved, results=results, final=final,
                                 trials=trial_rows, notes=notes, registry_note=default_note)
        reg.register(version, meta_saved, parent=parent, make_default=promote)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(mpath, out / f"{name}.pt")
            shutil.copyfile(mpath.with_suffix(".json"), out / f"{name}.json")
            for f in vdir.iterdir():
                if f.suffix in (".md", ".png"):
                    shutil.copyfile(f, out / (f"{name}_report.md" if f.name == "report.md" else f.name))
        result = {"version": version, "model": str(mpath), "report": str(rpath), "horizon": str(hz),
                  "sample_s": fcfg.sample_s, "rows": int(ds.n), "seconds": round(time.perf_counter() - t_all, 1),
                  "walk_forward_mean": summary, "verdict": cal.verdict(results) if results else [],
                  "default": promote, "default_note": default_note, "arch": cfg.arch,
                  "diebold_mariano": dmt}
        if out is not None:
            result["out"] = str(out / f"{name}.pt")
        if json_out:
            print(json.dumps(result, default=float))
        else:
            for line in result["verdict"]:
                say(line)
            from rich.markup import escape

            say(escape(default_note) if promote else f"[bold yellow]{escape(default_note)}[/]")
            say(f"model {version}: {mpath}\nreport: {rpath}\ntotal {result['seconds']} s")
        return result
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _command(args: dict, hz, cfg, trials: int) -> str:
    """The exact command that reproduces this training run."""
    parts = ["mmbot", "train"] + [str(p) for p in args["data"]]
    opts = [("--horizon", str(hz) if trials == 0 else args["horizon"]), ("--sample-s", args["sample_s"]),
            ("--levels", args["n_levels"]), ("--rv-windows", args["rv_windows"]),
            ("--hidden", args["hidden"]),
            ("--layers", args["layers"]), ("--dropout", args["dropout"]), ("--lookback", args["lookback"]),
            ("--batch", args["batch"]), ("--lr", args["lr"]), ("--weight-decay", args["weight_decay"]),
            ("--max-epochs", args["max_epochs"]), ("--patience", args["patience"]),
            ("--drift-weight", args["drift_weight"]), ("--seed", args["seed"]), ("--threads", args["threads"]),
            ("--arch", args["arch"]), ("--corr-l2", args["corr_l2"]),
            *([("--corr-l2-drift", args["corr_l2_drift"])] if args.get("corr_l2_drift") is not None else []),
            *([("--base", args["base"])] if args.get("base") else []),
            *([("--drift-head", cfg.drift_head)] if args["arch"] == "correction" else []),
            ("--folds", args["folds"]), ("--scheme", args["scheme"]), ("--initial-frac", args["initial_frac"])]
    if trials:
        opts += [("--trials", trials), ("--tune-epochs", args["tune_epochs"])]
        if args["horizons"]:
            opts.append(("--horizons", args["horizons"]))
        if args["tune_timeout"]:
            opts.append(("--tune-timeout", args["tune_timeout"]))
    for k in ("since", "until"):
        if args[k]:
            opts.append((f"--{k}", args[k]))
    if args["init_from"]:
        opts.append(("--init-from", args["init_from"]))
    opts += [("--registry", args["registry"])]
    if args["out"] is not None:
        opts += [("--out", args["out"]), ("--name", args["name"])]
    for k, v in opts:
        parts += [k, str(v)]
    if not args["skip"]:
        parts.append("--no-skip")
    if args.get("tick_rv"):
        parts.append("--tick-rv")
    if args.get("make_default"):
        parts.append("--make-default")
    if args.get("recalibrate"):
        parts += ["--recalibrate", "--calib-frac", str(args["calib_frac"])]
    if args.get("lomo"):
        parts += ["--lomo", "--calib-frac", str(args["calib_frac"])] + (["--shrink"] if args["shrink"] else [])
    return " ".join(shlex.quote(p) for p in parts)


if __name__ == "__main__":  # python -m models.cli train ...
    app = typer.Typer(add_completion=False)
    app.command("train")(train)

    @app.callback()
    def _main() -> None:
        """mmbot model tools."""

    try:
        app()
    except MmbotError as e:
        import sys

        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
