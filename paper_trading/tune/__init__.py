"""Strategy-parameter tuning (``mmbot tune``): Optuna over walk-forward backtests of the
same strategy code that runs in paper and live trading.

Modules: :mod:`space` (the YAML search space over dotted config paths), :mod:`folds`
(walk-forward folds and the held-out final segment), :mod:`objectives` (PnL, risk-adjusted
PnL, Sharpe, PnL per volume, inventory risk), :mod:`study` (storage, sampler, pruner, trial
budget), :mod:`runner` (the worker: recordings loaded once, one backtest per fold),
:mod:`report` (best.yaml, trials.csv, HTML report), :mod:`cli` (the command).
"""
