"""Wiring of a live run: credentials, the trading client, reconciliation, risk limits and
the live engine, from a :class:`~bot.config.Config`."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from bot.config import Config, build_forecaster
from bot.errors import ConfigError
from bot.exchanges.live import CcxtLiveExchange
from bot.live.engine import LiveEngine
from bot.live.reconcile import Reconciler
from bot.live.risk import RiskLimits
from bot.live.secrets import Credentials
from bot.persistence.store import Store
from strategies.market_maker import build_strategy, check_session

FROM_CONFIG = object()


def risk_limits(cfg: Config) -> RiskLimits:
    r = cfg.live.risk
    return RiskLimits(
        max_order_notional=None if r.max_order_notional is None else Decimal(repr(r.max_order_notional)),
        max_open_orders=r.max_open_orders, max_orders_per_window=r.max_orders_per_window, rate_window_s=r.rate_window_s,
        max_loss=r.max_loss, max_drawdown=r.max_drawdown, max_daily_loss=r.max_daily_loss, stale_after_s=r.stale_after_s,
    )


def config_snapshot(cfg: Config) -> dict:
    """The validated config as stored with the run. It holds no secrets (they never enter
    the config); the key file's path is kept, its contents are not."""
    return cfg.model_dump(mode="json")


def build_live_engine(cfg: Config, store: Store, credentials: Credentials, *, on_tick=None, handle_signals: bool = True,
                      forecaster=FROM_CONFIG, clients=None) -> LiveEngine:
    """A live run on ``cfg.exchange`` / ``cfg.symbol`` with the configured strategy.
    ``clients`` (a :class:`bot.market_data.shared.SharedClients`): the markets of one process
    share one market-data client and one trading client per exchange."""
    from bot.app import build_source

    lv = cfg.live
    session_s = cfg.duration_s  # the run's length (wall seconds live): the finite AS horizon; None = open-ended
    check_session(cfg.strategy, session_s)
    try:
        tol = Decimal(lv.balance_tolerance)
    except InvalidOperation:
        raise ConfigError(f"invalid config: live.balance_tolerance: not a decimal number (got {lv.balance_tolerance!r})") from None
    prefix = lv.client_id_prefix or f"mm{store.installation_id}-"  # ids: mm<installation>-<run>-<n>
    client = None
    if clients is not None:
        from bot.exchanges.live import create_trading_client
        from bot.market_data.shared import LeasedClient

        api_url, ws_url = lv.api_url or cfg.market_data.api_url, lv.ws_url or cfg.market_data.ws_url
        client = LeasedClient(clients, ("trading", cfg.exchange.strip().lower(), api_url, ws_url, lv.sandbox), lambda: create_trading_client(
            cfg.exchange, credentials=credentials.ccxt(), api_url=api_url, ws_url=ws_url, sandbox=lv.sandbox,
            timeout_ms=int(lv.request_timeout_s * 1000)))
    exchange = CcxtLiveExchange(
        cfg.exchange, credentials=credentials.ccxt(), api_url=lv.api_url or cfg.market_data.api_url,
        ws_url=lv.ws_url or cfg.market_data.ws_url, sandbox=lv.sandbox, request_timeout_s=lv.request_timeout_s,
        fills_transport=lv.fills_transport, poll_interval_s=lv.poll_interval_s, dedicated_account=lv.dedicated_account,
        is_ours=lambda cid: cid.startswith(prefix), dead_man_s=lv.dead_man_s, client=client,
    )
    reconciler = Reconciler(store, exchange, cfg.symbol, is_ours=lambda cid: cid.startswith(prefix),
                            unknown_orders=lv.unknown_orders, tolerance=tol, balance_check=lv.balance_check,
                            order_size=Decimal(repr(cfg.strategy.controls.order_size)))
    c = cfg.strategy.controls
    return LiveEngine(
        build_source(cfg, clients), exchange, lambda market: build_strategy(cfg.strategy, market, session_s), store,
        reconciler=reconciler, limits=risk_limits(cfg), reconcile_interval_s=lv.reconcile_interval_s,
        target_inventory=None if lv.target_inventory is None else Decimal(repr(lv.target_inventory)),
        forecaster=build_forecaster(cfg, live_feed=True) if forecaster is FROM_CONFIG else forecaster,
        config_snapshot=config_snapshot(cfg), tolerance_ticks=c.refresh_tolerance_ticks,
        max_order_age_s=c.max_order_age_s, post_only=c.post_only, pnl_interval_s=cfg.pnl_snapshot_interval_s,
        on_tick=on_tick, handle_signals=handle_signals,
    )
