"""The lake's NOT NULL promises: Iceberg required columns and identifier fields.

A mirror created by this writer declares the columns SQLite never leaves NULL
(:func:`dolake.schema.never_null`, known from the table's CREATE) as required,
and the row identity as Iceberg identifier fields: the primary key when all
its columns are required (and not double: Iceberg forbids float identifier
fields), ``(_dosql_shard, _dosql_rowid)`` for a table keyed by rowid.

SQLite is dynamically typed, so even a NOT NULL column can hold a value that
does not fit its lake type (``'abc'`` in an INTEGER column); that value goes
to ``_dosql_overflow`` and the typed column is NULL, which a required column
cannot hold (Arrow would even write it silently). A flush must never fail on
a legal SQLite row, so :func:`relax_required` makes such a column optional
(the one nullability change Iceberg allows), and drops the identifier fields
if it was one of them, before the data file is written. The promise is then
honestly withdrawn in the table's current schema, never broken by a file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table
from pyiceberg.types import DoubleType, FloatType, NestedField

from dolake.schema import ROWID, SHARD_COL, TableLayout

log = logging.getLogger(__name__)


def identifier_ids(layout: TableLayout, fields: Sequence[NestedField]) -> list[int]:
    """Field ids of the mirror's row identity, or [] when Iceberg cannot declare it."""
    names = [SHARD_COL, ROWID] if layout.rowid_keyed else list(layout.primary_key)
    by_name = {f.name: f for f in fields}
    chosen = [by_name.get(n) for n in names]
    if not chosen or any(
        f is None
        or not f.required
        or not f.field_type.is_primitive
        or isinstance(f.field_type, DoubleType | FloatType)
        for f in chosen
    ):
        return []
    return [f.field_id for f in chosen if f is not None]


def _has_null(values: Any, rows: int) -> bool:
    if values is None:  # not given: written as NULL
        return rows > 0
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.null_count > 0
    return any(v is None for v in values)


def relax_required(catalog: Catalog, table: Table, columns: dict[str, Any], rows: int) -> Table:
    """``table``, its required columns that would get a NULL from ``columns``
    (name -> values of the rows about to be written) made optional first."""
    schema = table.schema()
    nulls = [f.name for f in schema.fields if f.required and _has_null(columns.get(f.name), rows)]
    if not nulls:
        return table
    identifiers = set(schema.identifier_field_names())
    with table.update_schema() as us:
        if identifiers & set(nulls):
            us.set_identifier_fields()
        for name in nulls:
            us.make_column_optional(name)
    log.warning(
        "required columns made optional (a value NULL or not fitting its type)",
        extra={
            "table": table.name(),
            "columns": nulls,
            "identifier_fields_dropped": bool(identifiers & set(nulls)),
        },
    )
    return catalog.load_table(table.name())
