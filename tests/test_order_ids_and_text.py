"""Client order ids that never repeat across runs, processes and databases, and Decimals
written as plain digits (never ``7.839E+4``) in the database and in what goes to a venue."""

import asyncio
import itertools
import re
import sqlite3
from decimal import Decimal as D

from bot.app import build_paper_engine
from bot.config import Config, with_overrides
from bot.inventory import Inventory
from bot.market import MarketInfo, plain
from bot.orders import CLIENT_ID_MAX_LEN, ClientIdFactory, Fill, Order, Side, new_client_id
from bot.persistence.store import open_store

ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,36}$")  # Binance newClientOrderId allows this (and '.', ':', '/')
PLAIN_RE = re.compile(r"^-?\d+(\.\d+)?$")


def run_sim(db, **over):
    cfg = with_overrides(Config(), **{"database.url": str(db), "sim.speed": 0.0, "forecaster.model": "none",
                                      "duration_s": 30.0, **over})
    store = open_store(cfg.database.url)
    try:
        return asyncio.run(build_paper_engine(cfg, store, handle_signals=False).run())
    finally:
        store.close()


def client_ids(db, run_id=None):
    con = sqlite3.connect(db)
    q = "select client_id from orders" + ("" if run_id is None else f" where run_id={int(run_id)}")
    return [r[0] for r in con.execute(q)]


def test_client_ids_carry_database_prefix_and_run(tmp_path):
    db = tmp_path / "ids.db"
    a, b = run_sim(db), run_sim(db)
    ids_a, ids_b = client_ids(db, a["run_id"]), client_ids(db, b["run_id"])
    assert ids_a and ids_b
    assert set(ids_a).isdisjoint(ids_b)
    inst = sqlite3.connect(db).execute("select value from mmbot_meta where key='installation_id'").fetchone()[0]
    for run, ids in ((a["run_id"], ids_a), (b["run_id"], ids_b)):
        assert all(ID_RE.match(c) for c in ids), ids[:3]
        # the id names the database and the run: a restart (same pid or not) gets a new run id,
        # so its counter starting again at 1 cannot reproduce an earlier id
        assert all(c.startswith(f"mm{inst}-{run}-") for c in ids), (inst, ids[:3])
    # another database has another prefix: its run 1 does not collide with this run 1
    other = run_sim(tmp_path / "other.db")
    assert other["run_id"] == a["run_id"] == 1
    assert set(client_ids(tmp_path / "other.db")).isdisjoint(ids_a)


def test_client_id_factory_restart_and_length_limit():
    first = ClientIdFactory("AbCdEf12", 41)
    before = {first() for _ in range(1000)}
    restarted = ClientIdFactory("AbCdEf12", 42)  # the next run after a restart: counter from 1 again
    assert before.isdisjoint({restarted() for _ in range(1000)})
    # the longest ids this scheme makes still fit Binance's 36 characters
    big = ClientIdFactory("ZZZZZZZZ", 36 ** 7 - 1)
    big._counter = itertools.count(36 ** 10 - 1)
    cid = big()
    assert len(cid) <= CLIENT_ID_MAX_LEN and ID_RE.match(cid)
    # ids made outside a run are random per process too
    a, b = new_client_id(), new_client_id()
    assert re.match(r"^mm[A-Za-z0-9]{8}-0-[0-9a-z]+$", a) and a != b and a.rsplit("-", 1)[0] == b.rsplit("-", 1)[0]


def test_rounded_prices_are_plain_decimals():
    m = MarketInfo("BTC/USDT", "BTC", "USDT", D("10"), D("100"))
    for d in (m.round_price(78391.3, "buy"), m.round_price(78381.3, "sell"), m.ticks_to_price(7839), m.round_size(250),
              m.lots_to_size(1)):
        assert PLAIN_RE.match(str(d)), str(d)  # was '7.839E+4', '1E+2'
    assert m.round_price(78391.3, "buy") == D("78390") and str(m.lots_to_size(1)) == "100"
    assert plain(D("7.839E+4")) == "78390" and plain(D("1E-8")) == "0.00000001" and plain(D("1E+2")) == "100"


def test_database_text_is_plain(tmp_path):
    """Decimals in exponent form (as ``Decimal.normalize`` makes them) are stored as digits."""
    db = tmp_path / "t.db"
    st = open_store(str(db))
    st.start_run("paper", "paper", "BTC/USDT", {})
    o = Order("BTC/USDT", Side.BUY, D("7.839E+4"), D("1E+2"), created_ns=1, updated_ns=1)
    st.record_order(o)
    st.record_fill(Fill("paper", "t1", o.client_id, "BTC/USDT", Side.BUY, D("7.839E+4"), D("1E+2"), D("1E+1"), "maker", 2, 78391.0))
    st.record_pnl(3, 78391.0, Inventory(base=D("1E+2"), cash=D("-7.839E+6")), 0.0)
    st.commit()
    st.close()
    con = sqlite3.connect(db)
    rows = [con.execute("select price, size, filled from orders").fetchone(),
            con.execute("select price, size, fee from fills").fetchone(),
            con.execute("select inventory, cash, fees_paid from pnl_snapshots").fetchone()]
    assert rows[0] == ("78390", "100", "0") and rows[1] == ("78390", "100", "10") and rows[2][:2] == ("100", "-7839000")


def test_engine_run_on_whole_dollar_tick_writes_plain_prices(tmp_path):
    """A market priced in tens of dollars with a 10-unit tick: every stored number is digits."""
    db = tmp_path / "big.db"
    s = run_sim(db, **{"sim.s0": 78390.0, "sim.tick": "10", "sim.sigma": 50.0, "strategy.pricing.model": "symmetric"})
    assert s["orders_placed"] > 0
    con = sqlite3.connect(db)
    texts = [v for row in con.execute("select price, size, filled from orders") for v in row]
    texts += [v for row in con.execute("select filled from order_events") for v in row]
    texts += [v for row in con.execute("select price, size, fee from fills") for v in row]
    texts += [v for row in con.execute("select inventory, cash, fees_paid from pnl_snapshots") for v in row]
    assert texts and all(PLAIN_RE.match(t) for t in texts), [t for t in texts if not PLAIN_RE.match(t)][:5]
    assert any(t.endswith("0") and "." not in t and len(t) >= 5 for t in texts)  # whole-ten prices were written
