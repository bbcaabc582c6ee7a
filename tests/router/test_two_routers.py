"""Several routers see one catalog (issue 18): tables, views and drops made
through one router are seen by another on its next statement."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, shard_rows, write_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("two-routers")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        yield c


@pytest.fixture(scope="module")
def other(cluster: LocalCluster) -> Iterator[Client]:
    """A second router process on the same cluster, started before any table exists."""
    argv = [sys.executable, "-m", "dosql.router", "--config", str(cluster.cluster_config)]
    proc = subprocess.Popen(
        [*argv, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        port = json.loads(proc.stdout.readline())["port"]  # type: ignore[union-attr]
        with Client(f"ws://127.0.0.1:{port}") as client:
            client.execute("SELECT 1")  # it has loaded the (empty) metadata
            yield client
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_table_created_through_one_router_is_routed_alike_by_another(
    cluster: LocalCluster, other: Client
) -> None:
    with Client(cluster.url) as first:
        first.execute("CREATE TABLE gadgets (gid INTEGER PRIMARY KEY, label TEXT)")
        first.execute("INSERT INTO gadgets VALUES (1, 'a'), (2, 'b'), (3, 'c'), (4, 'd')")
        # the other router writes and reads it by key, and places rows where the first would
        other.execute("INSERT INTO gadgets VALUES (5, 'e')")
        assert other.rows("SELECT label FROM gadgets WHERE gid = 3") == [("c",)]
        assert first.rows("SELECT label FROM gadgets WHERE gid = 5") == [("e",)]
        assert sorted(other.rows("SELECT gid FROM gadgets")) == [(i,) for i in range(1, 6)]

        first.execute("CREATE VIEW big_gadgets AS SELECT * FROM gadgets WHERE gid > 3")
        assert sorted(other.rows("SELECT gid FROM big_gadgets")) == [(4,), (5,)]


def test_a_drop_and_recreate_through_one_router_reaches_the_other(
    cluster: LocalCluster, other: Client
) -> None:
    with Client(cluster.url) as first:
        first.execute("CREATE TABLE parts (pid INTEGER PRIMARY KEY, v TEXT)")
        other.execute("INSERT INTO parts VALUES (1, 'x')")
        first.execute("DROP TABLE parts")
        with pytest.raises(DoSQLError) as info:
            other.rows("SELECT * FROM parts")
        assert info.value.code == "TABLE_NOT_FOUND"
        first.execute("CREATE TABLE parts (pid INTEGER PRIMARY KEY, v TEXT, w INTEGER)")
        other.execute("INSERT INTO parts VALUES (7, 'y', 70)")
        assert first.rows("SELECT v, w FROM parts WHERE pid = 7") == [("y", 70)]


def test_a_table_redefined_through_one_router_is_routed_by_its_new_columns_on_the_other(
    cluster: LocalCluster, other: Client
) -> None:
    """A listed table (sharded by tenant_id) re-created with its columns in another
    order: the other router's cached column positions go within its metadata poll."""
    with Client(cluster.url) as first:
        first.execute("CREATE TABLE orders (id INTEGER, tenant_id INTEGER NOT NULL, total REAL)")
        other.execute("INSERT INTO orders VALUES (1, 11, 1.5)")  # caches the column order
        first.execute("DROP TABLE orders")
        first.execute("CREATE TABLE orders (tenant_id INTEGER NOT NULL, total REAL, id INTEGER)")
        time.sleep(1.5)  # the metadata poll (router.METADATA_POLL_S)
        other.execute("INSERT INTO orders VALUES (12, 2.5, 2)")
        owner = cluster.vschema.shard_for("orders", 12)
        assert shard_rows(cluster, owner, "SELECT id FROM orders") == [(2,)]
        assert first.rows("SELECT id, total FROM orders WHERE tenant_id = 12") == [(2, 2.5)]
