"""The driver end to end through a router: the quickstart cluster (4 shards, no lake)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import dosql.driver as dbapi
from tests.driver.conftest import ROOT

QUICKSTART = ROOT / "examples" / "quickstart" / "dosql.toml"


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    cluster = pytest.importorskip("dosql.cluster")
    data_dir: Path = tmp_path_factory.mktemp("cluster")
    with cluster.LocalCluster(QUICKSTART, data_dir, lake=False) as running:
        yield running.url


def test_sharded_writes_and_reads_through_the_router(cluster_url: str) -> None:
    assert cluster_url.startswith("dosql://")
    with dbapi.connect(cluster_url, timeout=20) as conn:
        cur = conn.cursor()
        cur.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, name TEXT)"
        )
        cur.executemany(
            "INSERT INTO users (id, tenant_id, name) VALUES (?, ?, ?)",
            [(i, i % 7, f"user{i}") for i in range(1, 101)],
        )
        assert cur.rowcount == 100
        assert conn.in_transaction
    # committed by the context manager: a new session sees every row
    conn2 = dbapi.connect(cluster_url, timeout=20)
    try:
        cur = conn2.cursor()
        cur.execute("SELECT count(*), sum(id) FROM users")
        assert cur.fetchone() == (100, 5050)
        cur.execute("SELECT id, name FROM users WHERE tenant_id = ? ORDER BY id", [3])
        assert [d[0] for d in cur.description] == ["id", "name"]
        assert cur.fetchall() == [(i, f"user{i}") for i in range(1, 101) if i % 7 == 3]
        cur.execute("SELECT id FROM users ORDER BY id LIMIT 5 OFFSET 10")
        assert [r[0] for r in cur] == [11, 12, 13, 14, 15]
        # a write rolled back through the router leaves nothing behind
        cur.execute("DELETE FROM users WHERE tenant_id = 3")
        assert conn2.in_transaction
        conn2.rollback()
        assert cur.execute("SELECT count(*) FROM users").fetchone() == (100,)
        with pytest.raises(dbapi.IntegrityError):
            cur.execute("INSERT INTO users (id, tenant_id, name) VALUES (1, 1, 'dup')")
        conn2.rollback()
        # a scattered DISTINCT runs router-side and gives SQLite's answer
        cur.execute("SELECT DISTINCT tenant_id FROM users ORDER BY 1")
        assert [r[0] for r in cur.fetchall()] == list(range(7))
        # what the router still refuses reaches the driver as NotSupportedError, with a reason
        with pytest.raises(dbapi.NotSupportedError) as info:
            cur.execute("ATTACH DATABASE ':memory:' AS other")
        assert info.value.code == "NOT_SUPPORTED"
        assert "ATTACH" in str(info.value).upper()
    finally:
        conn2.close()


def test_tokens_through_the_router(tmp_path: Path) -> None:
    cluster = pytest.importorskip("dosql.cluster")
    env = {"DOSQL_TOKENS": "rtok:read,atok:admin"}
    with cluster.LocalCluster(QUICKSTART, tmp_path, lake=False, env=env) as running:
        for token in (None, "wrong"):
            with pytest.raises(dbapi.OperationalError) as info:
                dbapi.connect(running.url, token=token, timeout=10)
            assert info.value.code == "AUTHENTICATION_REQUIRED"
        with dbapi.connect(running.url, token="atok", timeout=20) as admin:
            admin.cursor().execute(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant_id INTEGER, total REAL)"
            )
            admin.cursor().execute("INSERT INTO orders VALUES (1, 1, 9.5), (2, 2, 3.0)")
        reader = dbapi.connect(running.url, token="rtok", timeout=20, autocommit=True)
        try:
            cur = reader.cursor()
            assert cur.execute("SELECT count(*) FROM orders").fetchone() == (2,)
            for statement in (
                "INSERT INTO orders VALUES (3, 3, 1.0)",
                "UPDATE orders SET total = 0",
                "DELETE FROM orders WHERE tenant_id = 1",
            ):
                with pytest.raises(dbapi.ProgrammingError) as info:
                    cur.execute(statement)
                assert info.value.code == "READ_ONLY"
            assert cur.execute("SELECT sum(total) FROM orders").fetchone() == (12.5,)
        finally:
            reader.close()


def test_dosql_sql_through_the_router(cluster_url: str) -> None:
    from tests.driver.test_sql_cli import dosql_sql

    with dbapi.connect(cluster_url, timeout=20) as conn:
        conn.cursor().execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, tenant_id INTEGER)")
        conn.cursor().executemany("INSERT INTO sessions VALUES (?, ?)", [(i, i) for i in range(30)])
    done = dosql_sql("--url", cluster_url, "--json", "SELECT count(*) AS n FROM sessions")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["columns"] == ["n"] and out["rows"] == [[30]]
    done = dosql_sql("--url", cluster_url, "SELECT id FROM sessions WHERE tenant_id = 7")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["id", "--", " 7", "(1 row)"]


def test_program_that_never_closes_its_connection_exits_promptly(cluster_url: str) -> None:
    """A forgotten close() must not hang interpreter exit (websockets' reader is a daemon)."""
    code = (
        "import sys, dosql\n"
        "c = dosql.connect(sys.argv[1])\n"
        "cur = c.cursor(); cur.execute('SELECT 1'); print(cur.fetchall())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, cluster_url], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[(1,)]"
