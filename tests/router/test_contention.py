"""Writers wait their turn (issue 15, build item 3), through real router and shard processes.

Writers queue fairly for each shard's write lock instead of failing; a
deadlock between two router transactions is broken at once with DEADLOCK; a
wait past ``lock_timeout_ms`` is DATABASE_LOCKED with a message that says so.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dosql
from dosql.cluster import LocalCluster
from tests.router.conftest import quickstart_vschema, write_config

HOT = 7  # the hot tenant


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("contention")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        conn = dosql.connect(c.url, timeout=30)
        conn.autocommit = True
        conn.cursor().execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, name TEXT)"
        )
        conn.close()
        yield c


def tenant_on(cluster: LocalCluster, shard_id: str, skip: int = 0) -> int:
    found = [t for t in range(1, 500) if cluster.vschema.shard_for("users", t) == shard_id]
    return found[skip]


class Ids:
    def __init__(self, start: int) -> None:
        self._next = start
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next


def count(cluster: LocalCluster, where: str, params: tuple[Any, ...] = ()) -> int:
    conn = dosql.connect(cluster.url, timeout=30)
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT count(*) FROM users WHERE {where}", params)
        return int(cur.fetchone()[0])
    finally:
        conn.close()


def run_threads(n: int, work: Any) -> None:
    errors: list[BaseException] = []

    def wrapped(i: int) -> None:
        try:
            work(i)
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not [t for t in threads if t.is_alive()], "a writer never finished"
    assert not errors, errors[:3]


def test_sixteen_threads_on_one_hot_shard_all_commit(cluster: LocalCluster) -> None:
    ids = Ids(1_000_000)
    failures: collections.Counter[str] = collections.Counter()
    per_thread, writes = 8, 3

    def work(i: int) -> None:
        conn = dosql.connect(cluster.url, timeout=60)  # default: autocommit off
        cur = conn.cursor()
        try:
            for _ in range(per_thread):
                try:
                    for _ in range(writes):
                        cur.execute(
                            "INSERT INTO users VALUES (?, ?, ?)", (ids.take(), HOT, f"t{i}")
                        )
                    conn.commit()
                except dosql.Error as exc:
                    failures[getattr(exc, "code", type(exc).__name__)] += 1
                    conn.rollback()
        finally:
            conn.close()

    before = count(cluster, "tenant_id = ?", (HOT,))
    run_threads(16, work)
    assert failures == {}  # in particular 0 DATABASE_LOCKED
    assert count(cluster, "tenant_id = ?", (HOT,)) - before == 16 * per_thread * writes


def test_mixed_workload_has_no_database_locked(cluster: LocalCluster) -> None:
    """2–4 threads, transactions over random tenants and the hot one (several shards)."""
    ids = Ids(2_000_000)
    failures: collections.Counter[str] = collections.Counter()
    committed: list[list[int]] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        rnd = random.Random(i)
        conn = dosql.connect(cluster.url, timeout=60)
        cur = conn.cursor()
        try:
            for _ in range(42):
                while True:  # a DEADLOCK victim is rolled back: retry, as the error says
                    rows = [ids.take() for _ in range(rnd.randint(2, 4))]
                    try:
                        for rid in rows:
                            tenant = HOT if rnd.random() < 0.5 else rnd.randint(1, 1000)
                            cur.execute("INSERT INTO users VALUES (?, ?, 'm')", (rid, tenant))
                            time.sleep(rnd.random() * 0.003)
                        conn.commit()
                        with lock:
                            committed.append(rows)
                        break
                    except dosql.Error as exc:
                        code = getattr(exc, "code", type(exc).__name__)
                        failures[code] += 1
                        conn.rollback()
                        if code != "DEADLOCK":
                            break
        finally:
            conn.close()

    run_threads(4, work)
    assert set(failures) <= {"DEADLOCK"}, failures
    assert len(committed) == 4 * 42
    assert count(cluster, "id > 2000000") == sum(len(r) for r in committed)


def test_deferred_begin_write_then_read_then_write_never_conflicts(cluster: LocalCluster) -> None:
    """A transaction whose first statement on a shard writes holds its lock from then on.

    Each transaction writes the hot counter, reads it back and writes the value
    it read plus one, after a plain (deferred) BEGIN: no snapshot conflict, no
    lost update.
    """
    setup = dosql.connect(cluster.url, timeout=30)
    setup.autocommit = True
    setup.cursor().execute("CREATE TABLE counters (tenant_id INTEGER PRIMARY KEY, n INTEGER)")
    setup.cursor().execute("INSERT INTO counters VALUES (?, 0)", (HOT,))
    per_thread = 10

    def work(i: int) -> None:
        conn = dosql.connect(cluster.url, timeout=60)
        conn.autocommit = True  # transactions by SQL text: a plain (deferred) BEGIN
        cur = conn.cursor()
        try:
            for _ in range(per_thread):
                cur.execute("BEGIN")
                cur.execute("UPDATE counters SET n = n + 1 WHERE tenant_id = ?", (HOT,))
                cur.execute("SELECT n FROM counters WHERE tenant_id = ?", (HOT,))
                (n,) = cur.fetchone()
                cur.execute("UPDATE counters SET n = ? WHERE tenant_id = ?", (n + 1, HOT))
                cur.execute("COMMIT")
        finally:
            conn.close()

    run_threads(4, work)
    cur = setup.cursor()
    cur.execute("SELECT n FROM counters WHERE tenant_id = ?", (HOT,))
    assert cur.fetchone() == (2 * 4 * per_thread,)
    setup.close()


@pytest.mark.parametrize("deferred_begin", [False, True])
@pytest.mark.parametrize("victim_waits_first", [False, True])
def test_cross_shard_deadlock_fails_the_youngest_at_once(
    cluster: LocalCluster, victim_waits_first: bool, deferred_begin: bool
) -> None:
    """A holds shard-1 and wants shard-2; B holds shard-2 and wants shard-1.

    B (younger) is failed with DEADLOCK well under the 5 s lock timeout,
    whether B's wait closes the cycle or A's does (then B's pending wait is
    cancelled); A commits. After a plain (deferred) BEGIN too: the router opens
    a shard session for a write IMMEDIATE, so the wait is one it sees.
    """
    t1, t2 = tenant_on(cluster, "shard-1"), tenant_on(cluster, "shard-2")
    base = 3_000_000 + 100 * (2 * victim_waits_first + deferred_begin)
    a = dosql.connect(cluster.url, timeout=30)
    b = dosql.connect(cluster.url, timeout=30)
    try:
        ca, cb = a.cursor(), b.cursor()
        if deferred_begin:
            a.autocommit = b.autocommit = True
            ca.execute("BEGIN")
            cb.execute("BEGIN")
        ca.execute("INSERT INTO users VALUES (?, ?, 'a1')", (base + 1, t1))  # A holds shard-1
        cb.execute("INSERT INTO users VALUES (?, ?, 'b1')", (base + 2, t2))  # B holds shard-2
        outcome: dict[str, Any] = {}

        def second_write(name: str, cur: Any, rid: int, tenant: int) -> None:
            started = time.monotonic()
            try:
                cur.execute("INSERT INTO users VALUES (?, ?, ?)", (rid, tenant, name))
                outcome[name] = ("ok", time.monotonic() - started)
            except dosql.Error as exc:
                outcome[name] = (exc, time.monotonic() - started)

        first, second = (("b", cb, base + 3, t1), ("a", ca, base + 4, t2))
        if not victim_waits_first:
            first, second = second, first
        th = threading.Thread(target=second_write, args=first)
        th.start()
        time.sleep(0.3)  # the first waiter is queued on the other's shard
        assert first[0] not in outcome
        second_write(*second)
        th.join(10)
        exc, took = outcome["b"]
        assert isinstance(exc, dosql.OperationalError), exc
        assert exc.code == "DEADLOCK" and "retry" in exc.message
        assert took < (1.5 if not victim_waits_first else 2.0)
        b.rollback()
        assert outcome["a"][0] == "ok"
        a.commit()
    finally:
        a.close()
        b.close()
    assert count(cluster, "id > ? AND id <= ?", (base, base + 4)) == 2  # A's two rows only
    assert count(cluster, "id = ? OR id = ?", (base + 1, base + 4)) == 2


def test_lock_wait_past_lock_timeout_is_database_locked(tmp_path: Any) -> None:
    cfg = write_config(tmp_path / "dosql.toml", quickstart_vschema(n_shards=2))
    env = {"DOSQL_LOCK_TIMEOUT_MS": "400"}
    with LocalCluster(cfg, tmp_path / "data", lake=False, env=env) as c:
        a = dosql.connect(c.url, timeout=30)
        b = dosql.connect(c.url, timeout=30)
        try:
            a.autocommit = True
            a.cursor().execute("CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER)")
            a.autocommit = False
            a.cursor().execute("INSERT INTO users VALUES (1, ?)", (HOT,))  # holds the shard
            started = time.monotonic()
            with pytest.raises(dosql.OperationalError) as info:
                b.cursor().execute("INSERT INTO users VALUES (2, ?)", (HOT,))
            waited = time.monotonic() - started
            assert info.value.code == "DATABASE_LOCKED"
            assert "waited" in info.value.message and "lock_timeout_ms" in info.value.message
            assert 0.35 < waited < 3
            b.rollback()
            a.commit()
            b.cursor().execute("INSERT INTO users VALUES (2, ?)", (HOT,))
            b.commit()
        finally:
            a.close()
            b.close()
