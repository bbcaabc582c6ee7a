"""End-to-end routing on the quickstart VSchema with 4 real shard processes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError, NotSupportedError
from tests.router.client import Client, http_get, http_json
from tests.router.conftest import quickstart_vschema, shard_rows, write_config

SHARDS = ["shard-0", "shard-1", "shard-2", "shard-3"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("routing")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with Client(c.url) as cl:
            cl.execute("CREATE TABLE users (tenant_id INTEGER, name TEXT, score REAL)")
            cl.execute("CREATE TABLE orders (tenant_id INTEGER, id INTEGER, amount INTEGER)")
            cl.execute("CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT)")
            cl.execute("CREATE TABLE system_config (key TEXT PRIMARY KEY, value TEXT)")
            cl.execute("CREATE TABLE events (event_date TEXT, what TEXT)")
        yield c


@pytest.fixture
def client(cluster):
    with Client(cluster.url) as cl:
        yield cl


def owner(cluster, table, value):
    return cluster.vschema.shard_for(table, value)


def where_is(cluster, sql):
    return {s: shard_rows(cluster, s, sql) for s in SHARDS}


def test_insert_routes_each_row_to_its_shard(cluster, client):
    r = client.execute(
        "INSERT INTO users (tenant_id, name, score) VALUES (1, 'a', 1.0), (2, 'b', 2.0), "
        "(?, ?, ?), (4, 'd', NULL)",
        [3, "c", 3.5],
    )
    assert r.rowcount == 4
    placed = where_is(cluster, "SELECT tenant_id FROM users WHERE tenant_id <= 4")
    for tid in (1, 2, 3, 4):
        holders = [s for s, rows in placed.items() if (tid,) in rows]
        assert holders == [owner(cluster, "users", tid)]
    assert len({owner(cluster, "users", t) for t in (1, 2, 3, 4)}) > 1  # really split


def test_integer_affinity_42_and_text_42_same_shard(cluster, client):
    client.execute("INSERT INTO users (tenant_id, name) VALUES (?, 'text42')", ["42"])
    client.execute("INSERT INTO users (tenant_id, name) VALUES (42, 'int42')")
    placed = where_is(cluster, "SELECT name FROM users WHERE tenant_id = 42")
    holders = {s for s, rows in placed.items() if rows}
    assert holders == {owner(cluster, "users", 42)}
    assert sorted(client.rows("SELECT name FROM users WHERE tenant_id = '42'")) == [
        ("int42",),
        ("text42",),
    ]


def test_executemany_batches_per_shard(cluster, client):
    seq = [[100 + i, f"m{i}", float(i)] for i in range(20)]
    r = client.executemany("INSERT INTO users (tenant_id, name, score) VALUES (?, ?, ?)", seq)
    assert r.rowcount == 20
    placed = where_is(cluster, "SELECT tenant_id FROM users WHERE tenant_id >= 100")
    for tid in range(100, 120):
        assert [s for s, rows in placed.items() if (tid,) in rows] == [owner(cluster, "users", tid)]


def plant(cluster, shard_id, sql, params=None):
    """Write straight to one shard, bypassing the router."""
    with Client(cluster.shard_urls[shard_id]) as cl:
        cl.execute(sql, params)


def test_equality_and_in_only_touch_owning_shards(cluster, client):
    client.execute("INSERT INTO orders VALUES (7, 1, 10), (8, 2, 20)")
    home = owner(cluster, "orders", 7)
    wrong = next(s for s in SHARDS if s != home)
    plant(cluster, wrong, "INSERT INTO orders VALUES (7, 99, 999)")  # a decoy on a wrong shard
    try:
        assert client.rows("SELECT id FROM orders WHERE tenant_id = 7") == [(1,)]
        assert client.rows("SELECT id FROM orders WHERE tenant_id = ?", [7]) == [(1,)]
        assert client.rows("SELECT id FROM orders WHERE tenant_id = :t", {"t": 7}) == [(1,)]
        in_rows = client.rows("SELECT id FROM orders WHERE tenant_id IN (7, 8) ORDER BY id")
        decoy_seen = wrong == owner(cluster, "orders", 8)
        assert in_rows == ([(1,), (2,), (99,)] if decoy_seen else [(1,), (2,)])
        # a scatter does see it: proof the decoy is there and the pin avoided it
        assert (99,) in client.rows("SELECT id FROM orders WHERE amount = 999")
    finally:
        plant(cluster, wrong, "DELETE FROM orders WHERE id = 99")


def test_range_vindex_narrows_range_predicates(cluster, client):
    client.execute(
        "INSERT INTO events VALUES ('2024-05-01', 'a'), ('2025-03-01', 'b'), ('2026-07-01', 'c'),"
        " ('2027-01-02', 'd')"
    )
    placed = where_is(cluster, "SELECT what FROM events")
    assert placed["shard-1"] == [("b",)] and placed["shard-2"] == [("c",)]
    plant(cluster, "shard-2", "INSERT INTO events VALUES ('2025-04-01', 'decoy')")
    try:
        got = client.rows(
            "SELECT what FROM events WHERE event_date >= ? AND event_date < '2026-01-01'",
            ["2025-01-01"],
        )
        assert got == [("b",)]
        got = client.rows(
            "SELECT what FROM events WHERE event_date BETWEEN '2025-01-01' AND "
            "'2025-12-31' ORDER BY what"
        )
        assert got == [("b",)]
        assert ("decoy",) in client.rows("SELECT what FROM events")
    finally:
        plant(cluster, "shard-2", "DELETE FROM events WHERE what = 'decoy'")


def test_update_delete_routed_and_sharding_update_moves_the_row(cluster, client):
    client.execute("INSERT INTO orders VALUES (500, 1, 5), (501, 2, 6)")
    assert (
        client.execute("UPDATE orders SET amount = amount + 1 WHERE tenant_id = 500").rowcount == 1
    )
    assert client.rows("SELECT amount FROM orders WHERE tenant_id = 500") == [(6,)]
    new = next(
        t for t in range(9, 100) if owner(cluster, "orders", t) != owner(cluster, "orders", 500)
    )
    r = client.execute("UPDATE orders SET tenant_id = ? WHERE tenant_id = 500", [new])
    assert r.rowcount == 1
    placed = where_is(cluster, f"SELECT amount FROM orders WHERE tenant_id = {new}")
    assert {s for s, rows in placed.items() if rows} == {owner(cluster, "orders", new)}
    client.execute("UPDATE orders SET tenant_id = 500 WHERE tenant_id = ?", [new])
    assert client.execute("DELETE FROM orders WHERE tenant_id IN (500, 501)").rowcount == 2
    assert client.rows("SELECT count(*) FROM orders WHERE tenant_id IN (500, 501)") == [(0,)]


def test_reference_table_written_everywhere(cluster, client):
    client.execute("INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan')")
    for s in SHARDS:
        assert shard_rows(cluster, s, "SELECT code FROM countries ORDER BY code") == [
            ("fr",),
            ("jp",),
        ]
    assert client.rows("SELECT name FROM countries WHERE code = 'jp'") == [("Japan",)]
    client.execute("UPDATE countries SET name = 'Nippon' WHERE code = 'jp'")
    for s in SHARDS:
        assert shard_rows(cluster, s, "SELECT name FROM countries WHERE code = 'jp'") == [
            ("Nippon",)
        ]


def test_unsharded_table_lives_on_its_shard(cluster, client):
    client.execute("INSERT INTO system_config VALUES ('mode', 'on')")
    placed = where_is(cluster, "SELECT key FROM system_config")
    assert placed == {"shard-0": [], "shard-1": [], "shard-2": [], "shard-3": [("mode",)]}
    assert client.rows("SELECT value FROM system_config") == [("on",)]


def test_default_table_policy_persisted(cluster, client):
    client.execute("CREATE TABLE widgets (wid INTEGER PRIMARY KEY, label TEXT)")
    client.execute("INSERT INTO widgets VALUES (1, 'x'), (2, 'y'), (3, 'z'), (4, 'w')")
    with Client(cluster.shard_urls["shard-0"]) as sh:
        meta = sh.call(
            lambda rid: __import__("dosql.protocol").protocol.MetaGet(id=rid, prefix="table:")
        )
    entry = meta.info["values"]["table:widgets"]
    assert '"column": "wid"' in entry and '"sharded"' in entry
    vs = cluster.vschema.with_table(
        "widgets",
        __import__("vschema").sharded_table(
            "wid", __import__("vschema").hash_vindex(), column_type="INTEGER"
        ),
    )
    placed = where_is(cluster, "SELECT wid FROM widgets")
    for wid in (1, 2, 3, 4):
        assert [s for s, rows in placed.items() if (wid,) in rows] == [vs.shard_for("widgets", wid)]
    # a second router started on the same cluster config routes it the same way
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dosql.router",
            "--config",
            str(cluster.cluster_config),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        import json

        port = json.loads(proc.stdout.readline())["port"]
        with Client(f"ws://127.0.0.1:{port}") as other:
            assert other.rows("SELECT label FROM widgets WHERE wid = 3") == [("z",)]
            assert sorted(other.rows("SELECT wid FROM widgets")) == [(1,), (2,), (3,), (4,)]
        status, body = http_json(f"ws://127.0.0.1:{port}", "/status")
        assert "widgets" in body["learned_tables"]
    finally:
        proc.terminate()
        proc.wait(10)


def test_not_supported_carry_reasons(cluster, client):
    cases = {
        "CREATE VIRTUAL TABLE vt USING fts5(x)": "VIRTUAL",
        "ATTACH 'x.db' AS x": "ATTACH",
        "CREATE TEMP TABLE tt (a)": "temporary",
    }
    for sql, needle in cases.items():
        with pytest.raises(NotSupportedError) as info:
            client.execute(sql)
        assert info.value.code == "NOT_SUPPORTED"
        assert needle.lower() in info.value.message.lower(), (sql, info.value.message)
    # the same refused form is fine when pinned to one shard
    assert client.rows("SELECT DISTINCT name FROM users WHERE tenant_id = 1") == [("a",)]


def test_forms_once_refused_now_answer(cluster, client):
    """Joins, subqueries, GROUP BY, DISTINCT … over several shards run router-side."""
    cases = {
        "SELECT count(*) FROM users u JOIN orders o ON u.tenant_id = o.tenant_id": None,
        "SELECT DISTINCT name FROM users ORDER BY name": None,
        "SELECT name, count(*) FROM users GROUP BY name ORDER BY name": None,
        "SELECT group_concat(name, '') FROM (SELECT name FROM users ORDER BY name)": None,
        "SELECT count(*) FROM users WHERE tenant_id IN (SELECT tenant_id FROM orders)": None,
    }
    for sql in cases:
        assert client.execute(sql).columns, sql
    names = sorted(r[0] for r in client.rows("SELECT name FROM users"))
    assert client.rows("SELECT DISTINCT name FROM users ORDER BY name") == [
        (n,) for n in sorted(set(names))
    ]


def test_refuse_policy_names_table(tmp_path):
    cfg = write_config(tmp_path / "c.toml", quickstart_vschema(n_shards=2, default_table="refuse"))
    with LocalCluster(cfg, tmp_path / "data", lake=False) as c, Client(c.url) as cl:
        with pytest.raises(NotSupportedError) as info:
            cl.execute("CREATE TABLE gadgets (id INTEGER PRIMARY KEY)")
        assert "gadgets" in info.value.message
        for s in ("shard-0", "shard-1"):
            assert shard_rows(c, s, "SELECT name FROM sqlite_schema WHERE name='gadgets'") == []


def test_transactions(cluster, client):
    a, b = (
        1000,
        next(
            t
            for t in range(1001, 1100)
            if owner(cluster, "orders", t) != owner(cluster, "orders", 1000)
        ),
    )
    client.begin()
    client.execute("INSERT INTO orders VALUES (?, 1, 1)", [a])
    client.execute("INSERT INTO orders VALUES (?, 2, 2)", [b])
    assert sorted(
        client.rows("SELECT tenant_id FROM orders WHERE tenant_id IN (?, ?)", [a, b])
    ) == [(a,), (b,)]
    client.rollback()
    assert client.rows("SELECT count(*) FROM orders WHERE tenant_id IN (?, ?)", [a, b]) == [(0,)]
    client.execute("BEGIN")
    client.execute("INSERT INTO orders VALUES (?, 1, 1)", [a])
    client.execute("INSERT INTO orders VALUES (?, 2, 2)", [b])
    with Client(cluster.url) as other:  # not visible before commit
        assert other.rows("SELECT count(*) FROM orders WHERE tenant_id IN (?, ?)", [a, b]) == [(0,)]
    client.execute("COMMIT")
    assert client.rows("SELECT count(*) FROM orders WHERE tenant_id IN (?, ?)", [a, b]) == [(2,)]
    with pytest.raises(DoSQLError) as info:
        client.execute("COMMIT")
    assert info.value.code == "TRANSACTION_STATE"


def test_multi_shard_statement_error_leaves_nothing(cluster, client):
    client.execute("CREATE TABLE uniq (tenant_id INTEGER PRIMARY KEY, v TEXT)")
    client.execute("INSERT INTO uniq VALUES (1, 'x')")
    with pytest.raises(DoSQLError) as info:
        client.execute("INSERT INTO uniq VALUES (2, 'y'), (3, 'z'), (4, 'w'), (5, 'v'), (1, 'dup')")
    assert info.value.code == "UNIQUE_CONSTRAINT"
    assert client.rows("SELECT tenant_id FROM uniq ORDER BY tenant_id") == [(1,)]


def test_plan_cache_parses_once(cluster, client):
    sql = "SELECT name FROM users WHERE tenant_id = ? AND score > ?"
    before = http_json(cluster.url, "/status")[1]["plan_cache"]["parses"]
    for i in range(15):
        client.execute(sql, [i, -1.0])
    after = http_json(cluster.url, "/status")[1]["plan_cache"]["parses"]
    assert after - before == 1


def test_observability_endpoints(cluster, client):
    client.execute("SELECT count(*) FROM users")
    assert http_json(cluster.url, "/health") == (200, {"status": "ok", "service": "router"})
    status, deep = http_json(cluster.url, "/health/deep")
    assert status == 200 and set(deep["shards"]) == set(SHARDS)
    assert all(v["status"] == "ok" for v in deep["shards"].values())
    status, text = http_get(cluster.url, "/metrics")
    for name in (
        'dosql_query_duration_seconds_count{kind="read"}',
        'dosql_query_duration_ms_count{kind="read"}',  # the operations guide's name
        "shard_query_scatter_ratio",
        'dosql_shard_request_duration_seconds_count{shard="shard-0"}',
        "shard_latency_p99_ms",
        "dosql_errors_total",
        "dosql_plan_cache_parses_total",
    ):
        assert name in text
    status, body = http_json(cluster.url, "/status")
    assert [s["id"] for s in body["shards"]] == SHARDS and "connections" in body


def test_driver_end_to_end(cluster):
    import dosql

    con = dosql.connect(cluster.url)
    cur = con.cursor()
    cur.execute("INSERT INTO orders VALUES (?, ?, ?)", (77, 1, 100))
    cur.execute("INSERT INTO orders VALUES (?, ?, ?)", (78, 2, 200))
    con.commit()
    cur.execute("SELECT sum(amount) FROM orders WHERE tenant_id IN (77, 78)")
    assert cur.fetchone() == (300,)
    with pytest.raises(dosql.NotSupportedError):
        cur.execute("ATTACH 'other.db' AS other")
    con.close()


def test_nocase_sharding_column_never_pins_text(cluster, client):
    client.execute("CREATE TABLE tags (tag TEXT COLLATE NOCASE PRIMARY KEY, v INTEGER)")
    client.execute("INSERT INTO tags VALUES ('Abc', 1), ('xyz', 2), ('MNO', 3), ('q', 4)")
    # SQLite says 'abc' = 'Abc' here, whatever shard the hash of 'abc' picks
    assert client.rows("SELECT v FROM tags WHERE tag = 'abc'") == [(1,)]
    assert client.rows("SELECT v FROM tags WHERE tag IN (?, ?) ORDER BY v", ["mno", "XYZ"]) == [
        (2,),
        (3,),
    ]
    # ORDER BY the NOCASE column merges with NOCASE (probed from the shards)
    got = client.rows("SELECT tag FROM tags ORDER BY tag")
    assert got == [("Abc",), ("MNO",), ("q",), ("xyz",)]
    assert client.rows("SELECT min(tag), max(tag) FROM tags") == [("Abc", "xyz")]


def test_consistent_hash_table_placement(cluster, client):
    client.execute("CREATE TABLE sessions (tenant_id INTEGER, token TEXT)")
    client.executemany("INSERT INTO sessions VALUES (?, ?)", [[i, f"t{i}"] for i in range(12)])
    placed = where_is(cluster, "SELECT tenant_id FROM sessions")
    for i in range(12):
        holders = [s for s, rows in placed.items() if (i,) in rows]
        assert holders == [owner(cluster, "sessions", i)]
    assert client.rows("SELECT token FROM sessions WHERE tenant_id = 5") == [("t5",)]


def test_bad_input_gets_typed_errors(cluster, client):
    client.ws.send("not msgpack")
    from dosql import protocol

    reply = protocol.decode(client.ws.recv(timeout=10))
    assert isinstance(reply, protocol.Error) and reply.code == "INVALID_MESSAGE"
    client.ws.send(b"\xc1\xff garbage")
    reply = protocol.decode(client.ws.recv(timeout=10))
    assert isinstance(reply, protocol.Error) and reply.code == "INVALID_MESSAGE"
    client.ws.send(b"\x83\xa1t\xa4exec\xa2id\x01\xa6params" + b"\x91" * 100_000 + b"\xc0")
    reply = protocol.decode(client.ws.recv(timeout=10))
    assert isinstance(reply, protocol.Error) and reply.code == "INVALID_MESSAGE"
    with pytest.raises(DoSQLError) as info:
        client.execute("SELECT * FROM users WHERE tenant_id = ?", [[1, 2]])
    assert info.value.code == "INVALID_PARAMETERS"
    with pytest.raises(DoSQLError) as info:
        client.execute("SELECT * FROM nowhere")
    assert info.value.code == "TABLE_NOT_FOUND"
    with pytest.raises(DoSQLError) as info:
        client.execute("SELEKT 1")
    assert info.value.code == "SYNTAX_ERROR"
    assert client.rows("SELECT 1 + 1") == [(2,)]  # the connection still works


def test_missing_or_null_sharding_key_refused(cluster, client):
    before = client.rows("SELECT count(*) FROM orders")
    for sql, params in (
        ("INSERT INTO orders (id, amount) VALUES (1, 2)", None),
        ("INSERT INTO orders VALUES (NULL, 1, 1)", None),
        ("INSERT INTO orders VALUES (?, 1, 1), (3, 1, 1)", [None]),
    ):
        with pytest.raises(DoSQLError) as info:
            client.execute(sql, params)
        assert info.value.code == "SHARDING_KEY_NULL"
        assert "tenant_id" in info.value.message
    assert client.rows("SELECT count(*) FROM orders") == before
