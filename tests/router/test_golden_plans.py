"""Golden plan tests: each statement's EXPLAIN through the router, compared with a file.

``tests/router/golden/plans.txt`` holds, for each statement, a line ``> SQL``
followed by the EXPLAIN rows the router must give — the operator tree, one
operator a row, indented two spaces a level, with the SQL each shard gets
(``step | operator | shard | sql | detail``) — blocks separated by a blank
line, like Vitess's planbuilder test data: a change in planning shows up as a
diff a reviewer reads.

The cluster is the quickstart VSchema on 4 shards (hash, consistent-hash and
range vindexes, reference, unsharded and default-policy tables) with the
tables created by ``SETUP``, so shard targets are deterministic.

To regenerate after an intended planner change (then read the diff)::

    DOSQL_GOLDEN_UPDATE=1 .venv/bin/pytest -q tests/router/test_golden_plans.py

To add a statement, add a ``> SQL`` line (no rows) to the file and regenerate;
``> SQL -- params [1, "x"]`` binds parameters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError
from tests.router.client import Client
from tests.router.conftest import quickstart_vschema, write_config

GOLDEN = Path(__file__).parent / "golden" / "plans.txt"
HEADER = (
    "# EXPLAIN through the router, quickstart VSchema on 4 shards (tests/router/test_golden_plans.py).\n"
    "# '> SQL' then its operator tree: step | operator (indented) | shard | sql | detail.\n"
    "# Regenerate: DOSQL_GOLDEN_UPDATE=1 .venv/bin/pytest -q tests/router/test_golden_plans.py\n"
)
SETUP = [
    "CREATE TABLE users (id INTEGER, tenant_id INTEGER NOT NULL, name TEXT)",
    "CREATE TABLE orders (id INTEGER, tenant_id INTEGER NOT NULL, total REAL)",
    "CREATE TABLE sessions (id INTEGER, tenant_id INTEGER NOT NULL, token TEXT)",
    "CREATE TABLE events (id INTEGER, event_date TEXT NOT NULL, kind TEXT)",
    "CREATE TABLE countries (code TEXT, name TEXT)",
    "CREATE TABLE system_config (key TEXT, value TEXT)",
    "CREATE TABLE t1 (k INTEGER, a INTEGER, b TEXT COLLATE NOCASE)",
    "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)",
    "CREATE VIEW big_orders AS SELECT * FROM orders WHERE total > 100",
]


def parse(text: str) -> list[tuple[str, list[str]]]:
    """(statement, expected row lines) blocks of the golden file."""
    out: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("> "):
            out.append((line[2:], []))
        elif out:
            out[-1][1].append(line)
    return out


def render(rows: list[list]) -> list[str]:
    return [" | ".join("" if v is None else str(v) for v in r).rstrip() for r in rows]


def explain(client: Client, line: str) -> list[list]:
    """EXPLAIN of a golden line: ``SQL`` or ``SQL -- params [JSON list]``."""
    sql, _, params = line.partition(" -- params ")
    if params:
        return client.execute("EXPLAIN " + sql, json.loads(params)).rows
    return client.rows("EXPLAIN " + sql)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("golden")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c, Client(c.url) as cl:
        for sql in SETUP:
            cl.execute(sql)
        yield cl


def test_explain_matches_the_golden_plans(client) -> None:
    blocks = parse(GOLDEN.read_text(encoding="utf-8"))
    assert len(blocks) >= 40
    got = [(sql, render(explain(client, sql))) for sql, _ in blocks]
    if os.environ.get("DOSQL_GOLDEN_UPDATE"):
        body = "\n\n".join("\n".join([f"> {sql}", *rows]) for sql, rows in got)
        GOLDEN.write_text(HEADER + "\n" + body + "\n", encoding="utf-8")
        return
    diffs = [
        f"> {sql}\n  want:\n    " + "\n    ".join(want) + "\n  got:\n    " + "\n    ".join(rows)
        for (sql, want), (_, rows) in zip(blocks, got, strict=True)
        if rows != want
    ]
    assert not diffs, (
        f"{len(diffs)} plan(s) differ from {GOLDEN.name} (if intended, regenerate with "
        "DOSQL_GOLDEN_UPDATE=1 and review the diff):\n" + "\n".join(diffs)
    )


def test_every_plan_kind_is_covered() -> None:
    text = GOLDEN.read_text(encoding="utf-8")
    rows = [line.split(" | ") for line in text.splitlines() if line and line[0].isdigit()]
    operators = {r[1].strip() for r in rows}
    want = {"Route", "Scatter", "Concat", "MergeSort", "Aggregate", "GroupAggregate", "Limit"}
    want |= {"RouterSide", "Fetch", "shard", "Insert", "Sequence", "InsertSelect", "Write"}
    want |= {"RouterSideDml", "DDL", "CreateTableAs", "Noop", "Transaction"}
    want |= {"TemporalSelect", "TemporalInsert", "LakeAsOf", "LakeHistory", "LiveTable"}
    assert want <= operators, want - operators
    variants = {r[4].split(":")[0] for r in rows if len(r) > 4}
    assert {"single_shard", "multi_shard", "scatter", "reference"} <= variants


def test_time_travel_refusals(client) -> None:
    """executemany and EXPLAIN QUERY PLAN of a statement that reads history are refused
    at once, with what to do instead."""
    sql = "SELECT * FROM users FOR SYSTEM_TIME AS OF TIMESTAMP '2026-01-20 14:30:00'"
    with pytest.raises(DoSQLError) as info:
        client.executemany(sql, [[], []])
    assert info.value.code == "NOT_SUPPORTED" and "executemany" in info.value.message
    with pytest.raises(DoSQLError) as info:
        client.execute("EXPLAIN QUERY PLAN " + sql)
    assert info.value.code == "NOT_SUPPORTED" and "EXPLAIN shows" in info.value.message


def test_time_travel_without_a_lake_is_a_clear_error() -> None:
    from types import SimpleNamespace

    import trio

    from dosql.router.engine.base import Context
    from dosql.router.temporal_planner import plan_temporal

    op = plan_temporal("SELECT * FROM users FOR SYSTEM_TIME AS OF SNAPSHOT 1")
    assert op is not None
    ctx = Context(SimpleNamespace(lake=None), None)  # type: ignore[arg-type]
    with pytest.raises(DoSQLError) as info:
        trio.run(op.execute, ctx, None)
    assert info.value.code == "MISSING_CONFIG" and "[lake]" in info.value.message
