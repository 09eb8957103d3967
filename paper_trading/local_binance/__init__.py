"""A local exchange on 127.0.0.1 that speaks Binance spot's API well enough for
unmodified ccxt 4.5 (``ccxt.async_support.binance`` and ``ccxt.pro.binance``), with fault
injection and its own record - for the live adapter's tests and for trying ``mmbot live``
without an exchange account.

Run standalone::

    python -m paper_trading.local_binance --port 8765 --symbol BTC/USDT [--drive]

(prints the REST and websocket base URLs, the API key and secret to use). In Python::

    async with LocalBinance() as ex:          # random free port
        client = create_ccxt_exchange("binance", api_url=ex.base_url,
                                      credentials={"apiKey": ex.api_key, "secret": ex.secret})

Point ccxt at it by rewriting every ``urls['api']`` entry to ``base_url`` and every
``urls['api']['ws']`` entry (market streams *and* ``ws-api``) to ``ws_url``, keeping paths.

Units: prices quote/base, quantities base units, times ms since the epoch (server clock).

Served REST API (Binance paths, parameters and reply shapes; signed endpoints check
``X-MBX-APIKEY``, the HMAC-SHA256 ``signature`` and ``timestamp`` vs ``recvWindow``):

* public: ``GET /api/v3/ping``, ``/time``, ``/exchangeInfo``, ``/depth``, ``/trades``, ``/aggTrades``,
  ``/ticker/24hr`` (one symbol)
* signed: ``POST /api/v3/order`` (LIMIT with timeInForce GTC/IOC/FOK, LIMIT_MAKER = ccxt
  ``postOnly``, MARKET; ``newClientOrderId``; ``newOrderRespType`` ACK/RESULT/FULL),
  ``DELETE /api/v3/order`` (by ``orderId`` or ``origClientOrderId``), ``GET /api/v3/order``
  (either id), ``GET /api/v3/openOrders``, ``DELETE /api/v3/openOrders`` (ccxt
  ``cancel_all_orders``), ``GET /api/v3/allOrders``, ``GET /api/v3/myTrades`` (``fromId``,
  ``startTime``/``endTime``, ``orderId``, ``limit``), ``GET /api/v3/account``
* API-key only: ``POST/PUT/DELETE /api/v3/userDataStream`` (legacy listenKey)

Binance spot has **no** countdown cancel-all (dead-man switch): ``countdownCancelAll`` exists
only on Binance futures/options, and ccxt 4.5 has no ``cancelAllOrdersAfter`` for binance at
all, so neither has this server; an adapter must fall back (cancel-all on exit, stale-data
pull) and say so.

Errors as Binance sends them (ccxt's mapping in brackets): -2010 "Order would immediately
match and take." [OrderImmediatelyFillable], -2010 "Account has insufficient balance for
requested action." [InsufficientFunds], -2010 "Duplicate order sent." for a
``newClientOrderId`` equal to that of an *open* order [InvalidOrder], -2011 "Unknown order
sent." on cancel [OrderNotFound], -2013 "Order does not exist." on fetch [OrderNotFound],
-2014 / -2015 bad key [AuthenticationError], -1022 bad signature, -1021 timestamp outside
recvWindow [InvalidNonce], -1013 filter failures [InvalidOrder], 429 / 418 with
``Retry-After`` and -1003 [DDoSProtection; ccxt's binance raises it for both codes].

USD-M futures (``/fapi``, :mod:`.futures`): perpetuals for ccxt ``binanceusdm`` --
markets, book, orders (post-only = GTX), user trades, balance and positions
(``fetch_positions``); a second state, :attr:`LocalBinance.futures`, whose fills move a
signed position.

Websockets (same port): market streams ``/ws``, ``/ws/<n>``, ``/stream`` (depth diffs with
Binance's U/u sequence, trades; see :mod:`.market_ws`) and the WebSocket API ``/ws-api/v3``
with ``userDataStream.subscribe.signature`` pushing ``executionReport`` and
``outboundAccountPosition`` (ccxt 4.5's spot ``watch_orders`` / ``watch_my_trades`` /
``watch_balance``; see :mod:`.user_ws`).

Matching (see :mod:`.state`): an external book set by the test; our crossing orders take
from it; our resting orders fill only against simulated taker flow
:meth:`LocalBinance.taker_trade` (partial and full fills, trade ids shared with the public
trade stream, fees in the received asset -- or in BNB with ``LocalBinance(fee_asset="BNB")``
-- balances move, free/locked).

Faults, from Python (:class:`LocalBinance`) or the admin API:

* REST, queued per request (:mod:`.faults`): ``fault("timeout", "order")`` (order placed,
  reply held until the client times out), ``fault("timeout", "cancel")``, ``fault("drop", ...)``
  (connection closed after executing), ``fault("http", status=503[, execute=True])``,
  ``fault("rate_limit", retry_after_s=2)`` (429), ``fault("ban", retry_after_s=5)`` (418
  until lifted or expired; :attr:`LocalBinance.rejected_while_banned` counts the storm),
  ``fault("auth")``, ``fault("http", status=400, code=-1021, msg=...)``, ``fault("latency", delay_s=...)``;
* clock skew: :attr:`LocalBinance.clock_offset_ms` (server clock ahead/behind; recvWindow
  is enforced on every signed request); :meth:`LocalBinance.revoke_key` (-2015 from now on);
* natural errors: duplicate client id, insufficient balance, unknown order;
* market data: :attr:`LocalBinance.book_fault` (``"crossed"`` / ``"empty"``: a broken REST
  depth), :attr:`LocalBinance.latency_s` (every API reply delayed);
* websockets: :meth:`LocalBinance.drop_ws` (close), :meth:`LocalBinance.stall_ws` (open,
  silent, no pongs), :meth:`LocalBinance.block_ws` (refuse reconnects - e.g. a fill while
  the client is disconnected: drop + block, ``taker_trade``, unblock);
* :meth:`LocalBinance.terminate_user_stream` (``eventStreamTerminated`` on the ws-api);
* order-count limit: ``LocalBinance(orders_per_10s=N)`` -> 429 / -1015 with ``Retry-After``
  past N orders in 10 s; replies carry ``X-MBX-ORDER-COUNT-10S`` / ``-1D`` and
  ``X-MBX-USED-WEIGHT-1M`` like Binance's;
* :meth:`LocalBinance.expire_order` (the exchange expires/cancels an order);
* depth sequence gap: ``push_depth(..., drop=True)`` or ``skip_ids=k``.

Record: :meth:`LocalBinance.record` / ``GET /_admin/record`` -> ``{"orders": [...],
"fills": [...], "balances": {asset: {"free", "locked"}}, "rejections": [...]}`` (every
order with client id and final state and ``closed_by``, every fill with trade id); the
live objects are :attr:`LocalBinance.orders` / :attr:`LocalBinance.fills`, and
:attr:`LocalBinance.order_requests` the parameters of every signed order request as sent.
:meth:`LocalBinance.fill_order` fills one of our resting orders as a maker. Helpers for the
checks a reconciliation test makes (open orders by client id, fill ids, duplicate client
ids, net position from fills, balance totals) are in :mod:`.record`.

ccxt 4.5.90 behaviours these tests pin down (an adapter has to live with them):

* -1007 "Timeout waiting for response from backend server" (HTTP 5xx) -> ``RequestTimeout``;
  a bare 5xx -> ``ExchangeNotAvailable``; a dropped connection -> ``NetworkError``.
* -2015 becomes ``DDoSProtection`` (not ``AuthenticationError``) once any signed call has
  succeeded on that client (ccxt reads it as a temporary ban); look at the code in the message.
* -1021 -> ``InvalidNonce``, a ``NetworkError`` subclass; ``load_time_difference()`` with
  ``options['adjustForTimeDifference']`` fixes the skew.
* a refused ``userDataStream.subscribe.signature`` (e.g. bad signature) surfaces from
  ``watch_orders`` as ``KeyError('spot')`` rather than ``AuthenticationError`` (ccxt's cleanup
  deletes the subscription twice).
* the cancel reply's ``clientOrderId`` is the *cancel request's* id (Binance sends the
  order's as ``origClientOrderId``); the ``executionReport`` of a cancel carries both, and
  ccxt's ``watch_orders`` reports the order's own.
* a gap in the depth diffs makes ``watch_order_book`` raise ``ChecksumError`` once; the next
  call resubscribes and refetches the snapshot.
* ``eventStreamTerminated`` does not wake a pending ``watch_orders`` (ccxt rejects only a
  future keyed "spot"): the stream just goes quiet until the next ``watch_*`` call
  resubscribes - only a stale-feed timer notices.
* the user stream never replays what happened while the client was disconnected: fills
  in that window are only in ``fetch_my_trades`` (REST).

Market driver (``--drive``, :mod:`.driver`): a random-walk book with depth diffs and taker
trades that fill resting orders, so ``mmbot live`` against the standalone server sees a
moving market and gets fills.

Admin API (JSON bodies, no auth, for the standalone server): ``GET /_admin/record``;
``POST /_admin/fault`` (fields of :class:`~.faults.Fault`), ``DELETE /_admin/fault`` (clear);
``POST /_admin/taker`` ``{side, qty, price[, symbol]}``; ``/_admin/depth`` ``{bids, asks[,
drop, skip_ids]}``; ``/_admin/book`` ``{bids, asks}``; ``/_admin/trade`` ``{price, qty,
side}``; ``/_admin/expire`` ``{order_id | client_order_id[, status]}``; ``/_admin/clock``
``{offset_ms}``; ``/_admin/balance`` ``{asset, free}``; ``/_admin/fees`` ``{asset}`` (fees in BNB); ``/_admin/key`` ``{enabled}``;
``/_admin/ws`` ``{action: drop|stall|resume|block|unblock|terminate, kind: market|user|all}``;
``/_admin/lift_ban``.
"""

from .faults import Fault, FaultPlan
from .server import LocalBinance
from .state import BinanceApiError, ExchangeState, Fill, MarketSpec, Order

__all__ = ["LocalBinance", "ExchangeState", "MarketSpec", "Order", "Fill", "Fault", "FaultPlan", "BinanceApiError"]
