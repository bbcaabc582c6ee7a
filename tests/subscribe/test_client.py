"""`dosql tail` prints JSON lines; the trio client helper follows the same stream."""

from __future__ import annotations

import json
import subprocess
import sys

import dosql
from dolake.subscribe import position

from .helpers import READ, ROOT


def seed(env) -> None:
    con = env.connect()
    cur = con.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS tail_t (id INTEGER PRIMARY KEY, v BLOB)")
    cur.executemany("INSERT OR REPLACE INTO tail_t VALUES (?, ?)", [(i, b"\x00") for i in range(5)])
    con.close()


def tail(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dosql.cli", "tail", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_tail_prints_json_lines(env):
    seed(env)
    url = env.sub.url
    args = ["--url", url, "--table", "tail_t", "--token", READ]
    out = tail(*args, "--from", "earliest", "--idle-exit", "1.5")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines[0]["type"] == "schema" and lines[0]["table"] == "tail_t"
    rows = [e for e in lines if e.get("op") == "c"]
    assert sorted(e["after"]["id"] for e in rows) == list(range(5))
    assert all(e["after"]["v"] == "AA==" and e["binary"]["after"] == ["v"] for e in rows)
    assert {e["type"] for e in lines if "op" not in e} == {"schema", "commit"}
    # resume with --from <position>: exactly the row events after it, nothing twice
    middle = rows[2]
    out = tail(*args, "--from", middle["position"], "--idle-exit", "1.5")
    assert out.returncode == 0, out.stderr
    more = [json.loads(line) for line in out.stdout.splitlines()]
    vector = position.decode(middle["position"])
    after = [e for e in rows if e["source"]["lsn"] > vector[e["source"]["shard"]]]

    def key(e: dict) -> tuple:
        return (e["source"]["shard"], e["source"]["lsn"])

    assert sorted(map(key, (e for e in more if "op" in e))) == sorted(map(key, after))
    out = tail(*args, "--from", "earliest", "--ops", "c", "--limit", "2")
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 2
    bad = tail(*args, "--from", "garbage")
    assert bad.returncode == 1 and "bad position" in bad.stderr


async def test_async_client(env):
    seed(env)
    rows = []
    async with dosql.subscribe_async(
        env.sub.url, tables=["tail_t"], start="earliest", token=READ
    ) as sub:
        async for event in sub:
            if event.get("op") == "c":
                rows.append(event)
            if len(rows) == 5:
                break
        vector = position.decode(sub.position)
        assert all(vector[e["source"]["shard"]] >= e["source"]["lsn"] for e in rows)
    assert all(e["after"]["v"] == b"\x00" for e in rows)


def test_schema_change_mid_stream(env):
    con = env.connect()
    cur = con.cursor()
    cur.execute("CREATE TABLE evolving (id INTEGER PRIMARY KEY, a TEXT)")
    cur.execute("INSERT INTO evolving VALUES (1, 'x')")
    seen = []
    with dosql.subscribe(
        env.sub.url, tables=["evolving"], start="earliest", token=READ, timeout=20
    ) as sub:
        cur.execute("ALTER TABLE evolving ADD COLUMN b INTEGER")
        cur.execute("INSERT INTO evolving VALUES (2, 'y', 7)")
        for event in sub:  # ids 1 and 2 may live on different shards: any order
            seen.append(event)
            if {e["after"]["id"] for e in seen if e.get("op") == "c"} == {1, 2}:
                break
    con.close()
    creates = [e for e in seen if e.get("type") == "schema" and e["action"] == "create"]
    alters = [e for e in seen if e.get("type") == "schema" and e["action"] == "alter"]
    assert creates and alters
    assert [c["name"] for c in alters[0]["columns"]] == ["id", "a", "b"]
    rows = {e["after"]["id"]: e["after"] for e in seen if e.get("op") == "c"}
    assert rows == {1: {"id": 1, "a": "x"}, 2: {"id": 2, "a": "y", "b": 7}}
    two = next(e for e in seen if e.get("op") == "c" and e["after"]["id"] == 2)
    shard_alter = next(e for e in alters if e["source"]["shard"] == two["source"]["shard"])
    assert seen.index(shard_alter) < seen.index(two)  # the schema event comes first


def test_tail_debezium_values(env):
    seed(env)
    args = ["--url", env.sub.url, "--table", "tail_t", "--token", READ, "--from", "earliest"]
    out = tail(
        *args, "--format", "debezium", "--changes-only", "--value-only", "--idle-exit", "1.5"
    )
    assert out.returncode == 0, out.stderr
    values = [json.loads(line) for line in out.stdout.splitlines()]
    assert values and all(set(v) >= {"before", "after", "op", "source"} for v in values)
    assert all(v["source"]["connector"] == "dosql" for v in values)
    bad = tail(*args, "--value-only")
    assert bad.returncode == 3 and "--format debezium" in bad.stderr
