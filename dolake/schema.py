"""SQLite declared types -> Iceberg types, and SQLite values -> typed lake values.

SQLite is dynamically typed: a column declared INTEGER can hold ``'abc'``. The
lake is strictly typed, so every value goes through a :func:`converter`, which
either returns the value in the column's Iceberg type *unchanged in meaning*
(0/1 -> bool for BOOLEAN, ``'2024-01-31'`` -> date for DATE, ...) or reports
that it does not fit. A value that does not fit is never dropped or altered:
the typed column gets NULL and the exact original value goes into the row's
``_dosql_overflow`` column, a JSON object ``{"col": {"t": "text"|"integer"|
"real"|"blob", "v": value}}`` (blobs base64). Readers that need the raw
SQLite value take it from there (:func:`dolake.readers.raw_value`). On change
log rows of schema events the column holds the event instead:
``{"_dosql_schema": action, "_dosql_sql": ddl, "_dosql_columns": ...}``.
Which columns the lake declares required: :mod:`dolake.required`.

Mapping (checked in this order, on the upper-cased declared type):

====================================  ==========================
declared type contains                 Iceberg type
====================================  ==========================
``BOOL``                               boolean
``TIMESTAMP`` / ``DATETIME``           timestamp (no zone)
``DATE``                               date
``DECIMAL(p,s)`` / ``NUMERIC(p,s)``    decimal(p, s) (p <= 38)
``INT``                                long
``CHAR`` / ``CLOB`` / ``TEXT``         string
``BLOB``                               binary
``REAL`` / ``FLOA`` / ``DOUB``         double
empty (no declared type)               string
anything else (``NUMERIC``, ...)       double
====================================  ==========================
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DateType,
    DecimalType,
    DoubleType,
    IcebergType,
    LongType,
    StringType,
    TimestampType,
)

from dosql import protocol

OVERFLOW = "_dosql_overflow"
ROWID = "_dosql_rowid"
SHARD_COL = "_dosql_shard"
CHANGELOG_META = ("_op", "_lsn", "_shard", "_txid", "_commit_ts", "_gtid", "_parts")
HIDDEN_PREFIX = "_dosql_"
# Keys of ``_dosql_overflow`` on change log rows with ``_op = 'schema'``: the
# event's action (create/alter/drop/index), its DDL, the table it was renamed from.
SCHEMA_ACTION = "_dosql_schema"
SCHEMA_SQL = "_dosql_sql"
SCHEMA_RENAMED = "_dosql_renamed_from"
# ... and the table's definition after the event (history replay rebuilds the
# event from them): ``[[name, decltype, notnull, pk], ...]``, the primary key,
# WITHOUT ROWID. Absent on rows written before they were kept.
SCHEMA_COLUMNS = "_dosql_columns"
SCHEMA_PK = "_dosql_primary_key"
SCHEMA_WITHOUT_ROWID = "_dosql_without_rowid"

_DECIMAL = re.compile(r"(?:DECIMAL|NUMERIC)\s*\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\)")


class NoFit(Exception):
    """The value does not fit the column type (goes to the overflow column)."""


def iceberg_type(decltype: str | None) -> IcebergType:
    t = (decltype or "").upper()
    if "BOOL" in t:
        return BooleanType()
    if "TIMESTAMP" in t or "DATETIME" in t:
        return TimestampType()
    if "DATE" in t:
        return DateType()
    m = _DECIMAL.search(t)
    if m:
        precision = min(int(m.group(1)), 38)
        scale = min(int(m.group(2) or 0), precision)
        return DecimalType(max(precision, 1), scale)
    if "INT" in t:
        return LongType()
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return StringType()
    if "BLOB" in t:
        return BinaryType()
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return DoubleType()
    if not t.strip():
        return StringType()
    return DoubleType()


def _long(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    raise NoFit


def _double(v: Any) -> float:
    if isinstance(v, float):
        return v
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) <= 2**53 and float(v) == v:
        return float(v)
    raise NoFit


def _string(v: Any) -> str:
    if isinstance(v, str):
        return v
    raise NoFit


def _binary(v: Any) -> bytes:
    if isinstance(v, bytes):
        return v
    raise NoFit


def _bool(v: Any) -> bool:
    if isinstance(v, int) and not isinstance(v, bool) and v in (0, 1):
        return bool(v)
    raise NoFit


def _date(v: Any) -> dt.date:
    if isinstance(v, str) and len(v) == 10:
        try:
            return dt.date.fromisoformat(v)
        except ValueError:
            pass
    raise NoFit


def _timestamp(v: Any) -> dt.datetime:
    if isinstance(v, str) and len(v) >= 16:
        try:
            value = dt.datetime.fromisoformat(v)
        except ValueError:
            raise NoFit from None
        if value.tzinfo is None:
            return value
    raise NoFit


def _decimal(precision: int, scale: int) -> Callable[[Any], decimal.Decimal]:
    def convert(v: Any) -> decimal.Decimal:
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise NoFit
        try:
            d = decimal.Decimal(repr(v) if isinstance(v, float) else str(v))
        except decimal.InvalidOperation:
            raise NoFit from None
        if not d.is_finite():
            raise NoFit
        try:
            q = d.quantize(decimal.Decimal(1).scaleb(-scale), context=decimal.Context(prec=80))
        except decimal.InvalidOperation:  # more than 80 digits: far beyond any precision
            raise NoFit from None
        if q != d or len(q.as_tuple().digits) > precision:
            raise NoFit
        return q

    return convert


def converter(t: IcebergType) -> Callable[[Any], Any]:
    if isinstance(t, LongType):
        return _long
    if isinstance(t, DoubleType):
        return _double
    if isinstance(t, StringType):
        return _string
    if isinstance(t, BinaryType):
        return _binary
    if isinstance(t, BooleanType):
        return _bool
    if isinstance(t, DateType):
        return _date
    if isinstance(t, TimestampType):
        return _timestamp
    if isinstance(t, DecimalType):
        return _decimal(t.precision, t.scale)
    raise TypeError(f"unsupported lake column type {t}")


def raw_tag(v: Any) -> dict[str, Any]:
    """The overflow encoding of one SQLite value."""
    if isinstance(v, bytes):
        return {"t": "blob", "v": base64.b64encode(v).decode()}
    if isinstance(v, float):
        return {"t": "real", "v": v}
    if isinstance(v, int):
        return {"t": "integer", "v": v}
    return {"t": "text", "v": str(v)}


def raw_untag(tag: dict[str, Any]) -> Any:
    if tag["t"] == "blob":
        return base64.b64decode(tag["v"])
    return tag["v"]


# Converters that return every value of one exact type unchanged.
_PASS_THROUGH: dict[Callable[[Any], Any], type] = {
    _long: int,
    _double: float,
    _string: str,
    _binary: bytes,
}
_NO_IMAGE: dict[str, Any] = {}


def _convert_column(col: Column, values: list[Any], tags: list[dict[str, Any] | None]) -> list[Any]:
    """One column's typed values; a value that does not fit becomes NULL and
    its raw form goes into its row's overflow tags."""
    out: list[Any] = []
    convert = col.convert
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            out.append(convert(v))
        except NoFit:
            out.append(None)
            tags[i] = {**(tags[i] or {}), col.name: raw_tag(v)}
    return out


@dataclass
class Column:
    name: str
    decltype: str
    type: IcebergType
    convert: Callable[[Any], Any]
    dropped: bool = False
    # SQLite never stores NULL here (NOT NULL, or an INTEGER PRIMARY KEY).
    notnull: bool = False
    # Declared required when the lake creates the table: ``notnull`` and known
    # from the table's CREATE (a column added later is optional, see README).
    required: bool = False


def declared_columns(props: dict[str, str]) -> dict[str, tuple[str, bool, bool]]:
    """name -> (declared type, dropped, notnull) from a lake table's
    ``dosql.columns`` property (``[name, decltype, dropped(, notnull)]``:
    tables written before NOT NULL was kept have three items; notnull False)."""
    out: dict[str, tuple[str, bool, bool]] = {}
    for item in json.loads(props.get("dosql.columns", "[]")):
        name, decl, dropped, *rest = item
        out[name] = (decl, bool(dropped), bool(rest[0]) if rest else False)
    return out


def never_null(info: protocol.ColumnInfo, schema: protocol.TableSchema) -> bool:
    """Whether SQLite guarantees the column is never NULL.

    ``PRAGMA table_info`` reports ``notnull`` for NOT NULL columns and for the
    key columns of WITHOUT ROWID and STRICT tables (SQLite enforces those). An
    INTEGER PRIMARY KEY of a rowid table aliases the rowid: never NULL either,
    though the pragma says 0. Any other key column of a rowid table may be NULL
    (SQLite's legacy behaviour), so it is not.
    """
    if info.notnull:
        return True
    pk = schema.primary_key or [c.name for c in schema.columns if c.pk > 0]
    return (
        not schema.without_rowid
        and pk == [info.name]
        and info.decltype.strip().upper() == "INTEGER"
    )


@dataclass
class TableLayout:
    """What the lake knows of one source table: columns (in order) and its key.

    ``primary_key`` empty means the table is keyed by rowid: then the key is
    ``(shard, rowid)`` (rowids of different shards collide), kept in the
    hidden mirror columns ``_dosql_shard`` and ``_dosql_rowid``.
    """

    name: str
    columns: list[Column] = field(default_factory=list)
    primary_key: list[str] = field(default_factory=list)
    inferred: bool = False

    def column(self, name: str) -> Column | None:
        for c in self.columns:
            if c.name == name:
                return c
        return None

    @property
    def rowid_keyed(self) -> bool:
        return not self.primary_key

    def apply(self, schema: protocol.TableSchema) -> list[Column]:
        """Fold a schema event in; returns the columns that are new to the lake.

        Columns are never removed from the lake (history keeps them); a column
        missing from the event is marked dropped and simply written as NULL.
        A column whose declared type changes keeps its lake type: values that
        no longer fit go to the overflow column.
        """
        added: list[Column] = []
        if schema.action not in ("create", "alter") or not schema.columns:
            return added
        present = {c.name for c in schema.columns}
        for info in schema.columns:
            col = self.column(info.name)
            notnull = never_null(info, schema)
            if col is None:
                t = iceberg_type(info.decltype)
                col = Column(info.name, info.decltype, t, converter(t))
                col.required = notnull and schema.action == "create"
                self.columns.append(col)
                added.append(col)
            col.dropped = False
            col.notnull = notnull
        for col in self.columns:
            if col.name not in present:
                col.dropped = True
                col.notnull = False
        if schema.action == "create" or self.inferred:
            pk = list(schema.primary_key)
            if not pk:
                pk = [c.name for c in sorted(schema.columns, key=lambda c: c.pk) if c.pk > 0]
            self.primary_key = pk
            self.inferred = False
        return added

    def infer(self, change: protocol.Change) -> list[Column]:
        """Fallback when a row change arrives for a table never described by a
        schema event: column types from the values' SQLite storage classes,
        the key from matching ``change.key`` against the image."""
        image = change.after or change.before or {}
        added: list[Column] = []
        for name, value in image.items():
            if self.column(name) is None:
                decl = {int: "INTEGER", float: "REAL", str: "TEXT", bytes: "BLOB"}.get(
                    type(value), ""
                )
                t = iceberg_type(decl)
                col = Column(name, decl, t, converter(t))
                self.columns.append(col)
                added.append(col)
        if not self.columns or added and len(added) == len(self.columns):
            self.inferred = True
            pk: list[str] = []
            for k in change.key or []:
                match = next((n for n, v in image.items() if v == k and n not in pk), None)
                if match is None:
                    pk = []
                    break
                pk.append(match)
            self.primary_key = pk
        return added

    def typed_columns(
        self, images: Sequence[dict[str, Any] | None]
    ) -> tuple[dict[str, list[Any]], list[str | None]]:
        """Convert row images (None: no image) to typed columns plus each row's
        overflow JSON (or None), column by column: a flush converts tens of
        thousands of images, and a column whose values all have the type its
        converter passes through unchanged (the common case) costs one type
        scan instead of a call per value."""
        rows = [image or _NO_IMAGE for image in images]
        tags: list[dict[str, Any] | None] = [None] * len(rows)
        columns: dict[str, list[Any]] = {}
        for col in self.columns:
            values = list(map(dict.get, rows, repeat(col.name)))
            kind = _PASS_THROUGH.get(col.convert)
            if kind is None or not set(map(type, values)) <= {kind, type(None)}:
                values = _convert_column(col, values, tags)
            columns[col.name] = values
        known = {col.name for col in self.columns}
        for i, row in enumerate(rows):
            if not row.keys() <= known:  # columns the lake does not know yet
                for name, v in row.items():
                    if name not in known and v is not None:
                        tags[i] = {**(tags[i] or {}), name: raw_tag(v)}
        overflow = [json.dumps(t, sort_keys=True) if t else None for t in tags]
        return columns, overflow

    def key_of(self, change: protocol.Change, image: dict[str, Any] | None) -> tuple[Any, ...]:
        """The row identity (raw SQLite values) of an image."""
        if self.rowid_keyed or image is None or any(k not in image for k in self.primary_key):
            return tuple(change.key or ())
        return tuple(image[k] for k in self.primary_key)
