"""Issue 6 end to end: a workload through the router ends up exactly in Iceberg.

A real LocalCluster (lake writer, 4 shards, router) runs the quickstart
VSchema. After a mixed workload — every value type, updates that change the
primary key, deletes, upserts, reference and unsharded tables, committed and
rolled-back transactions, a lake writer killed mid-stream — the pyiceberg
mirror of every table equals ``SELECT *`` through the router row for row, the
change logs hold exactly one row per committed change with contiguous LSNs per
shard, and DuckDB reads the same rows as pyiceberg.
"""

from __future__ import annotations

import math
import random
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import dosql
from dolake import readers
from dosql.cluster import LocalCluster
from tests.faultkit import readable, wait_for

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart" / "dosql.toml"
TABLES = ("users", "countries", "system_config")

SCHEMA = [
    "CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, name TEXT,"
    " score REAL, avatar BLOB, big INTEGER)",
    "CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT NOT NULL)",
    "CREATE TABLE system_config (key TEXT PRIMARY KEY, value TEXT)",
]
ODD_TEXT = ["", "plain", "ünïcødé ✓", "emoji 🦆", "quote ' and \" and \\", "nul\x00inside"]
EDGE_INTS = [0, 1, -1, 2**63 - 1, -(2**63), 2**31, -(2**31)]


def _norm(value: object) -> object:
    """Compare floats bit for bit (NaN cannot be stored by SQLite anyway)."""
    if isinstance(value, float):
        return ("f", struct.pack(">d", value))
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return value


def _multiset(rows: list[tuple] | list[list]) -> Counter:
    return Counter(tuple(_norm(v) for v in row) for row in rows)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data_dir = tmp_path_factory.mktemp("lake-e2e")
    env = {"DOLAKE_FLUSH_INTERVAL_MS": "600000", "CDC_BATCH_TIMEOUT_MS": "50"}
    with LocalCluster(QUICKSTART, data_dir, lake=True, env=env) as running:
        yield running


def _workload(conn, rng: random.Random, start_id: int, n: int) -> None:
    cur = conn.cursor()
    rows = []
    for i in range(start_id, start_id + n):
        rows.append(
            (
                i,
                rng.randrange(12),
                rng.choice(ODD_TEXT) if rng.random() < 0.9 else None,
                rng.choice([0.1, -0.0, 1e308, 5e-324, math.pi, None, float(i)]),
                rng.choice([b"", b"\x00\xff", bytes(range(256)), None]),
                rng.choice(EDGE_INTS + [None]),
            )
        )
    cur.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    ids = [r[0] for r in rows]
    tenants = {r[0]: r[1] for r in rows}
    for i in rng.sample(ids, n // 4):
        cur.execute(
            "UPDATE users SET score = ?, name = ? WHERE tenant_id = ? AND id = ?",
            (rng.random(), f"renamed-{i}", tenants[i], i),
        )
    conn.commit()
    moved = rng.sample(ids, n // 10)
    for i in moved:  # primary-key change: the key moves within the row's shard
        cur.execute(
            "UPDATE users SET id = ? WHERE tenant_id = ? AND id = ?", (i + 100_000, tenants[i], i)
        )
    conn.commit()
    for i in rng.sample([x for x in ids if x not in moved], n // 8):
        cur.execute("DELETE FROM users WHERE tenant_id = ? AND id = ?", (tenants[i], i))
    conn.commit()
    # a rolled-back transaction leaves no trace anywhere
    cur.execute("INSERT INTO users VALUES (?, 3, 'ghost', 0.0, NULL, NULL)", (start_id + 50_000,))
    conn.rollback()


def _reference_and_unsharded(conn, round_no: int) -> None:
    cur = conn.cursor()
    cur.executemany(
        "INSERT OR REPLACE INTO countries VALUES (?, ?)",
        [(f"C{round_no}{i}", f"country {i}") for i in range(5)],
    )
    cur.execute("UPDATE countries SET name = 'renamed' WHERE code = ?", (f"C{round_no}1",))
    cur.execute("DELETE FROM countries WHERE code = ?", (f"C{round_no}2",))
    cur.execute(
        "INSERT INTO system_config VALUES (?, ?) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        ("mode", f"round-{round_no}"),
    )
    cur.execute("INSERT INTO system_config VALUES (?, ?)", (f"k{round_no}", None))
    conn.commit()


def _assert_lake_exact(cluster: LocalCluster, conn) -> None:
    cluster.sync_lake(timeout=120)
    catalog = readers.open_catalog(cluster.cluster_config, data_dir=cluster.data_dir)
    cur = conn.cursor()
    duck = readers.duckdb_connect()
    for table in TABLES:
        cur.execute(f"SELECT * FROM {table}")
        columns = [d[0] for d in cur.description]
        through_router = _multiset(cur.fetchall())
        assert sum(through_router.values()) > 0, f"{table} is empty: the comparison proves nothing"
        mirror = readers.scan(catalog, table).select(columns)
        in_iceberg = _multiset([tuple(r.values()) for r in mirror.to_pylist()])
        assert in_iceberg == through_router, f"mirror of {table} differs from the router"
        by_duckdb = readers.duckdb_scan(catalog, table, con=duck).select(columns)
        assert _multiset([tuple(r.values()) for r in by_duckdb.to_pylist()]) == in_iceberg
    # Change logs: every committed change exactly once, LSNs contiguous per shard.
    seen: dict[str, list[int]] = {}
    for table in TABLES:
        log = readers.scan(catalog, f"{table}__changelog", hidden=True)
        for shard, lsn in zip(
            log.column("_shard").to_pylist(), log.column("_lsn").to_pylist(), strict=True
        ):
            seen.setdefault(shard, []).append(lsn)
        duck_log = readers.duckdb_scan(catalog, f"{table}__changelog", con=duck)
        assert duck_log.num_rows == log.num_rows
    current = cluster.shard_lsns()
    for shard, lsn in current.items():
        lsns = sorted(seen.get(shard, []))
        assert lsns == list(range(1, lsn + 1)), f"{shard}: change log LSNs not exactly 1..{lsn}"


def test_workload_through_router_lands_exactly_in_iceberg(cluster: LocalCluster) -> None:
    conn = dosql.connect(cluster.url, timeout=60)
    try:
        cur = conn.cursor()
        for ddl in SCHEMA:
            cur.execute(ddl)
        conn.commit()
        rng = random.Random(20261124)
        _workload(conn, rng, start_id=1, n=80)
        _reference_and_unsharded(conn, 1)
        _assert_lake_exact(cluster, conn)

        # The lake writer dies with changes in flight; everything still lands once.
        _workload(conn, rng, start_id=1000, n=40)
        cluster.kill_lake()
        _workload(conn, rng, start_id=2000, n=40)
        cluster.start_lake()
        _reference_and_unsharded(conn, 2)
        _assert_lake_exact(cluster, conn)

        # A shard dies and comes back: it resumes from the lake's watermark.
        shard = next(iter(cluster.shard_urls))
        cluster.kill_shard(shard)
        cluster.start_shard(shard)
        # the router backs off a shard it saw down (fails fast): wait until it is back
        wait_for(lambda: readable(cluster, TABLES), 30, "the router to reach the shard again")
        _workload(conn, rng, start_id=3000, n=40)
        _assert_lake_exact(cluster, conn)
    finally:
        conn.close()


def test_schema_change_mid_stream(cluster: LocalCluster) -> None:
    conn = dosql.connect(cluster.url, timeout=60)
    try:
        cur = conn.cursor()
        cur.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant_id INTEGER, total REAL)")
        cur.executemany(
            "INSERT INTO orders VALUES (?, ?, ?)", [(i, i % 5, i * 1.5) for i in range(20)]
        )
        conn.commit()
        cluster.sync_lake(timeout=120)
        cur.execute("ALTER TABLE orders ADD COLUMN note TEXT")
        cur.executemany(
            "INSERT INTO orders VALUES (?, ?, ?, ?)",
            [(i, i % 5, 0.5, f"n{i}") for i in range(20, 30)],
        )
        conn.commit()
        cluster.sync_lake(timeout=120)
        catalog = readers.open_catalog(cluster.cluster_config, data_dir=cluster.data_dir)
        rows = {r["id"]: r["note"] for r in readers.scan(catalog, "orders").to_pylist()}
        assert len(rows) == 30
        assert all(rows[i] is None for i in range(20))
        assert all(rows[i] == f"n{i}" for i in range(20, 30))
    finally:
        conn.close()
