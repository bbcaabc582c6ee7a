"""SQLAlchemy support: ``create_engine("dosql://HOST:PORT")``.

The dialect (:mod:`.dialect`) is SQLAlchemy's SQLite dialect with the DoSQL
DB-API driver underneath, because the router speaks SQLite's SQL: only what
differs through the router is overridden (connecting, isolation levels, and
reflection of tables that live on shards other than the default one, see
:mod:`dosql.tablelist`). It is registered as the ``dosql`` entry point of
``sqlalchemy.dialects``, so pandas, Alembic and other SQLAlchemy tools find
it by URL alone.
"""

from __future__ import annotations

from dosql.sqla.dialect import DoSQLDialect

__all__ = ["DoSQLDialect"]
