"""Replay a shard's change log into a plain SQLite database, and compare tables exactly.

This is the consumer side of the replay invariant: applying the changes in
LSN order to an empty database must reproduce every user table. Schema
events carry the table's new CREATE statement; an ALTER is applied by
rebuilding the table (columns mapped by position when the column count is
unchanged — a RENAME COLUMN — and by name otherwise: ADD/DROP COLUMN).
"""

from __future__ import annotations

import sqlite3
import struct
from typing import Any

from dosql import protocol


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Replica:
    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:", isolation_level=None)
        self.schemas: dict[str, protocol.TableSchema] = {}

    def apply_all(self, changes: list[protocol.Change]) -> None:
        for ch in changes:
            self.apply(ch)

    def apply(self, ch: protocol.Change) -> None:
        if ch.op == "schema":
            self._schema(ch.table, ch.schema)
            return
        schema = self.schemas[ch.table]
        t = q(ch.table)
        key_cols = schema.primary_key or ["rowid"]
        where = " AND ".join(f"{q(c)} IS ?" for c in key_cols)
        if ch.op == "insert":
            cols = list(ch.after)
            vals = [ch.after[c] for c in cols]
            if not schema.primary_key:
                cols, vals = ["rowid", *cols], [ch.key[0], *vals]
            names = ", ".join(q(c) for c in cols)
            marks = ", ".join("?" for _ in cols)
            self.db.execute(f"INSERT INTO {t}({names}) VALUES ({marks})", vals)
        elif ch.op == "update":
            sets = ", ".join(f"{q(c)} = ?" for c in ch.after)
            cur = self.db.execute(
                f"UPDATE {t} SET {sets} WHERE {where}", [*ch.after.values(), *ch.key]
            )
            assert cur.rowcount == 1, ch
        elif ch.op == "delete":
            cur = self.db.execute(f"DELETE FROM {t} WHERE {where}", ch.key)
            assert cur.rowcount == 1, ch

    def _schema(self, table: str, s: protocol.TableSchema) -> None:
        t = q(table)
        if s.action == "drop":
            self.db.execute(f"DROP TABLE {t}")
            self.schemas.pop(table, None)
            return
        if s.action == "create":
            self.db.execute(s.sql)
            self._indexes(table, s)
        elif s.action == "index":
            self._indexes(table, s)
        elif s.action == "alter":
            if s.renamed_from:
                self.db.execute(f"ALTER TABLE {q(s.renamed_from)} RENAME TO {t}")
                self.schemas.pop(s.renamed_from, None)
            current = self.db.execute(
                "SELECT sql FROM sqlite_master WHERE type='table' AND name=?", (table,)
            ).fetchone()[0]
            if current != s.sql:
                self._rebuild(table, s)
        self.schemas[table] = s

    def _indexes(self, table: str, s: protocol.TableSchema) -> None:
        rows = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='index' AND tbl_name=? AND sql IS NOT NULL",
            (table,),
        ).fetchall()
        for (name,) in rows:
            self.db.execute(f"DROP INDEX {q(name)}")
        for sql in s.indexes:
            self.db.execute(sql)

    def _rebuild(self, table: str, s: protocol.TableSchema) -> None:
        old = [r[1] for r in self.db.execute(f"PRAGMA table_info({q(table)})")]
        new = [c.name for c in s.columns]
        if len(old) == len(new):
            pairs = list(zip(old, new, strict=True))
        else:
            pairs = [(c, c) for c in new if c in old]
        self.db.execute(f"ALTER TABLE {q(table)} RENAME TO __old")
        self.db.execute(s.sql)
        src = ", ".join(q(o) for o, _ in pairs)
        dst = ", ".join(q(n) for _, n in pairs)
        if not s.without_rowid:
            src, dst = "rowid, " + src if pairs else "rowid", "rowid, " + dst if pairs else "rowid"
        self.db.execute(f"INSERT INTO {q(table)}({dst}) SELECT {src} FROM __old")
        self.db.execute("DROP TABLE __old")
        self._indexes(table, s)

    def tables(self) -> list[str]:
        rows = self.db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%'"
        )
        return sorted(r[0] for r in rows)


def typed(value: Any) -> tuple[str, Any]:
    """A value with its type, floats as their bit pattern: equality means exactly equal."""
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    return (type(value).__name__, value)


def canonical(rows: list[list[Any]] | list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted((tuple(typed(v) for v in row) for row in rows), key=repr)


def table_query(schema: protocol.TableSchema, table: str) -> str:
    cols = ", ".join(q(c.name) for c in schema.columns)
    rowid = "rowid, " if not schema.primary_key and not schema.without_rowid else ""
    return f"SELECT {rowid}{cols} FROM {q(table)}"


def assert_replica_matches(client: Any, changes: list[protocol.Change]) -> Replica:
    """Replay ``changes`` into a fresh database; compare every user table with the shard."""
    replica = Replica()
    replica.apply_all(changes)
    live = client.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite%' "
        "AND name NOT LIKE '\\_dosql\\_%' ESCAPE '\\'"
    ).rows
    assert sorted(r[0] for r in live) == replica.tables()
    for table in replica.tables():
        sql = table_query(replica.schemas[table], table)
        expected = canonical(client.execute(sql).rows)
        got = canonical(replica.db.execute(sql).fetchall())
        assert got == expected, f"table {table} differs after replay"
    return replica
