"""Import raw Binance websocket captures into an mmbot recording.

Input: text files (usually gzip), one message per line::

    <local receive time> <json>

The local time is ns since the epoch (the 2023 ``.dat.gz`` files: microseconds; the unit is
chosen per file from the number of digits of its first line: >= 18 ns, 15-17 us, 12-14 ms,
and every line of the file must use the same number of digits). The JSON is Binance's
combined-stream envelope ``{"stream": "<sym>@<stream>", "data": {...}}``:

* ``depthUpdate`` diffs (``depth@100ms`` spot, ``depth@0ms`` futures): ``U``/``u`` first/last
  update id, futures also ``pu`` (the previous message's ``u``), ``b``/``a`` lists of
  ``["price", "qty"]``, qty the new total size at that price, 0 deletes.
* ``trade``: ``t`` trade id, ``p``, ``q``, ``m`` buyer-is-maker (true => the seller was the
  aggressor => side -1).
* ``bookTicker``: best bid/ask (``b``, ``B``, ``a``, ``A``) and ``u``, the book update id they
  reflect. Kept apart, in the ``bookticker`` aux table, for validating the rebuilt book.
* Anything else (``markPrice``, partial-depth streams, subscription acks) is counted and ignored.
* One line without envelope: the REST depth snapshot ``{"lastUpdateId": L, "bids": [...],
  "asks": [...]}`` (futures also ``E``/``T``), 1000 levels a side, near the start of the
  first file of a pair.

Output rows (see :mod:`bot.recording.schema`): ``exch_ts`` is the message's event time ``E``
(ms -> ns) for every Binance message; a spot snapshot has no ``E`` and gets the largest
``E`` of the depth diffs seen so far (-1 if none). Trades: ``first_id = last_id = t``.
Depth rows: ``first_id, last_id = U, u``; snapshot and clear rows: ``lastUpdateId`` twice.

Diff-sync rule (Binance's documented procedure, applied offline over the whole input)
---------------------------------------------------------------------------------------
* Before the first snapshot line there is no base book: diffs are held back (not written),
  unless the input has no snapshot at all (see below).
* A snapshot (lastUpdateId ``L``) is written as CLEAR bid, CLEAR ask, then its levels, at the
  snapshot line's local time. Diffs received *before* the snapshot line but not contained in
  it (spot ``u > L``, futures ``u >= L``) are then applied after it, in order, with
  ``local_ts`` raised to the snapshot's local time (they only became usable then).
* After a snapshot, diffs with spot ``u <= L`` / futures ``u < L`` are dropped; the first
  applied must satisfy spot ``U <= L + 1 <= u`` / futures ``pu <= L <= u`` (implied by the
  documented ``U <= L <= u``, and also correct when ``L`` falls between two messages).
* Afterwards spot requires ``U == previous u + 1`` and futures ``pu == previous u``. A diff
  whose ``u`` is not beyond the previous ``u`` is a duplicate and dropped.
* Otherwise it is a GAP: recorded in ``stats["gaps"]`` (file, line, expected/received ids).
  Resync rule: the diff and all later ones are still applied (each sets absolute level
  sizes, so every level touched after the gap is right again) and the book is marked
  *unsynced* until the next snapshot line in the input, which re-bases it as above; without
  a later snapshot it stays unsynced to the end. Unsynced spans are listed in
  ``stats["unsynced"]`` with local times so a backtest can exclude them; levels that changed
  only during the missing updates can be stale (and may even cross) inside them.
* An input without any snapshot (e.g. spot 2023) is imported from its first diff, unsynced
  throughout: the book then only holds levels that changed during the capture.

Corrupt lines (invalid JSON, truncated line, missing fields, bad numbers, wrong symbol,
timestamp of another width) raise :class:`~bot.errors.DataError` ``"file:line: reason"``;
with ``lenient=True`` they are counted and skipped (``stats["lines_skipped"]``, first
examples in ``stats["skipped"]``). A truncated gzip stream is an error, or, when lenient,
is read up to the damage.

Speed: a producer thread inflates gzip input in ~4 MB pieces (zlib-ng when installed); each
piece is parsed in place (only the line split between two pieces is copied) by a numba kernel
in one of two worker threads, so inflating and parsing overlap on both cores with no barrier
per block (no per-message Python objects); only lines the kernel declines (the snapshot, odd
lines) go through orjson, in this thread and in line order. The sync pass and row emission are
a second numba kernel; the bookTicker table is encoded to parquet while it runs, then the
events. Once per process the importer asks glibc to keep freed memory for reuse
(:func:`_keep_freed_memory`): page faults on fresh buffers were about a quarter of its CPU
time. ``_PIPELINE = "v1"`` runs the previous pipeline (for side-by-side benchmarks).
The inflated text is not kept, but the per-line message table and the parsed levels of all
input files are (about 16 bytes per level plus ~120 bytes per line), which bounds the input
to a few GB per call.

Units: prices quote/base; sizes base units, except COIN-M (``cm``) where Binance sizes are
contracts (``meta["qty_unit"] == "contracts"``); timestamps int ns since the epoch.
"""

from __future__ import annotations

import os
import queue
import re
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numba as nb
import numpy as np
import orjson

from bot.errors import DataError
from bot.recording.io import RecordingWriter, open_recording
from bot.recording.schema import BOOKTICKER_DTYPE

try:  # zlib-ng is ~3x faster than zlib at inflating; optional
    from zlib_ng import gzip_ng as _gzip_fast
    from zlib_ng import zlib_ng as _zlib_fast
except ImportError:  # pragma: no cover - depends on the environment
    _gzip_fast = None
    _zlib_fast = None

# ---------------------------------------------------------------------------------------
# numba kernels
# ---------------------------------------------------------------------------------------
# The fast path parses the common line shape
#     <digits> {"stream":"<sym>@<stream>","data":{<flat object>}}
# and declines (M_FALLBACK) every line it cannot take with certainty; those go to orjson.
# Decimal strings are parsed as mantissa / 10**scale with an exact int64 mantissa (< 2**53)
# and an exact power of ten: one correctly rounded division, bit-identical to float(text).

# message types (per line)
M_FALLBACK = 0
M_DEPTH = 1
M_TRADE = 2
M_BOOKTICKER = 3
M_IGNORED = 4  # other streams (markPrice, ...) and unknown valid messages
M_SNAPSHOT = 5
M_BLANK = 6
M_SKIPPED = 7  # corrupt, skipped in lenient mode

_POW10 = np.array([10.0**i for i in range(23)], dtype=np.float64)
_MAX_MANT = 2**53

# key codes
K_OTHER = 0
K_e, K_E, K_T, K_U, K_u, K_pu, K_b, K_a, K_B, K_A, K_t, K_p, K_q, K_m = range(1, 15)


@nb.njit(cache=True)
def _parse_dec(buf, p, end, pow10):
    """Parse a decimal string body starting at p up to the closing quote.
    Returns (value, position after the closing quote, ok)."""
    mant = 0
    nd = 0
    dot = -1
    while p < end:
        d = np.int64(buf[p]) - 48
        if 0 <= d <= 9:
            mant = mant * 10 + d
            nd += 1
            p += 1
        elif d == -2 and dot < 0:  # '.'
            dot = nd
            p += 1
        else:
            break
    if p >= end or buf[p] != 34 or nd == 0 or nd > 18 or dot == 0 or dot == nd:
        return 0.0, p, False  # no closing quote, empty, too long, ".5" or "1.": let Python decide
    scale = nd - dot if dot > 0 else 0
    if mant >= _MAX_MANT:
        while scale > 0 and mant % 10 == 0:  # "1.50000000000000000" style
            mant //= 10
            scale -= 1
        if mant >= _MAX_MANT:
            return 0.0, p, False
    if scale > 22:
        return 0.0, p, False
    # exact mantissa < 2**53 and exact 10**scale: one correctly rounded division
    return mant / pow10[scale], p + 1, True


@nb.njit(cache=True)
def _parse_uint(buf, p, end):
    """Unsigned integer literal at p. Returns (value, position after it, ok)."""
    v = 0
    n = 0
    while p < end and 48 <= buf[p] <= 57:
        if n >= 18:
            return 0, p, False
        v = v * 10 + (buf[p] - 48)
        n += 1
        p += 1
    if n == 0:
        return 0, p, False
    if p < end and (buf[p] == 46 or buf[p] == 101 or buf[p] == 69):  # fraction/exponent
        return 0, p, False
    return v, p, True


@nb.njit(cache=True)
def _key_code(buf, p, q):
    n = q - p
    if n == 1:
        c = buf[p]
        if c == 101:
            return K_e
        if c == 69:
            return K_E
        if c == 84:
            return K_T
        if c == 85:
            return K_U
        if c == 117:
            return K_u
        if c == 98:
            return K_b
        if c == 97:
            return K_a
        if c == 66:
            return K_B
        if c == 65:
            return K_A
        if c == 116:
            return K_t
        if c == 112:
            return K_p
        if c == 113:
            return K_q
        if c == 109:
            return K_m
        return K_OTHER
    if n == 2 and buf[p] == 112 and buf[p + 1] == 117:
        return K_pu
    return K_OTHER


@nb.njit(cache=True)
def _parse_levels(buf, p, end, lvl_px, lvl_qty, lvl_n, pow10):
    """Parse ``[["px","qty"],...]`` starting at '['. Returns (pos after ']', new lvl_n, count, ok)."""
    if buf[p] != 91:
        return p, lvl_n, 0, False
    p += 1
    cnt = 0
    if p < end and buf[p] == 93:
        return p + 1, lvl_n, 0, True
    while p < end:
        if p + 2 >= end or buf[p] != 91 or buf[p + 1] != 34:
            return p, lvl_n, cnt, False
        px, p, ok = _parse_dec(buf, p + 2, end, pow10)
        if not ok:
            return p, lvl_n, cnt, False
        if p + 2 >= end or buf[p] != 44 or buf[p + 1] != 34:
            return p, lvl_n, cnt, False
        qty, p, ok = _parse_dec(buf, p + 2, end, pow10)
        if not ok:
            return p, lvl_n, cnt, False
        if p >= end or buf[p] != 93:
            return p, lvl_n, cnt, False
        if lvl_n >= lvl_px.shape[0]:
            return p, lvl_n, cnt, False
        lvl_px[lvl_n] = px
        lvl_qty[lvl_n] = qty
        lvl_n += 1
        cnt += 1
        p += 1
        if p >= end:
            return p, lvl_n, cnt, False
        if buf[p] == 44:
            p += 1
        elif buf[p] == 93:
            return p + 1, lvl_n, cnt, True
        else:
            return p, lvl_n, cnt, False
    return p, lvl_n, cnt, False


@nb.njit(cache=True)
def _skip_scalar(buf, p, end):
    """Skip a number/true/false/null literal or a plain string. Returns (pos, ok)."""
    c = buf[p]
    if c == 34:
        p += 1
        while p < end and buf[p] != 34:
            if buf[p] == 92:  # backslash escape: let Python decide
                return p, False
            p += 1
        if p >= end:
            return p, False
        return p + 1, True
    if c == 123 or c == 91:  # nested object/array
        return p, False
    q = p
    while q < end and buf[q] != 44 and buf[q] != 125:
        b = buf[q]
        if not ((48 <= b <= 57) or (97 <= b <= 122) or b == 45 or b == 43 or b == 46 or (65 <= b <= 90)):
            return q, False
        q += 1
    if q == p or q >= end:
        return q, False
    return q, True


@nb.njit(cache=True, nogil=True)
def scan_binance(buf, nlines_cap, lvl_cap, sym, ref_ndig):
    """Parse a decompressed capture (uint8 array). One table row per line.

    Args:
        buf: file bytes.
        nlines_cap: table size (>= number of lines).
        lvl_cap: level array size (>= number of '[' in buf).
        sym: the expected stream symbol prefix (bytes before '@'), uint8 array.
        ref_ndig: digits of the local timestamp (all lines of a file must agree).

    Returns the tables (see the unpacking in binance.py) and (nlines, lvl_n).
    """
    n = buf.shape[0]
    mtype = np.empty(nlines_cap, np.int8)
    lstart = np.empty(nlines_cap, np.int64)
    lend = np.empty(nlines_cap, np.int64)
    local = np.empty(nlines_cap, np.int64)
    exch = np.empty(nlines_cap, np.int64)
    uid_first = np.empty(nlines_cap, np.int64)
    uid_last = np.empty(nlines_cap, np.int64)
    uid_prev = np.empty(nlines_cap, np.int64)
    f_px = np.empty(nlines_cap, np.float64)
    f_qty = np.empty(nlines_cap, np.float64)
    f_px2 = np.empty(nlines_cap, np.float64)
    f_qty2 = np.empty(nlines_cap, np.float64)
    flag = np.empty(nlines_cap, np.int8)
    bstart = np.empty(nlines_cap, np.int64)
    nbid = np.empty(nlines_cap, np.int64)
    astart = np.empty(nlines_cap, np.int64)
    nask = np.empty(nlines_cap, np.int64)
    lvl_px = np.empty(lvl_cap, np.float64)
    lvl_qty = np.empty(lvl_cap, np.float64)
    pow10 = _POW10
    nsym = sym.shape[0]
    ts_mult = 1
    if ref_ndig >= 18:
        ts_mult = 1
    elif ref_ndig >= 15:
        ts_mult = 1000
    elif ref_ndig >= 12:
        ts_mult = 1000000
    lvl_n = 0
    li = 0
    pos = 0
    while pos < n or (pos == n and li == 0):
        # find line end
        e = pos
        while e < n and buf[e] != 10:
            e += 1
        if li >= nlines_cap:
            return mtype, lstart, lend, local, exch, uid_first, uid_last, uid_prev, f_px, f_qty, f_px2, f_qty2, flag, bstart, nbid, astart, nask, lvl_px, lvl_qty, -1, lvl_n
        lstart[li] = pos
        lend[li] = e
        le = e
        while le > pos and (buf[le - 1] == 13 or buf[le - 1] == 32):
            le -= 1
        row = li
        li += 1
        # every field of every row is written (the tables are np.empty: untouched pages of an
        # over-estimated capacity then cost nothing)
        local[row] = -1
        exch[row] = -1
        uid_first[row] = -1
        uid_last[row] = -1
        uid_prev[row] = -1
        f_px[row] = 0.0
        f_qty[row] = 0.0
        f_px2[row] = 0.0
        f_qty2[row] = 0.0
        flag[row] = 0
        bstart[row] = 0
        nbid[row] = 0
        astart[row] = 0
        nask[row] = 0
        nextpos = e + 1
        if le == pos:
            mtype[row] = M_BLANK
            pos = nextpos
            if e >= n:
                break
            continue
        mtype[row] = M_FALLBACK
        lvl_mark = lvl_n
        p = pos
        # -- local timestamp
        ts = 0
        nd = 0
        while p < le and 48 <= buf[p] <= 57:
            if nd < 19:
                ts = ts * 10 + (buf[p] - 48)
            nd += 1
            p += 1
        pos = nextpos
        if nd != ref_ndig or nd > 19 or p >= le or buf[p] != 32:
            if e >= n:
                break
            continue
        p += 1
        # -- envelope prefix {"stream":"
        if p + 11 >= le:
            if e >= n:
                break
            continue
        okp = (buf[p] == 123 and buf[p + 1] == 34 and buf[p + 2] == 115 and buf[p + 3] == 116 and buf[p + 4] == 114
               and buf[p + 5] == 101 and buf[p + 6] == 97 and buf[p + 7] == 109 and buf[p + 8] == 34 and buf[p + 9] == 58
               and buf[p + 10] == 34)
        if not okp:
            if e >= n:
                break
            continue
        p += 11
        s0 = p
        while p < le and buf[p] != 34 and buf[p] != 64:
            p += 1
        if p >= le or buf[p] != 64 or p - s0 != nsym:
            if e >= n:
                break
            continue
        same = True
        for k in range(nsym):
            if buf[s0 + k] != sym[k]:
                same = False
                break
        if not same:
            if e >= n:
                break
            continue
        p += 1
        t0 = p
        while p < le and buf[p] != 34:
            p += 1
        if p >= le:
            if e >= n:
                break
            continue
        tl = p - t0
        styp = M_IGNORED
        if tl >= 5 and buf[t0] == 100 and buf[t0 + 1] == 101 and buf[t0 + 2] == 112 and buf[t0 + 3] == 116 and buf[t0 + 4] == 104:
            styp = M_DEPTH  # depth...
        elif tl == 5 and buf[t0] == 116 and buf[t0 + 1] == 114 and buf[t0 + 2] == 97 and buf[t0 + 3] == 100 and buf[t0 + 4] == 101:
            styp = M_TRADE  # trade
        elif tl == 10 and buf[t0] == 98 and buf[t0 + 1] == 111 and buf[t0 + 4] == 84 and buf[t0 + 9] == 114:
            styp = M_BOOKTICKER  # bookTicker
        # -- ","data":{
        if p + 10 >= le:
            if e >= n:
                break
            continue
        okd = (buf[p] == 34 and buf[p + 1] == 44 and buf[p + 2] == 34 and buf[p + 3] == 100 and buf[p + 4] == 97
               and buf[p + 5] == 116 and buf[p + 6] == 97 and buf[p + 7] == 34 and buf[p + 8] == 58 and buf[p + 9] == 123)
        if not okd:
            if e >= n:
                break
            continue
        p += 10
        # -- flat object members
        ok = True
        have = 0  # bitmask of seen keys
        vE = -1
        vU = -1
        vu = -1
        vpu = -1
        vt = -1
        vp = 0.0
        vq = 0.0
        vb = 0.0
        vB = 0.0
        va = 0.0
        vA = 0.0
        vm = 0
        bs = 0
        nb_ = 0
        as_ = 0
        na_ = 0
        closed = False
        if p < le and buf[p] == 125:
            closed = True
            p += 1
        while ok and not closed:
            if p >= le or buf[p] != 34:
                ok = False
                break
            k0 = p + 1
            q = k0
            while q < le and buf[q] != 34:
                q += 1
            if q + 2 >= le or buf[q + 1] != 58:
                ok = False
                break
            key = _key_code(buf, k0, q)
            p = q + 2
            c = buf[p]
            if key == K_b or key == K_a:
                if c == 91:
                    if styp != M_DEPTH:
                        ok = False
                        break
                    st = lvl_n
                    p, lvl_n, cnt, ok = _parse_levels(buf, p, le, lvl_px, lvl_qty, lvl_n, pow10)
                    if key == K_b:
                        bs = st
                        nb_ = cnt
                    else:
                        as_ = st
                        na_ = cnt
                    have |= 1 << key
                elif c == 34 and styp == M_BOOKTICKER:
                    v, p, ok = _parse_dec(buf, p + 1, le, pow10)
                    if key == K_b:
                        vb = v
                    else:
                        va = v
                    have |= 1 << key
                else:
                    p, ok = _skip_scalar(buf, p, le)
            elif key == K_B or key == K_A or key == K_p or key == K_q:
                if c == 34:
                    v, p, ok = _parse_dec(buf, p + 1, le, pow10)
                    if key == K_B:
                        vB = v
                    elif key == K_A:
                        vA = v
                    elif key == K_p:
                        vp = v
                    else:
                        vq = v
                    have |= 1 << key
                else:
                    p, ok = _skip_scalar(buf, p, le)
            elif key == K_E or key == K_U or key == K_u or key == K_pu or key == K_t:
                if 48 <= c <= 57:
                    v, p, ok = _parse_uint(buf, p, le)
                    if key == K_E:
                        vE = v
                    elif key == K_U:
                        vU = v
                    elif key == K_u:
                        vu = v
                    elif key == K_pu:
                        vpu = v
                    else:
                        vt = v
                    have |= 1 << key
                else:
                    p, ok = _skip_scalar(buf, p, le)
            elif key == K_m:
                if c == 116 and p + 4 <= le and buf[p + 1] == 114 and buf[p + 2] == 117 and buf[p + 3] == 101:
                    vm = 1
                    p += 4
                    have |= 1 << key
                elif c == 102 and p + 5 <= le and buf[p + 1] == 97 and buf[p + 2] == 108 and buf[p + 3] == 115 and buf[p + 4] == 101:
                    vm = 0
                    p += 5
                    have |= 1 << key
                else:
                    ok = False
            else:
                p, ok = _skip_scalar(buf, p, le)
            if not ok:
                break
            if p >= le:
                ok = False
                break
            if buf[p] == 44:
                p += 1
            elif buf[p] == 125:
                p += 1
                closed = True
            else:
                ok = False
        # -- closing brace of the envelope, then end of line
        if ok and closed and p + 1 == le and buf[p] == 125:
            if styp == M_DEPTH:
                need = (1 << K_E) | (1 << K_U) | (1 << K_u) | (1 << K_b) | (1 << K_a)
                if (have & need) == need:
                    mtype[row] = M_DEPTH
                    exch[row] = vE * 1000000
                    uid_first[row] = vU
                    uid_last[row] = vu
                    uid_prev[row] = vpu
                    bstart[row] = bs
                    nbid[row] = nb_
                    astart[row] = as_
                    nask[row] = na_
            elif styp == M_TRADE:
                need = (1 << K_E) | (1 << K_t) | (1 << K_p) | (1 << K_q) | (1 << K_m)
                if (have & need) == need:
                    mtype[row] = M_TRADE
                    exch[row] = vE * 1000000
                    uid_first[row] = vt
                    uid_last[row] = vt
                    f_px[row] = vp
                    f_qty[row] = vq
                    flag[row] = vm
            elif styp == M_BOOKTICKER:
                need = (1 << K_u) | (1 << K_b) | (1 << K_a) | (1 << K_B) | (1 << K_A)
                if (have & need) == need:
                    mtype[row] = M_BOOKTICKER
                    exch[row] = vE * 1000000 if vE >= 0 else -1
                    uid_last[row] = vu
                    f_px[row] = vb
                    f_qty[row] = vB
                    f_px2[row] = va
                    f_qty2[row] = vA
            else:
                mtype[row] = M_IGNORED
        if mtype[row] == M_FALLBACK:
            lvl_n = lvl_mark  # roll back levels of a declined line
        else:
            local[row] = ts * ts_mult
        if e >= n:
            break
    return mtype, lstart, lend, local, exch, uid_first, uid_last, uid_prev, f_px, f_qty, f_px2, f_qty2, flag, bstart, nbid, astart, nask, lvl_px, lvl_qty, li, lvl_n


# sync states
S_NO_BOOK = 0  # before the first snapshot (a snapshot exists later): hold diffs
S_AWAIT = 1  # snapshot applied, waiting for the first diff that connects to it
S_SYNCED = 2
S_UNSYNCED = 3  # after a gap (or no snapshot at all): apply diffs, book may be stale

# gap reasons
G_FIRST = 1  # first diff after a snapshot does not connect to lastUpdateId
G_GAP = 2  # diff does not continue the previous one (spot U != u+1, futures pu != u)

# counters
C_APPLIED = 0
C_STALE = 1
C_DUP = 2
C_HELD = 3
C_HELD_USED = 4
C_REEMIT = 5
C_OVERLAP = 6
N_COUNTERS = 7


@nb.njit(cache=True)
def _emit_depth(i, lt, bstart, nbid, astart, nask, lvl_px, lvl_qty, exch, uid_first, uid_last,
                o_kind, o_side, o_exch, o_local, o_px, o_qty, o_first, o_last, w):
    ex = exch[i]
    U = uid_first[i]
    u = uid_last[i]
    for ps in range(2):
        for sd in range(2):
            if sd == 0:
                s0 = bstart[i]
                cnt = nbid[i]
                sv = 1
            else:
                s0 = astart[i]
                cnt = nask[i]
                sv = -1
            for j in range(s0, s0 + cnt):
                q = lvl_qty[j]
                if (ps == 0) != (q == 0.0):
                    continue
                o_kind[w] = 1
                o_side[w] = sv
                o_exch[w] = ex
                o_local[w] = lt
                o_px[w] = lvl_px[j]
                o_qty[w] = q
                o_first[w] = U
                o_last[w] = u
                w += 1
    return w


@nb.njit(cache=True)
def _process_depth(i, pos, lt, state, L, prev_u, futures, counters, gaps, ngap,
                   bstart, nbid, astart, nask, lvl_px, lvl_qty, exch, uid_first, uid_last, uid_prev,
                   o_kind, o_side, o_exch, o_local, o_px, o_qty, o_first, o_last, w):
    """Apply the sync rule to depth message i. Returns (state, prev_u, ngap, w)."""
    U = uid_first[i]
    u = uid_last[i]
    pu = uid_prev[i]
    apply = False
    gap = 0
    if state == S_AWAIT:
        if futures:
            if u < L:
                counters[C_STALE] += 1
            else:
                apply = True
                if pu >= 0:
                    ok = pu <= L
                else:
                    ok = U <= L + 1
                if ok:
                    state = S_SYNCED
                else:
                    gap = G_FIRST
        else:
            if u <= L:
                counters[C_STALE] += 1
            else:
                apply = True
                if U <= L + 1:
                    state = S_SYNCED
                else:
                    gap = G_FIRST
        if gap != 0:
            state = S_UNSYNCED
    elif state == S_SYNCED:
        if u <= prev_u:
            counters[C_DUP] += 1
        else:
            apply = True
            if futures and pu >= 0:
                if pu != prev_u:
                    gap = G_GAP
            else:
                if U > prev_u + 1:
                    gap = G_GAP
                elif U < prev_u + 1:
                    counters[C_OVERLAP] += 1
            if gap != 0:
                state = S_UNSYNCED
    else:  # S_UNSYNCED
        if prev_u >= 0 and u <= prev_u:
            counters[C_DUP] += 1
        else:
            apply = True
    if gap != 0:
        if ngap < gaps.shape[0]:
            gaps[ngap, 0] = i
            gaps[ngap, 1] = gap
            gaps[ngap, 2] = L if gap == G_FIRST else prev_u
            gaps[ngap, 3] = U
            gaps[ngap, 4] = u
            gaps[ngap, 5] = pu
            gaps[ngap, 6] = pos
        ngap += 1
    if apply:
        counters[C_APPLIED] += 1
        prev_u = u
        w = _emit_depth(i, lt, bstart, nbid, astart, nask, lvl_px, lvl_qty, exch, uid_first, uid_last,
                        o_kind, o_side, o_exch, o_local, o_px, o_qty, o_first, o_last, w)
    return state, prev_u, ngap, w


@nb.njit(cache=True, nogil=True)
def sync_and_emit(mtype, local, exch, uid_first, uid_last, uid_prev, f_px, f_qty, flag,
                  bstart, nbid, astart, nask, lvl_px, lvl_qty, futures, has_snapshot, out_cap, gap_cap):
    """Run the diff-sync state machine over all messages in order and write event rows.

    Returns (kind, side, exch_ts, local_ts, px, qty, first_id, last_id, n_rows,
    gaps[ngap_stored, 7] (message, reason, expected id, U, u, pu, position in the input where
    it was applied: the snapshot line for diffs re-applied after it), ngap_total, counters)."""
    o_kind = np.empty(out_cap, np.uint8)
    o_side = np.empty(out_cap, np.int8)
    o_exch = np.empty(out_cap, np.int64)
    o_local = np.empty(out_cap, np.int64)
    o_px = np.empty(out_cap, np.float64)
    o_qty = np.empty(out_cap, np.float64)
    o_first = np.empty(out_cap, np.int64)
    o_last = np.empty(out_cap, np.int64)
    gaps = np.zeros((gap_cap, 7), np.int64)
    counters = np.zeros(N_COUNTERS, np.int64)
    n = mtype.shape[0]
    state = S_NO_BOOK if has_snapshot else S_UNSYNCED
    L = -1
    prev_u = -1
    ngap = 0
    w = 0
    last_depth_exch = -1
    prev_snap = -1
    back = np.empty(0, np.int64)
    for i in range(n):
        t = mtype[i]
        if t == M_DEPTH:
            if exch[i] > last_depth_exch:
                last_depth_exch = exch[i]
            if state == S_NO_BOOK:
                counters[C_HELD] += 1
                continue
            state, prev_u, ngap, w = _process_depth(
                i, i, local[i], state, L, prev_u, futures, counters, gaps, ngap,
                bstart, nbid, astart, nask, lvl_px, lvl_qty, exch, uid_first, uid_last, uid_prev,
                o_kind, o_side, o_exch, o_local, o_px, o_qty, o_first, o_last, w)
        elif t == M_TRADE:
            o_kind[w] = 2
            o_side[w] = -1 if flag[i] != 0 else 1  # m: buyer is maker => seller aggressed
            o_exch[w] = exch[i]
            o_local[w] = local[i]
            o_px[w] = f_px[i]
            o_qty[w] = f_qty[i]
            o_first[w] = uid_first[i]
            o_last[w] = uid_last[i]
            w += 1
        elif t == M_SNAPSHOT:
            was_no_book = state == S_NO_BOOK
            L = uid_last[i]
            lt = local[i]
            ex = exch[i] if exch[i] >= 0 else last_depth_exch
            for sv in (1, -1):
                o_kind[w] = 4
                o_side[w] = sv
                o_exch[w] = ex
                o_local[w] = lt
                o_px[w] = 0.0
                o_qty[w] = 0.0
                o_first[w] = L
                o_last[w] = L
                w += 1
            for sd in range(2):
                if sd == 0:
                    s0 = bstart[i]
                    cnt = nbid[i]
                    sv = 1
                else:
                    s0 = astart[i]
                    cnt = nask[i]
                    sv = -1
                for j in range(s0, s0 + cnt):
                    if lvl_qty[j] == 0.0:
                        continue
                    o_kind[w] = 3
                    o_side[w] = sv
                    o_exch[w] = ex
                    o_local[w] = lt
                    o_px[w] = lvl_px[j]
                    o_qty[w] = lvl_qty[j]
                    o_first[w] = L
                    o_last[w] = L
                    w += 1
            state = S_AWAIT
            prev_u = -1
            # diffs received before this snapshot line that it does not contain
            nb_ = 0
            j = i - 1
            while j > prev_snap:
                if mtype[j] == M_DEPTH:
                    uj = uid_last[j]
                    if (futures and uj < L) or ((not futures) and uj <= L):
                        break
                    nb_ += 1
                j -= 1
            if back.shape[0] < nb_:
                back = np.empty(nb_ * 2, np.int64)
            k = 0
            j = i - 1
            while k < nb_:
                if mtype[j] == M_DEPTH:
                    back[nb_ - 1 - k] = j
                    k += 1
                j -= 1
            for k in range(nb_):
                if was_no_book:
                    counters[C_HELD_USED] += 1
                else:
                    counters[C_REEMIT] += 1
                state, prev_u, ngap, w = _process_depth(
                    back[k], i, lt, state, L, prev_u, futures, counters, gaps, ngap,
                    bstart, nbid, astart, nask, lvl_px, lvl_qty, exch, uid_first, uid_last, uid_prev,
                    o_kind, o_side, o_exch, o_local, o_px, o_qty, o_first, o_last, w)
            prev_snap = i
    return (o_kind, o_side, o_exch, o_local, o_px, o_qty, o_first, o_last, w,
            gaps, ngap, counters)


# ---------------------------------------------------------------------------------------
# Python side
# ---------------------------------------------------------------------------------------
_TABLE_FIELDS = (
    "mtype", "local", "exch", "uid_first", "uid_last", "uid_prev", "f_px", "f_qty", "f_px2",
    "f_qty2", "flag", "bstart", "nbid", "astart", "nask",
)
_MAX_SKIPPED_EXAMPLES = 20
_GAP_REASONS = {G_FIRST: "first diff after snapshot does not connect", G_GAP: "update id gap"}
_SYM_RE = re.compile(rb'"stream":"([^"@]+)@')


@dataclass
class ImportStats:
    """What an import did. ``as_dict()`` is stored as ``meta.json["stats"]``."""

    out_dir: str
    files: list[str]
    exchange: str = "binance"
    symbol: str = ""
    market: str = ""
    lines: int = 0
    messages: int = 0
    depth_messages: int = 0
    trade_messages: int = 0
    bookticker_messages: int = 0
    ignored_messages: int = 0
    snapshots: int = 0
    blank_lines: int = 0
    lines_skipped: int = 0
    skipped: list[str] = field(default_factory=list)
    truncated_files: list[str] = field(default_factory=list)
    fallback_lines: int = 0
    events: int = 0
    rows_by_kind: dict[str, int] = field(default_factory=dict)
    depth_applied: int = 0
    depth_dropped_stale: int = 0
    depth_dropped_duplicate: int = 0
    depth_dropped_before_snapshot: int = 0
    depth_reapplied_after_snapshot: int = 0
    depth_overlaps: int = 0
    gaps_found: int = 0
    gaps: list[dict] = field(default_factory=list)
    unsynced: list[dict] = field(default_factory=list)
    synced_at_end: bool = False
    nonmonotonic_local_ts: int = 0
    elapsed_s: float = 0.0
    timings_s: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


class _LineError(Exception):
    pass


def _read_bytes(path: Path, lenient: bool, stats: ImportStats) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        if _gzip_fast is not None:
            return _gzip_fast.decompress(raw)
        return _inflate_all(raw, strict=True)
    except (EOFError, OSError, zlib.error, ValueError) as e:
        if not lenient:
            raise DataError(f"{path}: corrupt or truncated gzip stream: {e}") from None
    stats.truncated_files.append(str(path))
    return _inflate_all(raw, strict=False)


def _inflate_all(raw: bytes, strict: bool) -> bytes:
    """Inflate (possibly multi-member) gzip data; when not strict, return what precedes damage."""
    out = []
    data = raw
    while data:
        d = zlib.decompressobj(wbits=47)
        try:
            out.append(d.decompress(data))
        except zlib.error:
            if strict:
                raise
            break
        if not d.eof:
            if strict:
                raise EOFError("compressed stream ends before the end-of-stream marker")
            out.append(d.flush())
            break
        data = d.unused_data
        if data and data[:2] != b"\x1f\x8b":
            break
    return b"".join(out)


def _f(x: Any, what: str, *, positive: bool = False) -> float:
    if isinstance(x, bool) or not isinstance(x, (str, int, float)):
        raise _LineError(f"{what}: expected a number, got {x!r}")
    try:
        v = float(x)
    except ValueError:
        raise _LineError(f"{what}: not a number: {x!r}") from None
    if not np.isfinite(v) or v < 0 or (positive and v <= 0):
        raise _LineError(f"{what}: out of range: {x!r}")
    return v


def _i(d: dict, key: str, what: str) -> int:
    if key not in d:
        raise _LineError(f"{what}: missing field {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise _LineError(f"{what}: field {key!r} is not a non-negative integer: {v!r}")
    return v


def _levels(v: Any, what: str) -> np.ndarray:
    """[[price, qty], ...] (strings or numbers) -> float array (n, 2); validated."""
    if not isinstance(v, list):
        raise _LineError(f"{what}: expected a list of [price, qty]")
    if not v:
        return np.empty((0, 2), np.float64)
    try:
        arr = np.array(v, dtype=np.float64)
        good = arr.ndim == 2 and arr.shape[1] == 2
    except (ValueError, TypeError):
        good = False
    if not good or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool) for lv in v for x in lv):
        for lv in v:  # find the culprit for the message
            if not isinstance(lv, list) or len(lv) != 2:
                raise _LineError(f"{what}: bad level {lv!r}")
            _f(lv[0], what + " price", positive=True)
            _f(lv[1], what + " qty")
        raise _LineError(f"{what}: bad levels")
    if not (np.all(np.isfinite(arr)) and np.all(arr[:, 0] > 0) and np.all(arr[:, 1] >= 0)):
        bad = int(np.flatnonzero(~(np.isfinite(arr).all(axis=1) & (arr[:, 0] > 0) & (arr[:, 1] >= 0)))[0])
        raise _LineError(f"{what}: level out of range: {v[bad]!r}")
    return arr


def _slow_line(line: bytes, ndig: int, sym: str):
    """Parse one line with orjson. Returns (mtype, values dict). Raises _LineError."""
    sp = line.find(b" ")
    if sp <= 0:
        raise _LineError("no '<timestamp> <json>' separator")
    ts_txt = line[:sp]
    if not ts_txt.isdigit():
        raise _LineError(f"bad local timestamp {ts_txt[:30]!r}")
    if len(ts_txt) != ndig:
        raise _LineError(f"local timestamp has {len(ts_txt)} digits, this file's first line has {ndig}")
    mult = 1 if ndig >= 18 else (1000 if ndig >= 15 else 1_000_000)
    local = int(ts_txt) * mult
    try:
        obj = orjson.loads(line[sp + 1 :])
    except orjson.JSONDecodeError as e:
        raise _LineError(f"invalid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _LineError(f"JSON is a {type(obj).__name__}, expected an object")
    v: dict[str, Any] = {"local": local}
    if "lastUpdateId" in obj and ("bids" in obj or "asks" in obj):
        v["L"] = _i(obj, "lastUpdateId", "snapshot")
        v["exch"] = _i(obj, "E", "snapshot") * 1_000_000 if "E" in obj else -1
        v["bids"] = _levels(obj.get("bids", []), "snapshot bids")
        v["asks"] = _levels(obj.get("asks", []), "snapshot asks")
        return M_SNAPSHOT, v
    stream = obj.get("stream")
    d = obj.get("data")
    if not isinstance(stream, str) or not isinstance(d, dict):
        return M_IGNORED, v  # e.g. a subscription ack {"result": null, "id": 1}
    ssym, _, sname = stream.partition("@")
    if sym and ssym.lower() != sym.lower():
        raise _LineError(f"stream {stream!r} is for another symbol than {sym!r}")
    e = d.get("e")
    if e == "depthUpdate":
        what = "depthUpdate"
        v["exch"] = _i(d, "E", what) * 1_000_000
        v["U"] = _i(d, "U", what)
        v["u"] = _i(d, "u", what)
        v["pu"] = _i(d, "pu", what) if "pu" in d else -1
        if "b" not in d or "a" not in d:
            raise _LineError(f"{what}: missing 'b' or 'a'")
        v["bids"] = _levels(d["b"], what + " b")
        v["asks"] = _levels(d["a"], what + " a")
        return M_DEPTH, v
    if e == "trade":
        what = "trade"
        v["exch"] = _i(d, "E", what) * 1_000_000
        v["t"] = _i(d, "t", what)
        v["p"] = _f(d.get("p"), "trade p", positive=True)
        v["q"] = _f(d.get("q"), "trade q")
        m = d.get("m")
        if not isinstance(m, bool):
            raise _LineError(f"trade: field 'm' is not a boolean: {m!r}")
        v["m"] = m
        return M_TRADE, v
    if e == "bookTicker" or sname == "bookTicker":
        what = "bookTicker"
        v["exch"] = _i(d, "E", what) * 1_000_000 if "E" in d else -1
        v["u"] = _i(d, "u", what)
        v["b"] = _f(d.get("b"), "bookTicker b")
        v["B"] = _f(d.get("B"), "bookTicker B")
        v["a"] = _f(d.get("a"), "bookTicker a")
        v["A"] = _f(d.get("A"), "bookTicker A")
        return M_BOOKTICKER, v
    return M_IGNORED, v


class _FileTable:
    """Per-file message table (one row per line) plus its level arrays."""

    def __init__(self, path: Path, cols: dict[str, np.ndarray], lvl_px: np.ndarray, lvl_qty: np.ndarray):
        self.path = path
        self.cols = cols
        self.lvl_px = lvl_px
        self.lvl_qty = lvl_qty

    @property
    def nrows(self) -> int:
        return self.cols["mtype"].shape[0]


def _first_line_info(data: bytes, path: Path) -> tuple[int, str]:
    """(timestamp digits of the first non-blank line, stream symbol or '')."""
    for ln, line in enumerate(data[:1 << 16].split(b"\n"), 1):
        line = line.strip()
        if not line:
            continue
        sp = line.find(b" ")
        ts = line[:sp] if sp > 0 else line
        if not ts.isdigit() or not 12 <= len(ts) <= 19:
            raise DataError(f"{path}:{ln}: line does not start with a local timestamp (ms/us/ns digits)")
        nd = len(ts)
        break
    else:
        nd = 19
    m = _SYM_RE.search(data, 0, 1 << 20)
    sym = m.group(1).decode("ascii", "replace") if m else ""
    return nd, sym


_PARALLEL_MIN_BYTES = 1 << 20
_N_THREADS = 2


def _scan_part(buf: np.ndarray, sym_arr: np.ndarray, ndig: int):
    """Run the numba scanner on one part (whole lines) of a file; retry with exact capacity
    if the line-count estimate was too small (files of very short lines)."""
    cap = buf.shape[0] // 48 + 64
    lvl_cap = buf.shape[0] // 9 + 2  # a level '["1","0"]' takes >= 9 bytes
    res = scan_binance(buf, cap, lvl_cap, sym_arr, ndig)
    if res[-2] < 0:
        cap = int(np.count_nonzero(buf == 10)) + 1
        res = scan_binance(buf, cap, lvl_cap, sym_arr, ndig)
    (mtype, lstart, lend, local, exch, uid_first, uid_last, uid_prev, f_px, f_qty, f_px2, f_qty2, flag,
     bstart, nbid, astart, nask, lvl_px, lvl_qty, nrows, lvl_n) = res
    cols = {
        "mtype": mtype[:nrows], "local": local[:nrows], "exch": exch[:nrows], "uid_first": uid_first[:nrows],
        "uid_last": uid_last[:nrows], "uid_prev": uid_prev[:nrows], "f_px": f_px[:nrows], "f_qty": f_qty[:nrows],
        "f_px2": f_px2[:nrows], "f_qty2": f_qty2[:nrows], "flag": flag[:nrows], "bstart": bstart[:nrows],
        "nbid": nbid[:nrows], "astart": astart[:nrows], "nask": nask[:nrows],
    }
    return cols, lvl_px[:lvl_n], lvl_qty[:lvl_n], lstart[:nrows], lend[:nrows]


def _scan_bytes(buf: np.ndarray, sym_arr: np.ndarray, ndig: int):
    """Scan whole lines; buffers above a few MB are split at a line boundary and the parts
    scanned in parallel threads (the numba kernel releases the GIL), then merged."""
    n = buf.shape[0]
    bounds = [0]
    if n >= _PARALLEL_MIN_BYTES:
        for k in range(1, _N_THREADS):
            nl = np.flatnonzero(buf[n * k // _N_THREADS : n * k // _N_THREADS + (1 << 20)] == 10)
            if nl.size == 0:
                break
            cut = n * k // _N_THREADS + int(nl[0])
            if cut + 1 >= n or cut + 1 <= bounds[-1]:
                break
            bounds.append(cut + 1)
    bounds.append(n)
    if len(bounds) == 2:
        return _scan_part(buf, sym_arr, ndig)
    with ThreadPoolExecutor(max_workers=len(bounds) - 1) as ex:
        parts = list(ex.map(lambda ab: _scan_part(buf[ab[0] : ab[1]], sym_arr, ndig), zip(bounds[:-1], bounds[1:])))
    lvl_off = np.cumsum([0] + [pt[1].shape[0] for pt in parts[:-1]])
    cols = {}
    for name in _TABLE_FIELDS:
        cs = [pt[0][name] + off if name in ("bstart", "astart") else pt[0][name] for pt, off in zip(parts, lvl_off)]
        cols[name] = np.concatenate(cs)
    lvl_px = np.concatenate([pt[1] for pt in parts])
    lvl_qty = np.concatenate([pt[2] for pt in parts])
    lstart = np.concatenate([pt[3] + b for pt, b in zip(parts, bounds[:-1])])
    lend = np.concatenate([pt[4] + b for pt, b in zip(parts, bounds[:-1])])
    return cols, lvl_px, lvl_qty, lstart, lend



def _scan_file(path: Path, data: bytes, sym: str, lenient: bool, stats: ImportStats) -> tuple[_FileTable, str]:
    """Parse a whole decompressed file held in memory."""
    ndig, fsym = _first_line_info(data, path)
    if sym and fsym and fsym.lower() != sym.lower():
        raise DataError(f"{path}: stream symbol {fsym!r} differs from the first file's {sym!r}")
    sym = sym or fsym
    cols, lvl_px, lvl_qty = _process_block(path, data, len(data), 0, sym, ndig, lenient, stats)
    return _FileTable(path, cols, lvl_px, lvl_qty), sym


def _process_block(path: Path, data: bytes, end: int, row_base: int, sym: str, ndig: int, lenient: bool,
                   stats: ImportStats):
    """Parse ``data[:end]`` (whole lines); line numbers in errors are ``row_base + row + 1``."""
    buf = np.frombuffer(data, dtype=np.uint8, count=end)
    scanned = _scan_bytes(buf, np.frombuffer(sym.encode(), dtype=np.uint8), ndig)
    return _finish_block(path, data, scanned, row_base, sym, ndig, lenient, stats)


def _finish_block(path: Path, data: bytes, scanned, row_base: int, sym: str, ndig: int, lenient: bool,
                  stats: ImportStats):
    """Python part of a block: parse the lines the numba scanner declined (``scanned`` is what
    :func:`_scan_bytes` returned for ``data``) with orjson; returns (cols, lvl_px, lvl_qty)."""
    cols, lvl_px, lvl_qty, lstart, lend = scanned
    lvl_n = lvl_px.shape[0]
    # lines the fast path declined
    fb = np.flatnonzero(cols["mtype"] == M_FALLBACK)
    stats.fallback_lines += int(fb.size)
    extra_px: list[np.ndarray] = []
    extra_qty: list[np.ndarray] = []
    n_extra = 0
    for row in fb.tolist():
        line = bytes(data[int(lstart[row]) : int(lend[row])]).rstrip(b"\r ")
        try:
            typ, v = _slow_line(line, ndig, sym)
        except _LineError as e:
            msg = f"{path}:{row_base + row + 1}: {e}"
            if not lenient:
                raise DataError(msg) from None
            cols["mtype"][row] = M_SKIPPED
            stats.lines_skipped += 1
            if len(stats.skipped) < _MAX_SKIPPED_EXAMPLES:
                stats.skipped.append(msg)
            continue
        cols["mtype"][row] = typ
        cols["local"][row] = v["local"]
        cols["exch"][row] = v.get("exch", -1)
        if typ in (M_DEPTH, M_SNAPSHOT):
            base = lvl_n + n_extra
            nb_, na_ = v["bids"].shape[0], v["asks"].shape[0]
            cols["bstart"][row] = base
            cols["nbid"][row] = nb_
            cols["astart"][row] = base + nb_
            cols["nask"][row] = na_
            for side_arr in (v["bids"], v["asks"]):
                extra_px.append(side_arr[:, 0])
                extra_qty.append(side_arr[:, 1])
            n_extra += nb_ + na_
            if typ == M_DEPTH:
                cols["uid_first"][row] = v["U"]
                cols["uid_last"][row] = v["u"]
                cols["uid_prev"][row] = v["pu"]
            else:
                cols["uid_first"][row] = v["L"]
                cols["uid_last"][row] = v["L"]
        elif typ == M_TRADE:
            cols["uid_first"][row] = cols["uid_last"][row] = v["t"]
            cols["f_px"][row] = v["p"]
            cols["f_qty"][row] = v["q"]
            cols["flag"][row] = 1 if v["m"] else 0
        elif typ == M_BOOKTICKER:
            cols["uid_last"][row] = v["u"]
            cols["f_px"][row] = v["b"]
            cols["f_qty"][row] = v["B"]
            cols["f_px2"][row] = v["a"]
            cols["f_qty2"][row] = v["A"]
    if extra_px:
        lvl_px = np.concatenate([lvl_px] + extra_px)
        lvl_qty = np.concatenate([lvl_qty] + extra_qty)
    return cols, lvl_px, lvl_qty


_IN_PIECE = 1 << 19  # compressed bytes per inflate call (~4 MB out)
_DONE = object()


def _next_piece(q) -> tuple[bytes | None, str | None]:
    """The next inflated piece from the reader thread's queue: (piece, None); at the end
    (None, None) when the file ended cleanly, else (None, why it was cut short)."""
    item = q.get()
    if item is _DONE:
        return None, None
    if isinstance(item, tuple):
        return None, item[1]
    if isinstance(item, Exception):
        return None, f"{type(item).__name__}: {item}"
    return item, None


def _join_reader(th, q, truncated: str | None) -> None:
    """Join the inflating thread ``th``; when the consumer stopped before the end (an error,
    not a truncated file), drain ``q`` so that the producer can finish."""
    if truncated is None and th.is_alive():
        while th.is_alive():
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
    th.join()


def _inflate_pieces(raw: bytes, q: "queue.Queue", piece: int = _IN_PIECE) -> None:
    """Producer thread: inflate (multi-member) gzip ``raw`` piece by piece into ``q``; ends
    with ``_DONE``, or ``("truncated", reason)`` / an exception object on damage."""
    try:
        mod = _zlib_fast or zlib
        d = mod.decompressobj(wbits=47)
        pos = 0
        n = len(raw)
        while pos < n:
            data = raw[pos : pos + piece]
            pos += piece
            while data:
                out = d.decompress(data)
                if out:
                    q.put(out)
                if not d.eof:
                    break
                data = d.unused_data
                if data[:2] != b"\x1f\x8b" and not (len(data) < 2 and pos < n):
                    if data or pos < n:
                        rest = data + raw[pos:]
                        if rest.strip(b"\x00"):
                            q.put(("truncated", "data after the end of the gzip stream"))
                            return
                    q.put(_DONE)
                    return
                d = mod.decompressobj(wbits=47)
        if not d.eof:
            q.put(("truncated", "compressed stream ends before the end-of-stream marker"))
            return
        q.put(_DONE)
    except Exception as e:  # noqa: BLE001 - handed to the consumer
        q.put(e)


def _scan_gz_streaming_v1(path: Path, sym: str, lenient: bool, stats: ImportStats) -> tuple[_FileTable, str]:
    """Previous pipeline (kept for side-by-side benchmarks, ``_PIPELINE = "v1"``): inflate in a
    producer thread while each block is split in two and scanned by two threads, block after
    block."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    q: queue.Queue = queue.Queue(maxsize=16)
    th = threading.Thread(target=_inflate_pieces, args=(raw, q), daemon=True)
    th.start()
    parts = []
    carry = b""
    row_base = 0
    ndig = None
    truncated = None
    try:
        while True:
            item, truncated = _next_piece(q)
            if item is None:
                break
            data = carry + item if carry else item
            k = data.rfind(b"\n")
            if k < 0:
                carry = data
                continue
            if ndig is None:
                ndig, fsym = _first_line_info(data, path)
                if sym and fsym and fsym.lower() != sym.lower():
                    raise DataError(f"{path}: stream symbol {fsym!r} differs from the first file's {sym!r}")
                sym = sym or fsym
            cols, lp, lq = _process_block(path, data, k + 1, row_base, sym, ndig, lenient, stats)
            parts.append((cols, lp, lq))
            row_base += cols["mtype"].shape[0]
            carry = data[k + 1 :]
    finally:
        _join_reader(th, q, truncated)
    if truncated is not None:
        if not lenient:
            raise DataError(f"{path}: corrupt or truncated gzip stream: {truncated}")
        stats.truncated_files.append(str(path))
    if carry:
        if ndig is None:
            ndig, fsym = _first_line_info(carry, path)
            sym = sym or fsym
        cols, lp, lq = _process_block(path, carry, len(carry), row_base, sym, ndig, lenient, stats)
        parts.append((cols, lp, lq))
    if not parts:
        empty = {k: np.empty(0, np.int64) for k in _TABLE_FIELDS}
        empty["mtype"] = np.empty(0, np.int8)
        return _FileTable(path, empty, np.empty(0), np.empty(0)), sym
    if len(parts) == 1:
        cols, lp, lq = parts[0]
        return _FileTable(path, cols, lp, lq), sym
    lvl_off = np.cumsum([0] + [pt[1].shape[0] for pt in parts[:-1]])
    cols = {}
    for name in _TABLE_FIELDS:
        cs = [pt[0][name] + off if name in ("bstart", "astart") else pt[0][name] for pt, off in zip(parts, lvl_off)]
        cols[name] = np.concatenate(cs)
    return _FileTable(path, cols, np.concatenate([pt[1] for pt in parts]), np.concatenate([pt[2] for pt in parts])), sym


_MALLOC_TUNED = False


def _keep_freed_memory() -> None:
    """Once per process, on glibc: let freed heap memory be reused instead of returned to the
    OS (``M_MMAP_THRESHOLD`` 32 MB, ``M_TRIM_THRESHOLD`` 256 MB). An import allocates and
    frees some 100 MB of short-lived buffers (inflated text, per-block tables, event columns);
    with glibc's defaults most of them are fresh pages, and the page faults cost about a
    quarter of the import's CPU time. Process-wide effect: memory freed after the import's
    peak stays mapped in the process (up to 256 MB of free heap top) for later allocations.
    No-op elsewhere (musl, macOS, Windows) or when ``MMBOT_MALLOC_TUNING=0``."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if os.environ.get("MMBOT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


_PIPELINE = "pool"  # "v1": the previous streaming pipeline (benchmarks compare both)
_POOL_PIECE = 1 << 19  # compressed bytes per inflate call in the pooled pipeline (~4 MB out)


def _merge_parts(parts: list) -> tuple[dict, np.ndarray, np.ndarray]:
    """Concatenate per-block (cols, lvl_px, lvl_qty), shifting level offsets."""
    if len(parts) == 1:
        return parts[0]
    lvl_off = np.cumsum([0] + [pt[1].shape[0] for pt in parts[:-1]])
    cols = {}
    for name in _TABLE_FIELDS:
        cs = [pt[0][name] + off if name in ("bstart", "astart") else pt[0][name] for pt, off in zip(parts, lvl_off)]
        cols[name] = np.concatenate(cs)
    return cols, np.concatenate([pt[1] for pt in parts]), np.concatenate([pt[2] for pt in parts])


def _scan_gz_streaming(path: Path, sym: str, lenient: bool, stats: ImportStats) -> tuple[_FileTable, str]:
    """Inflate in a producer thread; each block of whole lines is scanned, whole, by one of
    ``_N_THREADS`` worker threads (the numba kernel releases the GIL), so inflating and
    scanning overlap without a barrier per block. The Python part of each block (lines the
    kernel declined, line numbers) runs in this thread, in block order."""
    if _PIPELINE == "v1":
        return _scan_gz_streaming_v1(path, sym, lenient, stats)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    q: queue.Queue = queue.Queue(maxsize=16)  # (at most ~64 MB of inflated text ahead)
    th = threading.Thread(target=_inflate_pieces, args=(raw, q, _POOL_PIECE), daemon=True)
    th.start()
    parts = []
    pending: list = []  # (future, data) in block order
    row_base = 0
    ndig = None
    sym_arr = None
    truncated = None

    def finish_head() -> None:
        nonlocal row_base
        fut, data = pending.pop(0)
        part = _finish_block(path, data, fut.result(), row_base, sym, ndig, lenient, stats)
        parts.append(part)
        row_base += part[0]["mtype"].shape[0]

    def submit(data, start: int, end: int) -> None:
        """Queue ``data[start:end]`` (whole lines) for scanning, without copying it."""
        buf = np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start)
        view = data if start == 0 and end == len(data) else memoryview(data)[start:end]
        pending.append((pool.submit(_scan_part, buf, sym_arr, ndig), view))

    pool = ThreadPoolExecutor(max_workers=_N_THREADS)
    try:
        # Inflated pieces are scanned in place: only the line split between two pieces is
        # copied (as a one-line block), so the text is never copied as a whole.
        carry = b""
        while True:
            item, truncated = _next_piece(q)
            if item is None:
                break
            k_first = item.find(b"\n")
            if k_first < 0:
                carry = carry + item
                continue
            if ndig is None:
                ndig, fsym = _first_line_info(carry + item[: 1 << 20], path)
                if sym and fsym and fsym.lower() != sym.lower():
                    raise DataError(f"{path}: stream symbol {fsym!r} differs from the first file's {sym!r}")
                sym = sym or fsym
                sym_arr = np.frombuffer(sym.encode(), dtype=np.uint8)
            start = 0
            if carry:
                bridge = carry + item[: k_first + 1]
                submit(bridge, 0, len(bridge))
                start = k_first + 1
            k_last = item.rfind(b"\n")
            if k_last + 1 > start:
                submit(item, start, k_last + 1)
            carry = item[k_last + 1 :]
            while pending and pending[0][0].done():
                finish_head()
        while pending:  # (line errors of whole blocks come before a gzip error, as before)
            finish_head()
        if truncated is not None and not lenient:
            raise DataError(f"{path}: corrupt or truncated gzip stream: {truncated}")
        if carry:
            if ndig is None:
                ndig, fsym = _first_line_info(carry, path)
                sym = sym or fsym
                sym_arr = np.frombuffer(sym.encode(), dtype=np.uint8)
            submit(carry, 0, len(carry))
            finish_head()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _join_reader(th, q, truncated)
    if truncated is not None:
        stats.truncated_files.append(str(path))
    if not parts:
        empty = {k: np.empty(0, np.int64) for k in _TABLE_FIELDS}
        empty["mtype"] = np.empty(0, np.int8)
        return _FileTable(path, empty, np.empty(0), np.empty(0)), sym
    cols, lp, lq = _merge_parts(parts)
    return _FileTable(path, cols, lp, lq), sym


def _scan_path(path: Path, sym: str, lenient: bool, stats: ImportStats) -> tuple[_FileTable, str]:
    try:
        with open(path, "rb") as f:
            magic = f.read(2)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e}") from None
    if magic == b"\x1f\x8b":
        return _scan_gz_streaming(path, sym, lenient, stats)
    data = _read_bytes(path, lenient, stats)
    return _scan_file(path, data, sym, lenient, stats)




def _infer_market(paths: list[Path], symbol: str, futures_ids: bool) -> str:
    parents = {p.parent.name.lower() for p in paths}
    if len(parents) == 1:
        (name,) = parents
        if name in ("spot", "usdm", "cm"):
            return name
    if futures_ids:
        return "cm" if "_" in symbol else "usdm"
    return "spot"


def import_binance(
    paths: list[Path] | list[str],
    out_dir: Path | str,
    *,
    symbol: str | None = None,
    market: str | None = None,
    lenient: bool = False,
    overwrite: bool = True,
    chunk_rows: int | None = None,
    tick_size: float | None = None,
    lot_size: float | None = None,
) -> ImportStats:
    """Import one market's Binance capture files, in the given order, into one recording.

    Args:
        paths: capture files of ONE symbol (``.gz`` or plain), consecutive in time.
        out_dir: recording directory to write (replaced if it holds a recording and
            ``overwrite``).
        symbol: e.g. ``"BTCUSDT"``; default: from the stream names.
        market: ``spot``, ``usdm`` or ``cm``; default: from the parent folder name, else from
            the presence of ``pu`` (futures) and a ``_`` in the symbol (COIN-M).
        lenient: skip (and count) corrupt lines instead of raising DataError.
        tick_size, lot_size: if known; inferred from the data otherwise.

    Returns the :class:`ImportStats` (also stored in ``meta.json["stats"]``).
    """
    t0 = time.perf_counter()
    tim: dict[str, float] = {}
    if _PIPELINE != "v1":
        _keep_freed_memory()
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no input files")
    out_dir = Path(out_dir)
    stats = ImportStats(out_dir=str(out_dir), files=[str(p) for p in paths])
    tables: list[_FileTable] = []
    sym = symbol.lower() if symbol else ""
    for p in paths:
        t = time.perf_counter()
        tab, sym = _scan_path(p, sym, lenient, stats)
        tim["read_parse"] = tim.get("read_parse", 0.0) + time.perf_counter() - t
        tables.append(tab)
    # concatenate per-file tables
    if len(tables) == 1:
        cols = tables[0].cols
        lvl_px, lvl_qty = tables[0].lvl_px, tables[0].lvl_qty
    else:
        cols = {}
        lvl_off = np.cumsum([0] + [t.lvl_px.shape[0] for t in tables[:-1]])
        for name in _TABLE_FIELDS:
            parts = []
            for t, off in zip(tables, lvl_off):
                c = t.cols[name]
                parts.append(c + off if name in ("bstart", "astart") else c)
            cols[name] = np.concatenate(parts)
        lvl_px = np.concatenate([t.lvl_px for t in tables])
        lvl_qty = np.concatenate([t.lvl_qty for t in tables])
    row_off = np.cumsum([0] + [t.nrows for t in tables])
    mtype = cols["mtype"]
    counts = np.bincount(mtype.astype(np.int64), minlength=8)
    stats.lines = int(mtype.shape[0])
    stats.blank_lines = int(counts[M_BLANK])
    stats.depth_messages = int(counts[M_DEPTH])
    stats.trade_messages = int(counts[M_TRADE])
    stats.bookticker_messages = int(counts[M_BOOKTICKER])
    stats.ignored_messages = int(counts[M_IGNORED])
    stats.snapshots = int(counts[M_SNAPSHOT])
    stats.messages = int(counts[M_DEPTH] + counts[M_TRADE] + counts[M_BOOKTICKER] + counts[M_IGNORED] + counts[M_SNAPSHOT])
    is_depth = mtype == M_DEPTH
    futures_ids = bool(np.any(cols["uid_prev"][is_depth] >= 0))
    stats.symbol = (symbol or sym).upper()
    stats.market = market or _infer_market(paths, stats.symbol, futures_ids)
    futures = stats.market in ("usdm", "cm") or futures_ids
    has_snapshot = stats.snapshots > 0

    t = time.perf_counter()  # "sync" stage: bookTicker table, writer, sync kernel, gap records
    bt_rows = np.flatnonzero(mtype == M_BOOKTICKER)
    bt = np.empty(bt_rows.size, dtype=BOOKTICKER_DTYPE)
    bt["local_ts"] = cols["local"][bt_rows]
    bt["exch_ts"] = cols["exch"][bt_rows]
    bt["bid_px"] = cols["f_px"][bt_rows]
    bt["bid_qty"] = cols["f_qty"][bt_rows]
    bt["ask_px"] = cols["f_px2"][bt_rows]
    bt["ask_qty"] = cols["f_qty2"][bt_rows]
    bt["update_id"] = cols["uid_last"][bt_rows]

    meta = {
        "exchange": "binance",
        "symbol": stats.symbol,
        "market": stats.market,
        "tick_size": tick_size,
        "lot_size": lot_size,
        "qty_unit": "contracts" if stats.market == "cm" else "base",
        "source_files": [{"path": str(p), "bytes": p.stat().st_size} for p in paths],
        "importer": "bot.importers.binance",
    }
    kw = {"chunk_rows": chunk_rows} if chunk_rows else {}
    writer = RecordingWriter(out_dir, meta, overwrite=overwrite, **kw)
    # the bookTicker table is final now: encode it (arrow, no GIL) while the sync kernel
    # (numba, no GIL) runs
    bt_ex = ThreadPoolExecutor(max_workers=1)
    bt_fut = bt_ex.submit(writer.write_aux, "bookticker", bt) if _PIPELINE != "v1" else None

    n_lvl_depth = int(cols["nbid"][is_depth].sum() + cols["nask"][is_depth].sum())
    is_snap = mtype == M_SNAPSHOT
    n_lvl_snap = int(cols["nbid"][is_snap].sum() + cols["nask"][is_snap].sum())
    # held-back diffs can be written once more after a mid-stream snapshot: bound by 2x
    out_cap = stats.trade_messages + 2 * n_lvl_depth + n_lvl_snap + 2 * stats.snapshots + 16
    gap_cap = 10_000
    (o_kind, o_side, o_exch, o_local, o_px, o_qty, o_first, o_last, nrow, gaps, ngap, counters) = sync_and_emit(
        mtype, cols["local"], cols["exch"], cols["uid_first"], cols["uid_last"], cols["uid_prev"],
        cols["f_px"], cols["f_qty"], cols["flag"], cols["bstart"], cols["nbid"], cols["astart"], cols["nask"],
        lvl_px, lvl_qty, futures, has_snapshot, out_cap, gap_cap,
    )
    ev_cols = {
        "kind": o_kind[:nrow], "side": o_side[:nrow], "exch_ts": o_exch[:nrow], "local_ts": o_local[:nrow],
        "px": o_px[:nrow], "qty": o_qty[:nrow], "first_id": o_first[:nrow], "last_id": o_last[:nrow],
    }

    stats.depth_applied = int(counters[C_APPLIED])
    stats.depth_dropped_stale = int(counters[C_STALE])
    stats.depth_dropped_duplicate = int(counters[C_DUP])
    stats.depth_dropped_before_snapshot = int(counters[C_HELD] - counters[C_HELD_USED])
    stats.depth_reapplied_after_snapshot = int(counters[C_REEMIT])
    stats.depth_overlaps = int(counters[C_OVERLAP])
    stats.gaps_found = int(ngap)

    def where(msg_idx: int) -> tuple[str, int]:
        k = int(np.searchsorted(row_off, msg_idx, side="right") - 1)
        return str(tables[k].path), int(msg_idx - row_off[k] + 1)

    snap_idx = np.flatnonzero(is_snap)
    # (details and unsynced spans for the first gap_cap gaps; gaps_found counts all)
    for g in gaps[: min(ngap, gap_cap)]:
        i, reason, expected, gU, gu, gpu, pos = (int(x) for x in g)
        f, ln = where(i)
        rec = {"file": f, "line": ln, "reason": _GAP_REASONS.get(reason, str(reason)),
               "local_ts": int(cols["local"][pos]), "U": gU, "u": gu}
        if reason == G_FIRST:
            rec["snapshot_last_update_id"] = expected
        else:
            rec["previous_u"] = expected
        if gpu >= 0:
            rec["pu"] = gpu
        later = snap_idx[snap_idx > pos]
        if later.size:
            sf, sl = where(int(later[0]))
            rec["resynced_at"] = f"{sf}:{sl}"
        else:
            rec["resynced_at"] = None
        stats.gaps.append(rec)
    # unsynced spans (local time): from each gap to the next snapshot (or end)
    if not has_snapshot and stats.depth_messages:
        stats.unsynced.append({"from_local_ts": int(cols["local"][is_depth][0]), "to_local_ts": None,
                               "reason": "no depth snapshot in the input: book built from diffs only"})
    for g in gaps[: min(ngap, gap_cap)]:
        i = int(g[6])
        later = snap_idx[snap_idx > i]
        to = int(cols["local"][later[0]]) if later.size else None
        if stats.unsynced and stats.unsynced[-1]["to_local_ts"] == to and stats.unsynced[-1]["reason"] == "gap":
            continue  # same span
        stats.unsynced.append({"from_local_ts": int(cols["local"][i]), "to_local_ts": to, "reason": "gap"})
    stats.synced_at_end = bool(has_snapshot and not any(u["to_local_ts"] is None for u in stats.unsynced))

    lt = ev_cols["local_ts"]
    stats.nonmonotonic_local_ts = int(np.count_nonzero(lt[1:] < lt[:-1])) if nrow > 1 else 0
    stats.events = int(nrow)

    tim["sync"] = time.perf_counter() - t
    t = time.perf_counter()
    if bt_fut is None:  # v1 pipeline: bookTicker encoded alongside the events
        bt_fut = bt_ex.submit(writer.write_aux, "bookticker", bt)
    try:
        writer.append_columns(ev_cols)
        writer.flush()
    finally:
        bt_fut.result()
        bt_ex.shutdown()
    counts_k = np.bincount(ev_cols["kind"], minlength=5)
    stats.rows_by_kind = {"depth": int(counts_k[1]), "trade": int(counts_k[2]),
                          "snapshot": int(counts_k[3]), "clear": int(counts_k[4])}
    stats.elapsed_s = time.perf_counter() - t0  # without the final meta.json write
    tim["write"] = time.perf_counter() - t
    stats.timings_s = {k: round(v, 6) for k, v in tim.items()}
    writer.close(stats=stats.as_dict())
    return stats


def validate_against_bookticker(rec_dir: Path | str) -> dict:
    """Compare the book rebuilt from a recording with its own bookTicker stream.

    Alignment by update id: after each depth message (and each snapshot) the rebuilt book is
    the exchange book at update id ``u`` of that message. bookTicker message k (id ``b_k``)
    gives the top of book for every id in ``[b_k, b_{k+1})`` (Binance pushes every change of
    the best bid/ask). So a book state with id ``u`` is compared with the last bookTicker with
    ``b_k <= u``. Only states after the first snapshot and outside unsynced spans count.

    Returns counts and match fractions: ``states`` compared, ``state_px_match`` /
    ``state_match`` (price / price and size, both sides), ``bookticker_compared`` (bookTicker
    messages whose id interval contains at least one book state; a 100 ms diff can cover
    several), ``bookticker_px_match`` / ``bookticker_match`` (over those, comparing with the
    first state in the interval), ``crossed_states``.
    """
    from bot.recording.book_replay import message_ends, replay_top
    from bot.recording.schema import CLEAR, DEPTH, SNAPSHOT

    rec = open_recording(rec_dir)
    ev = rec.events()
    bt = rec.bookticker()
    top = replay_top(ev, rec.tick_size)
    ends = message_ends(ev)
    kind = ev["kind"]
    clear_rows = np.flatnonzero(kind == CLEAR)
    start = int(clear_rows[0]) if clear_rows.size else 0
    sel = ends & ((kind == DEPTH) | (kind == SNAPSHOT))
    sel[:start] = False
    lt = ev["local_ts"]
    for span in rec.meta.get("stats", {}).get("unsynced", []):
        lo = span["from_local_ts"]
        hi = span["to_local_ts"]
        bad = lt >= lo if hi is None else (lt >= lo) & (lt < hi)
        sel &= ~bad
    rows = np.flatnonzero(sel)
    state_id = ev["last_id"][rows]
    st = top[rows]
    order = np.argsort(bt["update_id"], kind="stable")
    bts = bt[order]
    k = np.searchsorted(bts["update_id"], state_id, side="right") - 1
    ok = k >= 0
    rows, state_id, st, k = rows[ok], state_id[ok], st[ok], k[ok]
    ref = bts[k]
    px_eq = (st["bid_px"] == ref["bid_px"]) & (st["ask_px"] == ref["ask_px"])
    full_eq = px_eq & (st["bid_qty"] == ref["bid_qty"]) & (st["ask_qty"] == ref["ask_qty"])
    # per bookTicker message: first state in its interval
    first_state = np.ones(k.size, dtype=bool)
    if k.size > 1:
        first_state[1:] = k[1:] != k[:-1]
    res = {
        "bookticker_messages": int(bt.size),
        "states": int(rows.size),
        "state_px_match": float(px_eq.mean()) if rows.size else float("nan"),
        "state_match": float(full_eq.mean()) if rows.size else float("nan"),
        "bookticker_compared": int(first_state.sum()),
        "bookticker_px_match": float(px_eq[first_state].mean()) if rows.size else float("nan"),
        "bookticker_match": float(full_eq[first_state].mean()) if rows.size else float("nan"),
        "crossed_states": int(np.count_nonzero(st["crossed"])),
    }
    return res
