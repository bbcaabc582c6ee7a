"""The ``dosql`` SQLAlchemy dialect: SQLite's SQL, the DoSQL driver, reflection via the router.

URL: ``dosql://[:TOKEN@]HOST:PORT[?token=T&timeout=SECONDS&tls=true]``. The
token may also come from ``DOSQL_TOKEN`` (as for the CLI), so it need not
appear in a URL that ends up in logs; ``tls=true`` connects with ``wss://``.

What differs from SQLAlchemy's SQLite dialect, and why:

- the DB-API module is :mod:`dosql.driver` (``import_dbapi``), whose
  transactions follow :mod:`sqlite3`'s legacy mode — a transaction opens
  before the first INSERT/UPDATE/DELETE, DDL outside one applies at once —
  which is what SQLAlchemy's pysqlite dialect expects too;
- isolation levels are ``SERIALIZABLE`` (the driver's transactions) and
  ``AUTOCOMMIT`` (the driver's ``autocommit``): ``PRAGMA read_uncommitted = 1``
  is a PRAGMA assignment, which the router refuses;
- the SQLite version comes from the shards (``SELECT sqlite_version()``), not
  from the local :mod:`sqlite3` module;
- the table list leaves out DoSQL's ``_dosql_*`` tables and adds tables that
  live on shards other than the default one (:mod:`dosql.tablelist`);
- SQLAlchemy's "insertmanyvalues" (one multi-row ``INSERT … RETURNING`` for
  many ORM objects) is off: the router splits a multi-row INSERT by shard, so
  RETURNING rows would not come back in parameter order. The ORM then inserts
  row by row and reads ``cursor.lastrowid``, which the router's sequences fill.
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import exc
from sqlalchemy.dialects.sqlite.base import SQLiteDialect
from sqlalchemy.engine import URL, reflection

from dosql import tablelist

_TRUE = ("1", "true", "yes", "on")


class DoSQLDialect(SQLiteDialect):
    """SQLAlchemy's SQLite dialect over the DoSQL DB-API driver (see the module docstring)."""

    name = "dosql"
    driver = "dosql"
    supports_statement_cache = True
    default_paramstyle = "qmark"
    use_insertmanyvalues = False
    insert_executemany_returning = False

    def __init__(self, **kwargs: Any) -> None:
        # SQLiteDialect.__init__ reads sqlite3-only attributes of the DB-API
        # module (sqlite_version_info); the shards' version is read in initialize().
        dbapi = kwargs.pop("dbapi", None)
        super().__init__(**kwargs)
        self.dbapi = dbapi
        if dbapi is not None:
            self.paramstyle = getattr(dbapi, "paramstyle", self.default_paramstyle)

    @classmethod
    def import_dbapi(cls) -> Any:
        from dosql import driver

        return driver

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        if not url.host:
            raise exc.ArgumentError(
                f"a dosql URL needs a router address, e.g. dosql://127.0.0.1:7000 (got {url!r})"
            )
        query = dict(url.query)
        scheme = "dosqls" if str(query.pop("tls", "")).lower() in _TRUE else "dosql"
        netloc = f"{url.host}:{url.port}" if url.port else url.host
        kwargs: dict[str, Any] = {}
        token = url.password or query.pop("token", None) or os.environ.get("DOSQL_TOKEN")
        if token:
            kwargs["token"] = str(token)
        if "timeout" in query:
            kwargs["timeout"] = float(query.pop("timeout"))
        if query:
            raise exc.ArgumentError(
                f"unknown dosql URL parameter(s) {', '.join(sorted(query))}; "
                "known: token, timeout, tls"
            )
        return [f"{scheme}://{netloc}"], kwargs

    # ------------------------------------------------------------------ connection state

    def _get_server_version_info(self, connection: Any) -> tuple[int, ...]:
        version = connection.exec_driver_sql("SELECT sqlite_version()").scalar()
        return tuple(int(p) for p in str(version).split(".") if p.isdigit())

    def initialize(self, connection: Any) -> None:
        super().initialize(connection)
        if self.server_version_info < (3, 35):
            self.update_returning = self.delete_returning = self.insert_returning = False

    def get_isolation_level_values(self, dbapi_connection: Any) -> list[str]:
        return ["SERIALIZABLE", "AUTOCOMMIT"]

    def set_isolation_level(self, dbapi_connection: Any, level: str) -> None:
        dbapi_connection.autocommit = level == "AUTOCOMMIT"

    def get_isolation_level(self, dbapi_connection: Any) -> str:
        return "AUTOCOMMIT" if dbapi_connection.autocommit else "SERIALIZABLE"

    def do_ping(self, dbapi_connection: Any) -> bool:
        dbapi_connection.ping()
        return True

    # ------------------------------------------------------------------ reflection

    @reflection.cache
    def get_table_names(
        self,
        connection: Any,
        schema: str | None = None,
        sqlite_include_internal: bool = False,
        **kw,
    ) -> list[str]:
        query = self._sqlite_main_query("sqlite_master", "table", schema, sqlite_include_internal)
        names = [str(n) for n in connection.exec_driver_sql(query).scalars().all()]
        if schema not in (None, "main"):
            return [n for n in names if not tablelist.is_internal(n)]
        url = connection.connection.dbapi_connection.url
        return tablelist.table_names(
            lambda sql: connection.exec_driver_sql(sql).fetchall(), url, default_shard=names
        )

    @reflection.cache
    def get_view_names(
        self,
        connection: Any,
        schema: str | None = None,
        sqlite_include_internal: bool = False,
        **kw,
    ) -> list[str]:
        query = self._sqlite_main_query("sqlite_master", "view", schema, sqlite_include_internal)
        return [
            n
            for n in connection.exec_driver_sql(query).scalars().all()
            if not tablelist.is_internal(n)
        ]

    @reflection.cache
    def _get_table_sql(
        self, connection: Any, table_name: str, schema: str | None = None, **kw: Any
    ) -> str | None:
        """The CREATE TABLE text, or None for a table that exists on another shard than
        the default one (``sqlite_master`` is read on the default shard): callers then
        go without the constraint names only that text gives."""
        try:
            return super()._get_table_sql(connection, table_name, schema, **kw)
        except exc.NoSuchTableError:
            if self._get_table_pragma(connection, "table_info", table_name, schema=schema):
                return None
            raise


dialect = DoSQLDialect


def _register_alembic() -> None:
    """Let Alembic migrate through this dialect when it is installed (see alembic_impl)."""
    import importlib.util

    if importlib.util.find_spec("alembic") is not None:
        import dosql.sqla.alembic_impl  # noqa: F401 - registers DoSQLImpl


_register_alembic()
