"""The lake keeps the schema's promises (issue 18): primary keys as Iceberg
identifier fields, NOT NULL columns as required, schema events with NOT NULL
and DDL in history replay, and values that do not fit their type readable
from ``_dosql_overflow`` (``readers.scan`` and DuckDB) -- never silently NULL.

In process (the writer's own code, real pyiceberg and DuckDB), schema events
taken from real SQLite DDL through the shard's capture code."""

from __future__ import annotations

import json
import sqlite3

import pytest

from dolake import readers
from dolake.catalog import open_catalog
from dolake.subscribe import history as sub_history
from dolake.writer import Writer
from dosql import config as config_mod
from dosql import protocol
from dosql.shard.capture import table_schema
from tests.lake.helpers import US

SHARD = "shard-0"


class Source:
    """A SQLite table and the changes the shard would stream for it."""

    def __init__(self, table: str, ddl: str) -> None:
        self.table = table
        self.conn = sqlite3.connect(":memory:")
        self.lsn = 0
        self.pending: list = []
        self.ddl(ddl, "create")

    def _change(self, op: str, **kw) -> protocol.Change:
        self.lsn += 1
        return protocol.Change(self.lsn, self.lsn, US + self.lsn, self.table, op, **kw)

    def ddl(self, sql: str, action: str = "alter") -> None:
        self.conn.execute(sql)
        schema = table_schema(self.conn, self.table, action, sql)
        self.pending.append(self._change("schema", schema=schema))

    def insert(self, row: dict, key: list) -> None:
        """Insert into SQLite; the after image is what SQLite stored (RETURNING)."""
        marks = ", ".join("?" * len(row))
        cur = self.conn.execute(
            f"INSERT INTO {self.table} ({', '.join(row)}) VALUES ({marks}) RETURNING *",
            list(row.values()),
        )
        values = cur.fetchone()
        after = dict(zip([d[0] for d in cur.description], values, strict=True))
        self.pending.append(self._change("insert", key=key, after=after))

    def flush(self, writer: Writer) -> None:
        from dolake.buffer import Entry

        entries = [Entry(SHARD, ch, 64) for ch in self.pending]
        self.pending = []
        writer.flush_table(self.table, entries, {SHARD: self.lsn})


@pytest.fixture
def writer(tmp_path):
    return Writer(open_catalog(config_mod.default().lake, tmp_path), index_dir=tmp_path / "idx")


def fields(writer: Writer, table: str) -> dict[str, bool]:
    return {
        f.name: f.required for f in writer.catalog.load_table(("default", table)).schema().fields
    }


def identifiers(writer: Writer, table: str) -> list[str]:
    schema = writer.catalog.load_table(("default", table)).schema()
    return sorted(schema.identifier_field_names())


def test_integer_primary_key_and_not_null(writer):
    src = Source("t", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT)")
    src.insert({"id": 1, "name": "a", "note": None}, [1])
    src.flush(writer)
    req = fields(writer, "t")
    assert (req["id"], req["name"], req["note"]) == (True, True, False)
    assert req["_dosql_shard"] and not req["_dosql_overflow"]
    assert identifiers(writer, "t") == ["id"]
    cl = fields(writer, "t__changelog")
    assert all(cl[m] for m in ("_op", "_lsn", "_shard", "_txid", "_commit_ts"))
    assert not cl["id"] and not cl["name"]  # schema rows hold NULL there
    assert readers.scan(writer.catalog, "t").to_pylist() == [{"id": 1, "name": "a", "note": None}]


def test_composite_key_and_rowid_tables(writer):
    src = Source(
        "c", "CREATE TABLE c (a TEXT NOT NULL, b INT NOT NULL, v REAL, PRIMARY KEY (a, b))"
    )
    src.insert({"a": "x", "b": 1, "v": 1.5}, ["x", 1])
    src.flush(writer)
    assert identifiers(writer, "c") == ["a", "b"]
    # a key column SQLite may leave NULL (rowid table, no NOT NULL): no identifier fields
    loose = Source("l", "CREATE TABLE l (a TEXT PRIMARY KEY, v INT NOT NULL)")
    loose.insert({"a": "x", "v": 1}, ["x"])
    loose.flush(writer)
    req = fields(writer, "l")
    assert (req["a"], req["v"]) == (False, True)
    assert identifiers(writer, "l") == []
    w = Source("w", "CREATE TABLE w (a TEXT, b INT, PRIMARY KEY (a, b)) WITHOUT ROWID")
    w.insert({"a": "x", "b": 2}, ["x", 2])
    w.flush(writer)
    assert identifiers(writer, "w") == ["a", "b"]
    r = Source("r", "CREATE TABLE r (v TEXT NOT NULL)")
    r.insert({"v": "x"}, [1])
    r.flush(writer)
    assert identifiers(writer, "r") == ["_dosql_rowid", "_dosql_shard"]
    assert fields(writer, "r")["v"] is True
    assert len(readers.scan(writer.catalog, "r").to_pylist()) == 1


def test_add_column_not_null_is_optional(writer):
    src = Source("t", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    src.insert({"id": 1, "name": "a"}, [1])
    src.flush(writer)
    src.ddl("ALTER TABLE t ADD COLUMN qty INTEGER NOT NULL DEFAULT 0")
    src.insert({"id": 2, "name": "b", "qty": 5}, [2])
    src.flush(writer)
    req = fields(writer, "t")
    assert req["qty"] is False and req["name"] is True
    assert identifiers(writer, "t") == ["id"]
    rows = sorted(readers.scan(writer.catalog, "t").to_pylist(), key=lambda r: r["id"])
    assert rows == [{"id": 1, "name": "a", "qty": None}, {"id": 2, "name": "b", "qty": 5}]
    # a dropped NOT NULL column is written as NULL from now on: it becomes optional
    src.ddl("ALTER TABLE t DROP COLUMN name")
    src.insert({"id": 3, "qty": 1}, [3])
    src.flush(writer)
    assert fields(writer, "t")["name"] is False
    assert identifiers(writer, "t") == ["id"]
    assert len(readers.scan(writer.catalog, "t").to_pylist()) == 3


def test_overflow_in_required_column_relaxes_it(writer):
    """'abc' in an INTEGER NOT NULL key column: the flush commits, the column
    becomes optional (and the identifier fields go), the value reads back from
    ``_dosql_overflow`` through readers.scan and DuckDB."""
    src = Source("t", "CREATE TABLE t (k INT NOT NULL PRIMARY KEY, n INTEGER NOT NULL)")
    src.insert({"k": 1, "n": 10}, [1])
    src.flush(writer)
    assert identifiers(writer, "t") == ["k"]
    src.insert({"k": 2, "n": "abc"}, [2])
    src.insert({"k": "x", "n": 3}, ["x"])
    src.flush(writer)
    req = fields(writer, "t")
    assert (req["k"], req["n"]) == (False, False)
    assert identifiers(writer, "t") == []
    data = readers.scan(writer.catalog, "t")
    assert "_dosql_overflow" in data.column_names
    got = sorted(readers.raw_rows(data), key=repr)
    assert got == sorted([{"k": 1, "n": 10}, {"k": 2, "n": "abc"}, {"k": "x", "n": 3}], key=repr)
    con = readers.duckdb_connect()
    path = readers.metadata_location(writer.catalog, "t").removeprefix("file://")
    duck = con.execute(
        "SELECT coalesce(CAST(n AS VARCHAR), json_extract_string(_dosql_overflow, '$.n.v')) "
        f"FROM iceberg_scan('{path}') ORDER BY 1"
    ).fetchall()
    assert duck == [("10",), ("3",), ("abc",)]
    # no overflow anywhere: the column is left out of readers.scan
    src2 = Source("u", "CREATE TABLE u (id INTEGER PRIMARY KEY)")
    src2.insert({"id": 1}, [1])
    src2.flush(writer)
    assert readers.scan(writer.catalog, "u").column_names == ["id"]


def test_old_style_table_still_written(writer, tmp_path):
    """A lake table created before this change (all optional, no identifier
    fields, three-item ``dosql.columns``) is reopened and written as is."""
    src = Source("t", "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    src.insert({"id": 1, "name": "a"}, [1])
    src.flush(writer)
    for name in ("t", "t__changelog"):
        table = writer.catalog.load_table(("default", name))
        with table.update_schema(allow_incompatible_changes=True) as us:
            us.set_identifier_fields()
            for f in table.schema().fields:
                if f.required:
                    us.make_column_optional(f.name)
        props = table.properties
        old = [c[:3] for c in json.loads(props["dosql.columns"])]
        with table.transaction() as tx:
            tx.set_properties({"dosql.columns": json.dumps(old)})
    fresh = Writer(writer.catalog, index_dir=tmp_path / "idx2")
    src.insert({"id": 2, "name": "b"}, [2])
    src.ddl("ALTER TABLE t ADD COLUMN z TEXT")
    src.insert({"id": 3, "name": "c", "z": "q"}, [3])
    src.flush(fresh)
    assert not any(fields(fresh, "t").values())
    assert identifiers(fresh, "t") == []
    assert len(readers.scan(fresh.catalog, "t").to_pylist()) == 3


def test_history_replay_keeps_not_null_and_ddl(writer):
    ddl = "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL, note TEXT)"
    src = Source("t", ddl)
    src.insert({"id": 1, "name": "a", "note": None}, [1])
    alter = "ALTER TABLE t ADD COLUMN qty INTEGER NOT NULL DEFAULT 0"
    src.ddl(alter)
    src.flush(writer)
    changes = sub_history.read(writer.catalog, "default", SHARD, after=0, upto=src.lsn, wanted=None)
    events = [c.schema for c in changes if c.op == "schema"]
    assert [e.sql for e in events] == [ddl, alter]
    first = {c.name: c.notnull for c in events[0].columns}
    assert first == {"id": False, "name": True, "note": False}  # as SQLite's pragma says
    assert "qty" not in first
    assert {c.name: c.notnull for c in events[1].columns}["qty"] is True
    assert events[0].primary_key == ["id"]
