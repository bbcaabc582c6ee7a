"""Planner and merge units: SQLite ordering, aggregates, plan shapes, refusals."""

from __future__ import annotations

import sqlite3
from functools import cmp_to_key

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dosql.errors import NotSupportedError, QueryError
from dosql.router import merge
from dosql.router.engine.insert_select import InsertSelect
from dosql.router.engine.limit import Limit
from dosql.router.engine.merge_sort import MergeSort
from dosql.router.engine.router_side import RouterSide
from dosql.router.engine.scatter import Scatter
from dosql.router.engine.sequence import Sequence
from dosql.router.engine.sharded_read import ShardedRead
from dosql.router.plan import AggSpec
from dosql.router.planner import plan
from tests.router.conftest import quickstart_vschema

VS = quickstart_vschema()
values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(alphabet="aAbB z", max_size=3),
    st.binary(max_size=2),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(values, max_size=12), st.sampled_from(["BINARY", "NOCASE", "RTRIM"]))
def test_compare_orders_like_sqlite(vals, collation):
    con = sqlite3.connect(":memory:")
    con.execute(f"CREATE TABLE t (id INTEGER PRIMARY KEY, v COLLATE {collation})")
    con.executemany("INSERT INTO t (v) VALUES (?)", [(v,) for v in vals])
    expected = [r[0] for r in con.execute("SELECT v FROM t ORDER BY v, id")]
    ours = sorted(
        [r[0] for r in con.execute("SELECT v FROM t ORDER BY id")],
        key=cmp_to_key(lambda a, b: merge.compare(a, b, collation)),
    )
    for a, b in zip(ours, expected, strict=True):
        assert merge.compare(a, b, collation) == 0


def test_unknown_collation_refuses_text_only():
    assert merge.compare(1, 2, None) == -1
    with pytest.raises(NotSupportedError):
        merge.compare("a", "b", None)


def test_aggregate_merge_rules():
    specs = [AggSpec("count", 0), AggSpec("sum", 1), AggSpec("min", 2), AggSpec("avg", 3, hidden=0)]
    parts = [[0, None, None, None, 0.0, 0], [2, 5, "b", 2.5, 5.0, 2], [1, 2, "a", 2.0, 2.0, 1]]
    row = merge.merge_aggregates(parts, specs, [None, None, "BINARY", None], 2)
    assert row == [3, 7, "a", 7.0 / 3]
    empty = merge.merge_aggregates([[0, None, None, None, 0.0, 0]] * 2, specs, [None] * 4, 2)
    assert empty == [0, None, None, None]
    with pytest.raises(QueryError):
        merge.merge_aggregates([[1, 2**62, None, None, 0.0, 0]] * 2, specs, [None] * 4, 2)


def test_limit_semantics():
    rows = [[i] for i in range(5)]
    assert merge.apply_limit(rows, 2, 1) == [[1], [2]]
    assert merge.apply_limit(rows, -1, 3) == [[3], [4]]
    assert merge.apply_limit(rows, 2, -4) == [[0], [1]]
    assert merge.as_limit("3", "LIMIT") == 3
    with pytest.raises(QueryError):
        merge.as_limit("x", "LIMIT")


def test_plan_shapes():
    p = plan("SELECT * FROM users WHERE tenant_id = ? AND name = ?", VS)
    assert isinstance(p, ShardedRead)
    assert p.route.routing.kind == "sharded" and len(p.route.routing.conds) == 1
    p = plan("SELECT name FROM users ORDER BY name DESC LIMIT ? OFFSET ?", VS)
    assert isinstance(p, ShardedRead) and isinstance(p.multi, Limit)
    sort = p.multi.source
    assert isinstance(sort, MergeSort) and isinstance(sort.source, Scatter)
    pushed = sort.source.text
    assert pushed.endswith("ORDER BY name DESC") and "__dosql_k0" in pushed
    assert p.multi.limit.param == 0 and p.multi.offset.param == 1 and sort.source.keep == ()
    p = plan("INSERT INTO users (name, tenant_id) VALUES ('a', ?), ('b', ?)", VS)
    assert isinstance(p, Sequence) and p.kind == "insert"
    assert [r[3] for r in p.insert.insert_rows] == [(0,), (1,)]
    assert plan("SELECT * FROM countries", VS).routing.kind == "any"
    assert plan("UPDATE countries SET name = 'x'", VS).routing.kind == "all"
    assert plan("SELECT * FROM system_config", VS).routing.shard == "shard-3"
    assert plan("BEGIN IMMEDIATE", VS).mode == "immediate"
    p = plan("SELECT * FROM events WHERE event_date >= '2025-01-01'", VS)
    assert p.route.routing.conds[0].low.const == "2025-01-01"


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM users JOIN orders USING (tenant_id)",
        "WITH x AS (SELECT * FROM users) SELECT * FROM x",
        "SELECT tenant_id FROM users UNION SELECT tenant_id FROM orders",
        "SELECT (SELECT count(*) FROM orders o WHERE o.tenant_id = u.tenant_id) FROM users u",
    ],
)
def test_multi_table_reads_gather(sql):
    p = plan(sql, VS)
    assert isinstance(p, RouterSide) and p.kind == "read"
    assert {r.name for r in p.gather.refs} <= {"users", "orders"}


def test_gather_pushes_single_table_conjuncts():
    p = plan(
        "SELECT * FROM users u, orders o WHERE u.tenant_id = ? AND o.amount > 5 AND u.name = o.id",
        VS,
    )
    refs = {r.name: r for r in p.gather.refs}
    assert [c.text for c in refs["users"].candidates] == ["u.tenant_id = ?"]
    assert refs["users"].candidates[0].params == (0,) and refs["users"].candidates[0].conds
    assert [c.text for c in refs["orders"].candidates] == ["o.amount > 5"]
    # LEFT JOIN: WHERE terms on the null-extended side must not be pushed
    p = plan(
        "SELECT * FROM users u LEFT JOIN orders o ON u.tenant_id = o.tenant_id WHERE o.id IS NULL",
        VS,
    )
    assert all(not r.candidates for r in p.gather.refs)


def test_insert_select_runs_its_source_through_the_router():
    p = plan("INSERT INTO users SELECT * FROM orders WHERE amount > ?", VS)
    assert isinstance(p, InsertSelect)
    assert p.source_sql == "SELECT * FROM orders WHERE amount > ?" and p.source_params == (0,)
    assert p.insert_sql.strip() == "INSERT INTO users"


@pytest.mark.parametrize(
    "sql",
    [
        "CREATE TEMP TABLE t (a)",
        "ALTER TABLE users RENAME TO people",
        "ALTER TABLE users DROP COLUMN tenant_id",
        "SELECT * FROM users WHERE tenant_id = @t",
    ],
)
def test_refusals_have_reasons(sql):
    with pytest.raises(NotSupportedError) as info:
        plan(sql, VS)
    assert len(info.value.message) > 15


def test_syntax_errors_are_typed():
    with pytest.raises(QueryError) as info:
        plan("SELEC * FROM users", VS)
    assert info.value.code == "SYNTAX_ERROR"
    with pytest.raises(QueryError):
        plan("SELECT 1; SELECT 2", VS)


def test_a_sharded_table_must_have_its_sharding_column():
    """users is sharded by tenant_id: creating it without that column is refused
    up front, not left to fail on the first INSERT."""
    with pytest.raises(QueryError) as info:
        plan("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)", VS)
    assert info.value.code == "SHARDING_COLUMN_MISSING" and "tenant_id" in info.value.message
    assert plan("CREATE TABLE users (id INTEGER, TENANT_ID INTEGER)", VS).kind == "ddl"
    assert plan("CREATE TABLE IF NOT EXISTS users (tenant_id, x)", VS).kind == "ddl"
