"""Process-level behaviour: kill -9 crash safety, SIGTERM, concurrency, `dosql changes`."""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from dosql import protocol
from dosql.errors import DoSQLError
from tests.shard.client import REPO, ShardClient, ShardProcess, expect_error
from tests.shard.replay import assert_replica_matches


def test_kill_9_keeps_every_acknowledged_transaction(tmp_path: Path) -> None:
    shard = ShardProcess(tmp_path / "crash.db").start()
    acked: dict[str, list[int]] = {"tx": [], "auto": []}
    try:
        with shard.client() as c:
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, writer TEXT, n INTEGER, pad BLOB)")

        def tx_writer() -> None:
            try:
                with shard.client() as w:
                    for i in range(100_000):
                        w.begin("immediate")
                        w.execute(
                            "INSERT INTO t(writer, n, pad) VALUES ('tx', ?, ?)", [i, b"x" * 200]
                        )
                        w.execute("INSERT INTO t(writer, n) VALUES ('tx2', ?)", [i])
                        w.execute("UPDATE t SET pad = NULL WHERE writer = 'tx' AND n = ?", [i - 1])
                        w.commit()
                        acked["tx"].append(i)
            except Exception:
                return

        def auto_writer() -> None:
            try:
                with shard.client() as w:
                    for i in range(100_000):
                        w.execute("INSERT INTO t(writer, n) VALUES ('auto', ?)", [i])
                        acked["auto"].append(i)
            except Exception:
                return

        threads = [threading.Thread(target=tx_writer), threading.Thread(target=auto_writer)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 20
        while (len(acked["tx"]) < 50 or len(acked["auto"]) < 50) and time.monotonic() < deadline:
            time.sleep(0.05)
        shard.kill()  # SIGKILL, mid-stream
        for th in threads:
            th.join(30)
        assert len(acked["tx"]) >= 50 and len(acked["auto"]) >= 50

        shard.start()
        with shard.client() as c:
            rows = c.execute("SELECT writer, n FROM t").rows
            have = {(w, n) for w, n in rows}
            for i in acked["tx"]:
                assert ("tx", i) in have and ("tx2", i) in have
            for i in acked["auto"]:
                assert ("auto", i) in have
            # Transactions are atomic: no half transaction survived.
            assert {n for w, n in have if w == "tx"} == {n for w, n in have if w == "tx2"}
            changes = c.all_changes()
            assert [ch.lsn for ch in changes] == list(range(1, len(changes) + 1))
            assert_replica_matches(c, changes)
            # The restarted shard keeps numbering after what survived.
            c.execute("INSERT INTO t(writer, n) VALUES ('after', 0)")
            last = c.read_changes(len(changes) + 1).changes
            assert [ch.lsn for ch in last] == [len(changes) + 1]
            assert last[0].txid > changes[-1].txid and last[0].commit_ts >= changes[-1].commit_ts
    finally:
        shard.kill()


def test_sigterm_rolls_back_open_work_and_exits_cleanly(tmp_path: Path) -> None:
    shard = ShardProcess(tmp_path / "term.db").start()
    try:
        with shard.client() as c, shard.client() as open_tx:
            c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            c.execute("INSERT INTO t VALUES (1, 'kept')")
            open_tx.begin("immediate")
            open_tx.execute("INSERT INTO t VALUES (2, 'never committed')")
            # A long query in flight is interrupted by the shutdown.
            busy = shard.client()
            busy.send(
                protocol.Execute(
                    busy.next_id(),
                    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) "
                    "SELECT count(*) FROM r",
                    timeout_ms=600_000,
                )
            )
            time.sleep(0.3)
            started = time.monotonic()
            assert shard.terminate() == 0
            assert time.monotonic() - started < 10
            busy.ws.close()
        db = sqlite3.connect(tmp_path / "term.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT id, v FROM t").fetchall() == [(1, "kept")]
        assert db.execute("SELECT count(*) FROM _dosql_changes").fetchone()[0] == 2
        db.close()
        wal = tmp_path / "term.db-wal"
        assert not wal.exists() or wal.stat().st_size == 0  # checkpointed on the way out
        shard.start()
        with shard.client() as c:
            assert c.lsn_info() == {"current_lsn": 2, "oldest_lsn": 1}
    finally:
        shard.kill()


def test_long_write_transaction_does_not_block_readers(shard: ShardProcess) -> None:
    with shard.client() as a, shard.client() as b, shard.client() as w2:
        a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        a.execute("INSERT INTO t VALUES (1, 'committed')")
        a.begin("immediate")
        a.execute("INSERT INTO t VALUES (2, 'pending')")
        started = time.monotonic()
        assert b.execute("SELECT id, v FROM t").rows == [[1, "committed"]]
        b.begin()
        assert b.execute("SELECT count(*) FROM t").rows == [[1]]
        b.commit()
        assert time.monotonic() - started < 1.0
        # A second writer waits for the first, then succeeds.
        result: dict[str, object] = {}

        def second_writer() -> None:
            try:
                result["reply"] = w2.execute("INSERT INTO t VALUES (3, 'second')")
            except DoSQLError as exc:
                result["error"] = exc

        th = threading.Thread(target=second_writer)
        th.start()
        time.sleep(0.4)
        assert th.is_alive()  # still waiting for the write lock
        a.execute("INSERT INTO t VALUES (4, 'first again')")
        a.commit()
        th.join(10)
        assert "error" not in result and result["reply"].rowcount == 1
        changes = [ch for ch in a.all_changes() if ch.op != "schema"]
        by_key = {ch.key[0]: ch.txid for ch in changes}
        assert by_key[2] == by_key[4] and by_key[3] != by_key[2] and by_key[3] > by_key[2]
        assert b.execute("SELECT count(*) FROM t").rows == [[4]]


def test_concurrent_writers_get_distinct_txids(shard: ShardProcess) -> None:
    with shard.client() as c:
        c.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, writer INTEGER, n INTEGER)")
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            with shard.client() as w:
                for n in range(15):
                    w.begin("immediate" if k % 2 else "deferred")
                    w.execute("INSERT INTO t(writer, n) VALUES (?, ?)", [k, n])
                    w.execute("INSERT INTO t(writer, n) VALUES (?, ?)", [k, -n])
                    w.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    with shard.client() as c:
        changes = [ch for ch in c.all_changes() if ch.op == "insert"]
        assert len(changes) == 3 * 15 * 2
        groups: dict[int, list[int]] = {}
        for ch in changes:
            groups.setdefault(ch.txid, []).append(ch.after["writer"])
        assert len(groups) == 45 and all(len(set(g)) == 1 and len(g) == 2 for g in groups.values())
        assert all(a.commit_ts <= b.commit_ts for a, b in zip(changes, changes[1:], strict=False))


def test_dosql_changes_prints_the_log(shard: ShardProcess, client: ShardClient) -> None:
    client.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, b BLOB, f REAL, s TEXT)")
    client.execute("CREATE TABLE other(x)")
    client.execute("INSERT INTO t VALUES (1, x'00ff', 0.1, 'é')")
    client.execute("UPDATE t SET s = 'z' WHERE id = 1")
    client.execute("INSERT INTO other VALUES (1)")
    out = subprocess.run(
        [sys.executable, "-m", "dosql.cli", "changes", "--db", str(shard.db), "--table", "t"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(r["lsn"], r["table"], r["op"]) for r in lines] == [
        (1, "t", "schema"),
        (3, "t", "insert"),
        (4, "t", "update"),
    ]
    ins = lines[1]
    assert ins["after"] == {
        "id": 1,
        "b": {"$base64": base64.b64encode(b"\0\xff").decode()},
        "f": 0.1,
        "s": "é",
    }
    assert ins["key"] == [1] and ins["before"] is None and ins["txid"] > 0
    parsed = datetime.strptime(ins["commit_ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert int(parsed.timestamp() * 1_000_000) == ins["commit_ts_us"]
    assert lines[0]["schema"]["action"] == "create"
    out = subprocess.run(
        [sys.executable, "-m", "dosql.cli", "changes", "--db", str(shard.db), "--from-lsn", "4"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=True,
    ).stdout
    assert [json.loads(line)["lsn"] for line in out.splitlines()] == [4, 5]
    bad = subprocess.run(
        [sys.executable, "-m", "dosql.cli", "changes", "--db", str(shard.db) + ".missing"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
    )
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    expect_error(lambda: client.execute("DELETE FROM _dosql_changes"), "INTERNAL_TABLE")


def test_lake_url_starts_the_streamer_without_blocking_service(tmp_path: Path) -> None:
    # Nothing listens on the lake port: the streamer keeps retrying, the shard keeps serving.
    shard = ShardProcess(tmp_path / "cdc.db", args=("--lake-url", "ws://127.0.0.1:9/"))
    shard.start()
    try:
        with shard.client() as c:
            c.execute("CREATE TABLE t(x)")
            c.execute("INSERT INTO t VALUES (1)")
            time.sleep(0.5)
            assert c.execute("SELECT x FROM t").rows == [[1]]
            assert c.lsn_info() == {"current_lsn": 2, "oldest_lsn": 1}  # nothing released
        assert shard.alive()
        assert "CDC" in shard.log.read_text()  # the streamer ran and reported its retries
        assert shard.terminate() == 0
    finally:
        shard.kill()


def test_a_database_created_outside_the_shard_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "adopt.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE pre(id INTEGER PRIMARY KEY, v TEXT)")
    db.executemany("INSERT INTO pre VALUES (?, ?)", [(1, "one"), (2, "two")])
    db.commit()
    db.close()
    shard = ShardProcess(path).start()
    try:
        with shard.client() as c:
            c.execute("UPDATE pre SET v = 'uno' WHERE id = 1")
            changes = c.all_changes()
            assert [(ch.op, ch.key) for ch in changes] == [
                ("schema", None),
                ("insert", [1]),
                ("insert", [2]),
                ("update", [1]),
            ]
            assert_replica_matches(c, changes)
    finally:
        shard.kill()


def test_deferred_transaction_that_lost_its_snapshot_gets_a_clear_error(
    shard: ShardProcess,
) -> None:
    with shard.client() as a, shard.client() as b:
        a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        a.execute("INSERT INTO t VALUES (1, 0)")
        a.begin()  # deferred
        assert a.execute("SELECT v FROM t").rows == [[0]]  # snapshot taken
        b.execute("UPDATE t SET v = 1")  # another session commits meanwhile
        exc = expect_error(lambda: a.execute("UPDATE t SET v = 2"), "TRANSACTION_CONFLICT")
        assert "immediate" in exc.message
        a.rollback()
        a.begin("immediate")
        a.execute("UPDATE t SET v = v + 10")
        a.commit()
        assert b.execute("SELECT v FROM t").rows == [[11]]
