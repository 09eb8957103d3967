"""A level-2 order book: aggregated size per price level on each side.

Units: prices in quote currency per base unit, sizes in base units, timestamps in ns since
the epoch. A level with size 0 does not exist (a diff with size 0 deletes it). Price keys
are floats exactly as the exchange sent them (parsed from its decimal string), so equality
of keys is exact for values from the same source.

Each side keeps a dict (price -> size) and a sorted price list, so best bid/ask are O(1),
an update of an existing level is O(1) and an insert or delete is O(log n + n memmove).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterable, Sequence

from bot.errors import BookError

Level = tuple[float, float]


class BookSide:
    """One side of the book. ``descending`` is True for bids (best = highest price)."""

    __slots__ = ("descending", "sizes", "_prices")

    def __init__(self, descending: bool) -> None:
        self.descending = descending
        self.sizes: dict[float, float] = {}
        self._prices: list[float] = []  # ascending

    def clear(self) -> None:
        self.sizes.clear()
        self._prices.clear()

    def set(self, price: float, size: float) -> None:
        """Set the size at ``price``; ``size <= 0`` deletes the level."""
        sizes = self.sizes
        if size > 0.0:
            if price not in sizes:
                p = self._prices
                p.insert(bisect_left(p, price), price)
            sizes[price] = size
        elif price in sizes:
            del sizes[price]
            p = self._prices
            del p[bisect_left(p, price)]

    def best(self) -> Level | None:
        p = self._prices
        if not p:
            return None
        price = p[-1] if self.descending else p[0]
        return price, self.sizes[price]

    def best_price(self) -> float | None:
        p = self._prices
        if not p:
            return None
        return p[-1] if self.descending else p[0]

    def levels(self, n: int | None = None) -> list[Level]:
        """Top ``n`` levels from the best outwards (all when ``n`` is None)."""
        p = self._prices
        if self.descending:
            seq = p[::-1] if n is None else p[: -n - 1 : -1] if n < len(p) else p[::-1]
        else:
            seq = p if n is None else p[:n]
        s = self.sizes
        return [(x, s[x]) for x in seq]

    def depth(self, n: int) -> float:
        """Total size over the best ``n`` levels, base units."""
        return sum(size for _, size in self.levels(n))

    def __len__(self) -> int:
        return len(self._prices)


class OrderBook:
    """L2 book for one symbol.

    Attributes:
        symbol: ccxt unified symbol.
        ts_ns: exchange (or simulated) time of the last applied update, ns since epoch.
        update_id: exchange sequence id of the last applied update, if the venue has one.
    """

    __slots__ = ("symbol", "bids", "asks", "ts_ns", "update_id")

    def __init__(self, symbol: str = "") -> None:
        self.symbol = symbol
        self.bids = BookSide(descending=True)
        self.asks = BookSide(descending=False)
        self.ts_ns = 0
        self.update_id: int | None = None

    # -- updates ----------------------------------------------------------------------
    def apply_snapshot(
        self,
        bids: Iterable[Sequence[float]],
        asks: Iterable[Sequence[float]],
        ts_ns: int = 0,
        update_id: int | None = None,
    ) -> None:
        """Replace the whole book. Levels are ``(price, size)``; extra fields are ignored."""
        self.bids.clear()
        self.asks.clear()
        for lv in bids:
            self.bids.set(float(lv[0]), float(lv[1]))
        for lv in asks:
            self.asks.set(float(lv[0]), float(lv[1]))
        self.ts_ns = ts_ns
        self.update_id = update_id

    def apply_diff(
        self,
        bids: Iterable[Sequence[float]] = (),
        asks: Iterable[Sequence[float]] = (),
        ts_ns: int = 0,
        update_id: int | None = None,
    ) -> None:
        """Apply level updates: each ``(price, new_size)``; size 0 deletes the level."""
        for lv in bids:
            self.bids.set(float(lv[0]), float(lv[1]))
        for lv in asks:
            self.asks.set(float(lv[0]), float(lv[1]))
        if ts_ns:
            self.ts_ns = ts_ns
        if update_id is not None:
            self.update_id = update_id

    def set_level(self, side: str, price: float, size: float) -> None:
        """Set one level; ``side`` is ``'bid'`` or ``'ask'``."""
        (self.bids if side == "bid" else self.asks).set(price, size)

    # -- queries ----------------------------------------------------------------------
    def best_bid(self) -> Level | None:
        return self.bids.best()

    def best_ask(self) -> Level | None:
        return self.asks.best()

    def is_empty(self) -> bool:
        """True when either side has no level (no two-sided market)."""
        return not self.bids._prices or not self.asks._prices

    def is_crossed(self) -> bool:
        """True when best bid >= best ask (a locked book counts as crossed)."""
        b, a = self.bids.best_price(), self.asks.best_price()
        return b is not None and a is not None and b >= a

    def validate(self) -> None:
        """Raise :class:`BookError` unless the book is two-sided and not crossed."""
        if self.is_empty():
            side = "bid" if not self.bids._prices else "ask"
            raise BookError(f"order book {self.symbol or '?'} is empty on the {side} side")
        if self.is_crossed():
            raise BookError(
                f"order book {self.symbol or '?'} is crossed: best bid {self.bids.best_price()} >= "
                f"best ask {self.asks.best_price()}"
            )

    def mid(self) -> float | None:
        """(best bid + best ask) / 2, or None without a two-sided book."""
        b, a = self.bids.best_price(), self.asks.best_price()
        if b is None or a is None:
            return None
        return 0.5 * (b + a)

    def spread(self) -> float | None:
        b, a = self.bids.best_price(), self.asks.best_price()
        if b is None or a is None:
            return None
        return a - b

    def microprice(self) -> float | None:
        """Size-weighted mid of the top level: (bid*ask_size + ask*bid_size)/(bid_size+ask_size).

        Leans toward the side with less size (the side more likely to be taken out next)."""
        b, a = self.bids.best(), self.asks.best()
        if b is None or a is None:
            return None
        (bp, bs), (ap, as_) = b, a
        tot = bs + as_
        if tot <= 0.0:
            return 0.5 * (bp + ap)
        return (bp * as_ + ap * bs) / tot

    def depth(self, side: str, n: int) -> float:
        """Total size over the best ``n`` levels of ``side`` ('bid'|'ask'), base units."""
        return (self.bids if side == "bid" else self.asks).depth(n)

    def imbalance(self, n: int = 1) -> float:
        """(bid depth - ask depth) / (bid depth + ask depth) over n levels, in [-1, 1]."""
        bd, ad = self.bids.depth(n), self.asks.depth(n)
        tot = bd + ad
        return 0.0 if tot <= 0 else (bd - ad) / tot

    def copy(self) -> "OrderBook":
        ob = OrderBook(self.symbol)
        ob.bids.sizes = dict(self.bids.sizes)
        ob.bids._prices = list(self.bids._prices)
        ob.asks.sizes = dict(self.asks.sizes)
        ob.asks._prices = list(self.asks._prices)
        ob.ts_ns, ob.update_id = self.ts_ns, self.update_id
        return ob

    def __repr__(self) -> str:
        return f"OrderBook({self.symbol!r}, bid={self.best_bid()}, ask={self.best_ask()}, levels={len(self.bids)}/{len(self.asks)})"
