"""Engines the sqllogictest runner can drive.

- :class:`SqliteEngine`: one in-memory ``sqlite3`` database. It is the oracle
  check of the runner itself: the expected results were computed by SQLite,
  so any miss here is a bug in the parser or the formatting.
- :class:`RouterEngine`: the DoSQL router over a :class:`dosql.cluster.LocalCluster`
  of N shards, through the DB-API driver, with every table sharded by the
  VSchema's ``default_table = "shard_by_primary_key"`` policy (the .test files
  declare no primary keys, so that is a hash on each table's first column).
  One cluster and one connection serve every file; :meth:`reset` drops the
  tables the previous file created.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CREATE_RE = re.compile(
    r"^\s*CREATE\s+(?:TEMP\s+|TEMPORARY\s+)?(TABLE|VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?"
    r"([A-Za-z_][A-Za-z0-9_]*|\"[^\"]+\"|\[[^\]]+\]|`[^`]+`)",
    re.IGNORECASE,
)


class SqliteEngine:
    """Plain SQLite in memory, autocommit."""

    name = "sqlite"

    def __init__(self) -> None:
        self._conn = sqlite3.connect(":memory:", isolation_level=None)

    def execute(self, sql: str) -> list[tuple[Any, ...]] | None:
        cur = self._conn.execute(sql)
        if cur.description is None:
            return None
        return cur.fetchall()

    def reset(self) -> None:
        self._conn.close()
        self._conn = sqlite3.connect(":memory:", isolation_level=None)

    def close(self) -> None:
        self._conn.close()


def router_available() -> tuple[bool, str]:
    """Whether the cluster launcher and the driver can be imported (and why not)."""
    try:
        importlib.import_module("dosql.cluster")
        importlib.import_module("dosql.driver")
    except Exception as exc:  # any import failure means "not there yet"
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def cluster_config(shards: int = 4) -> str:
    """A deployment config (TOML) whose VSchema shards every table by its first column."""
    lines = [
        'log_level = "warn"',
        "",
        "[vschema]",
        'default_shard = "shard-0"',
        'default_table = "shard_by_primary_key"',
    ]
    for i in range(shards):
        lines += ["", "[[vschema.shards]]", f'id = "shard-{i}"']
    return "\n".join(lines) + "\n"


class RouterEngine:
    """The SQL goes to the router of a LocalCluster through ``dosql.connect``."""

    name = "router"

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._cur = conn.cursor()
        self._created: list[tuple[str, str]] = []  # (TABLE|VIEW, name), in order

    def execute(self, sql: str) -> list[tuple[Any, ...]] | None:
        self._cur.execute(sql)
        m = _CREATE_RE.match(sql)
        if m:
            self._created.append((m.group(1).upper(), m.group(2)))
        if self._cur.description is None:
            return None
        return [tuple(row) for row in self._cur.fetchall()]

    def reset(self) -> None:
        """Drop what earlier files created (views first, newest first)."""
        for kind, name in sorted(reversed(self._created), key=lambda kn: kn[0] != "VIEW"):
            self._cur.execute(f"DROP {kind} IF EXISTS {name}")
        self._created.clear()


@contextlib.contextmanager
def router_engine(shards: int = 4) -> Iterator[RouterEngine]:
    """A LocalCluster of ``shards`` shards (no lake) and one autocommit connection."""
    from dosql.driver import connect

    local_cluster = importlib.import_module("dosql.cluster").LocalCluster

    with tempfile.TemporaryDirectory(prefix="dosql-slt-") as tmp:
        config = Path(tmp) / "dosql.toml"
        config.write_text(cluster_config(shards))
        with local_cluster(config, Path(tmp) / "data", lake=False) as cluster:
            conn = connect(cluster.url, timeout=60.0, autocommit=True)
            try:
                yield RouterEngine(conn)
            finally:
                conn.close()


@contextlib.contextmanager
def open_engine(name: str, *, shards: int = 4) -> Iterator[Any]:
    if name == "sqlite":
        engine = SqliteEngine()
        try:
            yield engine
        finally:
            engine.close()
    elif name == "router":
        with router_engine(shards) as engine:
            yield engine
    else:
        raise ValueError(f"unknown engine {name!r}: use sqlite or router")
