"""A real cluster for the pushdown tests: 4 shards, every table sharded on its first column.

The same deployment as the sqllogictest conformance run (VSchema policy
``shard_by_primary_key``, tables without a primary key hashed on their first
column), with one autocommit DB-API connection. A test module takes it with
``pushdown_conn = cluster_fixture()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dosql.cluster import LocalCluster
from dosql.driver import connect
from tests.conformance.engines import cluster_config


def _cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("pushdown")
    cfg = tmp / "dosql.toml"
    cfg.write_text(cluster_config(4))
    with LocalCluster(cfg, tmp / "data", lake=False) as cluster:
        conn = connect(cluster.url, timeout=60.0, autocommit=True)
        try:
            yield conn
        finally:
            conn.close()


def cluster_fixture() -> Any:
    """A module-scoped fixture yielding the connection (one cluster per test module)."""
    return pytest.fixture(scope="module", name="pushdown_conn")(_cluster)
