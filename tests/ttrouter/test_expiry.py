"""FOR SYSTEM_TIME AS OF through the router after snapshot expiry (issue 13):
exact inside the retention window, SNAPSHOT_EXPIRED naming the range before it."""

from __future__ import annotations

import time
from typing import Any

import pytest

import dosql
from dolake.expire_cli import expire
from dosql.cluster import LocalCluster

from .conftest import CONFIG, SETTINGS_DDL, USERS_DDL, Step, Workload, fmt, now_us

RETENTION_MS = 2500


def _rows(conn: Any, sql: str) -> list[tuple]:
    cur = conn.cursor()
    cur.execute(sql)
    return sorted(cur.fetchall())


def _run(conn: Any, wl: Workload, first_id: int, count: int) -> None:
    cur = conn.cursor()
    for i in range(first_id, first_id + count):
        stmts = [("INSERT INTO users VALUES (?, ?, ?)", (i, f"user{i}", i % 5))]
        if i > 2:
            stmts.append(("UPDATE users SET n = n + 1 WHERE id = ?", (i - 2,)))
        step = Step(stmts)
        time.sleep(0.004)
        step.before = now_us()
        for sql, params in stmts:
            cur.execute(sql, params)
        conn.commit()
        step.after = now_us()
        wl.steps.append(step)


def test_time_travel_after_expiry(tmp_path):
    env = {
        "DOLAKE_FLUSH_INTERVAL_MS": "600000",
        "CDC_BATCH_TIMEOUT_MS": "50",
        "DOLAKE_EXPIRE_INTERVAL_MS": "0",
        "DOLAKE_SNAPSHOT_RETENTION_MS": str(RETENTION_MS),
        "DOLAKE_MIN_SNAPSHOTS_TO_KEEP": "1",
    }
    with LocalCluster(CONFIG, tmp_path, lake=True, env=env) as cluster:
        setup = dosql.connect(cluster.url, timeout=30, autocommit=True)
        for ddl in (USERS_DDL, SETTINGS_DDL):
            setup.cursor().execute(ddl)
        conn = dosql.connect(cluster.url, timeout=30, autocommit=False)
        wl = Workload()
        next_id = 1
        for _phase in range(3):  # old history: three lake snapshots
            _run(conn, wl, next_id, 4)
            next_id += 4
            cluster.sync_lake()
        old_points = [s.after for s in wl.steps[:8]]
        last_old = len(wl.steps)
        time.sleep(RETENTION_MS / 1000 + 0.5)
        for _phase in range(2):  # inside the window
            _run(conn, wl, next_id, 4)
            next_id += 4
            cluster.sync_lake()
        info = expire(cluster.lake_url)
        assert info["tables"]["users"]["mirror"]["snapshots_expired"] >= 2, info
        reader = dosql.connect(cluster.url, timeout=30, autocommit=True)
        # inside the window: exact at every step from the last pre-window snapshot on
        for k in range(last_old - 1, len(wl.steps)):
            point = wl.steps[k].after
            got = _rows(
                reader, f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(point)}'"
            )
            assert got == wl.replay(wl.upto_point(point)), k
        # before it: a typed error naming the available range
        for point in old_points:
            with pytest.raises(dosql.DatabaseError) as err:
                reader.cursor().execute(
                    f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(point)}'"
                )
            assert err.value.code == "SNAPSHOT_EXPIRED", err.value
            assert "available: from" in err.value.message
            assert "snapshot_retention_ms" in err.value.message
        # the current rows are untouched
        assert _rows(reader, "SELECT * FROM users") == wl.replay(len(wl.steps))
        for c in (setup, conn, reader):
            c.close()
