"""Configuration: YAML validated by pydantic. Every field states its unit.

``load_config(path)`` raises :class:`~bot.errors.ConfigError` with a message naming the
file, the field (dotted path) and the problem. Unknown fields are errors (a typo must not
silently fall back to a default). Secrets are never read from config files: API keys come
from the environment or a key file (see the README).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.errors import ConfigError
from strategies.params import StrategyParams


class _Strict(BaseModel):
    # every float must be finite (YAML's .nan / .inf, or 'nan' / 'inf' on the command line, are errors)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


MAX_SECONDS = 1e9  # about 31 years: a bound for durations and horizons, seconds
MAX_FEE = 0.05  # a fee rate above 5% of notional is a typo (0.0002 is 2 bp), fraction
MIN_FEE = -0.01  # rebates beyond 1% of notional do not exist, fraction


class SimConfig(_Strict):
    """The simulated Avellaneda-Stoikov market (exchange: sim)."""

    s0: float = Field(100.0, gt=0, le=1e12, description="initial mid, quote per base")
    sigma: float = Field(0.0816, ge=0, description="mid volatility, quote per base per sqrt(second)")
    dt_s: float = Field(0.05, gt=0, le=3600, description="simulation step, seconds")
    tick: str = Field("0.01", description="price tick, quote per base (decimal string)")
    lot: str = Field("1", description="size lot, base units (decimal string)")
    spread_ticks: int = Field(2, ge=1, description="other participants' spread, ticks")
    depth_levels: int = Field(5, ge=1, description="levels per side of the synthetic book")
    A: float = Field(0.2333, gt=0, description="fill intensity at zero distance, fills/second")
    k: float = Field(1.5, gt=0, description="fill-intensity decay, 1/(quote per base)")
    speed: float = Field(60.0, ge=0, description="simulated seconds per wall second; 0 = as fast as possible")
    seed: int = Field(7, ge=0, lt=2**63, description="random seed of the market and the fill model (non-negative)")


class MarketDataConfig(_Strict):
    """Live public data through ccxt (exchange: any ccxt id)."""

    transport: Literal["auto", "ws", "rest"] = Field(
        "auto", description="auto = websockets (ccxt.pro watch_order_book/watch_trades) where the exchange has them, else REST polling"
    )
    ws_url: str | None = Field(None, description="override the exchange's websocket URL (tests, testnets)")
    ws_keepalive_s: float | None = Field(10.0, gt=0, description="websocket ping interval, seconds: a silent stall is detected within about this long (null = ccxt's default, minutes on some exchanges)")
    poll_interval_s: float = Field(1.0, gt=0, description="REST polling interval, seconds")
    rate_limit_per_s: float = Field(5.0, gt=0, description="max REST requests per second")
    depth: int = Field(20, ge=1, description="order-book levels requested per side")
    api_url: str | None = Field(None, description="override the exchange's REST base URL (tests, testnets)")


class PaperConfig(_Strict):
    fill_model: Literal["intensity"] = Field("intensity", description="paper fill model")
    A: float | None = Field(None, gt=0, description="intensity-model A, fills/second (default: sim.A)")
    k: float | None = Field(None, gt=0, description="intensity-model k, 1/(quote per base) (default: sim.k)")
    maker_fee: float = Field(0.0, ge=MIN_FEE, le=MAX_FEE, description="maker fee rate, fraction of notional (negative = rebate; 0.0002 = 2 bp)")
    taker_fee: float = Field(0.0, ge=MIN_FEE, le=MAX_FEE, description="taker fee rate, fraction of notional")
    initial_base: float = Field(0.0, description="starting inventory, base units")
    initial_quote: float = Field(0.0, description="starting cash, quote currency")


class ReplayConfig(_Strict):
    """Replaying a recording (``mmbot backtest`` and ``mmbot paper --replay``): the simulated
    venue's realism models. See docs/fill_models.md for what each assumes."""

    interval_s: float = Field(0.1, gt=0, description="strategy decision interval, seconds of recorded time")
    warmup_s: float = Field(1.0, ge=0, description="recorded time replayed before the first decision, seconds")
    queue_model: Literal["conservative", "prob"] = Field("prob", description="queue-position model")
    queue_power: float = Field(2.0, gt=0, description="n of the power probabilistic queue model")
    latency_mode: Literal["constant", "recorded"] = Field(
        "constant", description="order-entry latency: constant, or the recorded feed delay times latency_multiplier plus entry_latency_ms"
    )
    entry_latency_ms: float = Field(5.0, ge=0, description="order-entry (and cancel) latency, milliseconds")
    latency_multiplier: float = Field(1.0, ge=0, description="multiplier on the recorded feed delay (latency_mode: recorded)")
    speed: float = Field(1.0, ge=0, description="paper --replay: recorded seconds per wall second (0 = as fast as possible)")
    report_dir: str = Field("runs/backtest", description="where mmbot backtest writes report.html and PNGs")


class AdaptTestConfig(_Strict):
    """One Page-Hinkley test of the shift detector (models/adapt/detector.py)."""

    enabled: bool = Field(True, description="run this test")
    delta: float = Field(0.05, ge=0, description="tolerated mean change, in the signal's units (loss: QLIKE; vol: log bp^2)")
    threshold: float = Field(50.0, gt=0, description="alarm when the cumulative excess over delta passes this (signal units x rows)")
    min_obs: int = Field(100, ge=1, description="samples (grid rows) before an alarm may be raised")
    direction: Literal["up", "down", "both"] = Field("up", description="mean change to detect")


class AdaptDetectorConfig(_Strict):
    """The shift detector: Page-Hinkley on the model's QLIKE minus the EWMA baseline's (loss)
    and on each grid row's log squared return (vol)."""

    loss: AdaptTestConfig = Field(default_factory=AdaptTestConfig)
    vol: AdaptTestConfig = Field(default_factory=lambda: AdaptTestConfig(enabled=False, delta=0.5, threshold=200.0,
                                                                         min_obs=300, direction="both"))
    cooldown_rows: int = Field(300, ge=0, description="grid rows after an alarm without a new one")


class AdaptTuneConfig(_Strict):
    """Fine-tuning and validation of a retrain job (models/adapt/retrainer.py)."""

    epochs: int = Field(20, ge=1, le=10_000, description="fine-tuning epochs over the recent rows")
    lr: float = Field(5e-3, gt=0, le=1.0, description="AdamW learning rate")
    lookback: int = Field(16, ge=2, description="truncated-BPTT length, grid rows")
    batch: int = Field(4, ge=1, description="parallel training streams")
    val_frac: float = Field(0.25, gt=0, lt=1, description="newest share of the rows held out to validate the candidate")
    min_gain: float = Field(0.0, ge=0, lt=1, description="relative QLIKE margin the candidate must beat the current model and every baseline by")
    min_active: int = Field(20, ge=0, description="holdout rows that must see a mid move within their horizon (a quiet holdout proves nothing)")
    baselines: list[Literal["ewma", "garch", "har"]] = Field(["ewma", "garch", "har"], description="baselines the candidate must beat on the holdout")
    seed: int = Field(0, ge=0, description="training seed")


class AdaptConfig(_Strict):
    """Regime adaptation while trading (paper and live): a background process fine-tunes
    the model on recent data on a schedule and when a shift is detected; a candidate that
    beats the current model and the baselines on held-out recent rows is swapped in.
    See docs/forecaster.md, "Adaptation"."""

    enabled: bool = Field(False, description="run the shift detector and the background retrainer")
    schedule_s: float = Field(3600.0, ge=0, le=MAX_SECONDS, description="retrain every this many seconds of market time (0 = only on a detected shift)")
    min_new_samples: int = Field(600, ge=50, description="grid rows recorded since the last job (after a shift: of the new regime) before a job starts")
    max_rows: int = Field(20_000, ge=100, description="recent grid rows kept for fine-tuning")
    rewarm_rows: int = Field(300, ge=0, description="recent input rows the swapped-in model is run over to set its LSTM state")
    registry: str = Field("runs/models", description="model registry folder: every swap is registered there as a new version")
    detector: AdaptDetectorConfig = Field(default_factory=AdaptDetectorConfig)
    tune: AdaptTuneConfig = Field(default_factory=AdaptTuneConfig)


class ForecasterConfig(_Strict):
    """The LSTM forecaster (models/): drift and volatility forecasts for the strategy.
    See docs/forecaster.md."""

    model: str = Field("default", description="'default' (the shipped pretrained model), 'none', or a model file path")
    backend: Literal["auto", "numba", "torchscript", "torchscript_async"] = Field(
        "auto", description="one-step inference: auto (torchscript_async on a live feed -- paper on exchange data, live; "
                            "numba on simulated or recorded time, where a run must not depend on thread timing), "
                            "numba (weights read from the TorchScript artifact), TorchScript inline, "
                            "or torchscript_async (the TorchScript step on a worker thread, off the quoting path)"
    )
    guard: bool = Field(True, description="fall back to the EWMA/zero-drift baseline while the model does worse")
    guard_window: int = Field(600, ge=10, description="guard: rolling window, scored forecasts (grid steps)")
    guard_min_obs: int = Field(120, ge=1, description="guard: forecasts scored before it may switch")
    guard_enter: float = Field(0.02, ge=0, description="guard: fall back when the model's loss exceeds the baseline's by this fraction")
    guard_exit: float = Field(0.02, ge=0, description="guard: return when the model's loss is below the baseline's by this fraction")
    guard_drift: bool = Field(True, description="guard the drift head too (against a zero-drift forecast)")
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)


class LiveRiskConfig(_Strict):
    """Risk limits of a live run (null = off). Money in quote currency."""

    max_order_notional: float | None = Field(None, gt=0, description="largest order, price*size, quote currency")
    max_open_orders: int | None = Field(None, ge=1, description="most orders working at once, both sides")
    max_orders_per_window: int | None = Field(40, ge=1, description="order requests (place + cancel) per rate_window_s; stay under the exchange's order-count limit")
    rate_window_s: float = Field(10.0, gt=0, description="order-rate window, seconds")
    max_loss: float | None = Field(None, gt=0, description="kill switch: loss since the run's start, quote currency")
    max_drawdown: float | None = Field(None, gt=0, description="kill switch: drop from the run's best PnL, quote currency")
    max_daily_loss: float | None = Field(None, gt=0, description="kill switch: loss since 00:00 UTC, quote currency")
    stale_after_s: float | None = Field(10.0, gt=0, description="no book update for this long pulls all quotes until data is fresh, seconds")


class LiveConfig(_Strict):
    """Live trading (mmbot live). Keys never come from here: MMBOT_API_KEY / MMBOT_API_SECRET
    (/ MMBOT_API_PASSWORD) in the environment, or key_file (mode 0600). See docs/live.md."""

    confirm: bool = Field(False, description="true = trade real money without --yes on the command line")
    sandbox: bool = Field(False, description="use the exchange's testnet (ccxt sandbox mode)")
    key_file: str | None = Field(None, description="path of a key file (mode 0600) instead of the environment")
    api_url: str | None = Field(None, description="trading REST base URL override (default: market_data.api_url)")
    ws_url: str | None = Field(None, description="trading websocket base URL override (default: market_data.ws_url)")
    request_timeout_s: float = Field(10.0, gt=0, description="HTTP timeout of order requests, seconds (a timeout leaves the order unknown until resolved)")
    fills_transport: Literal["auto", "ws", "rest"] = Field("auto", description="our fills: auto = watch_my_trades where ccxt.pro has it plus REST polling as a safety net; rest = poll fetch_my_trades")
    poll_interval_s: float = Field(2.0, gt=0, description="fetch_my_trades polling interval, seconds")
    reconcile_interval_s: float = Field(30.0, gt=0, description="periodic reconciliation with the exchange, seconds")
    client_id_prefix: str | None = Field(None, min_length=1, description="client order ids starting with this are ours (reconciliation cancels unknown ones); null = this database's own prefix mm<installation id>- (other databases' bots on the account are left alone)")
    unknown_orders: Literal["cancel", "adopt"] = Field("cancel", description="open orders with our prefix that the database does not know")
    dedicated_account: bool = Field(True, description="true: cancel-all uses the exchange's cancel_all_orders for the symbol (cancels other orders on it too); false: only ours, one by one")
    target_inventory: float | None = Field(None, description="base units the strategy treats as flat (its inventory skew is measured from here); null = the balance at start")
    dead_man_s: float | None = Field(60.0, gt=0, description="exchange-side cancel-all-after timeout, seconds, re-armed every third of it, where ccxt offers it (null = off)")
    balance_check: bool = Field(True, description="check the exchange balance against the recorded fills (at start and every reconciliation)")
    balance_tolerance: str = Field("0.00000001", description="allowed inventory mismatch, base units (decimal string)")
    risk: LiveRiskConfig = Field(default_factory=LiveRiskConfig)


class DatabaseConfig(_Strict):
    url: str = Field("sqlite:///runs/mmbot.db", description="SQLAlchemy URL or a file path (SQLite, WAL mode)")


class UiConfig(_Strict):
    live: bool = Field(True, description="show the live status panel when stdout is a terminal")
    refresh_per_s: float = Field(4.0, gt=0, description="status panel refresh rate, per second")


class MetricsConfig(_Strict):
    """The Prometheus endpoint (docs/operations.md lists the metrics)."""

    port: int | None = Field(None, ge=0, le=65535, description="serve /metrics on this TCP port; 0 = any free port (printed); null = no endpoint")
    host: str = Field("127.0.0.1", description="address to bind the endpoint to (0.0.0.0 = every interface)")
    update_interval_s: float = Field(0.25, gt=0, le=3600, description="wall seconds between copies of the engine's state into the metrics")
    loop_lag_interval_s: float = Field(0.25, gt=0, le=3600, description="period of the event-loop lag probe, seconds")
    linger_s: float = Field(0.0, ge=0, le=MAX_SECONDS, description="keep serving after the run ended, wall seconds (SIGINT/SIGTERM end it early)")


class LoggingConfig(_Strict):
    """Structured JSON-line event logs (docs/operations.md has the format)."""

    json_file: str | None = Field(None, description="JSON-lines event log file (rotated); null = none")
    max_bytes: int = Field(10_000_000, ge=1024, description="rotate the JSON log when it would exceed this size, bytes")
    backup_count: int = Field(5, ge=0, le=1000, description="rotated JSON log files kept (FILE.1 ... FILE.N)")


class AccountRiskConfig(_Strict):
    """Account-level risk across the markets of one process (``markets:``; null = off).

    Money limits are per quote currency: markets quoted in USDT are summed together, markets
    in USDC together, and each sum is held to the limit (amounts in different currencies are
    never added). Asset limits are in units of the asset, summed over every market whose base
    asset it is (BTC/USDT and BTC/USDC both add to BTC). See bot/portfolio.py."""

    max_total_notional: float | None = Field(None, gt=0, description="open orders (price * remaining size) plus positions (|base| * mid) of all markets, per quote currency; at the cap only quotes that reduce a position are kept")
    max_total_loss: float | None = Field(None, gt=0, description="kill switch: summed PnL of all markets below minus this, per quote currency, stops every market")
    max_asset_inventory: dict[str, Annotated[float, Field(gt=0)]] = Field(default_factory=dict, description="per base asset (e.g. BTC: 0.5): the markets' summed inventory may not go beyond +-this, asset units")
    stale_after_s: float | None = Field(30.0, gt=0, description="a market without a market event for this long (wall seconds) has its quotes pulled; the others go on (null = off)")


#: what a ``markets:`` entry may set (the rest -- database, ui, metrics, logging, account,
#: duration_s -- belongs to the process); ``data`` is a recording directory to replay
MARKET_KEYS = ("exchange", "symbol", "data", "pnl_snapshot_interval_s", "sim", "market_data", "paper", "replay",
               "forecaster", "strategy", "live")


class Config(_Strict):
    exchange: str = Field("sim", description="'sim' = the simulated market, else a ccxt exchange id")
    symbol: str = Field("SIM/USD", description="ccxt unified symbol")
    duration_s: float | None = Field(600.0, gt=0, le=MAX_SECONDS, description="run length: simulated seconds (sim) or wall seconds; null = until stopped")
    pnl_snapshot_interval_s: float = Field(1.0, gt=0, description="PnL snapshot interval, seconds of market time")
    sim: SimConfig = Field(default_factory=SimConfig)
    market_data: MarketDataConfig = Field(default_factory=MarketDataConfig)
    paper: PaperConfig = Field(default_factory=PaperConfig)
    replay: ReplayConfig = Field(default_factory=ReplayConfig)
    forecaster: ForecasterConfig = Field(default_factory=ForecasterConfig)
    strategy: StrategyParams = Field(default_factory=StrategyParams)
    live: LiveConfig = Field(default_factory=LiveConfig)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    ui: UiConfig = Field(default_factory=UiConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    account: AccountRiskConfig = Field(default_factory=AccountRiskConfig)
    markets: list[Any] | None = Field(
        None, description="several markets in one process: each entry has exchange (default: the top-level one) and symbol, "
        "optionally data (a recording to replay) and overrides of sim, market_data, paper, replay, forecaster, strategy, live "
        "(deep-merged over this file's sections); null = the one market of exchange/symbol")


class MarketSpec(BaseModel):
    """One market of a multi-market config: its full, validated config (the shared sections
    with the entry's overrides merged in; ``markets`` is None) and an optional recording."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    index: int
    cfg: Config
    data: str | None = None

    @property
    def name(self) -> str:
        return f"{self.cfg.exchange} {self.cfg.symbol}"


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def market_specs(cfg: Config, where: str = "(options)") -> list[MarketSpec]:
    """The markets a config trades: its ``markets:`` entries, each validated as a whole config
    (ConfigError naming ``markets[i]``, the market and the dotted field), or the one market
    of ``exchange``/``symbol`` when there is no ``markets:``. Two entries of the same
    (exchange, symbol) are an error."""
    if not cfg.markets:
        if cfg.markets is not None:
            raise ConfigError(f"invalid config {where}: markets: an empty list (give at least one market, or leave markets out)")
        return [MarketSpec(index=0, cfg=cfg)]
    shared = cfg.model_dump()
    shared["markets"] = None
    specs: list[MarketSpec] = []
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(cfg.markets):
        at = f"markets[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"invalid config {where}: {at}: must be a mapping with exchange and symbol, got {type(entry).__name__}")
        bad = [k for k in entry if k not in MARKET_KEYS]
        if bad:
            allowed = ", ".join(MARKET_KEYS)
            raise ConfigError(f"invalid config {where}: {at}.{bad[0]}: not a per-market field (a market may set {allowed})")
        if not isinstance(entry.get("symbol"), str) or not entry["symbol"].strip():
            raise ConfigError(f"invalid config {where}: {at}.symbol: required (a ccxt unified symbol such as BTC/USDT)")
        data = entry.get("data")
        if data is not None and not isinstance(data, str):
            raise ConfigError(f"invalid config {where}: {at}.data: must be a recording directory path (got {data!r})")
        over = {k: v for k, v in entry.items() if k != "data"}
        name = f"{entry.get('exchange', cfg.exchange)} {entry['symbol']}"
        for k, v in over.items():
            if k in ("sim", "market_data", "paper", "replay", "forecaster", "strategy", "live") and not isinstance(v, dict):
                raise ConfigError(f"invalid config {where}: {at} ({name}): {k}: must be a mapping of overrides, got {type(v).__name__}")
        try:
            mcfg = config_from_dict(_deep_merge(shared, over), where)
        except ConfigError as e:
            msg = str(e).replace(f"invalid config {where}: ", "", 1)
            raise ConfigError(f"invalid config {where}: {at} ({name}): {msg}") from None
        key = (mcfg.exchange, mcfg.symbol)
        if key in seen:
            raise ConfigError(f"invalid config {where}: {at} ({name}): the same market as markets[{seen[key]}] "
                              f"(each exchange and symbol once)")
        seen[key] = i
        specs.append(MarketSpec(index=i, cfg=mcfg, data=data))
    return specs


def forecaster_backend(cfg: "Config", live_feed: bool = False) -> str:
    """The one-step backend a run uses: ``forecaster.backend``, with ``auto`` resolved to
    ``torchscript_async`` when the run is paced by a live feed (``live_feed``: paper on an
    exchange's public data, live trading; the TorchScript module runs off the quoting path) and
    to ``numba`` on simulated or recorded time (the simulated market, replays, backtests, tuning:
    their results must be reproducible, so they cannot depend on a worker thread's timing; the
    numba backend is tested equal to the TorchScript step to float32 rounding). Backtests with
    the forecast cache use the TorchScript batch forward whatever this says."""
    b = cfg.forecaster.backend
    if b != "auto":
        return b
    return "torchscript_async" if live_feed else "numba"


def build_forecaster(cfg: "Config", live_feed: bool = False):
    """The configured forecaster, or None for ``forecaster.model: none``. A missing or
    mismatched model file raises DataError naming it. ``live_feed``: see
    :func:`forecaster_backend`; with ``forecaster.adapt`` on, ``auto`` resolves to ``numba``
    on live feeds too (the hot swap happens on the quoting path)."""
    f = cfg.forecaster
    if f.model.lower() == "none":
        return None
    from models.forecaster import GuardConfig, load_forecaster

    guard = GuardConfig(enabled=f.guard, window=f.guard_window, min_obs=f.guard_min_obs, enter=f.guard_enter,
                        exit=f.guard_exit, drift=f.guard_drift)
    backend = forecaster_backend(cfg, live_feed)
    if f.adapt.enabled and backend.endswith("_async"):
        # the adaptive wrapper swaps the predictor and guard of the forecaster it holds, between
        # two of its steps: a forecaster stepping on a worker thread has them on that thread
        if f.backend != "auto":
            raise ConfigError(f"forecaster.backend {f.backend} cannot be used with forecaster.adapt.enabled: "
                              "the hot swap needs the forecaster on the quoting path (use numba, torchscript or auto)")
        backend = "numba"
    fc = load_forecaster(f.model, backend=backend, guard=guard)
    if f.adapt.enabled:
        from models.adapt.swap import wrap_from_config

        return wrap_from_config(fc, f.adapt)
    return fc


def _format_errors(where: str, e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        inp = err.get("input")
        shown = "" if isinstance(inp, dict) or err["type"] == "missing" else f" (got {inp!r})"
        parts.append(f"{loc}: {msg}{shown}")
    return f"invalid config {where}: " + "; ".join(parts)


def _non_finite(node: Any, path: str = "") -> tuple[str, float] | None:
    """The first float that is NaN or infinite in a dumped config, with its dotted path
    (catches models whose own validation allows them, e.g. the strategy's)."""
    if isinstance(node, float) and not math.isfinite(node):
        return path, node
    if isinstance(node, dict):
        for k, v in node.items():
            hit = _non_finite(v, f"{path}.{k}" if path else str(k))
            if hit:
                return hit
    if isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            hit = _non_finite(v, f"{path}.{i}")
            if hit:
                return hit
    return None


def config_from_dict(data: Any, where: str = "(options)") -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config {where}: the top level must be a mapping, got {type(data).__name__}")
    try:
        cfg = Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(where, e)) from None
    hit = _non_finite({k: v for k, v in cfg.model_dump().items() if k != "markets"})  # markets: checked each below
    if hit:
        raise ConfigError(f"invalid config {where}: {hit[0]}: must be a finite number (got {hit[1]})")
    if cfg.markets is not None:
        market_specs(cfg, where)  # every market validated now: a bad entry fails at load
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Load and validate a YAML config; ``None`` gives the built-in defaults."""
    if path is None:
        return Config()
    return config_from_dict(read_yaml_file(path, "config file"), str(path))


def read_yaml_file(path: str | Path, what: str):
    """The YAML document in ``path`` (``what`` names it in errors, e.g. "config file");
    ConfigError with one line for a missing, unreadable, non-UTF-8 or invalid file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{what} {p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except IsADirectoryError:
        raise ConfigError(f"{what} {p} is a directory") from None
    except FileNotFoundError:
        raise ConfigError(f"{what} {p} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{what} {p} cannot be read: {e.strerror}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{what} {p}:{at} is not valid YAML: {getattr(e, 'problem', e)}") from None


def with_overrides(cfg: Config, **dotted: Any) -> Config:
    """A copy of ``cfg`` with ``{"a.b": value}`` overrides applied and re-validated."""
    data = cfg.model_dump()
    for key, value in dotted.items():
        if value is None:
            continue
        node = data
        *parents, last = key.split(".")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return config_from_dict(data, "(command-line options)")
