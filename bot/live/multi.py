"""`mmbot live` on a config with ``markets:``: several markets of one exchange account in one
process (bot/multi.py), one market-data client and one trading client for the exchange.

What a multi-market live config must satisfy (checked before the database is touched; one
line naming the market otherwise):

* every market is on the same real exchange (one account, one set of keys); no ``sim``
  markets and no recordings (``data:``);
* ``live.sandbox``, ``live.api_url`` / ``ws_url`` and ``live.key_file`` are the same for
  every market (one account);
* two markets that share a currency (BTC/USDT and ETH/USDT share USDT) need
  ``live.balance_check: false``: the balance check of a market assumes the account's base
  and quote balances move only with that market's fills.
"""

from __future__ import annotations

from bot.config import Config, MarketSpec
from bot.errors import ConfigError


def check_live_markets(specs: list[MarketSpec], where: str) -> None:
    """ConfigError (one line) for a ``markets:`` config mmbot live cannot trade safely."""
    first = specs[0].cfg
    for s in specs:
        c, at = s.cfg, f"invalid config {where}: markets[{s.index}] ({s.name})"
        if c.exchange == "sim" or s.data is not None:
            raise ConfigError(f"{at}: mmbot live trades real exchanges only (no sim market, no data: recording)")
        if c.exchange.strip().lower() != first.exchange.strip().lower():
            raise ConfigError(f"{at}: exchange: every market of one mmbot live process is on one exchange account "
                              f"({first.exchange}); run one process per exchange")
        for f in ("sandbox", "api_url", "ws_url", "key_file"):
            if getattr(c.live, f) != getattr(first.live, f):
                raise ConfigError(f"{at}: live.{f}: must be the same for every market (one account)")
    seen: dict[str, MarketSpec] = {}
    for s in specs:
        base, _, quote = s.cfg.symbol.partition("/")
        for cur in {base, quote.split(":")[0]}:
            other = seen.get(cur)
            if other is not None and (s.cfg.live.balance_check or other.cfg.live.balance_check):
                raise ConfigError(f"invalid config {where}: markets[{s.index}] ({s.name}) and markets[{other.index}] "
                                  f"({other.name}) share {cur}: set live.balance_check: false (a market's balance check "
                                  f"assumes its currencies move only with its own fills)")
            seen.setdefault(cur, s)


def live_specs(cfg: Config, where: str) -> list[MarketSpec]:
    from bot.config import market_specs

    specs = market_specs(cfg, where)
    check_live_markets(specs, where)
    return specs
