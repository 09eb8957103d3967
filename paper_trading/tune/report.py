"""Outputs of a study, rebuilt from the study alone (``mmbot tune --report``):

* ``trials.csv``: one row per trial: number, state, objective values, parameters, the
  summary row the worker wrote (every objective, fills, traded notional in quote currency,
  events replayed, seconds), seed, worker, error;
* ``best.yaml``: the tuning config with the best trial's parameters applied, complete (every
  field), so that ``mmbot backtest``, ``mmbot paper`` and ``mmbot live`` accept it as is;
* ``report.html`` with PNG plots: optimization history, parameter importances (Optuna's
  default importance evaluator), slice plots of the most important parameters, the Pareto
  front for two objectives, and the table of the best trials (single objective: the top
  ``top``; two objectives: the Pareto set) with in-sample and held-out figures side by side.

The held-out figures are computed once, after the study, and stored in the study (user
attribute ``mmbot_holdout``), so the report needs nothing but the storage.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import warnings
from pathlib import Path

import yaml

from paper_trading.tune.objectives import DIRECTIONS, UNITS

HOLDOUT_ATTR = "mmbot_holdout"


def complete_trials(study):
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def selected_trials(study, objectives: list[str], top: int):
    """The trials to re-run on the held-out segment: the ``top`` best (one objective) or the
    Pareto set (two objectives), in trial-number order for the Pareto set."""
    done = complete_trials(study)
    if not done:
        return []
    if len(objectives) > 1:
        return sorted(study.best_trials, key=lambda t: t.number)
    sign = -1.0 if DIRECTIONS[objectives[0]] == "maximize" else 1.0
    return sorted(done, key=lambda t: (sign * t.value, t.number))[:top]


def best_trial(study, objectives: list[str]):
    """The single best trial (two objectives: the Pareto trial best on the first one)."""
    sel = selected_trials(study, objectives, 1)
    if not sel:
        return None
    if len(objectives) == 1:
        return sel[0]
    sign = -1.0 if DIRECTIONS[objectives[0]] == "maximize" else 1.0
    return min(sel, key=lambda t: (sign * t.values[0], t.number))


def write_trials_csv(study, objectives: list[str], path: Path) -> Path:
    trials = study.get_trials(deepcopy=False)
    pnames = sorted({k for t in trials for k in t.params})
    skeys: list[str] = []
    for t in trials:
        for k in (t.user_attrs.get("summary") or {}):
            if k not in skeys:
                skeys.append(k)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "state", *objectives, *pnames, *(f"summary.{k}" for k in skeys), "error"])
        for t in trials:
            vals = list(t.values) if t.values is not None else [None] * len(objectives)
            s = t.user_attrs.get("summary") or {}
            w.writerow([t.number, t.state.name, *vals, *(t.params.get(p) for p in pnames), *(s.get(k) for k in skeys),
                        t.user_attrs.get("error", "")])
    return path


def best_config(settings: dict, params: dict):
    from bot.config import config_from_dict
    from paper_trading.tune.space import apply_params

    return apply_params(config_from_dict(settings["base_config"], "(tuning config)"), params)


def write_best_yaml(settings: dict, trial, objectives: list[str], path: Path) -> Path:
    cfg = best_config(settings, trial.params)
    data = cfg.model_dump(mode="json")
    vals = ", ".join(f"{n} = {v:.6g}" for n, v in zip(objectives, trial.values))
    head = (f"# mmbot config from `mmbot tune`, study {settings.get('study')!r}, trial {trial.number}: {vals} (in-sample)\n"
            f"# tuned parameters: {json.dumps(trial.params)}\n"
            "# Units as in config/backtest.yaml.\n"
            "# Reproduce the in-sample figure: reproduce.sh next to this file lists one `mmbot backtest --config best.yaml\n"
            "# --data REC --start NS --end NS` per fold segment, the figures each must give, and how they add up.\n")
    path.write_text(head + yaml.safe_dump(data, sort_keys=False))
    return path


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))


def _plots(study, objectives: list[str], out: Path) -> list[tuple[str, str]]:
    """(title, file name or error text) per plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as ov

    made: list[tuple[str, str]] = []
    target = None if len(objectives) == 1 else (lambda t: t.values[0])
    tname = objectives[0]

    def save(title: str, fname: str, fn, width: float = 8.0) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = fn()
                fig = ax.ravel()[0].figure if hasattr(ax, "ravel") else ax.figure
                fig.set_size_inches(width, 4.5)
                fig.tight_layout()
                fig.savefig(out / fname, dpi=80)
            plt.close(fig)
            made.append((title, fname))
        except Exception as e:  # noqa: BLE001 - a plot Optuna cannot draw (too few trials) is noted, not fatal
            plt.close("all")
            made.append((title, f"not drawn: {str(e).splitlines()[0] if str(e) else type(e).__name__}"))

    save("Optimization history", "history.png", lambda: ov.plot_optimization_history(study, target=target, target_name=tname))
    importances: dict = {}
    try:
        import optuna

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, target=target)
    except Exception:  # noqa: BLE001
        importances = {}
    save("Parameter importances", "importances.png", lambda: ov.plot_param_importances(study, target=target, target_name=tname))
    top = list(importances)[:3] or None
    save("Slices of the most important parameters", "slices.png",
         lambda: ov.plot_slice(study, params=top, target=target, target_name=tname), width=4.5 * len(top or [1, 1, 1]) + 1)
    if len(objectives) == 2:
        save("Pareto front", "pareto.png", lambda: ov.plot_pareto_front(study, target_names=objectives))
    return made


def write_report(study, objectives: list[str], out: Path) -> Path:
    """report.html with plots; the table compares in-sample and held-out figures."""
    from paper_trading.tune.study import SETTINGS_ATTR

    out.mkdir(parents=True, exist_ok=True)
    settings = study.user_attrs.get(SETTINGS_ATTR, {})
    holdout = study.user_attrs.get(HOLDOUT_ATTR, {})
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    parts = [f"<html><head><meta charset='utf-8'><title>mmbot tune: {html.escape(study.study_name)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;text-align:right}"
             "table{border-collapse:collapse}tr:nth-child(even){background:#f3f3f3}</style></head><body>",
             f"<h1>mmbot tune: study {html.escape(study.study_name)}</h1>",
             f"<p>Objectives: {', '.join(f'{o} ({DIRECTIONS[o]}, {UNITS[o]})' for o in objectives)}. "
             f"Trials: {', '.join(f'{k.lower()} {v}' for k, v in sorted(counts.items()))}. "
             f"Sampler {html.escape(str(settings.get('sampler')))}, pruner {html.escape(str(settings.get('pruner')))}.</p>"]
    plan = settings.get("plan") or []
    if plan:
        parts.append("<h2>Data</h2><table><tr><th>part</th><th>recording</th><th>duration s</th></tr>")
        for r in plan:
            parts.append(f"<tr><td>{html.escape(r['part'])}</td><td>{html.escape(r['recording'])}</td><td>{r['duration_s']}</td></tr>")
        parts.append("</table>")
    keys = ["pnl", "risk_adjusted_pnl", "sharpe", "pnl_per_volume", "inventory_risk", "fills"]
    rows = holdout.get("rows", [])
    if rows:
        parts.append("<h2>In-sample and held-out</h2><p>The best trials re-run on the held-out segment, which no trial "
                     "saw. A large drop from in-sample to held-out is overfitting.</p><table><tr><th>trial</th><th>params</th>")
        parts += [f"<th>{k}<br>in-sample</th><th>{k}<br>held-out</th>" for k in keys]
        parts.append("</tr>")
        for r in rows:
            cells = "".join(f"<td>{_fmt(r['in_sample'].get(k))}</td><td>{_fmt((r.get('held_out') or {}).get(k))}</td>" for k in keys)
            parts.append(f"<tr><td>{r['trial']}</td><td style='text-align:left'>{html.escape(json.dumps(r['params']))}</td>{cells}</tr>")
        parts.append("</table>")
    elif complete_trials(study):
        parts.append("<p>No held-out figures (run with --holdout above 0).</p>")
    best = best_trial(study, objectives) if complete_trials(study) else None
    if best is not None and best.user_attrs.get("segments"):
        from paper_trading.tune.reproduce import AGGREGATION

        segs = best.user_attrs["segments"]
        parts.append(f"<h2>Reproduce</h2><p>reproduce.sh runs <code>mmbot backtest --config best.yaml --data REC --start NS "
                     f"--end NS</code> for each of the {len(segs)} in-sample fold segments of trial {best.number} and checks "
                     f"each against the figures below; {html.escape('; '.join(f'{n} = {AGGREGATION[n]}' for n in objectives))}."
                     "</p><table><tr><th>fold</th><th>start ns</th><th>end ns</th><th>pnl</th><th>volume_quote</th><th>fills</th></tr>")
        for r in segs:
            parts.append(f"<tr><td>{r['fold']}</td><td>{r['start_ns']}</td><td>{r['end_ns']}</td><td>{r['pnl']!r}</td>"
                         f"<td>{r['volume_quote']!r}</td><td>{r['fills']}</td></tr>")
        parts.append("</table>")
    for title, f in _plots(study, objectives, out) if complete_trials(study) else []:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(f"<img src='{f}'>" if f.endswith(".png") else f"<p>{html.escape(f)}</p>")
    parts.append("</body></html>")
    p = out / "report.html"
    p.write_text("\n".join(parts))
    return p


def holdout_table(rows: list[dict], objectives: list[str]) -> str:
    """A plain-text table of in-sample vs held-out figures for the terminal."""
    buf = io.StringIO()
    cols = ["trial"] + [f"{o} in/out" for o in objectives] + ["fills in/out"]
    buf.write("  ".join(f"{c:>24}" for c in cols) + "\n")
    for r in rows:
        cells = [str(r["trial"])]
        for k in [*objectives, "fills"]:
            cells.append(f"{_fmt(r['in_sample'].get(k))} / {_fmt((r.get('held_out') or {}).get(k))}")
        buf.write("  ".join(f"{c:>24}" for c in cells) + "\n")
    return buf.getvalue()
