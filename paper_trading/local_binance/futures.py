"""Binance USD-M futures (``/fapi``) on the local exchange: enough for unmodified ccxt 4.5
``binanceusdm`` (or ``binance`` with ``defaultType: swap``) to load markets, read the
order book, place / cancel / look up orders, read our trades, the balance and the
POSITION (``fetch_positions``) of perpetual markets.

The endpoints are the ones ccxt calls for those unified methods (found by running ccxt
against the server and serving each 404): public ``GET /fapi/v1/ping``, ``/time``,
``/exchangeInfo``, ``/depth``, ``/ticker/24hr``; signed ``POST/DELETE/GET /fapi/v1/order``,
``GET /fapi/v1/openOrders``, ``DELETE /fapi/v1/allOpenOrders``, ``GET /fapi/v1/allOrders``,
``GET /fapi/v1/userTrades``, ``GET /fapi/v1/leverageBracket`` (``fetch_positions`` loads it
first), ``GET /fapi/v2|v3/account``, ``GET /fapi/v2|v3/balance``,
``GET /fapi/v2|v3/positionRisk``. Signing, faults, bans and the order-count limit are the
spot server's (one middleware; faults match ``/fapi`` paths by method and path).

The state behind them is a second :class:`~.state.ExchangeState` with ``derivatives=True``
(:attr:`LocalBinance.futures`, markets given by ``LocalBinance(futures_markets=[...])``):
one-way mode (position side ``BOTH``), contract size 1 (sizes in base units), a fill moves
the signed position and charges its fee in USDT from the wallet; no margin, leverage,
funding or realized PnL is modelled. Post-only is ccxt's ``timeInForce=GTX``; one that
would cross is refused with -5022 as Binance does. Test controls:
``LocalBinance.futures_taker_trade`` (simulated taker flow), ``set_futures_book``,
``set_position`` (a position changed by something else: a liquidation, another bot).

Not served: the USD-M websockets (``fstream`` market streams, the listenKey user stream):
run ``mmbot live`` on a perpetual here with REST market data (``market_data.transport:
rest``) and ``live.fills_transport: rest``.

Units: prices quote per base, quantities base units, times server ms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from .rest import RestApi, _need_symbol
from .state import BinanceApiError, Fill, MarketSpec, Order, fmt

if TYPE_CHECKING:  # pragma: no cover
    from .server import LocalBinance

PERPETUAL_DELIVERY_MS = 4133404800000  # Binance's delivery date of perpetuals (2100-12-25)


def futures_info(m: MarketSpec) -> dict[str, Any]:
    """The ``symbols[]`` entry of GET /fapi/v1/exchangeInfo for a USDT perpetual."""
    info = m.info()
    for k in ("orderTypes", "icebergAllowed", "ocoAllowed", "otoAllowed", "quoteOrderQtyMarketAllowed",
              "isSpotTradingAllowed", "isMarginTradingAllowed", "permissions", "permissionSets"):
        info.pop(k, None)
    tick, step = m.tick_size.rstrip("0"), m.step_size.rstrip("0")
    info.update({
        "pair": m.id, "contractType": "PERPETUAL", "deliveryDate": PERPETUAL_DELIVERY_MS, "onboardDate": 1569398400000,
        "marginAsset": m.quote, "underlyingType": "COIN", "underlyingSubType": [], "settlePlan": 0,
        "pricePrecision": len(tick.split(".")[1]) if "." in tick else 0,
        "quantityPrecision": len(step.split(".")[1]) if "." in step else 0,
        "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    })
    return info


def order_json(o: Order) -> dict[str, Any]:
    """GET /fapi/v1/order shape (one-way mode)."""
    post_only = o.type == "LIMIT_MAKER"
    return {
        "orderId": o.order_id, "symbol": o.symbol, "status": o.status, "clientOrderId": o.client_order_id,
        "price": fmt(o.price), "avgPrice": fmt(o.cum_quote / o.executed_qty if o.executed_qty else 0),
        "origQty": fmt(o.orig_qty), "executedQty": fmt(o.executed_qty), "cumQuote": fmt(o.cum_quote),
        "timeInForce": "GTX" if post_only else o.time_in_force, "type": "LIMIT" if post_only else o.type,
        "reduceOnly": False, "closePosition": False, "side": o.side, "positionSide": "BOTH", "stopPrice": "0",
        "workingType": "CONTRACT_PRICE", "priceProtect": False, "origType": "LIMIT" if post_only else o.type,
        "priceMatch": "NONE", "selfTradePreventionMode": "NONE", "goodTillDate": 0, "time": o.time_ms,
        "updateTime": o.update_ms,
    }


def trade_json(f: Fill) -> dict[str, Any]:
    """GET /fapi/v1/userTrades row."""
    return {
        "symbol": f.symbol, "id": f.trade_id, "orderId": f.order_id, "side": f.side, "price": fmt(f.price),
        "qty": fmt(f.qty), "realizedPnl": "0", "marginAsset": f.commission_asset, "quoteQty": fmt(f.price * f.qty),
        "commission": fmt(f.commission), "commissionAsset": f.commission_asset, "time": f.time_ms,
        "positionSide": "BOTH", "buyer": f.side == "BUY", "maker": f.maker,
    }


class FuturesApi(RestApi):
    """The ``/fapi`` routes over :attr:`LocalBinance.futures`."""

    order_json = staticmethod(order_json)  # GET order / openOrders / allOrders are the spot handlers
    trade_json = staticmethod(trade_json)  # ... and userTrades is myTrades, with these shapes

    def __init__(self, server: "LocalBinance") -> None:
        super().__init__(server)
        self.state = server.futures

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/fapi/v1/ping", self.ping)
        r.add_get("/fapi/v1/time", self.time)
        r.add_get("/fapi/v1/exchangeInfo", self.exchange_info)
        r.add_get("/fapi/v1/depth", self.depth)
        r.add_get("/fapi/v1/ticker/24hr", self.ticker_24hr)
        r.add_post("/fapi/v1/order", self.new_order)
        r.add_delete("/fapi/v1/order", self.cancel_order)
        r.add_get("/fapi/v1/order", self.get_order)
        r.add_get("/fapi/v1/openOrders", self.open_orders)
        r.add_delete("/fapi/v1/allOpenOrders", self.cancel_open_orders)
        r.add_get("/fapi/v1/allOrders", self.all_orders)
        r.add_get("/fapi/v1/userTrades", self.my_trades)
        r.add_get("/fapi/v1/leverageBracket", self.leverage_bracket)
        for v in ("v2", "v3"):
            r.add_get(f"/fapi/{v}/account", self.account)
            r.add_get(f"/fapi/{v}/balance", self.balance)
            r.add_get(f"/fapi/{v}/positionRisk", self.position_risk)

    async def exchange_info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "timezone": "UTC", "serverTime": self.state.now_ms(), "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 2400},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": a, "marginAvailable": True, "autoAssetExchange": "0"}
                       for a in sorted({m.quote for m in self.state.markets.values()})],
            "symbols": [futures_info(m) for m in self.state.markets.values()],
        })

    # -- trading ---------------------------------------------------------------------------------
    async def new_order(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        self._count_order()
        sid = _need_symbol(p)
        self.state.market(sid)
        if "quantity" not in p:
            raise BinanceApiError(400, -1102, "Mandatory parameter 'quantity' was not sent, was empty/null, or malformed.")
        otype, tif = p.get("type", ""), p.get("timeInForce")
        if otype.upper() == "LIMIT" and (tif or "").upper() == "GTX":  # post-only
            otype, tif = "LIMIT_MAKER", None
        try:
            o = self.state.place(sid, p.get("side", ""), otype, p["quantity"], p.get("price"), time_in_force=tif,
                                 client_order_id=p.get("newClientOrderId"))
        except BinanceApiError as e:
            if e.code == -2010 and "immediately match" in e.msg:
                raise BinanceApiError(400, -5022, "Due to the order could not be executed as maker, the Post Only "
                                      "order will be rejected. The order will not be recorded in the order history") from None
            raise
        return web.json_response(order_json(o))

    async def cancel_order(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        oid, cid = self._ids(p)
        o, _ = self.state.cancel(_need_symbol(p), oid, cid)
        return web.json_response(order_json(o))

    async def cancel_open_orders(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        sid = self.state.market(_need_symbol(p)).id
        for o in self.state.open_orders(sid):
            self.state.cancel(sid, o.order_id)
        return web.json_response({"code": 200, "msg": "The operation of cancel all open order is done."})

    # -- account -------------------------------------------------------------------------------
    def _assets(self) -> list[dict[str, Any]]:
        st = self.state
        return [{"asset": a, "walletBalance": fmt(st.free.get(a, 0)), "unrealizedProfit": "0.00000000",
                 "marginBalance": fmt(st.free.get(a, 0)), "maintMargin": "0.00000000", "initialMargin": "0.00000000",
                 "positionInitialMargin": "0.00000000", "openOrderInitialMargin": "0.00000000",
                 "crossWalletBalance": fmt(st.free.get(a, 0)), "crossUnPnl": "0.00000000",
                 "availableBalance": fmt(st.free.get(a, 0)), "maxWithdrawAmount": fmt(st.free.get(a, 0)),
                 "marginAvailable": True, "updateTime": st.now_ms()} for a in sorted(st.free)]

    def _positions(self) -> list[dict[str, Any]]:
        st = self.state
        out = []
        for sid in st.markets:
            amt = st.positions.get(sid, 0)
            bids, asks = st.books.get(sid, ([], []))
            mark = (bids[0][0] + asks[0][0]) / 2 if bids and asks else 0
            out.append({"symbol": sid, "positionSide": "BOTH", "positionAmt": fmt(amt), "entryPrice": fmt(mark if amt else 0),
                        "breakEvenPrice": "0", "markPrice": fmt(mark), "unRealizedProfit": "0.00000000",
                        "liquidationPrice": "0", "isolatedMargin": "0", "notional": fmt(amt * mark),
                        "marginAsset": st.markets[sid].quote, "isolatedWallet": "0", "initialMargin": "0",
                        "maintMargin": "0", "positionInitialMargin": "0", "openOrderInitialMargin": "0", "adl": 0,
                        "bidNotional": "0", "askNotional": "0", "leverage": "1", "marginType": "cross",
                        "isolated": False, "updateTime": st.now_ms()})
        return out

    async def account(self, request: web.Request) -> web.Response:
        await self.signed(request)
        assets = self._assets()
        total = sum((float(a["walletBalance"]) for a in assets), 0.0)
        return web.json_response({
            "totalInitialMargin": "0", "totalMaintMargin": "0", "totalWalletBalance": str(total),
            "totalUnrealizedProfit": "0", "totalMarginBalance": str(total), "totalPositionInitialMargin": "0",
            "totalOpenOrderInitialMargin": "0", "totalCrossWalletBalance": str(total), "totalCrossUnPnl": "0",
            "availableBalance": str(total), "maxWithdrawAmount": str(total), "canTrade": True, "canDeposit": True,
            "canWithdraw": True, "feeTier": 0, "updateTime": self.state.now_ms(),
            "assets": assets, "positions": [{k: v for k, v in p.items()} for p in self._positions()],
        })

    async def balance(self, request: web.Request) -> web.Response:
        await self.signed(request)
        return web.json_response([{"accountAlias": "local", "asset": a["asset"], "balance": a["walletBalance"],
                                   "crossWalletBalance": a["crossWalletBalance"], "crossUnPnl": "0",
                                   "availableBalance": a["availableBalance"], "maxWithdrawAmount": a["maxWithdrawAmount"],
                                   "marginAvailable": True, "updateTime": a["updateTime"]} for a in self._assets()])

    async def leverage_bracket(self, request: web.Request) -> web.Response:
        """One bracket per symbol (leverage 1..125 up to a 10^9 notional)."""
        p = await self.signed(request)
        sid = p.get("symbol")
        return web.json_response([
            {"symbol": s_, "notionalCoef": 1.0, "brackets": [
                {"bracket": 1, "initialLeverage": 125, "notionalCap": 1000000000, "notionalFloor": 0,
                 "maintMarginRatio": 0.004, "cum": 0.0}]}
            for s_ in self.state.markets if sid is None or s_ == sid])

    async def position_risk(self, request: web.Request) -> web.Response:
        p = await self.signed(request)
        sid = p.get("symbol")
        return web.json_response([x for x in self._positions() if sid is None or x["symbol"] == sid])
