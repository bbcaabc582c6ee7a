"""Alembic's migration implementation for the ``dosql`` dialect: SQLite's.

Alembic picks its DDL implementation by dialect name, so a dialect it does not
know stops every migration with ``KeyError: 'dosql'``. The router runs
SQLite's DDL, so SQLite's implementation applies as it is (no transactional
DDL; ``batch_alter_table`` for what ALTER TABLE cannot do). Imported by
:mod:`dosql.sqla.dialect` when Alembic is installed; subclassing registers it.
"""

from __future__ import annotations

from alembic.ddl.sqlite import SQLiteImpl


class DoSQLImpl(SQLiteImpl):
    """SQLite's Alembic implementation under the ``dosql`` dialect name."""

    __dialect__ = "dosql"
