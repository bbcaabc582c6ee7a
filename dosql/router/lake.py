"""The router's handle on the lake: what time travel reads besides the shards.

The shards only hold the present; the past lives in the lake (the Iceberg
mirror plus the change log, read by :mod:`dolake.history`). :class:`Lake`
opens the catalog lazily (pyiceberg is slow to import and a router without
time-travel queries never needs it) and asks the lake writer to flush when a
query needs changes the lake has not committed yet. The functions below it
answer "what did this table look like at that point": the CREATE TABLE text
an in-memory copy of a historical table is built from.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from sqlglot import exp

from dosql import timetravel as tt
from dosql.errors import ConfigurationError, DoSQLError

log = logging.getLogger(__name__)


class Lake:
    """Catalog (opened on first use) and lake writer URL of one router."""

    def __init__(self, config: Any, token: str | None) -> None:
        self.config = config
        self.token = token
        self.url = config.lake.url or None
        self.namespace = config.lake.namespace or "default"
        self._catalog: Any = None

    def catalog(self) -> Any:
        if self._catalog is None:
            from dolake.catalog import open_catalog

            source = getattr(self.config, "source", None)
            data_dir = Path(source).resolve().parent if source else Path.cwd()
            self._catalog = open_catalog(self.config.lake, data_dir)
        return self._catalog

    def flush(self, timeout_s: float) -> None:
        """Ask the lake writer to commit every table's buffered changes (and wait).

        Every table, not just the one a query reads: a shard's LSNs cover all
        its tables, and the lake's global watermark only passes a change once
        its own table has committed. Failures are logged, not raised: the
        caller keeps waiting for coverage and, past its bound, reports
        LAKE_BEHIND with how far behind the lake is.
        """
        if not self.url:
            return
        from dolake.flush_cli import flush

        try:
            flush(self.url, table=None, wait=True, token=self.token, timeout=max(timeout_s, 0.1))
        except DoSQLError as exc:
            log.warning("lake flush failed", extra={"error": str(exc)})
            time.sleep(min(0.2, max(timeout_s, 0.0)))

    def health(self, timeout_s: float = 2.0) -> dict[str, Any]:
        """The lake writer's ``/health`` as the router sees it (for ``/health/deep``)."""
        import urllib.request

        if not self.url:
            return {"status": "ok", "detail": "catalog only (no lake writer configured)"}
        base = self.url.split("://", 1)[-1].rstrip("/")
        scheme = "https" if self.url.startswith(("wss://", "https://")) else "http"
        try:
            with urllib.request.urlopen(f"{scheme}://{base}/health", timeout=timeout_s) as reply:
                return {"status": "ok" if reply.status == 200 else "error", "url": self.url}
        except OSError as exc:
            return {"status": "error", "url": self.url, "error": str(exc)}


def open_lake(config: Any, token: str | None) -> Lake | None:
    """The router's lake, or None when its config has no [lake] section."""
    if not config.lake.url and not config.lake.catalog_uri:
        return None
    return Lake(config, token)


def missing_lake() -> ConfigurationError:
    return ConfigurationError(
        "time travel reads the lake, and this router has no [lake] section "
        "(lake.url / lake.catalog_uri): run the lake writer (LocalCluster(lake=True))",
        code="MISSING_CONFIG",
    )


# --------------------------------------------------------------------------- definitions


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def derived_ddl(name: str, columns: list[tuple[str, str]], pk: list[str]) -> str:
    """A CREATE TABLE from a column list: for tables the change log has no text of."""
    cols = [f"{quote(c)} {decl}".rstrip() for c, decl in columns]
    if pk:
        cols.append(f"PRIMARY KEY ({', '.join(quote(c) for c in pk)})")
    return f"CREATE TABLE {quote(name)} ({', '.join(cols)})"


def historical_definition(
    catalog: Any, namespace: str, table: str, micros: int | None
) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """``(create_sql | None, [(column, decltype)], primary key)`` of ``table`` as of
    ``micros`` (None: latest) from the lake: the last CREATE TABLE in the change
    log at or before the point when no ALTER followed it, and the lake's column
    list and primary key (which a caller can always fall back to)."""
    import pyarrow as pa
    from pyiceberg.expressions import EqualTo

    from dolake.history import load_tables
    from dolake.schema import OVERFLOW, SCHEMA_ACTION, SCHEMA_SQL

    mirror, changelog = load_tables(catalog, namespace, table)
    props = mirror.properties
    pk = list(json.loads(props.get("dosql.primary_key", "[]")))
    decl = {n: d for n, d, *_rest in json.loads(props.get("dosql.columns", "[]"))}
    columns = [
        (f.name, decl.get(f.name, "") or "")
        for f in mirror.schema().fields
        if not f.name.startswith("_dosql_")
    ]
    create: str | None = None
    if changelog.current_snapshot() is not None:
        data = changelog.scan(
            row_filter=EqualTo("_op", "schema"),
            selected_fields=("_commit_ts", "_lsn", OVERFLOW),
        ).to_arrow()
        events = []
        stamps = data["_commit_ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
        for ts, lsn, raw in zip(
            stamps, data["_lsn"].to_pylist(), data[OVERFLOW].to_pylist(), strict=True
        ):
            try:
                ev = json.loads(raw) if raw else {}
            except ValueError:
                ev = {}
            events.append((ts, lsn, ev.get(SCHEMA_ACTION), ev.get(SCHEMA_SQL)))
        events.sort(key=lambda e: (e[0], e[1]))
        for ts, _lsn, action, sql in events:
            if micros is not None and ts > micros:
                break
            if action == "create" and sql and sql.lstrip().upper().startswith("CREATE TABLE"):
                create = sql
            elif action in ("alter", "drop"):
                create = None if action == "alter" else create
    return create, columns, pk


def lake_ddl(catalog: Any, namespace: str, table: str, micros: int | None) -> str:
    """The CREATE TABLE text of ``table`` as of ``micros``, under its own name."""
    create, columns, pk = historical_definition(catalog, namespace, table, micros)
    return create or derived_ddl(table, columns, pk)


def history_rows(catalog: Any, namespace: str, table: str) -> tuple[list[str], list[tuple]]:
    from dolake import history

    return history.history_rows(catalog, namespace, table)


def renamed(create: str, original: str, name: str) -> list[str]:
    """Create under the original name, then rename: no DDL text is rewritten."""
    return [create, f"ALTER TABLE {quote(original)} RENAME TO {quote(name)}"]


def original_name(create: str, fallback: str) -> str:
    """The table name a CREATE TABLE statement creates (for the rename)."""
    try:
        tree = tt.parse(create)
    except DoSQLError:
        return fallback
    table = tree.find(exp.Table)
    return table.name if table is not None and table.name else fallback


def create_columns(create: str) -> set[str]:
    """Lower-case column names a CREATE TABLE text defines."""
    try:
        tree = tt.parse(create)
    except DoSQLError:
        return set()
    schema = tree.find(exp.Schema)
    if schema is None:
        return set()
    return {c.name.lower() for c in schema.expressions if isinstance(c, exp.ColumnDef) and c.name}
