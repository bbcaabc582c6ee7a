"""The replay rules of dolake.history on change log rows (no lake needed):
per-shard net changes in commit order, owners, drops, values back to SQLite."""

from __future__ import annotations

import datetime as dt
import decimal
import json

from dolake.history import SCHEMA_ACTION_KEY, _State, raw_value, to_sqlite


def ch(op, shard, lsn, ts, row=None, drop=False):
    r = {"id": None, "v": None, "_dosql_overflow": None, **(row or {})}
    r.update(_op=op, _shard=shard, _lsn=lsn, _commit_us=ts)
    if drop:
        r["_dosql_overflow"] = json.dumps({SCHEMA_ACTION_KEY: "drop"})
    return r


def rows(state):
    return sorted((k[0], v[0]["v"], v[1]) for k, v in state.rows.items())


def test_moved_row_survives_older_changes_of_its_previous_shard():
    # mirror base already holds B's newer copy; A's older update+delete still to apply
    s = _State(["id"])
    s.load_mirror([{"id": 1, "v": "b", "_dosql_shard": "B", "_dosql_overflow": None}])
    s.apply_batch(
        [ch("update", "A", 10, 100, {"id": 1, "v": "a2"}), ch("delete", "A", 11, 150, {"id": 1})]
    )
    assert rows(s) == [(1, "b", "B")]


def test_last_change_per_shard_wins_and_shards_interleave_by_time():
    s = _State(["id"])
    s.apply_batch(
        [
            ch("insert", "A", 1, 10, {"id": 1, "v": "x"}),
            ch("update", "A", 2, 20, {"id": 1, "v": "y"}),
            ch("insert", "B", 1, 15, {"id": 2, "v": "p"}),
            ch("delete", "B", 2, 16, {"id": 2, "v": "p"}),
            ch("insert", "B", 3, 30, {"id": 3, "v": "q"}),
        ]
    )
    assert rows(s) == [(1, "y", "A"), (3, "q", "B")]


def test_drop_removes_only_the_dropping_shards_rows_and_later_changes_apply():
    s = _State(["id"])
    s.load_mirror(
        [
            {"id": 1, "v": "a", "_dosql_shard": "A", "_dosql_overflow": None},
            {"id": 2, "v": "b", "_dosql_shard": "B", "_dosql_overflow": None},
        ]
    )
    s.apply_batch(
        [
            ch("insert", "A", 5, 10, {"id": 3, "v": "gone"}),
            ch("schema", "A", 6, 20, drop=True),
            ch("schema", "A", 7, 21),  # create again: keeps nothing, removes nothing
            ch("insert", "A", 8, 22, {"id": 4, "v": "new"}),
        ]
    )
    assert rows(s) == [(2, "b", "B"), (4, "new", "A")]
    # a create/alter event alone removes nothing
    s.apply_batch([ch("schema", "B", 9, 30)])
    assert rows(s) == [(2, "b", "B"), (4, "new", "A")]


def test_rowid_tables_key_by_shard_and_rowid():
    s = _State([])
    s.apply_batch(
        [
            ch("insert", "A", 1, 1, {"_dosql_rowid": 1, "v": "a"}),
            ch("insert", "B", 1, 2, {"_dosql_rowid": 1, "v": "b"}),
            ch("delete", "A", 2, 3, {"_dosql_rowid": 1, "v": "a"}),
        ]
    )
    assert [(k, v[0]["v"]) for k, v in s.rows.items()] == [(("B", 1), "b")]


def test_overflowed_key_and_values_round_trip_to_sqlite():
    row = {"id": None, "v": None, "_dosql_overflow": json.dumps({"id": {"t": "text", "v": "k"}})}
    assert raw_value(row, "id") == "k"
    s = _State(["id"])
    s.apply_batch([ch("insert", "A", 1, 1, row), ch("delete", "A", 2, 2, row)])
    assert s.rows == {}
    assert to_sqlite(True) == 1 and to_sqlite(False) == 0
    assert to_sqlite(decimal.Decimal("12.50")) == 12.5
    assert to_sqlite(decimal.Decimal("3.00")) == 3 and isinstance(
        to_sqlite(decimal.Decimal("3")), int
    )
    assert to_sqlite(dt.date(2024, 2, 29)) == "2024-02-29"
    assert to_sqlite(dt.datetime(2024, 1, 2, 3, 4, 5)) == "2024-01-02 03:04:05"
    assert to_sqlite(b"\x00") == b"\x00" and to_sqlite(None) is None and to_sqlite(1.5) == 1.5
