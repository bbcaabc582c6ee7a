"""Router-side work is bounded (issue 18): a statement runs under the client's
timeout when it is shorter than the router's, and one router-side result may
take at most ``router.query_memory_mb``; either way the client gets a typed
error at once and the router goes on answering."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import dosql
from dosql.cluster import LocalCluster
from tests.router.conftest import quickstart_vschema, write_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("bounded")
    cfg = write_config(
        tmp / "dosql.toml", quickstart_vschema(), extra={"router": {"query_memory_mb": 2}}
    )
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        conn = dosql.connect(c.url, autocommit=True)
        cur = conn.cursor()
        cur.execute("CREATE TABLE users (id INTEGER, tenant_id INTEGER NOT NULL, name TEXT)")
        cur.executemany(
            "INSERT INTO users VALUES (?, ?, ?)", [(i, i % 37, f"user {i}") for i in range(300)]
        )
        conn.close()
        yield c


def test_a_cross_join_past_the_memory_budget_is_refused(cluster: LocalCluster) -> None:
    conn = dosql.connect(cluster.url, autocommit=True)
    try:
        cur = conn.cursor()
        with pytest.raises(dosql.DatabaseError) as info:
            cur.execute("SELECT a.name, b.name FROM users a, users b, users c")
        assert info.value.code == "QUERY_TOO_LARGE", info.value
        assert "router.query_memory_mb" in info.value.message
        cur.execute("SELECT count(*) FROM users a, users b")  # small results still answer
        assert cur.fetchall() == [(90000,)]
    finally:
        conn.close()


def test_router_side_work_stops_at_the_clients_timeout(cluster: LocalCluster) -> None:
    conn = dosql.connect(cluster.url, autocommit=True, timeout=1.5)
    try:
        cur = conn.cursor()
        started = time.monotonic()
        with pytest.raises(dosql.DatabaseError) as info:
            # 8 billion joined rows counted in the router's in-memory SQLite: far past 1.5 s
            cur.execute(
                "SELECT count(*) FROM users a, users b, users c, users d WHERE a.name < b.name"
            )
        took = time.monotonic() - started
        assert info.value.code == "QUERY_TIMEOUT", info.value
        assert took < 5, took  # the router's own bound is 30 s
        cur.execute("SELECT count(*) FROM users")
        assert cur.fetchall() == [(300,)]
    finally:
        conn.close()
