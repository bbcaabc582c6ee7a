"""Point-in-time recovery (``dosql restore-table``) and a lake that cannot keep up.

The restore test drops a table and recreates it with another definition and
other rows, then restores the old contents under a new name: the new table
must have the OLD definition and exactly the old rows.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

import dosql
from dosql.cluster import LocalCluster
from dosql.restore import rename_create, restore_table

from .conftest import fmt, now_us

ACCOUNTS_DDL = (
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL COLLATE NOCASE, "
    "balance INTEGER CHECK (balance >= 0))"
)


def _rows(conn: Any, sql: str, params: Any = None) -> list[tuple]:
    cur = conn.cursor()
    cur.execute(sql, params)
    return sorted(cur.fetchall())


def test_rename_create_keeps_the_definition() -> None:
    assert rename_create(ACCOUNTS_DDL, "acc_rec") == ACCOUNTS_DDL.replace(
        "TABLE accounts", 'TABLE "acc_rec"'
    )
    assert (
        rename_create('CREATE TABLE IF NOT EXISTS main."Old"(x)', "new")
        == 'CREATE TABLE IF NOT EXISTS "new"(x)'
    )


def test_restore_dropped_and_recreated_table(cluster: LocalCluster, conn: Any) -> None:
    cur = conn.cursor()
    cur.execute(ACCOUNTS_DDL)
    old = [(i, f"owner{i}", i * 10) for i in range(1, 24)]
    cur.executemany("INSERT INTO accounts VALUES (?, ?, ?)", old)
    cur.execute("UPDATE accounts SET balance = 999 WHERE id = 5")
    old[4] = (5, "owner5", 999)
    cur.execute("DELETE FROM accounts WHERE id = 7")
    del old[6]
    time.sleep(0.01)
    point = now_us()
    time.sleep(0.01)
    cur.execute("DROP TABLE accounts")
    cur.execute("CREATE TABLE accounts (id INTEGER PRIMARY KEY, note TEXT)")
    cur.executemany("INSERT INTO accounts VALUES (?, ?)", [(1, "new"), (100, "newer")])

    seen: list[tuple[int, int]] = []
    result = restore_table(
        cluster.url,
        "accounts",
        fmt(point),
        "accounts_recovered",
        progress=lambda done, total: seen.append((done, total)),
        batch=7,
    )
    assert result.rows == len(old) == 22
    assert seen[0] == (0, 22) and seen[-1] == (22, 22)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) == 5
    assert result.create_sql == ACCOUNTS_DDL.replace("TABLE accounts", 'TABLE "accounts_recovered"')
    assert _rows(conn, "SELECT * FROM accounts_recovered") == sorted(old)
    # the old definition came back: its constraints and collation hold
    assert _rows(conn, "SELECT id FROM accounts_recovered WHERE owner = 'OWNER3'") == [(3,)]
    with pytest.raises(dosql.IntegrityError):
        cur.execute("INSERT INTO accounts_recovered VALUES (500, 'x', -1)")
    # the recreated table is untouched
    assert _rows(conn, "SELECT * FROM accounts") == [(1, "new"), (100, "newer")]

    # the CLI: same thing, progress lines on stderr
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dosql.cli",
            "restore-table",
            "--url",
            cluster.url,
            "--table",
            "accounts",
            "--as-of",
            fmt(point),
            "--into",
            "accounts_again",
            "--batch",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "restore-table: 22/22 rows" in proc.stderr
    assert "restored 22 rows" in proc.stdout
    assert _rows(conn, "SELECT * FROM accounts_again") == sorted(old)
    # restoring into an existing table fails before any row is written
    with pytest.raises(dosql.Error):
        restore_table(cluster.url, "accounts", fmt(point), "accounts_again")
    assert _rows(conn, "SELECT count(*) FROM accounts_again") == [(22,)]
    # a malformed point is refused by the CLI with a clear message
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "dosql.cli",
            "restore-table",
            "--url",
            cluster.url,
            "--table",
            "accounts",
            "--as-of",
            "not a time",
            "--into",
            "accounts_again",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "malformed timestamp" in proc.stderr


def test_lake_behind_is_reported_then_recovers(cluster: LocalCluster, workload: Any) -> None:
    """With the lake writer down, a point the lake has not committed fails with
    LAKE_BEHIND within the client's timeout; once it is back the same point works."""
    c = dosql.connect(cluster.url, timeout=3, autocommit=True)
    cur = c.cursor()
    cluster.kill_lake()
    try:
        cur.execute("INSERT INTO users VALUES (9001, 'late', 1)")
        time.sleep(0.01)
        point = fmt(now_us())
        started = time.monotonic()
        with pytest.raises(dosql.OperationalError) as info:
            cur.execute(f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{point}'")
        assert info.value.code == "LAKE_BEHIND"
        assert "behind" in info.value.message
        assert time.monotonic() - started < 3
    finally:
        cluster.start_lake()
    c.timeout = 30
    deadline = time.monotonic() + 30
    while True:
        try:
            cur.execute(
                f"SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '{point}' WHERE id > 9000"
            )
            break
        except dosql.OperationalError:
            if time.monotonic() > deadline:
                raise
    assert cur.fetchall() == [(9001, "late", 1)]
    cur.execute("DELETE FROM users WHERE id = 9001")
    c.close()
