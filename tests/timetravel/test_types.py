"""Every lake column type comes back as the SQLite value the shard stored."""

from __future__ import annotations

import sqlite3

from dolake import history
from dosql import protocol
from dosql.timetravel.points import SnapshotPoint, TimestampPoint
from tests.lake.helpers import CDC, US, Lake

COLS = [
    ("id", "INTEGER", 1),
    ("price", "DECIMAL(10,2)", 0),
    ("ok", "BOOLEAN", 0),
    ("day", "DATE", 0),
    ("at", "TIMESTAMP", 0),
    ("data", "BLOB", 0),
    ("score", "REAL", 0),
    ("note", "TEXT", 0),
    ("anything", "", 0),
]
ROWS = [
    (1, 12.5, 1, "2024-02-29", "2024-01-02 03:04:05", b"\x00\xff", 1.5, "é", 7),
    (2, 3, 0, "1999-12-31", "2024-01-02 03:04:05.123456", b"", -0.25, "", "text"),
    (3, None, None, None, None, None, None, None, None),
    (4, 0.01, 1, "not a date", "later", "text in blob", "x", 42, 2.5),
]


def test_values_round_trip_to_sqlite(tmp_path):
    # the shard's view: SQLite with these declared types (affinity applied on insert)
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE t(" + ", ".join(f"{n} {d}".strip() for n, d, _ in COLS) + ")")
    con.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(COLS))})", ROWS)
    stored = con.execute("SELECT * FROM t ORDER BY id").fetchall()
    names = [n for n, _, _ in COLS]
    schema = protocol.TableSchema(
        action="create",
        columns=[protocol.ColumnInfo(n, d, False, pk) for n, d, pk in COLS],
        primary_key=["id"],
    )
    changes = [protocol.Change(1, 1, US + 1, "t", "schema", schema=schema)]
    for i, row in enumerate(stored, start=2):
        after = dict(zip(names, row, strict=True))
        changes.append(protocol.Change(i, i, US + i, "t", "insert", key=[row[0]], after=after))
    lake = Lake(tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "600000"}).start()
    try:
        cdc = CDC(lake, "shard-0")
        cdc.send_ok(changes)
        info = lake.flush()
        cdc.close()
        cat = lake.catalog()
        cols, rows = history.rows_as_of(cat, "default", "t", TimestampPoint(US + len(changes)))
        assert cols == names
        assert sorted(rows) == stored
        assert [type(v) for v in sorted(rows)[0]] == [type(v) for v in stored[0]]
        snap = info["tables"]["t"]["mirror_snapshot"]
        _, again = history.rows_as_of(cat, "default", "t", SnapshotPoint(snapshot_id=snap))
        assert sorted(again) == stored
        # half way: only the first rows
        _, half = history.rows_as_of(cat, "default", "t", TimestampPoint(US + 3))
        assert sorted(half) == stored[:2]
    finally:
        lake.stop()
