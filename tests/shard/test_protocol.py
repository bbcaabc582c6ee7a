"""End-to-end protocol tests against a real shard process."""

from __future__ import annotations

import json
import time
import urllib.request

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from dosql import protocol
from tests.shard.client import ShardClient, ShardProcess, expect_error


def http_get(shard: ShardProcess, path: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{shard.port}{path}", timeout=10) as r:
        return r.status, r.read()


def test_execute_params_and_result_shape(client: ShardClient) -> None:
    r = client.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, name TEXT, score REAL, raw BLOB, x)")
    assert r.columns == [] and r.rows == [] and r.chunks == 1
    r = client.execute(
        "INSERT INTO t(name, score, raw, x) VALUES (?, ?, ?, ?)", ["a", 1.5, b"\0", 7]
    )
    assert (r.rowcount, r.lastrowid) == (1, 1)
    r = client.execute(
        "INSERT INTO t(name, score, x) VALUES (:n, :s, :x)", {"n": "b", "s": -2.0, "x": 2**63 - 1}
    )
    assert (r.rowcount, r.lastrowid) == (1, 2)
    r = client.executemany("INSERT INTO t(name, x) VALUES (?, ?)", [["c", -(2**63)], ["d", None]])
    assert r.rowcount == 2
    r = client.execute("SELECT id, name, score, raw, x, score * 2 AS dbl FROM t ORDER BY id")
    assert r.columns == ["id", "name", "score", "raw", "x", "dbl"]
    assert r.decltypes == ["INTEGER", "TEXT", "REAL", "BLOB", None, None]
    assert r.rows[0] == [1, "a", 1.5, b"\0", 7, 3.0]
    assert r.rows[1][4] == 2**63 - 1 and r.rows[2][4] == -(2**63)
    r = client.execute("SELECT name, id FROM t WHERE 0")
    assert (r.columns, r.decltypes, r.rows, r.chunks) == (
        ["name", "id"],
        ["TEXT", "INTEGER"],
        [],
        1,
    )
    r = client.execute("UPDATE t SET score = 0 WHERE id > ?", [1])
    assert r.rowcount == 3 and r.lastrowid is None
    r = client.execute("DELETE FROM t WHERE name = :n", {"n": "d"})
    assert r.rowcount == 1
    r = client.execute("INSERT INTO t(name) VALUES ('z') RETURNING id, name")
    assert r.rows == [[4, "z"]] and r.columns == ["id", "name"]


def test_parameter_errors(client: ShardClient) -> None:
    client.execute("CREATE TABLE p(a, b)")
    expect_error(lambda: client.execute("INSERT INTO p VALUES (?, ?)", [1]), "INVALID_PARAMETERS")
    expect_error(
        lambda: client.execute("INSERT INTO p VALUES (?, ?)", [1, 2, 3]), "INVALID_PARAMETERS"
    )
    expect_error(
        lambda: client.execute("INSERT INTO p VALUES (:a, :b)", {"a": 1}), "INVALID_PARAMETERS"
    )
    expect_error(
        lambda: client.execute("INSERT INTO p VALUES (?, ?)", [1, [2]]), "INVALID_PARAMETERS"
    )
    expect_error(
        lambda: client.execute("INSERT INTO p VALUES (?, ?)", [1, 2**63]), "INVALID_PARAMETERS"
    )
    expect_error(
        lambda: client.executemany("INSERT INTO p VALUES (?, ?)", [[1]]), "INVALID_PARAMETERS"
    )
    assert client.execute("SELECT count(*) FROM p").rows == [[0]]


def test_sql_errors_are_typed(client: ShardClient) -> None:
    expect_error(lambda: client.execute("SELEC 1"), "SYNTAX_ERROR")
    expect_error(lambda: client.execute("SELECT (1"), "SYNTAX_ERROR")
    expect_error(lambda: client.execute("SELECT * FROM missing"), "TABLE_NOT_FOUND")
    expect_error(lambda: client.execute("SELECT nope FROM sqlite_master"), "QUERY_ERROR")
    expect_error(lambda: client.execute("SELECT 1; SELECT 2"), "QUERY_ERROR")
    client.execute(
        "CREATE TABLE u(id INTEGER PRIMARY KEY, e TEXT UNIQUE, n NOT NULL CHECK (n > 0))"
    )
    client.execute("INSERT INTO u VALUES (1, 'a', 1)")
    expect_error(lambda: client.execute("INSERT INTO u VALUES (1, 'b', 1)"), "UNIQUE_CONSTRAINT")
    expect_error(lambda: client.execute("INSERT INTO u VALUES (2, 'a', 1)"), "UNIQUE_CONSTRAINT")
    expect_error(
        lambda: client.execute("INSERT INTO u VALUES (2, 'b', NULL)"), "CONSTRAINT_VIOLATION"
    )
    expect_error(
        lambda: client.execute("INSERT INTO u VALUES (2, 'b', -1)"), "CONSTRAINT_VIOLATION"
    )
    # The failed statements left no change in the log.
    ops = [(c.table, c.op) for c in client.all_changes()]
    assert ops == [("u", "schema"), ("u", "insert")]
    assert client.ping().info["shard"] == "shard-0"


def test_transactions_and_sql_transaction_control(client: ShardClient) -> None:
    client.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    client.begin("immediate")
    client.execute("INSERT INTO t VALUES (1, 'a')")
    client.execute("INSERT INTO t VALUES (2, 'b')")
    client.commit()
    client.begin()
    client.execute("INSERT INTO t VALUES (3, 'c')")
    client.rollback()
    r = client.execute("BEGIN IMMEDIATE")
    assert r.columns == [] and r.rows == []
    client.execute("UPDATE t SET v = 'x' WHERE id = 1")
    expect_error(lambda: client.begin(), "TRANSACTION_STATE")
    client.execute("COMMIT")
    client.execute("begin transaction;")
    client.execute("DELETE FROM t WHERE id = 2")
    client.execute("ROLLBACK")
    # A failing statement inside a transaction leaves the transaction usable.
    client.execute("BEGIN")
    client.execute("INSERT INTO t VALUES (5, 'e')")
    expect_error(lambda: client.execute("INSERT INTO t VALUES (5, 'dup')"), "UNIQUE_CONSTRAINT")
    client.execute("END")
    assert client.execute("SELECT id, v FROM t ORDER BY id").rows == [[1, "x"], [2, "b"], [5, "e"]]
    # VACUUM is the one statement that runs outside any transaction.
    client.begin()
    expect_error(lambda: client.execute("VACUUM"), "TRANSACTION_STATE")
    client.rollback()
    assert client.execute("vacuum;").columns == []
    # Commit/Rollback without a transaction are no-ops.
    client.commit()
    client.rollback()
    changes = [c for c in client.all_changes() if c.op != "schema"]
    assert [(c.op, c.key) for c in changes] == [
        ("insert", [1]),
        ("insert", [2]),
        ("update", [1]),
        ("insert", [5]),
    ]
    assert changes[0].txid == changes[1].txid != changes[2].txid != changes[3].txid
    assert changes[0].commit_ts == changes[1].commit_ts
    # Statement-level control SQL in the middle of a statement is refused.
    expect_error(lambda: client.execute("SAVEPOINT a; COMMIT"), "QUERY_ERROR")


def test_chunked_streaming_of_a_large_result(client: ShardClient) -> None:
    n = 50_000
    client.execute(
        "CREATE TABLE big AS WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r "
        f"WHERE i < {n}) SELECT i, 'row ' || i AS label FROM r"
    )
    rid = client.next_id()
    client.send(protocol.Execute(rid, "SELECT i, label FROM big ORDER BY i"))
    chunks: list[protocol.Result] = []
    while True:
        msg = client.recv()
        assert isinstance(msg, protocol.Result) and msg.id == rid
        chunks.append(msg)
        if msg.done:
            break
    assert len(chunks) >= n // 1000  # shard.result_chunk_rows = 1000
    assert max(len(c.rows) for c in chunks) <= 1000
    assert chunks[0].columns == ["i", "label"] and all(c.columns is None for c in chunks[1:])
    rows = [r for c in chunks for r in c.rows]
    assert len(rows) == n and rows[0] == [1, "row 1"] and rows[-1] == [n, f"row {n}"]
    assert client.ping()
    # Wide rows are chunked by size too (max message 16 MiB): 40 rows of 1 MiB.
    r = client.execute(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 40) "
        "SELECT i, zeroblob(1048576) FROM r"
    )
    assert len(r.rows) == 40 and r.chunks >= 10 and len(r.rows[-1][1]) == 1048576


def test_change_log_ops_meta_and_release(client: ShardClient) -> None:
    assert client.lsn_info() == {"current_lsn": 0, "oldest_lsn": 1}
    client.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    client.executemany("INSERT INTO t VALUES (?, ?)", [[i, f"v{i}"] for i in range(10)])
    info = client.lsn_info()
    assert info == {"current_lsn": 11, "oldest_lsn": 1}
    got = client.read_changes(3, limit=4)
    assert [c.lsn for c in got.changes] == [3, 4, 5, 6] and got.current_lsn == 11
    assert [c.table for c in client.read_changes(1, 100, table="t").changes] == ["t"] * 11
    assert client.read_changes(1, 100, table="other").changes == []
    client.request(protocol.MetaSet(client.next_id(), "vschema/tables/t", "unsharded"))
    client.request(protocol.MetaSet(client.next_id(), "seq/x", "5"))
    values = client.request(protocol.MetaGet(client.next_id(), "vschema/")).info["values"]
    assert values == {"vschema/tables/t": "unsharded"}
    client.request(protocol.MetaSet(client.next_id(), "seq/x", None))
    assert client.request(protocol.MetaGet(client.next_id())).info["values"] == {
        "vschema/tables/t": "unsharded",
        protocol.META_VERSION_KEY: "3",  # every MetaSet bumps it: routers poll it
    }
    assert client.lsn_info()["current_lsn"] == 11  # metadata is not captured
    ok = client.request(protocol.ReleaseChanges(client.next_id(), 6))
    assert ok.info == {"current_lsn": 11, "oldest_lsn": 7}
    assert client.read_changes(1, 100).changes[0].lsn == 7
    client.request(protocol.ReleaseChanges(client.next_id(), 11))
    assert client.lsn_info() == {"current_lsn": 11, "oldest_lsn": 12}
    client.execute("INSERT INTO t VALUES (99, 'after release')")
    changes = client.read_changes(1).changes
    assert [c.lsn for c in changes] == [12] and changes[0].txid > 2


def test_bad_frames_keep_the_connection_and_process(shard: ShardProcess) -> None:
    with shard.client() as c:
        c.ws.send(b"\xc1\xff garbage")
        err = c.recv()
        assert isinstance(err, protocol.Error) and err.code == "INVALID_MESSAGE" and err.id is None
        c.ws.send(msgspec.msgpack.encode({"t": "frobnicate", "id": 7}))
        err = c.recv()
        assert err.code == "INVALID_MESSAGE" and err.id == 7
        c.ws.send(msgspec.msgpack.encode({"t": "exec", "id": 8, "sql": 5}))
        err = c.recv()
        assert err.code == "INVALID_MESSAGE" and err.id == 8
        c.ws.send("a text frame")
        assert c.recv().code == "INVALID_MESSAGE"
        # Parameters nested 100,000 deep (regression: RecursionError closed the connection)
        deep = b"\x84\xa1t\xa4exec\xa2id\x0a\xa3sql\xa1x\xa6params" + b"\x91" * 100_000 + b"\xc0"
        c.ws.send(deep)
        err = c.recv()
        assert err.code == "INVALID_MESSAGE" and "nested too deeply" in err.message
        # A message the shard does not serve (valid protocol, wrong direction).
        c.send(protocol.Committed(shard="x", lsn=1))
        assert c.recv().code == "INVALID_MESSAGE"
        assert c.ping().id > 0
        # Oversized frame: the connection is closed with 1009, the process keeps serving.
        c.ws.send(protocol.encode(protocol.Execute(9, "SELECT ?", ["x" * (17 * 1024 * 1024)])))
        with pytest.raises(ConnectionClosed) as info:
            c.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    # A client that leaves in the middle of a streamed result.
    c = shard.client()
    c.send(
        protocol.Execute(
            1,
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 10000000) "
            "SELECT i, 'some padding text' FROM r",
        )
    )
    assert isinstance(c.recv(), protocol.Result)
    c.ws.close()
    assert shard.alive()
    with shard.client() as c:
        assert c.execute("SELECT 1").rows == [[1]]
    assert "request failed" not in shard.log.read_text()


def test_internal_tables_are_protected(client: ShardClient) -> None:
    client.execute("CREATE TABLE t(id INTEGER PRIMARY KEY)")
    client.execute("INSERT INTO t VALUES (1)")
    for sql in (
        "INSERT INTO _dosql_changes(txid, tbl, op) VALUES (1, 't', 'insert')",
        "DELETE FROM _dosql_changes",
        "UPDATE _dosql_tx SET commit_ts = 0",
        "DROP TABLE _dosql_changes",
        "ALTER TABLE _dosql_meta ADD COLUMN x",
        "CREATE TABLE _dosql_mine(x)",
        "CREATE INDEX i ON _dosql_changes(tbl)",
        'DROP TRIGGER "_dosql_trg_t_insert"',
        "CREATE TRIGGER _dosql_trg_evil AFTER INSERT ON t BEGIN SELECT 1; END",
        "DELETE FROM sqlite_sequence",
        "SELECT _dosql_txid()",
    ):
        exc = expect_error(lambda sql=sql: client.execute(sql), "INTERNAL_TABLE")
        assert "internal" in exc.message
    # A user trigger that tries to write the log is refused when it fires.
    client.execute("CREATE TRIGGER sneaky AFTER INSERT ON t BEGIN DELETE FROM _dosql_changes; END")
    expect_error(lambda: client.execute("INSERT INTO t VALUES (2)"), "INTERNAL_TABLE")
    client.execute("DROP TRIGGER sneaky")
    expect_error(lambda: client.execute("PRAGMA journal_mode = DELETE"), "PERMISSION_DENIED")
    expect_error(lambda: client.execute("ATTACH ':memory:' AS x"), "PERMISSION_DENIED")
    # The shard's own bookkeeping statements, sent verbatim, are refused too.
    for _ in range(2):
        client.execute("INSERT INTO t VALUES (NULL)")
        expect_error(
            lambda: client.execute(
                "INSERT INTO _dosql_tx(txid, commit_ts) VALUES (?, ?)", [999, 0]
            ),
            "INTERNAL_TABLE",
        )
    client.execute("DELETE FROM t WHERE id > 1")
    # Reading the log with SQL is fine; it is intact.
    assert client.execute("SELECT count(*) FROM _dosql_changes").rows == [[6]]
    client.execute("INSERT INTO t VALUES (3)")
    ops = [(c.op, c.key) for c in client.all_changes()]
    assert ops == [
        ("schema", None),
        ("insert", [1]),
        ("insert", [2]),
        ("insert", [3]),
        ("delete", [2]),
        ("delete", [3]),
        ("insert", [3]),
    ]


def test_read_scope_and_tokens(tmp_path) -> None:
    shard = ShardProcess(tmp_path / "auth.db", env={"DOSQL_TOKENS": "rtok:read,atok:admin"})
    shard.start()
    try:
        with pytest.raises(Exception):  # noqa: B017 - handshake refused (HTTP 401)
            ShardClient(shard.url)
        with shard.client("atok") as admin, shard.client("rtok") as reader:
            admin.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            admin.execute("INSERT INTO t VALUES (1, 'a')")
            assert reader.execute("SELECT v FROM t").rows == [["a"]]
            for sql in (
                "INSERT INTO t VALUES (2, 'b')",
                "UPDATE t SET v = 'z'",
                "DELETE FROM t",
                "DROP TABLE t",
                "CREATE TABLE r(x)",
                "CREATE TEMP TABLE r(x)",
                "PRAGMA user_version = 3",
            ):
                expect_error(lambda sql=sql: reader.execute(sql), "READ_ONLY")
            expect_error(lambda: reader.begin("immediate"), "READ_ONLY")
            expect_error(lambda: reader.execute("VACUUM"), "READ_ONLY")
            reader.begin()
            assert reader.execute("SELECT count(*) FROM t").rows == [[1]]
            expect_error(lambda: reader.execute("INSERT INTO t VALUES (3, 'c')"), "READ_ONLY")
            reader.commit()
            expect_error(
                lambda: reader.request(protocol.MetaSet(reader.next_id(), "k", "v")),
                "PERMISSION_DENIED",
            )
            expect_error(
                lambda: reader.request(protocol.ReleaseChanges(reader.next_id(), 1)),
                "PERMISSION_DENIED",
            )
            assert len(reader.all_changes()) == 2
            # Statements the admin prepared on a pooled connection are authorized again
            # for the reader (no prepared-statement cache can carry an admin's rights).
            for _ in range(3):
                admin.execute("UPDATE t SET v = ? WHERE id = ?", ["b", 1])
                expect_error(
                    lambda: reader.execute("UPDATE t SET v = ? WHERE id = ?", ["r", 1]),
                    "READ_ONLY",
                )
            assert admin.execute("SELECT count(*) FROM t").rows == [[1]]
    finally:
        shard.kill()


def test_query_timeout_interrupts_and_connection_stays_usable(client: ShardClient) -> None:
    long_query = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
    )
    started = time.monotonic()
    expect_error(lambda: client.execute(long_query, timeout_ms=300), "QUERY_TIMEOUT")
    assert time.monotonic() - started < 5
    assert client.execute("SELECT 1").rows == [[1]]
    # Inside a transaction: the whole transaction is rolled back, and the error says so.
    client.execute("CREATE TABLE t(x)")
    client.begin()
    client.execute("INSERT INTO t VALUES (1)")
    exc = expect_error(lambda: client.execute(long_query, timeout_ms=200), "QUERY_TIMEOUT")
    assert exc.details.get("transaction_rolled_back") is True
    client.begin()  # the session is back to no transaction
    client.execute("INSERT INTO t VALUES (2)")
    client.commit()
    assert client.execute("SELECT x FROM t").rows == [[2]]


def test_http_endpoints(shard: ShardProcess, client: ShardClient) -> None:
    client.execute("CREATE TABLE t(x)")
    client.execute("INSERT INTO t VALUES (1)")
    client.begin()
    status, body = http_get(shard, "/status")
    st = json.loads(body)
    assert status == 200 and st["shard"] == "shard-0" and st["current_lsn"] == 2
    assert st["open_transactions"] == 1 and st["sessions"] == 1 and st["oldest_lsn"] == 1
    client.rollback()
    status, body = http_get(shard, "/health/deep")
    assert status == 200 and json.loads(body)["status"] == "ok"
    expect_error(lambda: client.execute("SELEC"), "SYNTAX_ERROR")
    status, body = http_get(shard, "/metrics")
    text = body.decode()
    for name in (
        "dosql_query_duration_seconds_bucket",
        "dosql_query_duration_ms_bucket",  # the operations guide's names, kept as aliases
        "dosql_active_transactions",
        "dosql_wal_segments",
        "dosql_wal_segment_count",
        "dosql_storage_used_bytes",
        "dosql_connections 1.0",
        "dosql_connection_count 1.0",
        'dosql_errors_total{code="SYNTAX_ERROR"} 1.0',
        "dosql_current_lsn 2.0",
        "dosql_changes_total 2.0",
    ):
        assert name in text, name


def test_costly_reads_move_off_the_event_loop_with_the_same_answers(
    shard: ShardProcess, client: ShardClient
) -> None:
    """A point read is answered inline; one past the step budget is re-run on a
    thread and still gives its full answer, and errors stay typed on both paths."""
    client.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
    client.executemany("INSERT INTO t VALUES (?, ?)", [[i, i * 2] for i in range(30000)])
    assert client.execute("SELECT v FROM t WHERE id = ?", [7]).rows == [[14]]
    costly = (
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) "
        "SELECT count(*), sum(i) FROM n"
    )
    assert client.execute(costly).rows == [[200000, 200000 * 200001 // 2]]
    big = client.execute("SELECT id, v FROM t ORDER BY id")
    assert big.rows == [[i, i * 2] for i in range(30000)] and big.chunks > 1
    expect_error(lambda: client.execute("SELECT nope FROM t"), "QUERY_ERROR")
    # one VM instruction each, but a lot of work: a whole-table count, a large value
    assert client.execute("SELECT count(*) FROM t").rows == [[30000]]
    assert client.execute("SELECT length(zeroblob(3000000))").rows == [[3000000]]
    assert client.execute("SELECT v FROM t WHERE id = ?", [8]).rows == [[16]]  # still usable
    text = http_get(shard, "/metrics")[1].decode()
    # the recursive CTE, the 30,000-row scan, the count and the large blob: thread
    assert 'dosql_autocommit_reads_total{path="thread"} 4.0' in text
    # the two point reads and the failing read: inline
    assert 'dosql_autocommit_reads_total{path="inline"} 3.0' in text
