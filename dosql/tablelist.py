"""Which tables exist, and their CREATE statements, as seen through a router.

SQLite tools read ``sqlite_master``, but through the router that statement
runs on the default shard only (it names no user table to route by), and
each shard also holds DoSQL's own ``_dosql_*`` bookkeeping tables. So the
list is: the default shard's user tables, plus the tables the router's VSchema
knows (HTTP ``/status``: listed and learned tables) that exist — an unsharded
table on another shard is found by ``PRAGMA table_info``, which the router
sends to the table's own shard. Used by the SQLAlchemy dialect's reflection
and by ``dosql shell``'s ``.tables`` and ``.schema``.

Functions take ``rows(sql) -> list of tuples`` so they work on a DB-API
connection and on an SQLAlchemy one alike.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

Rows = Callable[[str], Sequence[Sequence[Any]]]

INTERNAL_PREFIX = "_dosql_"
_HTTP = {"ws": "http", "wss": "https", "dosql": "http", "dosqls": "https"}
USER_TABLES = (
    "SELECT name FROM sqlite_master WHERE type = 'table' "
    "AND name NOT LIKE 'sqlite~_%' ESCAPE '~' ORDER BY name"
)


def is_internal(name: str) -> bool:
    """DoSQL's bookkeeping tables (change log, metadata, 2PC records) on every shard."""
    return name.lower().startswith(INTERNAL_PREFIX)


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def vschema_tables(url: str, timeout: float = 5.0) -> list[str]:
    """The tables the router's VSchema names (``/status``), or ``[]`` if it cannot say.

    Best effort: without it only the default shard's tables are listed.
    """
    parts = urlsplit(url)
    scheme = _HTTP.get(parts.scheme.lower())
    if scheme is None:
        return []
    status_url = urlunsplit((scheme, parts.netloc, "/status", "", ""))
    try:
        with urllib.request.urlopen(status_url, timeout=timeout) as reply:  # noqa: S310
            status: Any = json.loads(reply.read())
    except (OSError, ValueError):
        return []
    if not isinstance(status, dict):
        return []
    names = list(status.get("tables") or []) + list(status.get("learned_tables") or [])
    return sorted({str(n) for n in names if isinstance(n, str) and not is_internal(n)})


def exists(rows: Rows, name: str) -> bool:
    """True if the table exists on its shard (``PRAGMA table_info`` routes to it)."""
    return bool(rows(f"PRAGMA table_info({quote(name)})"))


def table_names(rows: Rows, url: str, *, default_shard: Sequence[str] | None = None) -> list[str]:
    """Every user table: the default shard's, plus VSchema tables that exist elsewhere.

    ``default_shard``: the default shard's table names when the caller has read
    them already (else they are read with :data:`USER_TABLES`).
    """
    if default_shard is None:
        default_shard = [str(r[0]) for r in rows(USER_TABLES)]
    names = [n for n in default_shard if not is_internal(n)]
    seen = {n.lower() for n in names}
    for name in vschema_tables(url):
        if name.lower() not in seen and exists(rows, name):
            names.append(name)
    return sorted(names)


def table_sql(rows: Rows, name: str) -> list[str]:
    """The table's CREATE TABLE and CREATE INDEX statements (empty: no such table).

    A table on another shard than the default has no ``sqlite_master`` row the
    router can read, so its CREATE TABLE is rebuilt from ``PRAGMA table_info``
    (columns, types, NOT NULL, defaults, primary key; not constraints).
    """
    found = rows(
        "SELECT name, sql FROM sqlite_master WHERE tbl_name = "
        + "'"
        + name.replace("'", "''")
        + "' COLLATE NOCASE AND sql IS NOT NULL ORDER BY type <> 'table', type, name"
    )
    if found:  # without the change-capture triggers every shard adds
        return [str(r[1]) for r in found if not is_internal(str(r[0]))]
    columns = rows(f"PRAGMA table_info({quote(name)})")
    if not columns:
        return []
    parts = []
    pk = sorted((c for c in columns if c[5]), key=lambda c: c[5])
    for _cid, col, decl, notnull, default, _pk in columns:
        text = quote(col) + (f" {decl}" if decl else "")
        if notnull:
            text += " NOT NULL"
        if default is not None:
            text += f" DEFAULT {default}"
        parts.append(text)
    if pk:
        parts.append("PRIMARY KEY (" + ", ".join(quote(c[1]) for c in pk) + ")")
    return [f"CREATE TABLE {quote(name)} ({', '.join(parts)})"]
