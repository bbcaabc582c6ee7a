"""The shard's FIFO write lock (dosql/shard/writelock.py) and its use by real shard sessions."""

from __future__ import annotations

import threading
import time
import urllib.request

import pytest
import trio

from dosql.errors import StorageError
from dosql.shard.writelock import WriteLock, takes_write_lock
from tests.shard.client import ShardProcess, expect_error


async def test_writers_get_the_lock_in_arrival_order() -> None:
    waits: list[float] = []
    lock = WriteLock("shard-0", observe=waits.append)
    order: list[int] = []
    await lock.acquire("first", timeout=1)

    async def writer(i: int) -> None:
        await lock.acquire(i, timeout=5)
        order.append(i)
        await trio.sleep(0.001)
        lock.release(i)

    async with trio.open_nursery() as nursery:
        for i in range(10):
            nursery.start_soon(writer, i)
            await trio.sleep(0.001)  # arrival order 0, 1, 2 …
        assert lock.waiting == 10
        lock.release("first")
    assert order == list(range(10))
    assert lock.holder is None and lock.waiting == 0
    assert len(waits) == 11 and waits[0] == 0.0 and max(waits) > 0


async def test_a_wait_past_the_timeout_is_database_locked_naming_the_setting() -> None:
    lock = WriteLock("shard-3")
    await lock.acquire("holder", timeout=1)
    with pytest.raises(StorageError) as info:
        await lock.acquire("late", timeout=0.05)
    exc = info.value
    assert exc.code == "DATABASE_LOCKED"
    assert "lock_timeout_ms" in exc.message and "DOSQL_LOCK_TIMEOUT_MS" in exc.message
    assert "shard-3" in exc.message and exc.details["waited_ms"] >= 50
    assert lock.waiting == 0  # the timed-out writer left the queue
    lock.release("holder")
    assert await lock.acquire("next", timeout=0.01) == 0.0


async def test_a_cancelled_waiter_never_keeps_the_lock() -> None:
    lock = WriteLock("shard-0")
    await lock.acquire("holder", timeout=1)
    with trio.move_on_after(0.02):
        await lock.acquire("cancelled", timeout=5)
    assert lock.waiting == 0 and lock.holds("holder")
    lock.release("holder")
    assert lock.holder is None


async def test_release_by_a_non_holder_is_a_no_op_and_transfer_keeps_the_lock() -> None:
    lock = WriteLock("shard-0")
    ticket, state = object(), object()
    await lock.acquire(ticket, timeout=1)
    lock.release("someone else")
    assert lock.holds(ticket)
    lock.transfer(ticket, state)
    assert lock.holds(state) and not lock.holds(ticket)
    lock.release(ticket)  # the old owner no longer holds it
    assert lock.holds(state)
    with pytest.raises(RuntimeError):
        lock.transfer(ticket, "x")
    lock.release(state)
    assert lock.holder is None


def test_which_statements_take_the_write_lock() -> None:
    for sql in (
        "INSERT INTO t VALUES (1)",
        "UPDATE t SET v = 1",
        "WITH x AS (SELECT 1) DELETE FROM t",
        "CREATE TABLE u (a)",
        "ANALYZE",
        "PRAGMA user_version = 3",
    ):
        assert takes_write_lock(sql), sql
    for sql in (
        "SELECT 1",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "SAVEPOINT a",
        "RELEASE a",
        "PRAGMA table_info(t)",
    ):
        assert not takes_write_lock(sql), sql


# ---------------------------------------------------------------------- a real shard


@pytest.fixture
def shard(tmp_path):
    proc = ShardProcess(tmp_path / "s.db", env={"DOSQL_LOCK_TIMEOUT_MS": "300"}).start()
    try:
        yield proc
    finally:
        proc.kill()


def test_second_immediate_writer_waits_then_commits(shard: ShardProcess) -> None:
    with shard.client() as a, shard.client() as b:
        a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        a.begin("immediate")
        a.execute("INSERT INTO t VALUES (1, 'a')")
        done: dict[str, float] = {}

        def second() -> None:
            started = time.monotonic()
            b.begin("immediate")
            b.execute("INSERT INTO t VALUES (2, 'b')")
            b.commit()
            done["waited"] = time.monotonic() - started

        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.15)
        assert "waited" not in done  # b queues behind a
        assert a.execute("SELECT count(*) FROM t").rows == [[1]]
        a.commit()
        t.join(5)
        assert done["waited"] >= 0.15
        assert b.execute("SELECT id FROM t ORDER BY id").rows == [[1], [2]]


def test_lock_wait_past_lock_timeout_is_database_locked(shard: ShardProcess) -> None:
    with shard.client() as a, shard.client() as b, shard.client() as r:
        a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        a.begin("immediate")
        a.execute("INSERT INTO t VALUES (1, 'a')")
        started = time.monotonic()
        exc = expect_error(lambda: b.execute("INSERT INTO t VALUES (2, 'b')"), "DATABASE_LOCKED")
        assert 0.25 < time.monotonic() - started < 3
        assert "lock_timeout_ms" in exc.message and "waited" in exc.message
        exc = expect_error(lambda: b.begin("immediate"), "DATABASE_LOCKED")
        assert r.execute("SELECT count(*) FROM t").rows == [[0]]  # readers never wait
        a.commit()
        b.execute("INSERT INTO t VALUES (2, 'b')")  # the lock came back
        assert r.execute("SELECT count(*) FROM t").rows == [[2]]


def test_closing_a_session_releases_its_lock_and_metrics_show_waits(shard: ShardProcess) -> None:
    with shard.client() as b:
        with shard.client() as a:
            a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
            a.begin("immediate")
        # a's session closed with its transaction open: rolled back, lock free
        b.begin("immediate")
        b.execute("INSERT INTO t VALUES (1, 'b')")
        b.commit()
        # a deferred transaction queues at its first write, and releases on rollback
        b.begin()
        b.execute("INSERT INTO t VALUES (2, 'b')")
        b.rollback()
        b.execute("INSERT INTO t VALUES (3, 'b')")
    with urllib.request.urlopen(f"http://127.0.0.1:{shard.port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert "dosql_write_lock_wait_seconds_bucket" in metrics
    assert "dosql_write_lock_waiters 0.0" in metrics


def test_a_timed_out_write_rolls_back_and_frees_the_lock(shard: ShardProcess) -> None:
    slow = (
        "INSERT INTO t(v) SELECT x FROM (WITH RECURSIVE c(x) AS "
        "(SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT x FROM c LIMIT 100000000)"
    )
    with shard.client() as a, shard.client() as b:
        a.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, v)")
        a.begin("immediate")
        exc = expect_error(lambda: a.execute(slow, timeout_ms=100), "QUERY_TIMEOUT")
        assert exc.details.get("transaction_rolled_back") is True
        started = time.monotonic()
        b.begin("immediate")  # the lock went with the rolled-back transaction
        assert time.monotonic() - started < 0.25
        b.execute("INSERT INTO t(v) VALUES (1)")
        b.commit()
        # an autocommit write that times out frees the lock as well
        expect_error(lambda: a.execute(slow, timeout_ms=100), "QUERY_TIMEOUT")
        b.execute("INSERT INTO t(v) VALUES (2)")
        assert b.execute("SELECT count(*) FROM t").rows == [[2]]
