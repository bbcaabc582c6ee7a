"""Reading the lake from pyiceberg and DuckDB (used by tests, bench and README).

The lake is plain Iceberg in a plain SQL catalog; nothing here is needed to
read it -- these helpers only save the boilerplate: opening the catalog from
the deployment config, dropping the lake's bookkeeping columns
(``_dosql_shard``, ``_dosql_commit_ts``, ``_dosql_rowid``; ``_dosql_overflow``
only when no row has a value there), and loading DuckDB's iceberg extension from the PyPI wheels
(DuckDB cannot download extensions here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from dolake.catalog import open_catalog as _open
from dolake.schema import HIDDEN_PREFIX, OVERFLOW, raw_untag
from dosql import config as config_mod


def open_catalog(config_path: str | Path | None = None, *, data_dir: str | Path | None = None):
    """The lake's pyiceberg catalog, as the lake writer with this config opens it."""
    cfg = config_mod.load(config_path) if config_path else config_mod.default()
    if data_dir is None:
        data_dir = Path(config_path).resolve().parent if config_path else Path.cwd()
    return _open(cfg.lake, data_dir)


def load(catalog: Catalog, table: str, namespace: str = "default") -> Table:
    return catalog.load_table((namespace, table))


def scan(
    catalog: Catalog,
    table: str,
    *,
    namespace: str = "default",
    snapshot_id: int | None = None,
    hidden: bool = False,
) -> pa.Table:
    """A table's rows (optionally at an older snapshot: time travel).

    Without ``hidden`` the bookkeeping columns are dropped -- except
    ``_dosql_overflow`` whenever a returned row has a value there: a value
    that did not fit its column's type reads NULL in the typed column, and
    the original is only in that JSON (:func:`raw_value`, or :func:`raw_rows`
    for the original SQLite values). It is dropped only when it is NULL on
    every row, so nothing is ever silently NULL.
    """
    data = load(catalog, table, namespace).scan(snapshot_id=snapshot_id).to_arrow()
    if hidden:
        return data
    drop = [n for n in data.column_names if n.startswith(HIDDEN_PREFIX)]
    if OVERFLOW in drop and data[OVERFLOW].null_count < data.num_rows:
        drop.remove(OVERFLOW)
    return data.drop_columns(drop)


def raw_rows(data: pa.Table) -> list[dict[str, Any]]:
    """``data``'s rows (from :func:`scan`) as dicts of the original SQLite
    values: an overflowed value is put back in its column, the
    ``_dosql_overflow`` column itself is left out."""
    names = [n for n in data.column_names if n != OVERFLOW]
    return [{n: raw_value(row, n) for n in names} for row in data.to_pylist()]


def raw_value(row: dict[str, Any], column: str) -> Any:
    """The SQLite value of ``column`` in a row read with ``hidden=True``:
    the typed value, or the original value kept in ``_dosql_overflow``."""
    import json

    if row.get(column) is not None or not row.get(OVERFLOW):
        return row.get(column)
    tag = json.loads(row[OVERFLOW]).get(column)
    return raw_untag(tag) if isinstance(tag, dict) and "t" in tag else None


def metadata_location(catalog: Catalog, table: str, namespace: str = "default") -> str:
    return load(catalog, table, namespace).metadata_location


def extension_path(name: str) -> Path:
    """Where the ``duckdb_extension_<name>`` wheel keeps its extension file."""
    import duckdb

    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"install duckdb-extension-{name}")
    base = Path(next(iter(spec.submodule_search_locations)))
    exact = base / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if exact.exists():
        return exact
    found = sorted(base.rglob(f"{name}.duckdb_extension"))
    if not found:
        raise FileNotFoundError(f"no {name}.duckdb_extension under {base}")
    return found[-1]


def duckdb_connect():
    """A DuckDB connection with the iceberg (and avro) extension loaded from the wheels."""
    import duckdb

    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    for name in ("avro", "iceberg"):
        con.execute(f"LOAD '{extension_path(name)}'")
    return con


def duckdb_scan(catalog: Catalog, table: str, namespace: str = "default", con=None) -> pa.Table:
    """The table's current rows through DuckDB's ``iceberg_scan``."""
    con = con or duckdb_connect()
    location = metadata_location(catalog, table, namespace)
    path = location[len("file://") :] if location.startswith("file://") else location
    return con.execute(f"SELECT * FROM iceberg_scan('{path}')").to_arrow_table()
