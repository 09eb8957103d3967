"""Creating ccxt exchange clients and loading one market, with one-line errors.

Everything here uses ``ccxt.async_support`` (asyncio clients). Conventions follow
:mod:`bot`: prices quote/base, sizes base units; ccxt itself reports timestamps in
milliseconds, callers convert to ns.

Error mapping (every ccxt failure becomes a one-line :class:`~bot.errors.ExchangeError`):

* unknown exchange id   -> ``unknown exchange 'foo' (ccxt knows: ...close matches...)``
* unknown symbol        -> ``unknown symbol 'XXX/YYY' on binance``
* ``ccxt.NetworkError`` (incl. ``RequestTimeout``, ``ExchangeNotAvailable``, ``DDoSProtection``)
                        -> ``cannot reach binance: <short reason>``
* other ``ccxt.BaseError`` -> ``binance answered an error: <short reason>``

Credentials (apiKey, secret, password, uid, ...) are passed to ccxt and never logged.

Binance specifics (ccxt 4.5.x, checked against ``ccxt/async_support/binance.py``):

* ``load_markets`` calls ``fetch_currencies`` first; that endpoint
  (``sapi/v1/capital/config/getall``) is private and ccxt skips it without keys. With keys
  it would be called, so we set ``options['fetchCurrencies'] = False``: mmbot needs no
  deposit/withdraw metadata.
* ``fetch_markets`` loads the types in ``options['fetchMarkets']['types']`` (default
  spot + linear + inverse = three exchangeInfo calls on three hosts). We default to
  ``['spot']`` so only ``GET /api/v3/exchangeInfo`` is called.
* with keys and ``options['fetchMargins']`` true, ccxt also calls the private
  ``sapi/v1/margin/allPairs`` and ``isolated/allPairs``; we default it to False.

Any of these defaults can be overridden through ``options``.
"""

from __future__ import annotations

import difflib
import logging
from typing import Any, Mapping
from urllib.parse import urlsplit, urlunsplit

import ccxt
import ccxt.async_support as ccxt_async

from bot.errors import ExchangeError
from bot.market import MarketInfo

log = logging.getLogger(__name__)

#: Options applied per exchange id before the caller's ``options`` (caller wins).
_DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "binance": {
        "fetchMarkets": {"types": ["spot"]},
        "fetchCurrencies": False,
        "fetchMargins": False,
        "defaultType": "spot",
    },
}

_MAX_REASON = 200


# -- helpers ---------------------------------------------------------------------------
def short_reason(exc: BaseException, exchange_id: str | None = None, limit: int = _MAX_REASON) -> str:
    """One-line, bounded description of ``exc`` (and of its cause, for ccxt network errors).

    ccxt network errors carry only ``"<id> <METHOD> <url>"``; the useful part (connection
    refused, timeout, HTTP 503) is in the message tail or in ``__cause__``. ccxt's leading
    ``"<exchange_id> "`` is dropped when ``exchange_id`` is given (the caller names it).
    """
    text = " ".join(str(exc).split())  # collapse newlines / runs of spaces
    if exchange_id and text.startswith(exchange_id + " "):
        text = text[len(exchange_id) + 1 :]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and not isinstance(cause, ccxt.BaseError):
        ctext = " ".join(str(cause).split()) or type(cause).__name__
        text = f"{text} ({ctext})" if text else ctext
    if isinstance(exc, ccxt.RequestTimeout):
        text = f"request timed out: {text}"
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _close_matches(name: str, choices: list[str], n: int = 5) -> list[str]:
    matches = difflib.get_close_matches(name.lower(), [c.lower() for c in choices], n=n, cutoff=0.5)
    lowered = {c.lower(): c for c in choices}
    return [lowered[m] for m in matches]


def _deep_merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def rewrite_url(url: str, api_url: str) -> str:
    """Replace scheme, host and port of ``url`` by those of ``api_url``, keep path and query.

    ``rewrite_url("https://api.binance.com/api/v3", "http://127.0.0.1:8080")`` ->
    ``"http://127.0.0.1:8080/api/v3"``. A path prefix in ``api_url`` is prepended to the path.
    ccxt host templates such as ``https://api.{hostname}/v5`` are handled (the whole
    host is replaced).
    """
    target = urlsplit(api_url)
    src = urlsplit(url)
    prefix = target.path.rstrip("/")
    return urlunsplit((target.scheme, target.netloc, prefix + src.path, src.query, src.fragment))


def _rewrite_urls(node: Any, api_url: str) -> Any:
    if isinstance(node, str):
        return rewrite_url(node, api_url) if "://" in node else node
    if isinstance(node, dict):
        return {k: _rewrite_urls(v, api_url) for k, v in node.items()}
    if isinstance(node, list):
        return [_rewrite_urls(v, api_url) for v in node]
    return node


def _redact(url: str) -> str:
    """``url`` without user:password (for logs)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- public API ------------------------------------------------------------------------
def create_ccxt_exchange(
    exchange_id: str,
    *,
    api_url: str | None = None,
    options: dict | None = None,
    credentials: dict | None = None,
) -> "ccxt_async.Exchange":
    """Create a ``ccxt.async_support`` client for ``exchange_id`` (e.g. ``"binance"``).

    Args:
        exchange_id: ccxt exchange id, case-insensitive.
        api_url: ``scheme://host[:port]`` to send every REST call to instead of the real
            exchange (tests, proxies, a local fake): each URL in ``exchange.urls['api']``
            keeps its path and gets this scheme/host/port.
        options: ccxt ``options``, deep-merged over mmbot's per-exchange defaults (for
            binance: spot markets only, no private currency/margin calls).
        credentials: ccxt credential fields (``apiKey``, ``secret``, ``password``, ...).
            Never logged.

    The client has ``enableRateLimit=True`` (ccxt's own per-endpoint weights). It opens
    its HTTP session lazily; the caller must ``await exchange.close()``.

    Raises:
        ExchangeError: unknown exchange id.
    """
    eid = (exchange_id or "").strip().lower()
    known: list[str] = list(ccxt_async.exchanges)
    if eid not in known or not hasattr(ccxt_async, eid):
        close = _close_matches(eid, known)
        hint = ", ".join(close) if close else "none close; see ccxt.exchanges"
        raise ExchangeError(f"unknown exchange {exchange_id!r} (ccxt knows: {hint})")

    merged = _deep_merge(_DEFAULT_OPTIONS.get(eid, {}), options or {})
    config: dict[str, Any] = {"enableRateLimit": True, "options": merged}
    for key, value in (credentials or {}).items():
        if value is not None:
            config[key] = value
    try:
        exchange = getattr(ccxt_async, eid)(config)
    except ccxt.BaseError as e:
        raise ExchangeError(f"cannot create ccxt client for {eid}: {short_reason(e, eid)}") from None

    if api_url:
        if "://" not in api_url:
            raise ExchangeError(f"api_url {api_url!r} must look like 'http://host:port'")
        exchange.urls = dict(exchange.urls)
        exchange.urls["api"] = _rewrite_urls(exchange.urls.get("api"), api_url)
        if urlsplit(api_url).scheme == "http":
            # ccxt's close() sleeps timeout_on_exit (250 ms) so TLS connections can shut
            # down cleanly; plain-HTTP endpoints (local fakes, proxies) need no such wait.
            exchange.timeout_on_exit = 0
    log.info(
        "ccxt client %s created (api_url=%s, authenticated=%s)",
        eid,
        _redact(api_url) if api_url else "default",
        bool(credentials and credentials.get("apiKey")),
    )
    return exchange


def check_base_urls(api_url: str | None, ws_url: str | None) -> None:
    """ExchangeError unless each given base URL has a scheme (``http://host:port``, ``ws://host:port``)."""
    for url, what in ((api_url, "api_url"), (ws_url, "ws_url")):
        if url and "://" not in url:
            raise ExchangeError(f"{what} {url!r} must look like 'http://host:port' / 'ws://host:port'")


def point_at(ex: Any, api_url: str | None, ws_url: str | None) -> None:
    """Rewrite every URL the ccxt client ``ex`` holds onto one REST base (``api_url``: public
    and private REST) and one websocket base (``ws_url``: market streams and the websocket
    API), so that one local server can stand in for the whole exchange. None leaves that
    part as ccxt has it."""
    if not (api_url or ws_url):
        return
    api = dict(ex.urls.get("api") or {})
    ws = api.pop("ws", None)
    if api_url:
        api = _rewrite_urls(api, api_url)
    if ws is not None:
        api["ws"] = _rewrite_urls(ws, ws_url) if ws_url else ws
    ex.urls = dict(ex.urls)
    ex.urls["api"] = api
    if api_url and urlsplit(api_url).scheme == "http":
        ex.timeout_on_exit = 0  # no TLS to wind down (see create_ccxt_exchange)


def _ws_url_from(api_url: str) -> str:
    p = urlsplit(api_url)
    scheme = {"http": "ws", "https": "wss"}.get(p.scheme, p.scheme)
    return urlunsplit((scheme, p.netloc, p.path, "", ""))


def create_pro_exchange(exchange_id: str, *, api_url: str | None = None, ws_url: str | None = None,
                        options: dict | None = None) -> Any:
    """A ``ccxt.pro`` (websocket) client configured like :func:`create_ccxt_exchange` (same
    per-exchange default options, ``enableRateLimit``). ``api_url`` rewrites the REST urls
    (scheme/host/port, paths kept), ``ws_url`` the ``urls['api']['ws']`` tree (default:
    ``api_url`` with ``http`` -> ``ws``). Raises ExchangeError when ccxt.pro does not know
    ``exchange_id``."""
    import ccxt.pro as ccxtpro

    eid = exchange_id.strip().lower()
    if eid not in ccxtpro.exchanges or not hasattr(ccxtpro, eid):
        raise ExchangeError(f"{exchange_id!r} has no websocket client in ccxt.pro (use REST polling)")
    merged = _deep_merge(_DEFAULT_OPTIONS.get(eid, {}), options or {})
    try:
        ex = getattr(ccxtpro, eid)({"enableRateLimit": True, "options": merged})
    except ccxt.BaseError as e:
        raise ExchangeError(f"cannot create ccxt.pro client for {eid}: {short_reason(e, eid)}") from None
    check_base_urls(api_url, ws_url)
    point_at(ex, api_url, ws_url if ws_url is not None or not api_url else _ws_url_from(api_url))
    return ex


def map_ccxt_error(exc: BaseException, exchange_id: str, symbol: str | None = None) -> ExchangeError:
    """Translate a ccxt exception into a one-line :class:`ExchangeError` (not raised)."""
    if isinstance(exc, ccxt.BadSymbol) and symbol is not None:
        return ExchangeError(f"unknown symbol {symbol!r} on {exchange_id}")
    if isinstance(exc, ccxt.NetworkError):
        return ExchangeError(f"cannot reach {exchange_id}: {short_reason(exc, exchange_id)}")
    if isinstance(exc, ccxt.BaseError):
        return ExchangeError(f"{exchange_id} answered an error: {short_reason(exc, exchange_id)}")
    return ExchangeError(f"{exchange_id}: unexpected {type(exc).__name__}: {short_reason(exc, exchange_id)}")


async def load_market(exchange: "ccxt_async.Exchange", symbol: str) -> MarketInfo:
    """Load the exchange's markets (cached by ccxt) and return :class:`MarketInfo` for ``symbol``.

    ``symbol`` is a ccxt unified symbol (``"BTC/USDT"``); the exchange's own id
    (``"BTCUSDT"``) is accepted too. Tick and lot come from ccxt's ``precision`` (read with
    ``exchange.precisionMode``), min size / min notional from ``limits``, fees from the
    market's maker/taker rates.

    Raises:
        ExchangeError: unknown symbol, exchange unreachable, or an error reply.
    """
    eid = exchange.id
    try:
        await exchange.load_markets()
    except ccxt.BaseError as e:
        raise map_ccxt_error(e, eid) from None
    try:
        market = exchange.market(symbol)
    except ccxt.BaseError:
        close = _close_matches(symbol, list(exchange.markets or {}), n=3)
        hint = f" (did you mean: {', '.join(close)}?)" if close else ""
        raise ExchangeError(f"unknown symbol {symbol!r} on {eid}{hint}") from None
    return MarketInfo.from_ccxt(market, exchange.precisionMode)
