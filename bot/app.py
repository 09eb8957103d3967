"""Wiring: build the market source, exchange, strategy and store of a run from a Config."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from functools import partial

from bot.config import Config, build_forecaster
from bot.engine import Engine
from bot.errors import ConfigError
from bot.inventory import Inventory
from bot.market_data.base import MarketSource
from bot.persistence.store import Store
from paper_trading.fees import MakerTakerFees
from paper_trading.fill_models import IntensityFillModel
from paper_trading.paper_exchange import PaperExchange
from paper_trading.sim_market import SimulatedMarket
from strategies.market_maker import build_strategy, check_session


def _decimal(field: str, value: str) -> Decimal:
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise ConfigError(f"invalid config: {field}: not a decimal number (got {value!r})") from None
    if not d.is_finite() or d <= 0:
        raise ConfigError(f"invalid config: {field}: must be a positive number (got {value!r})")
    return d


def build_source(cfg: Config, clients=None) -> MarketSource:
    """The configured market source; ``clients`` (a :class:`bot.market_data.shared.SharedClients`)
    lends live sources the exchange's client shared by the markets of one process."""
    if cfg.exchange == "sim":
        s = cfg.sim
        return SimulatedMarket(
            symbol=cfg.symbol, s0=s.s0, sigma=s.sigma, dt_s=s.dt_s, duration_s=cfg.duration_s or 3600.0,
            tick=_decimal("sim.tick", s.tick), lot=_decimal("sim.lot", s.lot), spread_ticks=s.spread_ticks,
            depth_levels=s.depth_levels, seed=s.seed, speed=s.speed,
            maker_fee=cfg.paper.maker_fee, taker_fee=cfg.paper.taker_fee,
        )
    from bot.market_data.ccxt_poll import CcxtPollingSource
    from bot.market_data.ccxt_ws import CcxtWsSource, has_websocket_book

    md = cfg.market_data
    if clients is not None:
        from bot.market_data.shared import SharedPollingSource, SharedWsSource

        ws_cls, poll_cls = partial(SharedWsSource, clients), partial(SharedPollingSource, clients)
    else:
        ws_cls, poll_cls = CcxtWsSource, CcxtPollingSource
    if md.transport == "ws" or (md.transport == "auto" and has_websocket_book(cfg.exchange)):
        return ws_cls(cfg.exchange, cfg.symbol, depth=md.depth, api_url=md.api_url, ws_url=md.ws_url,
                      duration_s=cfg.duration_s, keepalive_s=md.ws_keepalive_s)
    return poll_cls(
        cfg.exchange, cfg.symbol, depth=md.depth, poll_interval_s=md.poll_interval_s,
        rate_limit_per_s=md.rate_limit_per_s, api_url=md.api_url, duration_s=cfg.duration_s,
    )


FROM_CONFIG = object()  # "build the forecaster the config names" (None means no forecaster)


def build_paper_engine(cfg: Config, store: Store, on_tick=None, handle_signals: bool = True, forecaster=FROM_CONFIG,
                       clients=None) -> Engine:
    """A paper run: the configured market source, the paper exchange, the configured strategy
    and forecaster (pass ``forecaster`` to reuse one already loaded; ``clients`` to share
    ccxt clients between the markets of one process)."""
    source = build_source(cfg, clients)
    session_s = getattr(source, "duration_s", None)  # the run's length: the finite AS horizon
    check_session(cfg.strategy, session_s)
    p = cfg.paper
    base, quote = Decimal(repr(p.initial_base)), Decimal(repr(p.initial_quote))
    exchange = PaperExchange(
        IntensityFillModel(p.A or cfg.sim.A, p.k or cfg.sim.k, seed=cfg.sim.seed + 1),
        MakerTakerFees(p.maker_fee, p.taker_fee), base, quote,
    )
    c = cfg.strategy.controls
    return Engine(
        source, exchange, lambda market: build_strategy(cfg.strategy, market, session_s), store, mode="paper",
        forecaster=build_forecaster(cfg, live_feed=cfg.exchange != "sim") if forecaster is FROM_CONFIG else forecaster,
        config_snapshot=cfg.model_dump(mode="json"), inventory=Inventory(base=base, cash=quote),
        tolerance_ticks=c.refresh_tolerance_ticks, max_order_age_s=c.max_order_age_s, post_only=c.post_only,
        pnl_interval_s=cfg.pnl_snapshot_interval_s, on_tick=on_tick, handle_signals=handle_signals,
    )
