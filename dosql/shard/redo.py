"""Redo records: what an open write transaction did, in a form that can be done again.

A prepared transaction (two-phase commit, :mod:`dosql.shard.prepared`) must
survive a crash of its shard, but SQLite cannot keep a transaction across a
restart. So at prepare the shard writes down what the transaction did, and
after a crash does it again in a new transaction:

- row changes as the capture triggers logged them (``_dosql_changes`` rows
  of the transaction: table, op, key, after-image), re-applied by key — an
  exact redo, whatever functions (``random()``, ``datetime('now')``) the
  original statements called;
- DDL statements as their SQL text and parameters, run again in place (their
  own logged rows — schema events, back-filled rows — are skipped, since
  running the statement logs them again).

The redo runs with foreign keys off (cascaded changes were logged as rows of
their own and are applied as such). User triggers do fire again on redo; a
table with triggers of its own that write other tables is the one case a
redo can differ (documented in the README's Transactions section).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from dosql.shard.database import ConnState, quote_ident

Item = list[Any]  # ["row", table, op, key, after] | ["ddl", sql, params]


def max_lsn(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(lsn), 0) FROM _dosql_changes").fetchone()[0])


def build(state: ConnState) -> bytes:
    """The redo record of ``state``'s open transaction (call before committing or rolling back).

    The transaction holds the write lock, so its captured changes are the
    newest rows of the log: read from the end until another txid shows up.
    """
    assert state.txid is not None
    ddl = [d for d in state.ddl_log if d[3] > d[2]]  # statements that logged something
    items: list[tuple[int, Item]] = [(lo + 1, ["ddl", sql, params]) for sql, params, lo, _ in ddl]
    rows = state.conn.execute(
        "SELECT lsn, txid, tbl, op, key, after FROM _dosql_changes ORDER BY lsn DESC"
    )
    for lsn, txid, tbl, op, key, after in rows:
        if txid != state.txid:
            break
        if op == "schema" or any(lo < lsn <= hi for _, _, lo, hi in ddl):
            continue  # logged by a DDL statement: running it again logs it again
        items.append((lsn, ["row", tbl, op, key, after]))
    items.sort(key=lambda pair: pair[0])
    return msgspec.msgpack.encode([item for _, item in items])


def apply(state: ConnState, record: bytes, run_ddl: Any) -> None:
    """Do the record's work again inside ``state``'s open write transaction.

    ``run_ddl(sql, params)`` runs a DDL statement the way a client statement
    runs (so the shard's schema capture follows it).
    """
    conn = state.conn
    keys: dict[str, list[str]] = {}
    for item in msgspec.msgpack.decode(record):
        if item[0] == "ddl":
            run_ddl(item[1], item[2])
            keys.clear()  # the DDL may have changed a table's key
            continue
        _, table, op, key, after = item
        if table not in keys:
            keys[table] = key_columns(conn, table)
        state.internal = True
        try:
            _apply_row(conn, table, op, keys[table], msgspec.msgpack.decode(key), after)
        finally:
            state.internal = False


def key_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """Primary key columns in key order; ``[]`` for a rowid table without one."""
    rows = conn.execute("SELECT name, pk FROM pragma_table_info(?) WHERE pk > 0", (table,))
    return [name for name, _ in sorted(rows, key=lambda r: r[1])]


def _apply_row(
    conn: sqlite3.Connection,
    table: str,
    op: str,
    key_cols: list[str],
    key: list[Any],
    after: bytes | None,
) -> None:
    t = quote_ident(table)
    by_key = [f"{quote_ident(c)} IS ?" for c in key_cols] or ["rowid = ?"]
    where = " AND ".join(by_key)
    if op == "delete":
        conn.execute(f"DELETE FROM {t} WHERE {where}", key)
        return
    image: dict[str, Any] = msgspec.msgpack.decode(after) if after is not None else {}
    cols = list(image)
    if op == "insert":
        names = [quote_ident(c) for c in cols]
        values = [image[c] for c in cols]
        if not key_cols:
            names.insert(0, "rowid")
            values.insert(0, key[0])
        marks = ", ".join("?" for _ in names)
        conn.execute(f"INSERT INTO {t}({', '.join(names)}) VALUES ({marks})", values)
        return
    sets = ", ".join(f"{quote_ident(c)} = ?" for c in cols)
    conn.execute(f"UPDATE {t} SET {sets} WHERE {where}", [image[c] for c in cols] + list(key))
