"""Replaying a shard's changes from the lake's change-log tables (blocking: run in a thread).

When a subscriber's position is older than what a shard still retains (the
shard purges its log once the lake has committed it), the changes come from
``NS.<table>__changelog``: rows of that shard with ``position < _lsn <=
committed`` (the lake's global committed watermark of the shard, under which
every change of the shard is in the lake), merged across tables by ``_lsn``.
The follower then reads the shard's log from ``committed + 1`` -- no gap, no
duplicate.

The change log keeps one image per change (the after image; the before image
for deletes), typed for Iceberg. This module turns rows back into
:class:`dosql.protocol.Change` objects with SQLite values (values that did
not fit their column come back exactly from ``_dosql_overflow``; BOOLEAN ->
0/1, DATE/TIMESTAMP -> ISO text, DECIMAL -> int or float), and rebuilds an
update's before image from the previous image of the same key in the same
shard (the whole prefix of the shard's change log is scanned for that, so
memory follows the table's size). Schema rows become schema changes carrying
the lake's current columns of the table.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.expressions import And, EqualTo, LessThanOrEqual

from dolake import watermarks
from dolake.history import to_sqlite
from dolake.schema import (
    CHANGELOG_META,
    HIDDEN_PREFIX,
    OVERFLOW,
    ROWID,
    SCHEMA_COLUMNS,
    SCHEMA_PK,
    SCHEMA_RENAMED,
    SCHEMA_SQL,
    SCHEMA_WITHOUT_ROWID,
    declared_columns,
    raw_untag,
)
from dosql import protocol

SUFFIX = "__changelog"
SCHEMA_ACTION_KEY = "_dosql_schema"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def committed(catalog: Catalog, namespace: str) -> dict[str, int]:
    """Per shard: every change with ``lsn <=`` this is in the lake."""
    try:
        return watermarks.load_committed(catalog, namespace)
    except NoSuchNamespaceError:
        return {}


def tables(catalog: Catalog, namespace: str) -> list[str]:
    """Source tables that have a change log in the lake (lower-case names)."""
    try:
        idents = catalog.list_tables(namespace)
    except NoSuchNamespaceError:
        return []
    return sorted(i[-1][: -len(SUFFIX)] for i in idents if i[-1].endswith(SUFFIX))


def _micros(ts: Any) -> int:
    if isinstance(ts, dt.datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=dt.UTC)
        return (ts - _EPOCH) // dt.timedelta(microseconds=1)
    return int(ts or 0)


def _layout(table: Any) -> tuple[list[str], list[str], list[protocol.ColumnInfo]]:
    """(image columns, primary key, column infos) from the lake table's properties."""
    props = table.properties
    pk = json.loads(props.get("dosql.primary_key", "[]"))
    declared = declared_columns(props)
    names = [
        f.name
        for f in table.schema().fields
        if not f.name.startswith(HIDDEN_PREFIX) and f.name not in CHANGELOG_META
    ]
    live = [n for n in names if not declared.get(n, ("", False, False))[1]]
    infos = [
        protocol.ColumnInfo(
            n,
            declared.get(n, ("", False, False))[0],
            declared.get(n, ("", False, False))[2],
            pk.index(n) + 1 if n in pk else 0,
        )
        for n in live
    ]
    return live, pk, infos


def _schema_event(
    overflow: dict[str, Any], infos: list[protocol.ColumnInfo], pk: list[str]
) -> protocol.TableSchema:
    """The schema event a change log row holds: its own definition (columns
    with NOT NULL, key, DDL text) when the row keeps it, else the table's
    current columns (rows written before events kept their definition)."""
    action = overflow.get(SCHEMA_ACTION_KEY, "alter")
    if action not in ("create", "alter", "drop", "index"):
        action = "alter"
    kept = overflow.get(SCHEMA_COLUMNS)
    if action == "drop":
        columns, key = [], []
    elif isinstance(kept, list):
        columns = [protocol.ColumnInfo(str(n), str(d), bool(nn), int(p)) for n, d, nn, p in kept]
        key = list(overflow.get(SCHEMA_PK) or [])
    else:
        columns, key = infos, pk
    return protocol.TableSchema(
        action=action,
        sql=overflow.get(SCHEMA_SQL),
        columns=columns,
        primary_key=key,
        without_rowid=bool(overflow.get(SCHEMA_WITHOUT_ROWID)),
        renamed_from=overflow.get(SCHEMA_RENAMED),
    )


def read(
    catalog: Catalog,
    namespace: str,
    shard: str,
    *,
    after: int,
    upto: int,
    wanted: frozenset[str] | None,
    skip: frozenset[str] = frozenset(),
) -> list[protocol.Change]:
    """Changes of ``shard`` with ``after < lsn <= upto`` of the wanted tables, in LSN order."""
    out: list[protocol.Change] = []
    for name in tables(catalog, namespace):
        if (wanted is not None and name not in wanted) or name in skip:
            continue
        try:
            table = catalog.load_table((namespace, name + SUFFIX))
        except NoSuchTableError:
            continue
        out.extend(_read_table(table, name, shard, after, upto))
    out.sort(key=lambda c: c.lsn)
    return out


def _read_table(table: Any, name: str, shard: str, after: int, upto: int) -> list[protocol.Change]:
    data: pa.Table = table.scan(
        row_filter=And(EqualTo("_shard", shard), LessThanOrEqual("_lsn", upto))
    ).to_arrow()
    if data.num_rows == 0 or int(pc.max(data["_lsn"]).as_py()) <= after:
        return []
    data = data.sort_by("_lsn")
    columns, pk, infos = _layout(table)
    has_overflow = OVERFLOW in data.column_names
    rowid_keyed = not pk
    last: dict[tuple, dict[str, Any]] = {}  # key -> latest image (before images of updates)
    out = []
    for row in data.to_pylist():
        overflow = json.loads(row[OVERFLOW]) if has_overflow and row.get(OVERFLOW) else {}
        op, lsn = row["_op"], int(row["_lsn"])
        common = dict(
            lsn=lsn,
            txid=int(row["_txid"]),
            commit_ts=_micros(row["_commit_ts"]),
            gtid=row.get("_gtid"),
            parts=row["_parts"].split(",") if row.get("_parts") else None,
        )
        if op == "schema":
            if lsn > after:
                schema = _schema_event(overflow, infos, pk)
                out.append(protocol.Change(table=name, op="schema", schema=schema, **common))
            if overflow.get(SCHEMA_ACTION_KEY) == "drop":
                last.clear()
            continue
        image = {}
        for col in columns:
            tag = overflow.get(col)
            image[col] = raw_untag(tag) if row.get(col) is None and tag else to_sqlite(row.get(col))
        for col, tag in overflow.items():  # columns the lake did not know yet
            if col not in image and col != SCHEMA_ACTION_KEY and isinstance(tag, dict):
                image[col] = raw_untag(tag)
        key = [row.get(ROWID)] if rowid_keyed else [image.get(k) for k in pk]
        kt = tuple(key)
        before = last.get(kt)
        if op == "delete":
            last.pop(kt, None)
        else:
            last[kt] = image
        if lsn <= after:
            continue
        if op == "delete":
            change = protocol.Change(table=name, op="delete", key=key, before=image, **common)
        elif op == "update":
            change = protocol.Change(
                table=name, op="update", key=key, before=before, after=image, **common
            )
        else:
            change = protocol.Change(table=name, op="insert", key=key, after=image, **common)
        out.append(change)
    return out


def first_lsn_at(catalog: Catalog, namespace: str, shard: str, micros: int) -> int | None:
    """The lowest LSN of ``shard`` in the lake that committed at or after ``micros``."""
    best: int | None = None
    for name in tables(catalog, namespace):
        try:
            table = catalog.load_table((namespace, name + SUFFIX))
        except NoSuchTableError:
            continue
        data = table.scan(
            row_filter=EqualTo("_shard", shard), selected_fields=("_lsn", "_commit_ts")
        ).to_arrow()
        for lsn, ts in zip(data["_lsn"].to_pylist(), data["_commit_ts"].to_pylist(), strict=True):
            if _micros(ts) >= micros and (best is None or lsn < best):
                best = int(lsn)
    return best
