"""Issue 15, build item 4: sequences that work in every mode.

One 4-shard cluster (router + shards, no lake) with a small id block
(``router.sequence_block = 5``) so blocks run out inside transactions. The
VSchema lists ``users`` with ``auto_increment`` on its INTEGER PRIMARY KEY and
``accounts`` (same shape) without one; unlisted tables keyed by an INTEGER
PRIMARY KEY get a sequence named after them.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import dosql.driver as dbapi
import vschema as V
from dosql import protocol
from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError, ValidationError
from dosql.shard.sequences import SequenceStore
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, shard_rows, write_config

SHARDS = ["shard-0", "shard-1", "shard-2", "shard-3"]
BLOCK = 5


def _vschema_dict() -> dict[str, Any]:
    data = quickstart_vschema().to_dict()
    data["tables"]["users"]["auto_increment"] = {"column": "id", "sequence": "users_seq"}
    data["tables"]["accounts"] = {"kind": "sharded", "column": "tenant_id", "vindex": "hash"}
    data["tables"]["orders"]["auto_increment"] = {"column": "id", "sequence": "orders_seq"}
    return data


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("sequences")
    vs = V.from_dict(_vschema_dict())
    cfg = write_config(tmp / "dosql.toml", vs, extra={"router": {"sequence_block": BLOCK}})
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with Client(c.url) as cl:
            cl.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER, name TEXT)")
            cl.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, tenant_id INTEGER, x TEXT)")
        yield c


def _url(c: LocalCluster) -> str:
    return "dosql://" + c.url.split("://", 1)[1]


def _placed(c: LocalCluster, table: str, column: str) -> dict[str, list[tuple]]:
    return {s: shard_rows(c, s, f"SELECT {column}, tenant_id FROM {table}") for s in SHARDS}


def _all_ids(c: LocalCluster, table: str) -> list[int]:
    return [r[0] for s in SHARDS for r in shard_rows(c, s, f"SELECT id FROM {table}")]


def test_vschema_auto_increment_is_validated_naming_the_setting() -> None:
    base = _vschema_dict()
    vs = V.from_dict(base)
    assert vs.table("users").auto_increment.sequence == "users_seq"
    assert V.from_dict(vs.to_dict()) == vs  # survives the round trip the router relies on
    for bad, setting in (
        ("users_seq", "auto_increment"),
        ({"column": "id"}, "auto_increment.sequence"),
        ({"sequence": "s"}, "auto_increment.column"),
        ({"column": "id", "sequence": "9lives"}, "auto_increment.sequence"),
    ):
        data = _vschema_dict()
        data["tables"]["users"]["auto_increment"] = bad
        with pytest.raises(ValidationError) as info:
            V.from_dict(data)
        assert info.value.code == "INVALID_VSCHEMA"
        assert info.value.details.get("setting") == setting, info.value.message
    data = _vschema_dict()
    data["tables"]["countries"]["auto_increment"] = {"column": "id", "sequence": "c"}
    with pytest.raises(ValidationError) as info:
        V.from_dict(data)
    assert "sharded tables" in info.value.message


def test_quickstart_users_has_a_sequence() -> None:
    root = Path(__file__).resolve().parents[2]
    vs = V.load(root / "examples" / "quickstart" / "vschema.toml")
    assert vs.table("users").auto_increment is not None
    assert vs.table("users").auto_increment.column == "id"


def test_default_mode_insert_without_id_returns_within_a_second(cluster) -> None:
    conn = dbapi.connect(_url(cluster), timeout=20)  # autocommit off: the driver's default
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
        conn.commit()
        ids = []
        for v in ("x", "y", "z"):
            started = time.monotonic()
            cur.execute("INSERT INTO items (v) VALUES (?)", (v,))
            assert time.monotonic() - started < 1.0
            assert isinstance(cur.lastrowid, int)
            ids.append(cur.lastrowid)
        assert conn.in_transaction
        conn.commit()
        assert ids == sorted(set(ids))
        cur.execute("SELECT id, v FROM items ORDER BY id")
        assert cur.fetchall() == list(zip(ids, ["x", "y", "z"], strict=True))
        # a table created in the same (still open) transaction as its first id-less rows
        cur.execute("CREATE TABLE fresh (id INTEGER PRIMARY KEY, v TEXT)")
        cur.execute("INSERT INTO fresh (v) VALUES ('a')")
        cur.execute("INSERT INTO fresh VALUES (NULL, 'b')")
        conn.commit()
        cur.execute("SELECT count(DISTINCT id) FROM fresh")
        assert cur.fetchone() == (2,)
    finally:
        conn.close()


def test_two_id_less_inserts_inside_explicit_begin(cluster) -> None:
    conn = dbapi.connect(_url(cluster), timeout=20, autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE tx_items (id INTEGER PRIMARY KEY, v TEXT)")
        cur.execute("INSERT INTO tx_items (v) VALUES ('before')")
        cur.execute("BEGIN")  # deferred: the read below starts a snapshot on every shard
        cur.execute("SELECT count(*) FROM tx_items")
        assert cur.fetchone() == (1,)
        cur.execute("INSERT INTO tx_items (v) VALUES ('one')")
        first = cur.lastrowid
        cur.execute("INSERT INTO tx_items (v) VALUES ('two')")
        second = cur.lastrowid
        cur.execute("COMMIT")
        assert first is not None and second is not None and first < second
        cur.execute("SELECT v FROM tx_items ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == ["before", "one", "two"]
    finally:
        conn.close()


def test_blocks_run_out_inside_a_transaction(cluster) -> None:
    conn = dbapi.connect(_url(cluster), timeout=20)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE many_blocks (id INTEGER PRIMARY KEY, v INTEGER)")
        conn.commit()
        got = []
        for i in range(3 * BLOCK + 2):  # several blocks, all in one transaction
            cur.execute("INSERT INTO many_blocks (v) VALUES (?)", (i,))
            got.append(cur.lastrowid)
        cur.execute("INSERT INTO many_blocks (v) SELECT v + 100 FROM many_blocks")
        conn.commit()
        assert got == sorted(set(got))
        ids = _all_ids(cluster, "many_blocks")
        assert len(ids) == len(set(ids)) == 2 * (3 * BLOCK + 2)
    finally:
        conn.close()


def test_executemany_of_id_less_rows(cluster) -> None:
    conn = dbapi.connect(_url(cluster), timeout=20)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE batch (id INTEGER PRIMARY KEY, v TEXT)")
        cur.executemany("INSERT INTO batch (v) VALUES (?)", [(f"a{i}",) for i in range(12)])
        assert cur.rowcount == 12
        last = cur.lastrowid
        # the id column given as a parameter: NULL ones are filled in, others kept
        cur.executemany(
            "INSERT INTO batch (id, v) VALUES (?, ?)", [(None, "b0"), (1000, "b1"), (None, "b2")]
        )
        cur.executemany("INSERT INTO batch VALUES (:id, :v)", [{"id": None, "v": "c0"}])
        conn.commit()
        assert isinstance(last, int)
        cur.execute("SELECT count(*), count(DISTINCT id) FROM batch")
        assert cur.fetchone() == (16, 16)
        # ids given explicitly (even uncommitted ones) are never handed out again
        cur.execute("SELECT v FROM batch WHERE id > 1000 ORDER BY id")
        assert [r[0] for r in cur.fetchall()] == ["b0", "b2", "c0"]
        cur.execute("INSERT INTO batch (id, v) VALUES (2000, 'e0')")
        cur.execute("INSERT INTO batch (v) VALUES ('e1')")
        assert cur.lastrowid > 2000
        cur.execute("DELETE FROM batch WHERE v LIKE 'e%'")
        # later blocks start past every id seen
        cur.executemany("INSERT INTO batch (v) VALUES (?)", [("d",)] * (BLOCK + 1))
        conn.commit()
        cur.execute("SELECT count(*) FROM batch WHERE v = 'd' AND id > 2001")
        assert cur.fetchone() == (BLOCK + 1,)
    finally:
        conn.close()
    ids = _all_ids(cluster, "batch")
    assert len(ids) == len(set(ids)) == 16 + BLOCK + 1
    vs = cluster.vschema.with_table("batch", V.sharded_table("id", V.hash_vindex(), "INTEGER"))
    for s in SHARDS:  # each row on the shard its assigned id hashes to
        for (i,) in shard_rows(cluster, s, "SELECT id FROM batch"):
            assert vs.shard_for("batch", i) == s


def test_one_row_rewrites_keep_the_statement(cluster) -> None:
    """The id goes into the client's own text: RETURNING, ON CONFLICT, REPLACE, quoting."""
    with Client(cluster.url) as cl:
        cl.execute("CREATE TABLE rw (id INTEGER PRIMARY KEY, v TEXT, w TEXT)")
        r = cl.execute("INSERT INTO rw (v) VALUES (?) RETURNING id, v", ["ret"])
        assert r.rows == [[r.lastrowid, "ret"]]
        cl.execute(
            "INSERT INTO rw (v, w) VALUES (?, ?) ON CONFLICT(id) DO UPDATE SET w = ?",
            ["conf", "w1", "never"],
        )
        cl.execute("INSERT INTO rw (v, w) VALUES (:v, :w)", {"v": "named", "w": "n1"})
        cl.executemany("INSERT INTO rw (v, w) VALUES (:v, :w)", [{"v": "nm", "w": "n2"}])
        cl.execute("REPLACE INTO rw (v) VALUES ('replace')")
        cl.execute('INSERT INTO "rw" ("v", "w") VALUES (\'quoted\', NULL)')
        rows = cl.rows("SELECT v, w FROM rw ORDER BY id")
        ids = [i for (i,) in cl.rows("SELECT id FROM rw")]
    assert rows == [
        ("ret", None),
        ("conf", "w1"),
        ("named", "n1"),
        ("nm", "n2"),
        ("replace", None),
        ("quoted", None),
    ]
    assert len(ids) == len(set(ids)) == 6


def test_listed_table_with_a_sequence(cluster) -> None:
    with Client(cluster.url) as cl:
        one = cl.execute("INSERT INTO users (tenant_id, name) VALUES (1, 'a')")
        assert one.rowcount == 1 and isinstance(one.lastrowid, int)
        cl.execute("INSERT INTO users (tenant_id, name) VALUES (2, 'b'), (3, 'c'), (4, 'd')")
        cl.executemany(
            "INSERT INTO users (tenant_id, name) VALUES (?, ?)", [[t, f"m{t}"] for t in range(20)]
        )
        cl.execute("INSERT INTO users (tenant_id, name) SELECT tenant_id + 100, name FROM users")
        cl.execute("INSERT INTO users VALUES (NULL, 7, 'null literal')")
        cl.execute("INSERT INTO users (id, tenant_id, name) VALUES (5000, 8, 'explicit')")
        assert cl.rows("SELECT id FROM users WHERE name = 'explicit'") == [(5000,)]
        n = cl.rows("SELECT count(*), count(DISTINCT id) FROM users")[0]
    assert n[0] == n[1] == 2 * 24 + 2
    ids = _all_ids(cluster, "users")
    assert len(ids) == len(set(ids))  # unique across shards: no per-shard rowid 1, 1, 1, …
    for s, rows in _placed(cluster, "users", "id").items():  # still routed by tenant_id
        assert all(cluster.vschema.shard_for("users", t) == s for _i, t in rows)
    assert len({s for s, rows in _placed(cluster, "users", "id").items() if rows}) > 1


def test_listed_table_without_a_sequence_refuses_id_less_rows(cluster) -> None:
    with Client(cluster.url) as cl:
        for run in (
            lambda: cl.execute("INSERT INTO accounts (tenant_id, x) VALUES (1, 'a')"),
            lambda: cl.execute("INSERT INTO accounts VALUES (NULL, 1, 'a')"),
            lambda: cl.execute("INSERT INTO accounts (tenant_id, x) VALUES (1, 'a'), (2, 'b')"),
            lambda: cl.executemany("INSERT INTO accounts (tenant_id, x) VALUES (?, ?)", [[1, "a"]]),
            lambda: cl.executemany("INSERT INTO accounts VALUES (?, ?, ?)", [[None, 1, "a"]]),
            lambda: cl.execute(
                "INSERT INTO accounts (tenant_id, x) SELECT tenant_id, name FROM users"
            ),
        ):
            with pytest.raises(DoSQLError) as info:
                run()
            assert info.value.code == "SEQUENCE_REQUIRED"
            assert "auto_increment" in info.value.message
        cl.execute("INSERT INTO accounts VALUES (1, 1, 'a'), (2, 2, 'b')")  # ids given: fine
        assert cl.rows("SELECT count(*) FROM accounts") == [(2,)]


def test_sequence_column_must_exist(cluster) -> None:
    with Client(cluster.url) as cl:
        cl.execute("CREATE TABLE orders (tenant_id INTEGER, amount INTEGER)")  # no id column
        with pytest.raises(DoSQLError) as info:
            cl.execute("INSERT INTO orders (tenant_id, amount) VALUES (1, 2)")
        assert info.value.code == "SEQUENCE_COLUMN_MISSING"
        assert "auto_increment" in info.value.message


def test_ids_unique_across_four_threads(cluster) -> None:
    with Client(cluster.url) as cl:
        cl.execute("CREATE TABLE hot (id INTEGER PRIMARY KEY, thread INTEGER)")
    per_thread: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            conn = dbapi.connect(_url(cluster), timeout=30)
            try:
                cur = conn.cursor()
                got = []
                for _ in range(15):  # one shard per transaction: no cross-shard lock order
                    cur.execute("INSERT INTO hot (thread) VALUES (?)", (t,))
                    got.append(cur.lastrowid)
                    conn.commit()
                per_thread[t] = got
            finally:
                conn.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    every = [i for got in per_thread.values() for i in got]
    assert len(every) == len(set(every)) == 60
    for got in per_thread.values():
        assert got == sorted(got)  # increasing per router
    assert sorted(_all_ids(cluster, "hot")) == sorted(every)


def test_kill_9_of_the_default_shard_never_repeats_an_id(cluster) -> None:
    default = cluster.vschema.default_shard
    with Client(cluster.shard_urls[default]) as sh:
        before = sh.call(
            lambda rid: protocol.ReserveIds(id=rid, name="crash_seq", count=10, floor=1)
        ).info
    cluster.kill_shard(default)
    cluster.start_shard(default)
    with Client(cluster.shard_urls[default]) as sh:
        after = sh.call(
            lambda rid: protocol.ReserveIds(id=rid, name="crash_seq", count=10, floor=1)
        ).info
    assert after["start"] >= before["stop"]
    # end to end: ids handed out, rows deleted (max(id) no longer helps), shard killed
    with Client(cluster.url) as cl:
        _retrying(lambda: cl.execute("CREATE TABLE crash (id INTEGER PRIMARY KEY, v TEXT)"))
        seen = [
            cl.execute("INSERT INTO crash (v) VALUES ('a')").lastrowid for _ in range(BLOCK + 2)
        ]
        cl.execute("DELETE FROM crash")
        cluster.kill_shard(default)
        cluster.start_shard(default)
        for _ in range(2 * BLOCK):  # the table stays empty: only the sidecar stops repeats
            ins = _retrying(lambda: cl.execute("INSERT INTO crash (v) VALUES ('b')"))
            seen.append(ins.lastrowid)
            _retrying(lambda: cl.execute("DELETE FROM crash"))
    assert len(seen) == len(set(seen)) and seen == sorted(seen)


def _retrying(fn: Any) -> Any:
    """The first statement after a restart may meet the pool's back-off window."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return fn()
        except DoSQLError as exc:
            if exc.code != "SHARD_UNAVAILABLE" or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_sidecar_migrates_a_legacy_sequence_value(tmp_path: Path) -> None:
    db = tmp_path / "shard-0.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE _dosql_meta (key TEXT PRIMARY KEY, value TEXT)")
    con.execute("INSERT INTO _dosql_meta VALUES ('seq:items', '1234')")
    con.commit()
    con.close()
    store = SequenceStore(str(db))
    try:
        assert store.reserve("items", 10, 1) == (1234, 1244)  # where the old cluster was
        assert store.reserve("items", 10, 1) == (1244, 1254)  # then the sidecar counts
        assert store.reserve("other", 3, 50) == (50, 53)  # floor: past max(key)
    finally:
        store.close()
    assert SequenceStore(str(db)).reserve("items", 1, 1) == (1254, 1255)  # durable
    assert Path(str(db) + ".seq").exists()
    with pytest.raises(ValidationError):
        store.reserve("items", 0, 1)
