"""Differential: the same statements on one plain SQLite and through the router agree.

Results are compared as multisets, and in order wherever the ORDER BY fully
determines it (a unique key as the last sort term). Float sums may differ in
their last bits (per-shard partial sums), so they are compared with a tight
tolerance; everything else is compared exactly. Run with 1, 2 and 4 shards.
"""

from __future__ import annotations

import math
import sqlite3
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dosql.cluster import LocalCluster
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, write_config

SCHEMA = "CREATE TABLE items (k INTEGER PRIMARY KEY, i INTEGER, f REAL, s TEXT, m)"
COLUMNS = "k, i, f, s, m"
LABELS = "CREATE TABLE labels (name TEXT PRIMARY KEY, n INTEGER)"


@pytest.fixture(scope="module", params=[1, 2, 4])
def router(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"diff{request.param}")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema(request.param))
    with LocalCluster(cfg, tmp / "data", lake=False) as c, Client(c.url) as cl:
        cl.execute(SCHEMA)  # not in the VSchema: sharded by its primary key (policy)
        cl.execute(LABELS)
        yield cl


texts = st.text(alphabet="aAbB _zé", max_size=4)
values = st.one_of(
    st.none(),
    st.integers(-(2**40), 2**40),
    st.floats(-1e6, 1e6, allow_nan=False),
    texts,
    st.binary(max_size=3),
)
rows_strategy = st.lists(
    st.tuples(
        st.integers(-1000, 1000),
        st.one_of(st.none(), st.integers(-(2**40), 2**40)),
        st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
        st.one_of(st.none(), texts),
        values,
    ),
    max_size=25,
    unique_by=lambda r: r[0],
)


def close(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
    return a == b


def same_row(a, b) -> bool:
    return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))


def canon(rows):
    return Counter(tuple(r) for r in rows)


QUERIES_ORDERED = [
    ("SELECT k, i FROM items ORDER BY i, k", lambda d: []),
    ("SELECT k, s FROM items ORDER BY s DESC, k LIMIT ? OFFSET ?", lambda d: [d["lim"], d["off"]]),
    ("SELECT k, m FROM items ORDER BY m, k", lambda d: []),
    ("SELECT s, k FROM items ORDER BY s COLLATE NOCASE, k DESC", lambda d: []),
    ("SELECT k FROM items ORDER BY f DESC NULLS FIRST, k LIMIT 5", lambda d: []),
    (
        "SELECT k AS key, i FROM items WHERE i > ? ORDER BY key DESC LIMIT ?",
        lambda d: [d["v"], d["lim"]],
    ),
    ("SELECT * FROM items WHERE k IN (?, ?, ?) ORDER BY k", lambda d: d["keys"]),
    ("SELECT k FROM items ORDER BY 1 LIMIT -1 OFFSET ?", lambda d: [d["off"]]),
]
QUERIES_MULTISET = [
    (f"SELECT {COLUMNS} FROM items", lambda d: []),
    ("SELECT * FROM items WHERE k = ?", lambda d: d["keys"][:1]),
    ("SELECT k, s FROM items WHERE k IN (?, ?, ?)", lambda d: d["keys"]),
    ("SELECT k, i + 1, upper(s) FROM items WHERE i IS NOT NULL", lambda d: []),
    ("SELECT count(*) FROM items WHERE s IS NULL", lambda d: []),
]
AGGREGATES = [
    "SELECT count(*), count(i), sum(i), min(s), max(m), avg(i), total(f), min(f), max(k) FROM items"
    " WHERE k > ?",
    "SELECT sum(f), avg(f), min(m), count(m) FROM items",
    "SELECT max(s) FROM items WHERE k = ?",
    "SELECT count(*) AS n, sum(i) AS total_i FROM items LIMIT 1 OFFSET ?",
]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_strategy, data=st.data())
def test_router_matches_sqlite(router, rows, data):
    ref = sqlite3.connect(":memory:")
    ref.execute(SCHEMA)
    router.execute("DELETE FROM items")
    insert = "INSERT INTO items (k, i, f, s, m) VALUES (?, ?, ?, ?, ?)"
    ref.executemany(insert, rows)
    if rows:
        router.executemany(insert, [list(r) for r in rows])
    keys = [r[0] for r in rows] or [0]
    d = {
        "keys": [data.draw(st.sampled_from(keys)) for _ in range(2)]
        + [data.draw(st.integers(-5, 5))],
        "lim": data.draw(st.integers(-1, 8)),
        "off": data.draw(st.integers(0, 5)),
        "v": data.draw(st.integers(-(2**40), 2**40)),
    }

    def both(sql, params):
        expected = [tuple(r) for r in ref.execute(sql, params).fetchall()]
        got = [tuple(r) for r in router.execute(sql, params).rows]
        return expected, got

    for sql, params_of in QUERIES_ORDERED:
        expected, got = both(sql, params_of(d))
        assert got == expected, sql
    for sql, params_of in QUERIES_MULTISET:
        expected, got = both(sql, params_of(d))
        assert canon(got) == canon(expected), sql
    for sql in AGGREGATES:
        params = [d["keys"][0]] if "?" in sql else []
        expected, got = both(sql, params)
        assert len(got) == len(expected) and all(
            same_row(a, b) for a, b in zip(got, expected, strict=True)
        ), (sql, got, expected)
    # LIMIT without ORDER BY: any rows, but the right number and all real
    expected, got = both("SELECT k, i FROM items WHERE i > ? LIMIT 3", [d["v"]])
    assert len(got) == len(expected) and set(got) <= set(
        map(tuple, ref.execute("SELECT k, i FROM items WHERE i > ?", [d["v"]]).fetchall())
    )
    # ordering only partly determined: the sort column's sequence must match
    expected, got = both("SELECT s, k FROM items ORDER BY s", [])
    assert [r[0] for r in got] == [r[0] for r in expected] and canon(got) == canon(expected)
    # writes
    for sql, params in (
        ("UPDATE items SET i = coalesce(i, 0) + 1, s = 'u' WHERE k = ?", d["keys"][:1]),
        ("DELETE FROM items WHERE k IN (?, ?)", d["keys"][1:]),
        ("UPDATE items SET f = 1.5 WHERE i > ?", [d["v"]]),
    ):
        n_ref = ref.execute(sql, params).rowcount
        assert router.execute(sql, params).rowcount == n_ref, sql
        expected, got = both(f"SELECT {COLUMNS} FROM items", [])
        assert canon(got) == canon(expected), sql
    ref.close()


key_texts = st.one_of(st.text(alphabet="ab7 ", max_size=3), st.integers(-50, 50).map(str))


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=st.lists(key_texts, max_size=12, unique=True),
    probes=st.lists(st.one_of(key_texts, st.integers(-50, 50), st.floats(-50, 50)), max_size=4),
)
def test_text_sharding_key_affinity(router, names, probes):
    """A TEXT sharding key: 42, 42.0 and '42' are compared as SQLite does, on the right shard."""
    ref = sqlite3.connect(":memory:")
    ref.execute(LABELS)
    router.execute("DELETE FROM labels")
    rows = [[name, i] for i, name in enumerate(names)]
    ref.executemany("INSERT INTO labels VALUES (?, ?)", rows)
    for row in rows:  # one statement per row: each routed on its own
        router.execute("INSERT INTO labels VALUES (?, ?)", row)
    for probe in probes + names[:2]:
        sql = "SELECT n FROM labels WHERE name = ?"
        assert router.rows(sql, [probe]) == [tuple(r) for r in ref.execute(sql, [probe])], probe
    expected = ref.execute("SELECT name, n FROM labels ORDER BY name").fetchall()
    assert router.rows("SELECT name, n FROM labels ORDER BY name") == [tuple(r) for r in expected]
    ref.close()
