"""Time travel waits only for what it needs (issue 18): with the lake writer
down, a point the lake already holds answers at once -- whatever the shards
wrote since, to this or other tables -- and a point it does not hold fails
with LAKE_BEHIND naming the real lag, not the distance to the point."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

import dosql
from dosql.cluster import LocalCluster
from tests.router.client import http_json

from .conftest import CONFIG, SETTINGS_DDL, USERS_DDL, fmt, now_us


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data_dir = tmp_path_factory.mktemp("lake-down")
    with LocalCluster(CONFIG, data_dir, lake=True) as running:
        yield running


def _rows(conn: Any, sql: str, params: Any = None) -> list[tuple]:
    cur = conn.cursor()
    cur.execute(sql, params)
    return sorted(cur.fetchall())


def test_points_in_the_lake_answer_with_the_lake_writer_down(cluster: LocalCluster) -> None:
    conn = dosql.connect(cluster.url, timeout=4, autocommit=True)
    try:
        conn.cursor().execute(USERS_DDL)
        conn.cursor().execute(SETTINGS_DDL)
        for i in range(1, 9):
            conn.cursor().execute("INSERT INTO users VALUES (?, ?, ?)", (i, f"u{i}", i))
        conn.cursor().execute("INSERT INTO settings VALUES ('a', '1')")
        cluster.sync_lake()
        time.sleep(0.01)
        point = now_us()
        time.sleep(0.01)
        cluster.kill_lake()
        status, deep = http_json(cluster.url, "/health/deep")
        assert deep["status"] == "degraded" and deep["lake"]["status"] == "error", deep
        # the shards move on: another table, and this table after the point
        conn.cursor().execute("INSERT INTO settings VALUES ('b', '2')")
        first_missing = now_us()  # the lake lacks this table's changes from here on
        conn.cursor().execute("UPDATE users SET name = 'changed' WHERE id = 3")
        conn.cursor().execute("INSERT INTO users VALUES (100, 'late', 0)")
        want = [(i, f"u{i}", i) for i in range(1, 9)]
        sql = "SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP ?"
        started = time.monotonic()
        assert _rows(conn, sql, [fmt(point)]) == want
        assert _rows(conn, "SELECT * FROM settings TIMESTAMP AS OF ?", [fmt(point)]) == [("a", "1")]
        assert time.monotonic() - started < 3.0  # no wait for the lake (its timeout is 4 s)

        # a point after changes the lake does not have: LAKE_BEHIND with the real lag
        conn.cursor().execute("UPDATE users SET n = 7 WHERE id = 1")
        time.sleep(0.05)
        late = now_us()
        with pytest.raises(dosql.DatabaseError) as info:
            _rows(conn, sql, [fmt(late)])
        raised = now_us()
        err = info.value
        assert err.code == "LAKE_BEHIND", err
        # the lag is the age of the oldest change the lake lacks, not the point's distance
        lag_ms = err.details["behind_ms"]
        real_ms = (raised - first_missing) // 1000
        assert lag_ms is not None and real_ms - 1500 <= lag_ms <= real_ms + 100, (real_ms, err)
    finally:
        conn.close()

    cluster.start_lake()  # back: the same point now answers, with the change
    assert http_json(cluster.url, "/health/deep")[1]["lake"]["status"] == "ok"
    conn = dosql.connect(cluster.url, timeout=30, autocommit=True)
    try:
        rows = _rows(conn, sql, [fmt(late)])
        assert (1, "u1", 7) in rows and (3, "changed", 3) in rows and (100, "late", 0) in rows
    finally:
        conn.close()
