"""Change capture: the internal tables, the per-table triggers, schema events.

Every user table carries three AFTER triggers (``_dosql_trg_<table>_insert``,
``_update``, ``_delete``) that append one row to ``_dosql_changes`` per row
change, in the same transaction as the change, so a change is in the log if
and only if it committed. Images are msgpack maps built by SQL functions
registered on every connection (``_dosql_map`` / ``_dosql_pack``), which keep
every SQLite value exact.

Keys: the PRIMARY KEY columns in key order; for a rowid table without an
explicit primary key, ``[rowid]``. An UPDATE that changes a row's key is
recorded as a delete of the old key followed by an insert of the new one
(consecutive LSNs, same transaction), so consumers that apply changes by key
never need to know the old key of an update. Generated columns are not part
of images (they are recomputed from the other columns).

Schema: ``_dosql_schema`` remembers each user table's definition as last
captured. After any statement that did DDL, :func:`sync_schema` diffs
``sqlite_master`` against it, re-installs triggers for created/altered
tables (ALTER TABLE RENAME / ADD / RENAME COLUMN / DROP COLUMN all change
what the triggers must say) and logs one ``schema`` change per table.
Rows a table already has when it is first seen (``CREATE TABLE … AS
SELECT``, a database created outside the shard) follow its ``create`` event
as inserts. Schema events stand for their effect on existing rows: after an
``ADD COLUMN`` every existing row has the column's default (from the new
``sql``), and ``drop`` removes all rows — neither is logged row by row.
"""

from __future__ import annotations

import json
import re
import sqlite3

import msgspec

from dosql import protocol
from dosql.shard.database import TRIGGER_PREFIX, quote_ident, quote_text

INTERNAL_DDL = (
    """CREATE TABLE IF NOT EXISTS _dosql_changes(
        lsn INTEGER PRIMARY KEY AUTOINCREMENT,
        txid INTEGER NOT NULL,
        tbl TEXT NOT NULL,
        op TEXT NOT NULL,
        key BLOB,
        before BLOB,
        after BLOB,
        schema BLOB)""",
    # gtid/parts: set for a transaction committed atomically across shards (two-phase
    # commit): its global id and the sorted participant shard ids, the same on every
    # participant, which all use one commit_ts for it.
    "CREATE TABLE IF NOT EXISTS _dosql_tx(txid INTEGER PRIMARY KEY, commit_ts INTEGER NOT NULL, "
    "gtid TEXT, parts TEXT)",
    # One row per transaction committed with a router gtid, kept OUTCOME_RETENTION_S after
    # the change log is purged: how a shard answers "did gtid commit here?" (prepared.py).
    "CREATE TABLE IF NOT EXISTS _dosql_outcomes(gtid TEXT PRIMARY KEY, commit_ts INTEGER NOT NULL, "
    "parts TEXT, decided_at INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS _dosql_meta(key TEXT PRIMARY KEY, value TEXT)",
    "CREATE TABLE IF NOT EXISTS _dosql_schema(tbl TEXT PRIMARY KEY, sql TEXT, indexes TEXT)",
)

OUTCOME_RETENTION_S = 7 * 24 * 3600  # how long "did gtid commit here?" can be answered

_USER_TABLES = r"""SELECT name, sql FROM sqlite_master
    WHERE type = 'table' AND name NOT LIKE '\_dosql\_%' ESCAPE '\'
      AND name NOT LIKE 'sqlite\_%' ESCAPE '\' AND sql NOT LIKE 'CREATE VIRTUAL%'"""
_WITHOUT_ROWID = re.compile(r"\)\s*WITHOUT\s+ROWID\s*(,\s*STRICT\s*)?$", re.IGNORECASE)
_MAX_PAIRS = 60  # SQL functions take at most 127 arguments


def user_tables(conn: sqlite3.Connection) -> dict[str, str]:
    """User tables by name -> CREATE sql; virtual tables and their shadow tables excluded."""
    rows = conn.execute(_USER_TABLES).fetchall()
    virtual = [
        r[0].lower()
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'"
        )
    ]
    return {
        name: sql
        for name, sql in rows
        if not any(name.lower().startswith(v + "_") for v in virtual)
    }


def ensure_internal_tables(conn: sqlite3.Connection) -> None:
    for ddl in INTERNAL_DDL:
        conn.execute(ddl)
    tx_columns = {r[1] for r in conn.execute("PRAGMA table_info(_dosql_tx)")}
    for column in ("gtid", "parts"):  # databases created before atomic multi-shard commit
        if column not in tx_columns:
            conn.execute(f"ALTER TABLE _dosql_tx ADD COLUMN {column} TEXT")


def table_schema(
    conn: sqlite3.Connection, table: str, action: str, sql: str | None
) -> protocol.TableSchema:
    rows = conn.execute('SELECT name, type, "notnull", pk FROM pragma_table_info(?)', (table,))
    columns = [protocol.ColumnInfo(r[0], r[1] or "", bool(r[2]), int(r[3])) for r in rows]
    pk = [c.name for c in sorted((c for c in columns if c.pk), key=lambda c: c.pk)]
    return protocol.TableSchema(
        action=action,  # type: ignore[arg-type]
        sql=sql,
        columns=columns,
        primary_key=pk,
        without_rowid=bool(sql and _WITHOUT_ROWID.search(sql.strip())),
        indexes=_indexes(conn, table),
    )


def _indexes(conn: sqlite3.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? AND sql IS NOT NULL "
        "ORDER BY name",
        (table,),
    )
    return [r[0] for r in rows]


def _image(prefix: str, columns: list[str]) -> str:
    pairs = [f"{quote_text(c)}, {prefix}.{quote_ident(c)}" for c in columns]
    if not pairs:
        return "_dosql_map()"
    chunks = [pairs[i : i + _MAX_PAIRS] for i in range(0, len(pairs), _MAX_PAIRS)]
    calls = ["_dosql_map(" + ", ".join(chunk) + ")" for chunk in chunks]
    return calls[0] if len(calls) == 1 else "_dosql_merge(" + ", ".join(calls) + ")"


def trigger_sql(table: str, schema: protocol.TableSchema) -> list[str]:
    """CREATE TRIGGER statements capturing every row change of ``table``."""
    cols = [c.name for c in schema.columns]
    key_cols = schema.primary_key
    t = quote_ident(table)
    name = quote_text(table)

    def key(prefix: str) -> str:
        if not key_cols:
            return f"_dosql_pack({prefix}.rowid)"
        return "_dosql_pack(" + ", ".join(f"{prefix}.{quote_ident(c)}" for c in key_cols) + ")"

    def same_key() -> str:
        if not key_cols:
            return "OLD.rowid IS NEW.rowid"
        return " AND ".join(f"OLD.{quote_ident(c)} IS NEW.{quote_ident(c)}" for c in key_cols)

    ins = "INSERT INTO _dosql_changes(txid, tbl, op, key, before, after)"
    new_img, old_img = _image("NEW", cols), _image("OLD", cols)
    insert_row = f"{ins} VALUES (_dosql_txid(), {name}, 'insert', {key('NEW')}, NULL, {new_img});"
    delete_row = f"{ins} VALUES (_dosql_txid(), {name}, 'delete', {key('OLD')}, {old_img}, NULL);"
    cond = same_key()
    update_body = (
        f"{ins} SELECT _dosql_txid(), {name}, 'update', {key('NEW')}, {old_img}, {new_img} "
        f"WHERE {cond};\n"
        f"{ins} SELECT _dosql_txid(), {name}, 'delete', {key('OLD')}, {old_img}, NULL "
        f"WHERE NOT ({cond});\n"
        f"{ins} SELECT _dosql_txid(), {name}, 'insert', {key('NEW')}, NULL, {new_img} "
        f"WHERE NOT ({cond});"
    )

    def trig(op: str, body: str) -> str:
        tname = quote_ident(f"{TRIGGER_PREFIX}{table}_{op}")
        return f"CREATE TRIGGER {tname} AFTER {op.upper()} ON {t} FOR EACH ROW BEGIN\n{body}\nEND"

    return [trig("insert", insert_row), trig("update", update_body), trig("delete", delete_row)]


def backfill_sql(table: str, schema: protocol.TableSchema) -> str:
    """Log the rows a table already has as inserts (CREATE TABLE … AS SELECT, adoption)."""
    t = quote_ident(table)
    cols = [c.name for c in schema.columns]
    if schema.primary_key:
        key = "_dosql_pack(" + ", ".join(f"{t}.{quote_ident(c)}" for c in schema.primary_key) + ")"
    else:
        key = f"_dosql_pack({t}.rowid)"
    order = "" if schema.without_rowid else f" ORDER BY {t}.rowid"
    return (
        "INSERT INTO _dosql_changes(txid, tbl, op, key, before, after) "
        f"SELECT _dosql_txid(), {quote_text(table)}, 'insert', {key}, NULL, {_image(t, cols)} "
        f"FROM {t}{order}"
    )


def drop_triggers(conn: sqlite3.Connection, table: str) -> None:
    rows = conn.execute(
        r"SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ? "
        r"AND name LIKE '\_dosql\_trg\_%' ESCAPE '\'",
        (table,),
    ).fetchall()
    for (name,) in rows:
        conn.execute(f"DROP TRIGGER IF EXISTS {quote_ident(name)}")


def install_triggers(conn: sqlite3.Connection, table: str, schema: protocol.TableSchema) -> None:
    drop_triggers(conn, table)
    for stmt in trigger_sql(table, schema):
        conn.execute(stmt)


def _log_schema(conn: sqlite3.Connection, table: str, schema: protocol.TableSchema) -> None:
    conn.execute(
        "INSERT INTO _dosql_changes(txid, tbl, op, schema) VALUES (_dosql_txid(), ?, 'schema', ?)",
        (table, msgspec.msgpack.encode(schema)),
    )


def sync_schema(conn: sqlite3.Connection, altered: set[str] | None = None) -> int:
    """Bring triggers and ``_dosql_schema`` in line with ``sqlite_master``; log schema events.

    Must run inside the write transaction that made the change, with the
    connection in internal mode. ``altered`` names the tables an ALTER TABLE
    statement touched (from the authorizer) so a RENAME TABLE can be reported
    with ``renamed_from``. Returns the number of schema events logged.
    """
    current = user_tables(conn)
    stored = {
        r[0]: (r[1], r[2]) for r in conn.execute("SELECT tbl, sql, indexes FROM _dosql_schema")
    }
    events = 0
    created = [t for t in current if t not in stored]
    dropped = [t for t in stored if t not in current]
    renamed: dict[str, str] = {}
    if altered and len(created) == 1 and len(dropped) == 1:
        old = dropped[0]
        if old.lower() in {a.lower() for a in altered}:
            renamed[created[0]] = old
            dropped = []
    for table in dropped:
        conn.execute("DELETE FROM _dosql_schema WHERE tbl = ?", (table,))
        _log_schema(conn, table, protocol.TableSchema(action="drop"))
        events += 1
    if renamed:
        for old in renamed.values():
            conn.execute("DELETE FROM _dosql_schema WHERE tbl = ?", (old,))
    for table, sql in current.items():
        indexes = json.dumps(_indexes(conn, table))
        before = stored.get(table)
        if before is not None and before[0] == sql:
            if before[1] != indexes:
                schema = table_schema(conn, table, "index", sql)
                conn.execute("UPDATE _dosql_schema SET indexes = ? WHERE tbl = ?", (indexes, table))
                _log_schema(conn, table, schema)
                events += 1
            continue
        action = "create" if before is None and table not in renamed else "alter"
        schema = table_schema(conn, table, action, sql)
        if table in renamed:
            schema.renamed_from = renamed[table]
        install_triggers(conn, table, schema)
        conn.execute(
            "INSERT OR REPLACE INTO _dosql_schema(tbl, sql, indexes) VALUES (?, ?, ?)",
            (table, sql, indexes),
        )
        _log_schema(conn, table, schema)
        events += 1
        if action == "create":
            # Rows that exist before the triggers did (CREATE TABLE … AS SELECT, or a
            # database the shard adopts) are logged as inserts right after the event.
            conn.execute(backfill_sql(table, schema))
    return events
