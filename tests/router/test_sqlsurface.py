"""Issue 5: the SQL surface on sharded tables — router-side plans, NULL keys, writes, EXPLAIN.

One 4-shard cluster; every statement also runs on a plain SQLite database
and the answers must agree (as multisets unless ORDER BY fixes the order).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections import Counter

import pytest

import vschema as V
from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError, NotSupportedError, ValidationError
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, shard_rows, write_config

SHARDS = ["shard-0", "shard-1", "shard-2", "shard-3"]

SETUP = [
    "CREATE TABLE t1 (a INTEGER, b INTEGER, c TEXT)",  # policy: sharded by a, NULL allowed
    "CREATE TABLE t2 (x INTEGER PRIMARY KEY, y TEXT COLLATE NOCASE)",  # sharded by x
    "CREATE INDEX t1_b ON t1 (b)",
    "CREATE TABLE users (tenant_id INTEGER, name TEXT, score REAL)",  # listed: by tenant_id
    "CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT)",  # reference
    "INSERT INTO t1 VALUES (1, 2, 'a'), (2, 3, 'b'), (NULL, 4, 'c'), (4, NULL, 'd'), "
    "(5, 5, 'e'), (6, 2, 'A'), (NULL, NULL, NULL), (8, 3, 'b ')",
    "INSERT INTO t2 VALUES (1, 'one'), (2, 'Two'), (5, 'five'), (7, 'SEVEN'), (8, NULL)",
    "INSERT INTO users VALUES (1, 'ann', 1.5), (2, 'bob', 2.0), (3, 'cy', NULL), (4, 'ann', 4.25)",
    "INSERT INTO countries VALUES ('fr', 'France'), ('de', 'Germany')",
]

QUERIES = [
    "SELECT a, y FROM t1, t2 WHERE a = x AND b > 2",
    "SELECT a, y FROM t1 JOIN t2 ON t1.a = t2.x WHERE t2.y = 'two'",
    "SELECT * FROM t1 LEFT JOIN t2 ON a = x WHERE x IS NULL",
    "SELECT * FROM t1 NATURAL JOIN t1 AS t1b",
    "SELECT a, (SELECT count(*) FROM t1 AS z WHERE z.b < t1.b) FROM t1",
    "SELECT a FROM t1 WHERE EXISTS (SELECT 1 FROM t2 WHERE x = t1.b)",
    "SELECT a FROM t1 WHERE b > (SELECT avg(b) FROM t1)",
    "SELECT a FROM t1 WHERE a IN (SELECT x FROM t2) ORDER BY a",
    "SELECT a FROM t1 UNION SELECT x FROM t2",
    "SELECT a FROM t1 UNION ALL SELECT x FROM t2",
    "SELECT a FROM t1 EXCEPT SELECT x FROM t2",
    "SELECT b FROM t1 INTERSECT SELECT x FROM t2",
    "SELECT b, count(*), sum(a), avg(a), min(c), max(c), total(a) FROM t1 GROUP BY b",
    "SELECT b % 2, count(DISTINCT c) FROM t1 GROUP BY 1 HAVING count(*) > 1",
    "SELECT group_concat(c, '|') FROM (SELECT c FROM t1 ORDER BY c)",
    "SELECT DISTINCT b FROM t1 ORDER BY b",
    "SELECT DISTINCT y FROM t2",
    "SELECT a, row_number() OVER (ORDER BY a, c) FROM t1",
    "SELECT b, sum(a) OVER (PARTITION BY b) FROM t1",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5) "
    "SELECT n, (SELECT count(*) FROM t1 WHERE b = n) FROM r",
    "WITH big AS (SELECT * FROM t1 WHERE b >= 3) SELECT count(*) FROM big JOIN t2 ON big.a = t2.x",
    "SELECT c FROM t1 ORDER BY c COLLATE NOCASE, a LIMIT 3 OFFSET 1",
    "SELECT a FROM t1 WHERE a IS NULL",
    "SELECT a FROM t1 WHERE a = NULL",
    "SELECT name, count(*) FROM users GROUP BY name ORDER BY name",
    "SELECT u.name, c.name FROM users u CROSS JOIN countries c WHERE u.tenant_id < 3",
    "SELECT (SELECT max(x) FROM t2), (SELECT min(tenant_id) FROM users)",
    "SELECT y FROM t2 WHERE y = 'FIVE'",
    "SELECT max(b) FROM t1 WHERE a > 1",
    "SELECT b % 2 AS p, count(*), sum(a), avg(a), total(b), min(c), max(c) FROM t1 "
    "GROUP BY p HAVING count(*) >= 1 ORDER BY p",
    "SELECT y, count(*) FROM t2 GROUP BY y ORDER BY 2, 1",
    "SELECT b, max(c) FROM t1 WHERE a > 0 GROUP BY 1 HAVING max(c) > avg(a) ORDER BY b LIMIT 2",
    "SELECT c COLLATE NOCASE, count(*) FROM t1 GROUP BY 1",
]


_ROUTER_SIDE = {"RouterSide", "RouterSideDml", "InsertSelect", "Sequence", "CreateTableAs"}


def kind(rows: list) -> str:
    """What an EXPLAIN tree does, in one word: the variant of the operator that
    sends SQL to shards (single_shard, multi_shard, scatter, reference), or
    router_side, ddl, transaction."""
    top = rows[0][1].strip()
    if top in _ROUTER_SIDE:
        return "router_side"
    if top == "DDL":
        return "ddl"
    if top in ("Transaction", "Savepoint"):
        return "transaction"
    sender = next(r for r in rows if r[1].strip() in ("Route", "Scatter", "Write", "Insert"))
    return str(sender[4]).split(":")[0]


def canon(rows):
    return Counter(tuple(r) for r in rows)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("surface")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    ref = sqlite3.connect(":memory:", isolation_level=None)
    with LocalCluster(cfg, tmp / "data", lake=False) as c, Client(c.url) as cl:
        for sql in SETUP:
            cl.execute(sql)
            ref.execute(sql)
        yield c, cl, ref
    ref.close()


def same(cl, ref, sql, params=()):
    got = cl.execute(sql, list(params)) if params else cl.execute(sql)
    want = ref.execute(sql, params)
    names = [d[0] for d in want.description] if want.description else []
    rows = want.fetchall()
    assert got.columns == names, sql
    if "ORDER BY" in sql.upper() and "OVER" not in sql.upper():
        assert [tuple(r) for r in got.rows] == rows, sql
    else:
        assert canon(got.rows) == canon(rows), sql


@pytest.mark.parametrize("sql", QUERIES)
def test_router_side_reads_match_sqlite(env, sql):
    _, cl, ref = env
    same(cl, ref, sql)


def test_parameters_reach_pushed_filters(env):
    _, cl, ref = env
    sql = "SELECT a, y FROM t1, t2 WHERE t1.a = ? AND t2.x = t1.a AND t1.c <> ?"
    same(cl, ref, sql, (2, "zz"))
    assert kind(cl.rows("EXPLAIN " + sql, [2, "zz"])) == "single_shard"  # co-located
    sql = "SELECT a, y FROM t1, t2 WHERE t1.a = ? AND t2.x = t1.b AND t1.c <> ?"
    same(cl, ref, sql, (2, "zz"))
    plan = cl.rows("EXPLAIN " + sql, [2, "zz"])
    fetches = [r for r in plan if r[1].strip() == "Fetch" and "t1" in r[4]]
    assert len(fetches) == 1 and "(t1.a = ?)" in fetches[0][3]  # pinned to one shard


def test_null_keys_live_on_the_default_shard(env):
    c, cl, ref = env
    nulls = {s: shard_rows(c, s, "SELECT count(*) FROM t1 WHERE a IS NULL")[0][0] for s in SHARDS}
    assert nulls == {"shard-0": 2, "shard-1": 0, "shard-2": 0, "shard-3": 0}
    # a listed table keeps refusing NULL keys (issue 2's contract)
    with pytest.raises(ValidationError) as info:
        cl.execute("INSERT INTO users VALUES (NULL, 'x', 1)")
    assert info.value.code == "SHARDING_KEY_NULL"
    # a column list without the key: its (NULL) default decides
    cl.execute("INSERT INTO t1 (b, c) VALUES (9, 'nokey')")
    ref.execute("INSERT INTO t1 (b, c) VALUES (9, 'nokey')")
    assert shard_rows(c, "shard-0", "SELECT c FROM t1 WHERE b = 9") == [("nokey",)]
    same(cl, ref, "SELECT count(*), count(a) FROM t1")


def test_explain_names_each_plan_kind(env):
    _, cl, _ = env
    res = cl.execute("EXPLAIN SELECT * FROM users WHERE tenant_id = 2")
    assert res.columns == ["step", "operator", "shard", "sql", "detail"]
    kinds = {
        "SELECT * FROM users WHERE tenant_id = 2": "single_shard",
        "SELECT * FROM users": "scatter",
        "SELECT * FROM countries": "reference",
        "SELECT * FROM t1 JOIN t2 ON a = x": "router_side",
        "SELECT b, count(*) FROM t1 GROUP BY b": "scatter",  # partial aggregation
        "SELECT b, count(DISTINCT c) FROM t1 GROUP BY b": "router_side",
        "SELECT count(*) FROM users": "scatter",
        "CREATE INDEX users_name ON users (name)": "ddl",
        "INSERT INTO users VALUES (1, 'z', 0)": "single_shard",
        "UPDATE countries SET name = name": "reference",
        "BEGIN": "transaction",
    }
    for sql, want in kinds.items():
        rows = cl.rows("EXPLAIN " + sql)
        assert kind(rows) == want, (sql, rows)
    ids = [1, 2, 3, 4, 5, 6, 7, 8]
    rows = cl.rows(f"EXPLAIN SELECT * FROM users WHERE tenant_id IN ({', '.join(map(str, ids))})")
    assert kind(rows) in ("multi_shard", "scatter")
    two = cl.rows("EXPLAIN SELECT * FROM users WHERE tenant_id IN (1, 2)")
    assert kind(two) in ("multi_shard", "single_shard")
    sender = next(r for r in two if r[1].strip() in ("Route", "Scatter"))
    assert sum(1 for r in two if r[1].strip() == "shard") == len(sender[2].split(","))
    partial = cl.rows("EXPLAIN SELECT b, avg(a) FROM t1 GROUP BY b HAVING count(*) > 1")
    assert partial[0][1] == "GroupAggregate" and "__partials" in partial[0][3]
    assert partial[1][1].strip() == "Scatter"
    assert "total(a)" in partial[1][3] and "count(a)" in partial[1][3]
    scatter = cl.rows("EXPLAIN SELECT name FROM users ORDER BY name LIMIT 2")
    assert [r[1].strip() for r in scatter][:3] == ["Limit", "MergeSort", "Scatter"]
    assert all(r[3].endswith("LIMIT 2") for r in scatter if r[1].strip() == "shard")
    # nothing ran: EXPLAIN of a write leaves the data alone
    before = cl.rows("SELECT count(*) FROM users")
    cl.rows("EXPLAIN DELETE FROM users")
    assert cl.rows("SELECT count(*) FROM users") == before
    qp = cl.execute("EXPLAIN QUERY PLAN SELECT * FROM t1 WHERE b = 3")
    assert "detail" in qp.columns and any("t1" in str(r[-1]) for r in qp.rows)


def test_writes_with_subqueries_moves_and_insert_select(env):
    c, cl, ref = env
    cl.execute("CREATE TABLE t3 (p INTEGER, q TEXT)")
    ref.execute("CREATE TABLE t3 (p INTEGER, q TEXT)")
    statements = [
        "INSERT INTO t3 SELECT a, c FROM t1 WHERE b > 2",
        "INSERT INTO t3 VALUES (1 + 1, 'expr'), (20, 'x')",
        "INSERT INTO t3 SELECT x, y FROM t2 UNION ALL SELECT 100, 'hundred'",
        "UPDATE t3 SET q = (SELECT y FROM t2 WHERE x = t3.p) WHERE p IN (SELECT x FROM t2)",
        "UPDATE t3 SET p = p + 1000 WHERE q IS NOT NULL",  # rows move between shards
        "DELETE FROM t3 WHERE p IN (SELECT x + 1000 FROM t2)",
        "UPDATE t3 SET q = t2.y FROM t2 WHERE t3.p - 1000 = t2.x",
        "UPDATE t3 SET p = NULL WHERE p = 1020",  # to the NULL shard
    ]
    for sql in statements:
        got = cl.execute(sql)
        want = ref.execute(sql)
        assert got.rowcount == want.rowcount, sql
        same(cl, ref, "SELECT * FROM t3")
    # every row is on the shard that owns its key
    vs = c.vschema.with_table("t3", V.sharded_table("p", V.hash_vindex(), column_type="INTEGER"))
    placed = 0
    for s in SHARDS:
        for (p,) in shard_rows(c, s, "SELECT p FROM t3"):
            assert s == ("shard-0" if p is None else vs.shard_for("t3", p))
            placed += 1
    assert placed == ref.execute("SELECT count(*) FROM t3").fetchone()[0]


def test_moving_update_rolls_back_with_the_transaction(env):
    _, cl, ref = env
    before = cl.rows("SELECT a, b, c FROM t1 ORDER BY a, b, c")
    cl.execute("BEGIN")
    cl.execute("UPDATE t1 SET a = a + 50 WHERE a IS NOT NULL")
    inside = cl.rows("SELECT a FROM t1 WHERE a > 50 ORDER BY a")
    assert inside and all(r[0] > 50 for r in inside)
    cl.execute("ROLLBACK")
    assert cl.rows("SELECT a, b, c FROM t1 ORDER BY a, b, c") == before


def test_ddl_refreshes_the_router_side_schema(env):
    _, cl, ref = env
    sql = "SELECT * FROM t2 JOIN t1 ON a = x ORDER BY x, b"
    same(cl, ref, sql)
    for s in ("ALTER TABLE t2 ADD COLUMN z INTEGER DEFAULT 7",):
        cl.execute(s)
        ref.execute(s)
    same(cl, ref, sql)


def test_shard_local_unique_constraints_are_refused_not_merged(env):
    _, cl, _ = env
    cl.execute("CREATE TABLE u1 (k INTEGER, v INTEGER UNIQUE)")
    stored = 0
    for k in range(1, 9):  # v is unique per shard only: rows on two shards both get in
        try:
            cl.execute("INSERT INTO u1 VALUES (?, 10)", [k])
            stored += 1
        except DoSQLError as exc:
            assert exc.code == "UNIQUE_CONSTRAINT"
    assert stored > 1
    with pytest.raises(NotSupportedError) as info:
        cl.execute("SELECT count(*) FROM u1 a, u1 b")
    assert "constraint" in info.value.message


def test_rowid_of_sharded_tables_is_refused_with_reason(env):
    _, cl, _ = env
    with pytest.raises(NotSupportedError) as info:
        cl.execute("SELECT t1.rowid FROM t1 JOIN t2 ON a = x")
    assert "rowid" in info.value.message
    with pytest.raises(DoSQLError):
        cl.execute("SELECT nope FROM t1 JOIN t2 ON a = x")


def test_sequences_assign_unique_increasing_keys(env):
    c, cl, _ = env
    cl.execute("CREATE TABLE seq (id INTEGER PRIMARY KEY, v TEXT)")  # sharded by id, sequence
    first = cl.execute("INSERT INTO seq (v) VALUES ('a')")
    assert first.rowcount == 1 and first.lastrowid == 1
    many = cl.execute("INSERT INTO seq VALUES (NULL, 'b'), (NULL, 'c'), (NULL, ?)", ["d"])
    assert many.rowcount == 3 and many.lastrowid == 4
    cl.execute("INSERT INTO seq (v) SELECT v || '2' FROM seq")
    rows = cl.rows("SELECT id, v FROM seq ORDER BY id")
    assert [r[0] for r in rows] == list(range(1, 9))
    assert sorted(r[1] for r in rows[4:]) == ["a2", "b2", "c2", "d2"]
    vs = c.vschema.with_table("seq", V.sharded_table("id", V.hash_vindex(), column_type="INTEGER"))
    for s in SHARDS:  # each row on the shard its assigned key hashes to
        for (i,) in shard_rows(c, s, "SELECT id FROM seq"):
            assert vs.shard_for("seq", i) == s
    plan = cl.rows("EXPLAIN INSERT INTO seq (v) VALUES ('z')")
    assert kind(plan) == "router_side" and "sequence" in plan[0][4]
    # another client of the same router continues the reserved block
    with Client(c.url) as other:
        nxt = other.execute("INSERT INTO seq (v) VALUES ('e')").lastrowid
    assert nxt == 9


def test_views_created_through_the_router(env):
    c, cl, ref = env
    for sql in (
        "CREATE VIEW v_big AS SELECT a, b, c FROM t1 WHERE b >= 3",
        "CREATE VIEW v_count (n) AS SELECT count(*) FROM v_big",
    ):
        cl.execute(sql)
        ref.execute(sql)
    for sql in (
        "SELECT * FROM v_big",
        "SELECT * FROM v_count",
        "SELECT v_big.a, t2.y FROM v_big JOIN t2 ON v_big.a = t2.x",
        "SELECT a FROM t1 WHERE a IN (SELECT a FROM v_big)",
    ):
        same(cl, ref, sql)
    assert all(
        not shard_rows(c, s, "SELECT name FROM sqlite_master WHERE type = 'view'") for s in SHARDS
    )  # the view lives in cluster metadata, not on the shards
    with Client(c.url) as other:  # another session sees it
        assert (
            other.rows("SELECT n FROM v_count") == ref.execute("SELECT n FROM v_count").fetchall()
        )
    cl.execute("DROP VIEW v_count")
    with pytest.raises(DoSQLError):
        cl.execute("SELECT * FROM v_count")
    cl.execute("DROP VIEW IF EXISTS v_count")
    cl.execute("DROP VIEW v_big")


def test_co_located_join_pinned_to_one_shard(env):
    _, cl, ref = env
    for sql in (
        "CREATE TABLE orders (tenant_id INTEGER, id INTEGER, amount INTEGER)",
        "INSERT INTO orders VALUES (1, 10, 5), (1, 11, 7), (2, 12, 9), (4, 13, 1)",
    ):
        cl.execute(sql)
        ref.execute(sql)
    join = (
        "SELECT u.name, o.id, o.amount FROM users u JOIN orders o ON u.tenant_id = o.tenant_id "
        "WHERE u.tenant_id = ? ORDER BY o.id"
    )
    plan = cl.rows("EXPLAIN " + join, [1])
    assert kind(plan) == "single_shard" and plan[0][3] == join  # the statement as written
    for tid in (1, 2, 3, 4):
        same(cl, ref, join, (tid,))
    # not pinned, or not joined on the key: router-side, same answers
    for sql in (
        "SELECT u.name, sum(o.amount) FROM users u JOIN orders o ON u.tenant_id = o.tenant_id "
        "GROUP BY u.name ORDER BY 1",
        "SELECT u.name, o.id FROM users u JOIN orders o ON u.tenant_id = o.id WHERE u.tenant_id = 1",
    ):
        assert kind(cl.rows("EXPLAIN " + sql)) == "router_side"
        same(cl, ref, sql)


def test_a_second_router_shares_views_sequences_and_null_placement(env):
    c, cl, ref = env
    cl.execute("CREATE TABLE seq2 (id INTEGER PRIMARY KEY, v TEXT)")
    cl.execute("CREATE VIEW v_seq2 AS SELECT count(*) AS n FROM seq2")
    assert cl.execute("INSERT INTO seq2 (v) VALUES ('a')").lastrowid == 1
    proc = subprocess.Popen(
        [sys.executable, "-m", "dosql.router", "--config", str(c.cluster_config), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        port = json.loads(proc.stdout.readline())["port"]
        with Client(f"ws://127.0.0.1:{port}") as other:
            # its own block: unique, never one the first router handed out
            got = other.execute("INSERT INTO seq2 (v) VALUES ('b')").lastrowid
            assert got > 1
            assert other.rows("SELECT n FROM v_seq2") == [(2,)]
            other.execute("INSERT INTO t1 (a, b, c) VALUES (NULL, 77, 'second')")
        assert shard_rows(c, "shard-0", "SELECT c FROM t1 WHERE b = 77") == [("second",)]
        assert cl.execute("INSERT INTO seq2 (v) VALUES ('c')").lastrowid == 2
        ids = [r[0] for r in cl.rows("SELECT id FROM seq2")]
        assert len(ids) == len(set(ids)) == 3
    finally:
        proc.terminate()
        proc.wait(10)
        cl.execute("DELETE FROM t1 WHERE b = 77")


def test_writes_to_unsharded_tables_may_read_sharded_ones(env):
    c, cl, ref = env
    for sql in (
        "CREATE TABLE system_config (key TEXT PRIMARY KEY, value INTEGER)",
        "INSERT INTO system_config VALUES ('t1_rows', 0), ('t2_max', 0)",
        "UPDATE system_config SET value = (SELECT count(*) FROM t1) WHERE key = 't1_rows'",
        "UPDATE system_config SET value = (SELECT max(x) FROM t2) WHERE key = 't2_max'",
        "INSERT INTO system_config SELECT 'y:' || y, x FROM t2 WHERE y IS NOT NULL",
        "DELETE FROM system_config WHERE value IN (SELECT x FROM t2 WHERE x > 5)",
    ):
        got, want = cl.execute(sql), ref.execute(sql)
        assert got.rowcount == want.rowcount, sql
        same(cl, ref, "SELECT * FROM system_config")
    assert shard_rows(c, "shard-3", "SELECT count(*) FROM system_config") == [
        ref.execute("SELECT count(*) FROM system_config").fetchone()
    ]
    with pytest.raises(NotSupportedError) as info:
        cl.execute("UPDATE countries SET name = (SELECT max(c) FROM t1)")
    assert "reference" in info.value.message


def test_savepoints_span_every_shard(env):
    _, cl, _ = env
    cl.execute("CREATE TABLE sp (k INTEGER, v TEXT)")
    cl.execute("BEGIN")
    cl.execute("INSERT INTO sp VALUES (1, 'kept')")
    cl.execute("SAVEPOINT s1")
    cl.execute("INSERT INTO sp VALUES (2, 'undone'), (3, 'undone'), (4, 'undone'), (5, 'undone')")
    cl.execute("ROLLBACK TO s1")
    cl.execute("INSERT INTO sp VALUES (6, 'after')")
    cl.execute("RELEASE s1")
    cl.execute("COMMIT")
    assert sorted(cl.rows("SELECT k, v FROM sp")) == [(1, "kept"), (6, "after")]
    # outside a transaction: SAVEPOINT begins one, its RELEASE commits
    cl.execute("SAVEPOINT outer_sp")
    cl.execute("INSERT INTO sp VALUES (7, 'x'), (8, 'y')")
    cl.execute("RELEASE outer_sp")
    assert cl.rows("SELECT count(*) FROM sp") == [(4,)]
    with pytest.raises(DoSQLError):
        cl.execute("RELEASE nope")


def test_create_table_as_select(env):
    c, cl, ref = env
    for sql in (
        "CREATE TABLE ctas AS SELECT a, b * 2 AS bb, c || '!' AS cc, y FROM t1 LEFT JOIN t2 ON a = x",
        "CREATE TABLE IF NOT EXISTS ctas AS SELECT 1",
    ):
        cl.execute(sql)
        ref.execute(sql)
    same(cl, ref, "SELECT * FROM ctas")
    shard_ddl = shard_rows(c, "shard-1", "SELECT sql FROM sqlite_master WHERE name = 'ctas'")
    want_ddl = ref.execute("SELECT sql FROM sqlite_master WHERE name = 'ctas'").fetchone()[0]
    assert shard_ddl[0][0] == want_ddl  # SQLite's own column names and types
    same(cl, ref, "SELECT typeof(a), typeof(bb), typeof(cc), count(*) FROM ctas GROUP BY 1, 2, 3")
    assert kind(cl.rows("EXPLAIN CREATE TABLE ctas2 AS SELECT 1")) == "router_side"
    cl.execute("DROP TABLE ctas")
    ref.execute("DROP TABLE ctas")


def test_returning_on_writes_that_run_router_side(env):
    _, cl, ref = env
    cl.execute("CREATE TABLE rt (k INTEGER, v TEXT)")
    ref.execute("CREATE TABLE rt (k INTEGER, v TEXT)")
    for sql in (
        "INSERT INTO rt VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd') RETURNING k, v",
        "UPDATE rt SET v = v || (SELECT count(*) FROM t2) WHERE k > 1 RETURNING k, v",
        "UPDATE rt SET k = k + 10 WHERE k IN (SELECT x FROM t2) RETURNING k * 2, v",
        "DELETE FROM rt WHERE k IN (SELECT x + 10 FROM t2) RETURNING v",
    ):
        got = cl.execute(sql)
        want = ref.execute(sql)
        names = [d[0] for d in want.description]
        assert got.columns == names, sql
        assert canon(got.rows) == canon(want.fetchall()), sql
        same(cl, ref, "SELECT * FROM rt")
