"""The replay invariant as a property: replaying the change log reproduces every table.

Random sequences of DDL and DML (inserts, INSERT OR REPLACE / REPLACE / OR
IGNORE, upserts, updates including key changes, deletes, multi-statement
transactions that commit or roll back, ADD / RENAME / DROP COLUMN, CREATE
INDEX, DROP TABLE) run against one live shard process. Statements that fail
(constraint violations, missing tables) are part of the test: they must
leave no change. Each example starts by dropping and re-creating every
table, then replays the log from the LSN after the drops into an empty
SQLite database and compares every table, values typed and floats bit-exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dosql.errors import DoSQLError
from tests.shard.client import ShardClient, ShardProcess
from tests.shard.replay import assert_replica_matches, q

VALUES = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), 2**63 - 1, 0, -1]),
    st.floats(allow_nan=False),
    st.text(max_size=12),
    st.binary(max_size=12),
)


@dataclass(frozen=True)
class Template:
    name: str
    create: str
    keys: tuple[tuple[str, st.SearchStrategy[Any]], ...]
    values: tuple[str, ...]


TABLES = (
    Template(
        "a",
        "CREATE TABLE a(id INTEGER PRIMARY KEY, v1, v2 TEXT, v3 REAL)",
        (("id", st.integers(0, 4)),),
        ("v1", "v2", "v3"),
    ),
    Template(
        "b t",
        'CREATE TABLE "b t"("k" TEXT NOT NULL, "n" INTEGER NOT NULL, "val", '
        'PRIMARY KEY("k", "n")) WITHOUT ROWID',
        (("k", st.sampled_from(["x", "y"])), ("n", st.integers(0, 2))),
        ("val",),
    ),
    Template("c", "CREATE TABLE c(v1, v2 BLOB)", (("rowid", st.integers(1, 4)),), ("v1", "v2")),
    Template(
        "d",
        "CREATE TABLE d(k TEXT PRIMARY KEY NOT NULL, u INTEGER UNIQUE, v1)",
        (("k", st.sampled_from(["p", "q", "r"])),),
        ("u", "v1"),
    ),
)


@st.composite
def operation(draw: st.DrawFn, depth: int = 0) -> tuple[str, list[Any]]:
    t = draw(st.sampled_from(TABLES))
    name = q(t.name)
    keys = {k: draw(s) for k, s in t.keys}
    vals = {
        v: draw(VALUES if v != "u" else st.one_of(st.none(), st.integers(0, 3))) for v in t.values
    }
    kinds = ["insert"] * 5 + ["upsert"] * 2 + ["update"] * 3 + ["rekey"] * 2 + ["delete"] * 2
    kinds += ["create", "drop", "add", "add", "renamecol", "dropcol", "index"]
    kinds += ["tx", "tx"] if depth == 0 else []
    kind = draw(st.sampled_from(kinds))
    cols = {**keys, **vals}
    where = " AND ".join(f"{q(k)} = ?" for k in keys)
    if kind == "create":
        return t.create, []
    if kind == "drop":
        return f"DROP TABLE {name}", []
    if kind == "add":
        return (
            f"ALTER TABLE {name} ADD COLUMN {q('x' + str(draw(st.integers(0, 3))))} DEFAULT 7",
            [],
        )
    if kind == "renamecol":
        a, b = (q("x" + str(draw(st.integers(0, 3)))) for _ in range(2))
        return f"ALTER TABLE {name} RENAME COLUMN {a} TO {b}", []
    if kind == "dropcol":
        return f"ALTER TABLE {name} DROP COLUMN {q('x' + str(draw(st.integers(0, 3))))}", []
    if kind == "index":
        col = draw(st.sampled_from(t.values))
        return f"CREATE INDEX IF NOT EXISTS {q('ix ' + t.name + col)} ON {name}({q(col)})", []
    if kind in ("insert", "upsert"):
        verb = draw(st.sampled_from(["INSERT", "INSERT OR REPLACE", "REPLACE", "INSERT OR IGNORE"]))
        names = ", ".join(q(c) for c in cols)
        marks = ", ".join("?" for _ in cols)
        sql = f"{'INSERT' if kind == 'upsert' else verb} INTO {name}({names}) VALUES ({marks})"
        if kind == "upsert":
            conflict = ", ".join(q(k) for k in keys) if "rowid" not in keys else None
            if conflict is None:
                return sql, list(cols.values())
            sets = ", ".join(f"{q(v)} = excluded.{q(v)}" for v in vals)
            sql += f" ON CONFLICT({conflict}) DO UPDATE SET {sets}"
        return sql, list(cols.values())
    if kind == "update":
        sets = ", ".join(f"{q(v)} = ?" for v in vals)
        return f"UPDATE {name} SET {sets} WHERE {where}", [*vals.values(), *keys.values()]
    if kind == "rekey":
        new = {k: draw(s) for k, s in t.keys}
        sets = ", ".join(f"{q(k)} = ?" for k in new)
        return f"UPDATE OR REPLACE {name} SET {sets} WHERE {where}", [*new.values(), *keys.values()]
    if kind == "delete":
        return f"DELETE FROM {name} WHERE {where}", list(keys.values())
    body = draw(st.lists(operation(depth + 1), min_size=1, max_size=5))
    return "TX", [draw(st.sampled_from(["deferred", "immediate"])), draw(st.booleans()), body]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShardClient]:
    proc = ShardProcess(Path(tmp_path_factory.mktemp("replay")) / "replay.db").start()
    try:
        with proc.client() as client:
            yield client
    finally:
        proc.kill()


def run(client: ShardClient, sql: str, params: list[Any]) -> None:
    try:
        client.execute(sql, params)
    except DoSQLError as exc:
        assert exc.code in (
            "UNIQUE_CONSTRAINT",
            "CONSTRAINT_VIOLATION",
            "TABLE_NOT_FOUND",
            "QUERY_ERROR",
        ), exc


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(operation(), min_size=5, max_size=40))
def test_replaying_the_log_reproduces_every_table(live: ShardClient, ops: list[Any]) -> None:
    client = live
    for t in TABLES:
        client.execute(f"DROP TABLE IF EXISTS {q(t.name)}")
    start = client.lsn_info()["current_lsn"] + 1
    for t in TABLES:
        client.execute(t.create)
    for sql, params in ops:
        if sql != "TX":
            run(client, sql, params)
            continue
        mode, commit, body = params
        client.begin(mode)
        for inner_sql, inner_params in body:
            run(client, inner_sql, inner_params)
        client.commit() if commit else client.rollback()
    changes = client.all_changes(start)
    assert [c.lsn for c in changes] == list(range(start, start + len(changes)))
    assert all(
        a.commit_ts <= b.commit_ts and a.txid <= b.txid
        for a, b in zip(changes, changes[1:], strict=False)
    )
    assert_replica_matches(client, changes)
