"""The backtest loop as compiled calls: venue, strategy, order manager and bookkeeping in arrays.

:func:`run_loop` replays decisions of a backtest, each one exactly what the engine path does
(:class:`bot.engine.Engine` over :class:`paper_trading.replay.ReplaySource` /
:class:`~paper_trading.replay.ReplayExchange`, :class:`strategies.market_maker.MarketMaker`,
:class:`bot.order_manager.OrderManager`), with the same compiled functions:

* the venue is :func:`paper_trading.venue.advance` on the venue's own arrays (in memory, or a
  window of a :class:`~paper_trading.stream_venue.StreamingVenue`: the call returns when the
  window needs the next batch, with the state kept in the arrays);
* the strategy is :func:`strategies.kernels.forecast_adjust` and :func:`~strategies.kernels.decide`,
  the A/k estimator :func:`~strategies.kernels.count_trades` / ``expire_trades`` /
  ``intensity_fit``, the volatility :func:`~strategies.kernels.ewma_step` -- the functions the
  Python classes call;
* the order diff is :meth:`OrderManager.plan`'s rule, in integer ticks and lots (ported once;
  tests/test_compiled_loop.py holds the two paths equal on real data);
* order states follow the order manager on the exchange's acknowledgements and fills: the
  venue reports of a decision are read in order (as :meth:`ReplayExchange.on_market`), then
  every fill is applied, then every acknowledgement (as :meth:`Engine._drain_fills`).

What the loop writes is a log in arrays (orders placed, order state changes, fills, PnL
snapshot times), turned into the run's record by :mod:`paper_trading.compiled_record`.

Units: times int ns of recorded local time; prices integer ticks (the venue's fill prices
quote per base); sizes integer lots; the inventory integer lots (``base_lots``); mids quote per
base. Phases: a call returns with a code (``DONE``, ``NEED_DATA``, ``GROW``, ``FLUSH``,
``NEED_START``, ``YIELD``) and resumes where it stopped on the next call (``I_PHASE``).
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from paper_trading.venue import advance
from strategies import kernels as K

# return codes
DONE, NEED_DATA, GROW, FLUSH, NEED_START, YIELD, ERROR = 0, 1, 2, 3, 4, 5, 6
# errors (ist[I_ERR])
ERR_REPORTS, ERR_PENDING, ERR_WORKING = 1, 2, 3
ERRORS = {ERR_REPORTS: "venue report buffer overflow", ERR_PENDING: "pending report buffer overflow",
          ERR_WORKING: "more working orders than the loop holds"}
# phases
PH_BEGIN, PH_ADVANCE, PH_COUNT, PH_REPORTS, PH_DECIDE = 0, 1, 2, 3, 4
# order states (bot.orders.OrderState) and reasons
S_NEW, S_OPEN, S_PARTIAL, S_FILLED, S_CANCELED, S_REJECTED = 0, 1, 2, 3, 4, 5
STATE_NAMES = ("new", "open", "partially_filled", "filled", "canceled", "rejected")
REASONS = ("", "shutdown", "post-only order would cross", "venue full or price out of range")
# horizon modes
H_NONE, H_ROLLING, H_FINITE = 0, 1, 2

# integer parameters (ip)
(P_INTERVAL, P_END, P_NTOTAL, P_PNL_INTERVAL, P_TOL, P_MAX_AGE, P_LATENCY, P_LAT_RECORDED, P_POST_ONLY, P_HMODE,
 P_HEND, P_CALIBRATE, P_MIN_TRADES, P_REFRESH, P_WIN, P_TOP, P_SAMPLE, P_MIN_SAMPLES, P_HAS_INIT_SIGMA, P_USE_FC_SIGMA,
 P_INIT_LOTS, P_LOT_NUM, P_LOT_DEN, P_MAX_STEPS, P_FIXED_SIGMA) = range(25)
N_IP = 25
# float parameters (fp)
F_LAT_MULT, F_DEPTH_STEP, F_HALFLIFE, F_INIT_SIGMA, F_FIXED_SIGMA, F_DRIFT_W, F_TAU = range(7)
N_FP = 7
# integer state (ist)
(I_PHASE, I_T, I_LI, I_STEPS, I_PLACED, I_CANCELED, I_REJECTED, I_NEXT_OID, I_NORDERS, I_NW, I_BASE_LOTS, I_NEXT_PNL,
 I_ORDERS_CHANGED, I_QID, I_ST_QID, I_HAS_KEY, I_LAST_NB, I_LAST_NA, I_EST_HEAD, I_EST_TAIL, I_EST_NOW, I_EST_HAS_NOW,
 I_EST_FIRST, I_EST_HAS_FIRST, I_NEXT_FIT, I_VOL_LAST_T, I_VOL_HAS_LAST, I_VOL_N, I_HAS_PREV_MID, I_FC_PTR, I_SIZED,
 I_DECISIONS, I_WARMING, I_HORIZON_ENDED, I_NPEND, I_STEP_TRADES, I_SEG0, I_SEG1, I_HOLD, I_ERR, I_BOOK_OK,
 I_NFILLS, I_NEV, I_NOL, I_NFL, I_NSN, I_CALL_STEPS, I_GROW_NEED, I_LAST_QID) = range(49)
N_IST = 49
# float state (fst)
(F_A, F_K, F_PREV_MID, F_ST_MID, F_VOL_MID, F_VOL_ACC, F_VOL_NORM, F_S, F_SIGMA, F_DRIFT, F_BB, F_BA) = range(12)
F_KEY = 12  # 8 floats: the inputs of the last decide (bb, ba, q, sigma, drift, A, k, tau)
N_FST = 20


@nb.njit(cache=True, nogil=True)
def _find(w_gidx, nw, gidx):
    for w in range(nw):
        if w_gidx[w] == gidx:
            return w
    return -1


@nb.njit(cache=True, nogil=True)
def _retire(w, ist, w_gidx, w_side, w_ticks, w_lots, w_filled, w_state, w_creq, w_created, w_oid, w_slot, w_exch, w_left):
    """Drop working order ``w`` (it became terminal), keeping the others in submission order."""
    nw = ist[I_NW]
    for x in range(w, nw - 1):
        w_gidx[x] = w_gidx[x + 1]
        w_side[x] = w_side[x + 1]
        w_ticks[x] = w_ticks[x + 1]
        w_lots[x] = w_lots[x + 1]
        w_filled[x] = w_filled[x + 1]
        w_state[x] = w_state[x + 1]
        w_creq[x] = w_creq[x + 1]
        w_created[x] = w_created[x + 1]
        w_oid[x] = w_oid[x + 1]
        w_slot[x] = w_slot[x + 1]
        w_exch[x] = w_exch[x + 1]
        w_left[x] = w_left[x + 1]
    ist[I_NW] = nw - 1


@nb.njit(cache=True, nogil=True)
def _event(ist, ev_order, ev_ts, ev_state, ev_piece, ev_reason, gidx, ts, state, piece, reason):
    """An order change for the record: order ``gidx`` at ``ts`` in ``state``, ``piece`` lots
    added to its filled size, reason code ``reason`` (0: the order keeps its reason)."""
    n = ist[I_NEV]
    ev_order[n] = gidx
    ev_ts[n] = ts
    ev_state[n] = state
    ev_piece[n] = piece
    ev_reason[n] = reason
    ist[I_NEV] = n + 1


@nb.njit(cache=True, nogil=True)
def run_loop(kind, side, local_ts, exch_ts, level, qty, px, avail, final, base,
             bid, ask, best, rank_tick, o_status, o_side, o_tick, o_rank, o_lots, o_ahead, o_cum, o_t_act, o_t_cancel,
             o_id, o_post, o_n, next_t, cand, tick, per_unit, lot, queue_model, queue_n,
             rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask,
             ip, fp, cfg, ist, fst,
             pd_kind, pd_id, pd_ts, pd_px, pd_lots, pd_bid, pd_ask, pd_ok, pd_size,
             w_gidx, w_side, w_ticks, w_lots, w_filled, w_state, w_creq, w_created, w_oid, w_slot, w_exch, w_left,
             out, last_out, est_ts, est_b, est_counts, tr_ts, tr_px, tr_side,
             fc_ts, fc_sigma, fc_drift,
             ol_side, ol_ticks, ol_lots, ol_level, ol_created, ol_oid,
             ev_order, ev_ts, ev_state, ev_piece, ev_reason,
             fl_order, fl_ts, fl_ticks, fl_lots, fl_liq, fl_mid, fl_side,
             sn_ts, sn_mid, sn_nfills):
    """Run decisions until the end of the replay or until Python is needed (see the module
    docstring); returns the code. ``kind .. px``: the venue's columns (window rows, ``avail``
    of them may be applied; ``final``: the window holds the recording's last row; ``base``:
    global index of its first row); then the venue's state (``Venue._state``); ``ip``/``fp``
    parameters, ``ist``/``fst`` state; the rest scratch, working orders and logs."""
    nlev = rank_tick.shape[0]
    R = rep_kind.shape[0]
    P = pd_kind.shape[0]
    W = w_gidx.shape[0]
    interval = ip[P_INTERVAL]
    tol = ip[P_TOL]
    max_age = ip[P_MAX_AGE]
    calibrate = ip[P_CALIBRATE] != 0
    nlevels = out.shape[1]
    ist[I_CALL_STEPS] = 0
    while True:
        ph = ist[I_PHASE]
        if ph == PH_BEGIN:
            t = ist[I_T]
            if t >= ip[P_END] or base + ist[I_LI] >= ip[P_NTOTAL]:
                return DONE
            if ist[I_CALL_STEPS] >= ip[P_MAX_STEPS]:
                return YIELD
            ist[I_CALL_STEPS] += 1
            ist[I_T] = t + interval
            ist[I_STEPS] += 1
            ist[I_NPEND] = 0
            ist[I_STEP_TRADES] = 0
            ist[I_PHASE] = PH_ADVANCE
            ph = PH_ADVANCE
        t = ist[I_T]
        if ph == PH_ADVANCE:
            li = ist[I_LI]
            hold = (not final) and local_ts[avail] <= t
            li_new, nrep = advance(kind, side, local_ts, level, qty, li, avail, t, hold,
                                   bid, ask, best, rank_tick, o_status, o_side, o_tick, o_rank, o_lots, o_ahead, o_cum,
                                   o_t_act, o_t_cancel, o_id, o_post, o_n, next_t, cand, tick, per_unit, lot, queue_model,
                                   queue_n, rep_kind, rep_id, rep_ts, rep_px, rep_lots, rep_bid, rep_ask)
            if nrep > R:
                ist[I_ERR] = ERR_REPORTS
                return ERROR
            npd = ist[I_NPEND]
            if npd + nrep > P:
                ist[I_ERR] = ERR_PENDING
                return ERROR
            for r in range(nrep):
                pd_kind[npd + r] = rep_kind[r]
                pd_id[npd + r] = rep_id[r]
                pd_ts[npd + r] = rep_ts[r]
                pd_px[npd + r] = rep_px[r]
                pd_lots[npd + r] = rep_lots[r]
                pd_bid[npd + r] = rep_bid[r]
                pd_ask[npd + r] = rep_ask[r]
            ist[I_NPEND] = npd + nrep
            ist[I_SEG0] = li
            ist[I_SEG1] = li_new
            ist[I_LI] = li_new
            ist[I_HOLD] = 1 if hold else 0
            ist[I_PHASE] = PH_COUNT
            ph = PH_COUNT
        if ph == PH_COUNT:
            # the public trades of the rows just applied: ReplaySource._trades -> MarketMaker.on_trades
            s0 = ist[I_SEG0]
            s1 = ist[I_SEG1]
            nt = 0
            for i in range(s0, s1):
                if kind[i] == 2:
                    nt += 1
            if nt > 0:
                ist[I_STEP_TRADES] = 1
                if calibrate and ist[I_HAS_PREV_MID] != 0:
                    head = ist[I_EST_HEAD]
                    tail = ist[I_EST_TAIL]
                    cap = est_ts.shape[0]
                    if tail + nt > cap:  # IntensityEstimator._reserve: move the window to the front
                        live = tail - head
                        if live + nt > cap // 2 or nt > tr_ts.shape[0]:
                            need = max(cap, 2 * (live + nt))
                            ist[I_GROW_NEED] = need
                            return GROW
                        for x in range(live):
                            est_ts[x] = est_ts[head + x]
                            est_b[x] = est_b[head + x]
                        head = 0
                        tail = live
                    elif nt > tr_ts.shape[0]:
                        ist[I_GROW_NEED] = cap
                        return GROW
                    n = 0
                    for i in range(s0, s1):
                        if kind[i] == 2:
                            tr_ts[n] = local_ts[i]
                            tr_px[n] = px[i]
                            tr_side[n] = side[i]
                            n += 1
                    head, tail, now, has_now, first, has_first = K.count_trades(
                        est_ts, est_b, head, tail, est_counts, tr_ts[:n], tr_px[:n], tr_side[:n], fst[F_PREV_MID],
                        fp[F_DEPTH_STEP], ip[P_TOP], ist[I_EST_NOW], ist[I_EST_HAS_NOW] != 0, ip[P_WIN])
                    ist[I_EST_HEAD] = head
                    ist[I_EST_TAIL] = tail
                    if has_now:
                        ist[I_EST_NOW] = now
                        ist[I_EST_HAS_NOW] = 1
                    if ist[I_EST_HAS_FIRST] == 0 and has_first:
                        ist[I_EST_FIRST] = first
                        ist[I_EST_HAS_FIRST] = 1
            if ist[I_HOLD] != 0:
                ist[I_PHASE] = PH_ADVANCE
                return NEED_DATA
            ist[I_PHASE] = PH_REPORTS
            ph = PH_REPORTS
        if ph == PH_REPORTS:
            npd = ist[I_NPEND]
            # room in the logs for everything this decision may write
            if (ist[I_NEV] + 2 * npd + 4 * nlevels + 8 > ev_order.shape[0] or ist[I_NFL] + npd > fl_order.shape[0]
                    or ist[I_NOL] + 2 * nlevels > ol_side.shape[0] or ist[I_NSN] + 1 > sn_ts.shape[0]):
                return FLUSH
            nw = ist[I_NW]
            # ReplayExchange.on_market: reports -> fills and acknowledgements (of orders it still knows)
            for w in range(nw):
                w_left[w] = w_lots[w] - w_filled[w]
            for r in range(npd):
                pd_ok[r] = 0
                oid = pd_id[r]
                w = -1
                for x in range(nw):
                    if w_exch[x] != 0 and w_oid[x] == oid:
                        w = x
                        break
                if w < 0:
                    continue
                k = pd_kind[r]
                if k == 1:
                    pd_ok[r] = 1
                elif k == 2 or k == 3:
                    pd_ok[r] = 1
                    w_exch[w] = 0
                elif k == 4 or k == 5:
                    left = w_left[w]
                    size = pd_lots[r] if pd_lots[r] < left else left
                    if size <= 0:
                        continue
                    pd_ok[r] = 1
                    pd_size[r] = size
                    w_left[w] = left - size
                    if w_left[w] <= 0:
                        w_exch[w] = 0
            # Engine._drain_fills: every fill first, then every acknowledgement
            for r in range(npd):
                k = pd_kind[r]
                if pd_ok[r] == 0 or (k != 4 and k != 5):
                    continue
                oid = pd_id[r]
                w = -1
                for x in range(ist[I_NW]):
                    if w_oid[x] == oid:
                        w = x
                        break
                size = pd_size[r]
                ts = pd_ts[r]
                b = pd_bid[r]
                a = pd_ask[r]
                mid = pd_px[r] if (b != b or a != a) else 0.5 * (b + a)
                n = ist[I_NFL]
                gidx = w_gidx[w] if w >= 0 else -1
                sd = w_side[w] if w >= 0 else 0
                fl_order[n] = gidx
                fl_ts[n] = ts
                fl_ticks[n] = np.int64(np.rint(pd_px[r] / tick))
                fl_lots[n] = size
                fl_liq[n] = 0 if k == 4 else 1
                fl_mid[n] = mid
                fl_side[n] = sd
                ist[I_NFL] = n + 1
                ist[I_NFILLS] += 1
                ist[I_BASE_LOTS] += sd * size
                ist[I_ORDERS_CHANGED] = 1
                if w < 0:
                    continue
                # OrderManager.on_fill
                st = w_state[w]
                if st == S_NEW:
                    w_state[w] = S_OPEN
                    st = S_OPEN
                    _event(ist, ev_order, ev_ts, ev_state, ev_piece, ev_reason, gidx, ts, S_OPEN, 0, 0)
                if st == S_FILLED or st == S_REJECTED or st == S_CANCELED:  # not reached: terminal orders are retired
                    continue
                rem = w_lots[w] - w_filled[w]
                piece = size if size < rem else rem
                w_filled[w] += piece
                st = S_FILLED if w_filled[w] == w_lots[w] else S_PARTIAL
                w_state[w] = st
                _event(ist, ev_order, ev_ts, ev_state, ev_piece, ev_reason, gidx, ts, st, piece, 0)
                if st == S_FILLED:
                    _retire(w, ist, w_gidx, w_side, w_ticks, w_lots, w_filled, w_state, w_creq, w_created, w_oid, w_slot,
                            w_exch, w_left)
            for r in range(npd):
                k = pd_kind[r]
                if pd_ok[r] == 0 or k == 4 or k == 5:
                    continue
                ist[I_ORDERS_CHANGED] = 1
                if k == 2:
                    ist[I_REJECTED] += 1
                oid = pd_id[r]
                w = -1
                for x in range(ist[I_NW]):
                    if w_oid[x] == oid:
                        w = x
                        break
                if w < 0:
                    continue
                st = w_state[w]
                new = S_OPEN if k == 1 else (S_REJECTED if k == 2 else S_CANCELED)
                # OrderManager.on_ack: the transitions an acknowledgement may make
                ok = False
                if st == S_NEW:
                    ok = True
                elif st == S_OPEN or st == S_PARTIAL:
                    ok = new == S_CANCELED
                if not ok:
                    continue
                w_state[w] = new
                _event(ist, ev_order, ev_ts, ev_state, ev_piece, ev_reason, w_gidx[w], pd_ts[r], new, 0,
                       2 if new == S_REJECTED else 0)
                if new != S_OPEN:
                    _retire(w, ist, w_gidx, w_side, w_ticks, w_lots, w_filled, w_state, w_creq, w_created, w_oid, w_slot,
                            w_exch, w_left)
            ist[I_NPEND] = 0
            # the book after the decision's rows
            bbr = best[0]
            bar = best[1]
            has_b = bbr >= 0
            has_a = bar < nlev
            bb = (rank_tick[bbr] / per_unit if per_unit > 0.0 else rank_tick[bbr] * tick) if has_b else math.nan
            ba = (rank_tick[bar] / per_unit if per_unit > 0.0 else rank_tick[bar] * tick) if has_a else math.nan
            fst[F_BB] = bb
            fst[F_BA] = ba
            if has_b and has_a:
                fst[F_ST_MID] = 0.5 * (bb + ba)
            # MarketMaker.on_trades: refit A and k
            if calibrate and ist[I_STEP_TRADES] != 0 and ist[I_HAS_PREV_MID] != 0:
                if t >= ist[I_NEXT_FIT] and ist[I_EST_TAIL] - ist[I_EST_HEAD] >= ip[P_MIN_TRADES]:
                    ist[I_NEXT_FIT] = t + ip[P_REFRESH]
                    if ist[I_EST_HAS_NOW] != 0:  # IntensityEstimator.estimate(t)
                        now = t if t > ist[I_EST_NOW] else ist[I_EST_NOW]
                        ist[I_EST_NOW] = now
                        ist[I_EST_HEAD] = K.expire_trades(est_ts, est_b, ist[I_EST_HEAD], ist[I_EST_TAIL], est_counts,
                                                          now - ip[P_WIN])
                        span = now - ist[I_EST_FIRST]
                        length_s = (ip[P_WIN] if ip[P_WIN] < span else span) / 1_000_000_000
                        if length_s > 0:
                            a_fit, k_fit = K.intensity_fit(est_counts, fp[F_DEPTH_STEP], length_s)
                            if not math.isnan(a_fit):
                                fst[F_A] = a_fit
                                fst[F_K] = k_fit
            # the precomputed forecast of this decision time (TableForecaster.update)
            fs = math.nan
            fd = math.nan
            p = ist[I_FC_PTR]
            while p < fc_ts.shape[0] and fc_ts[p] < t:
                p += 1
            ist[I_FC_PTR] = p
            if p < fc_ts.shape[0] and fc_ts[p] == t:
                fs = fc_sigma[p]
                fd = fc_drift[p]
            # MarketMaker.on_update, up to the sizing
            if not (has_b and has_a) or bb >= ba:
                ist[I_BOOK_OK] = 0
            else:
                ist[I_BOOK_OK] = 1
                s = 0.5 * (bb + ba)
                fst[F_PREV_MID] = s
                ist[I_HAS_PREV_MID] = 1
                fst[F_S] = s
                if ist[I_VOL_HAS_LAST] == 0:
                    ist[I_VOL_LAST_T] = t
                    fst[F_VOL_MID] = s
                    ist[I_VOL_HAS_LAST] = 1
                else:
                    lt, lm, acc, nrm, vn = K.ewma_step(ist[I_VOL_LAST_T], fst[F_VOL_MID], fst[F_VOL_ACC], fst[F_VOL_NORM],
                                                       ist[I_VOL_N], s, t, ip[P_SAMPLE], fp[F_HALFLIFE])
                    ist[I_VOL_LAST_T] = lt
                    fst[F_VOL_MID] = lm
                    fst[F_VOL_ACC] = acc
                    fst[F_VOL_NORM] = nrm
                    ist[I_VOL_N] = vn
                if ist[I_VOL_N] < ip[P_MIN_SAMPLES]:
                    ew = fp[F_INIT_SIGMA] if ip[P_HAS_INIT_SIGMA] != 0 else math.nan
                else:
                    ew = math.sqrt(fst[F_VOL_ACC] / fst[F_VOL_NORM])
                sigma, drift = K.forecast_adjust(fs, ip[P_USE_FC_SIGMA] != 0, fp[F_FIXED_SIGMA], ew, fd, fp[F_DRIFT_W])
                fst[F_SIGMA] = sigma
                fst[F_DRIFT] = drift
            ist[I_PHASE] = PH_DECIDE
            if ist[I_BOOK_OK] != 0 and ist[I_SIZED] == 0:
                return NEED_START  # MarketMaker._start (Python: sizing, packed config, fit warnings)
            ph = PH_DECIDE
        if ph == PH_DECIDE:
            # MarketMaker.on_update after the sizing: each new Quotes object gets a new id
            # (I_QID); the cached one of an unchanged decision keeps its id (I_LAST_QID)
            nb_ = 0
            na_ = 0
            if ist[I_BOOK_OK] != 0:
                ist[I_DECISIONS] += 1
                sigma = fst[F_SIGMA]
                if math.isnan(sigma):
                    ist[I_WARMING] += 1
                    ist[I_QID] += 1
                    qid = ist[I_QID]
                else:
                    q = ((ip[P_INIT_LOTS] + ist[I_BASE_LOTS]) * ip[P_LOT_NUM]) / ip[P_LOT_DEN]
                    hm = ip[P_HMODE]
                    if hm == H_NONE:
                        tau = 0.0
                    elif hm == H_ROLLING:
                        tau = fp[F_TAU]
                    else:
                        d = ip[P_HEND] - t
                        tau = (d if d > 0 else 0) * 1e-9
                        if tau == 0.0 and ist[I_HORIZON_ENDED] < 0:
                            ist[I_HORIZON_ENDED] = t
                    bb = fst[F_BB]
                    ba = fst[F_BA]
                    drift = fst[F_DRIFT]
                    A = fst[F_A]
                    k_ = fst[F_K]
                    same = (ist[I_HAS_KEY] != 0 and fst[F_KEY] == bb and fst[F_KEY + 1] == ba and fst[F_KEY + 2] == q
                            and fst[F_KEY + 3] == sigma and fst[F_KEY + 4] == drift and fst[F_KEY + 5] == A
                            and fst[F_KEY + 6] == k_ and fst[F_KEY + 7] == tau)
                    if not same:
                        r_, b_, a_, nbq, naq = K.decide(cfg, fst[F_S], bb, ba, q, sigma, drift, tau, A, k_, out)
                        for j in range(4):
                            for x in range(nlevels):
                                last_out[j, x] = out[j, x]
                        ist[I_LAST_NB] = nbq
                        ist[I_LAST_NA] = naq
                        fst[F_KEY] = bb
                        fst[F_KEY + 1] = ba
                        fst[F_KEY + 2] = q
                        fst[F_KEY + 3] = sigma
                        fst[F_KEY + 4] = drift
                        fst[F_KEY + 5] = A
                        fst[F_KEY + 6] = k_
                        fst[F_KEY + 7] = tau
                        ist[I_HAS_KEY] = 1
                        ist[I_QID] += 1
                        ist[I_LAST_QID] = ist[I_QID]
                    qid = ist[I_LAST_QID]
                    nb_ = ist[I_LAST_NB]
                    na_ = ist[I_LAST_NA]
            else:
                ist[I_QID] += 1
                qid = ist[I_QID]
            if qid != ist[I_ST_QID] or ist[I_ORDERS_CHANGED] != 0 or max_age >= 0:
                ist[I_ST_QID] = qid
                ist[I_ORDERS_CHANGED] = 0
                _reconcile(t, nb_, na_, last_out, ist, ip, w_gidx, w_side, w_ticks, w_lots, w_filled, w_state, w_creq,
                           w_created, w_oid, w_slot, w_exch, w_left, o_status, o_side, o_tick, o_rank, o_lots, o_ahead,
                           o_cum, o_t_act, o_t_cancel, o_id, o_post, o_n, next_t, rank_tick, local_ts, exch_ts, base, fp,
                           ol_side, ol_ticks, ol_lots, ol_level, ol_created, ol_oid,
                           ev_order, ev_ts, ev_state, ev_piece, ev_reason)
                if ist[I_ERR] != 0:
                    return ERROR
            # Engine._snapshot
            mid = fst[F_ST_MID]
            if not math.isnan(mid) and t >= ist[I_NEXT_PNL]:
                ist[I_NEXT_PNL] = t + ip[P_PNL_INTERVAL]
                n = ist[I_NSN]
                sn_ts[n] = t
                sn_mid[n] = mid
                sn_nfills[n] = ist[I_NFILLS]
                ist[I_NSN] = n + 1
            ist[I_PHASE] = PH_BEGIN


@nb.njit(cache=True, nogil=True)
def _reconcile(t, nb_, na_, lv, ist, ip, w_gidx, w_side, w_ticks, w_lots, w_filled, w_state, w_creq, w_created, w_oid,
               w_slot, w_exch, w_left, o_status, o_side, o_tick, o_rank, o_lots, o_ahead, o_cum, o_t_act, o_t_cancel,
               o_id, o_post, o_n, next_t, rank_tick, local_ts, exch_ts, base, fp,
               ol_side, ol_ticks, ol_lots, ol_level, ol_created, ol_oid, ev_order, ev_ts, ev_state, ev_piece, ev_reason):
    """Engine._reconcile with OrderManager.plan's rule: per side (bids, then asks) each desired
    level, best first, takes the unmatched working order of its size closest in price within
    the tolerance (exact price first), not older than the age limit; unmatched working orders
    are cancelled, unmatched levels placed (all cancels, then all placements)."""
    nw = ist[I_NW]
    tol = ip[P_TOL]
    max_age = ip[P_MAX_AGE]
    W = w_gidx.shape[0]
    nlevels = lv.shape[1]
    free = np.empty(nw, np.int64)
    cancel = np.empty(nw, np.int64)
    ncancel = 0
    pl_side = np.empty(2 * nlevels, np.int64)
    pl_ticks = np.empty(2 * nlevels, np.int64)
    pl_lots = np.empty(2 * nlevels, np.int64)
    pl_level = np.empty(2 * nlevels, np.int64)
    npl = 0
    for sd in (1, -1):
        row = 0 if sd > 0 else 2
        nlv = nb_ if sd > 0 else na_
        nf = 0
        for w in range(nw):
            if w_side[w] != sd or w_creq[w] != 0:
                continue
            if max_age >= 0 and t - w_created[w] >= max_age:
                cancel[ncancel] = w  # stale
                ncancel += 1
            else:
                free[nf] = w
                nf += 1
        for i in range(nlv):
            lt = lv[row, i]
            ll = lv[row + 1, i]
            best = -1
            best_d = -1
            for f in range(nf):
                w = free[f]
                if w_lots[w] != ll:
                    continue
                d = w_ticks[w] - lt
                if d < 0:
                    d = -d
                if d <= tol and (best < 0 or d < best_d):
                    best = f
                    best_d = d
                    if d == 0:
                        break
            if best >= 0:
                for f in range(best, nf - 1):
                    free[f] = free[f + 1]
                nf -= 1
            else:
                pl_side[npl] = sd
                pl_ticks[npl] = lt
                pl_lots[npl] = ll
                pl_level[npl] = i
                npl += 1
        for f in range(nf):
            cancel[ncancel] = free[f]
            ncancel += 1
    M = o_status.shape[0]
    for c in range(ncancel):
        w = cancel[c]
        w_creq[w] = 1
        ist[I_CANCELED] += 1
        if w_exch[w] != 0:  # Venue.cancel
            m = w_slot[w]
            if o_status[m] != 0 and o_id[m] == w_oid[w] and o_t_cancel[m] == np.iinfo(np.int64).max:
                tc = t + _latency(ist, ip, fp, local_ts, exch_ts, base)
                o_t_cancel[m] = tc
                if tc < next_t[0]:
                    next_t[0] = tc
    for j in range(npl):
        gidx = ist[I_NORDERS]
        ist[I_NORDERS] = gidx + 1
        n = ist[I_NOL]
        ol_side[n] = pl_side[j]
        ol_ticks[n] = pl_ticks[j]
        ol_lots[n] = pl_lots[j]
        ol_level[n] = pl_level[j]
        ol_created[n] = t
        _event(ist, ev_order, ev_ts, ev_state, ev_piece, ev_reason, gidx, t, S_NEW, 0, 0)
        nw = ist[I_NW]
        if nw >= W:
            ist[I_ERR] = ERR_WORKING
            return
        w_gidx[nw] = gidx
        w_side[nw] = pl_side[j]
        w_ticks[nw] = pl_ticks[j]
        w_lots[nw] = pl_lots[j]
        w_filled[nw] = 0
        w_state[nw] = S_NEW
        w_creq[nw] = 0
        w_created[nw] = t
        w_oid[nw] = 0
        w_slot[nw] = -1
        w_exch[nw] = 0
        ist[I_NW] = nw + 1
        # ReplayExchange.place -> Venue.submit
        oid = ist[I_NEXT_OID]
        ist[I_NEXT_OID] = oid + 1
        m = -1
        for x in range(M):
            if o_status[x] == 0:
                m = x
                break
        if m < 0:
            ol_oid[n] = 0
            ist[I_NOL] = n + 1
            w_state[nw] = S_REJECTED
            _event(ist, ev_order, ev_ts, ev_state, ev_piece, ev_reason, gidx, t, S_REJECTED, 0, 3)
            ist[I_REJECTED] += 1
            _retire(nw, ist, w_gidx, w_side, w_ticks, w_lots, w_filled, w_state, w_creq, w_created, w_oid, w_slot,
                    w_exch, w_left)
            continue
        ol_oid[n] = oid
        ist[I_NOL] = n + 1
        ticks = pl_ticks[j]
        r = np.searchsorted(rank_tick, ticks)
        t_act = t + _latency(ist, ip, fp, local_ts, exch_ts, base)
        o_status[m] = 1
        o_side[m] = pl_side[j]
        o_tick[m] = ticks
        o_rank[m] = r if r < rank_tick.shape[0] and rank_tick[r] == ticks else -1
        o_lots[m] = pl_lots[j]
        o_ahead[m] = 0.0
        o_cum[m] = 0.0
        o_t_act[m] = t_act
        o_t_cancel[m] = np.iinfo(np.int64).max
        o_id[m] = oid
        o_post[m] = ip[P_POST_ONLY] != 0
        if m + 1 > o_n[0]:
            o_n[0] = m + 1
        if t_act < next_t[0]:
            next_t[0] = t_act
        w_oid[nw] = oid
        w_slot[nw] = m
        w_exch[nw] = 1
        ist[I_PLACED] += 1


@nb.njit(cache=True, nogil=True)
def _latency(ist, ip, fp, local_ts, exch_ts, base):
    """Venue.latency_ns: the entry latency, plus the recorded feed delay of the last applied
    row times the multiplier (``latency_mode: recorded``)."""
    lat = ip[P_LATENCY]
    li = ist[I_LI]
    if ip[P_LAT_RECORDED] != 0 and base + li > 0:
        j = li - 1
        if exch_ts[j] > 0:
            d = local_ts[j] - exch_ts[j]
            lat += np.int64((d if d > 0 else 0) * fp[F_LAT_MULT])
    return lat
