"""The driver's transaction state mirrors the router's (issue 15, Build 1).

Real processes: a LocalCluster (4 shards, a router) and kill -9 of a shard in
the middle of client transactions, plus a loopback TCP proxy between the
driver and the router that can cut the socket (a dropped connection, a lost
reply to Commit). Regression tests for the two driver defects of the issue:
a commit that raised, then returned normally on the second call, losing the
row; and a write after a rolled-back statement that was committed anyway.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import dosql
from dosql.cluster import LocalCluster
from tests.router.conftest import quickstart_vschema, shard_rows, write_config


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    tmp = tmp_path_factory.mktemp("drvtx")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with dosql.connect(c.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE users (tenant_id INTEGER PRIMARY KEY, name TEXT)")
        yield c


def key_on(cluster: LocalCluster, shard_id: str, start: int) -> int:
    return next(
        i for i in range(start, 10_000) if cluster.vschema.shard_for("users", i) == shard_id
    )


def names(cluster: LocalCluster, like: str) -> list[str]:
    """What is committed, read from the shard files themselves."""
    sql = f"SELECT name FROM users WHERE name LIKE '{like}'"
    return sorted(r[0] for s in cluster.vschema.shards for r in shard_rows(cluster, s.id, sql))


@contextlib.contextmanager
def killed(cluster: LocalCluster, shard_id: str) -> Iterator[None]:
    """kill -9 a shard for the block; restart it and wait until the router reaches it."""
    cluster.kill_shard(shard_id)
    try:
        yield
    finally:
        cluster.start_shard(shard_id)
        key = key_on(cluster, shard_id, 0)
        deadline = time.monotonic() + 15
        with dosql.connect(cluster.url, autocommit=True) as probe:
            while True:
                try:
                    probe.execute("SELECT count(*) FROM users WHERE tenant_id = ?", (key,))
                    break
                except dosql.OperationalError:
                    assert time.monotonic() < deadline, f"{shard_id} did not come back"
                    time.sleep(0.2)


def test_failed_commit_raises_again_until_rollback(cluster: LocalCluster) -> None:
    """Defect (a): commit() raised, the second commit() returned normally, the row was lost."""
    victim = "shard-2"
    key = key_on(cluster, victim, 100)
    conn = dosql.connect(cluster.url, timeout=10)
    try:
        conn.execute("INSERT INTO users VALUES (?, 'a-lost')", (key,))
        gtid = conn.transaction_id
        assert conn.in_transaction and conn.transaction_state == "open" and gtid
        with killed(cluster, victim):
            with pytest.raises(dosql.OperationalError) as first:
                conn.commit()
            assert conn.in_transaction  # the application must roll back: it did not commit
            state = conn.transaction_state
            assert state in ("aborted", "outcome_unknown")
            again = (
                dosql.TransactionAbortedError
                if state == "aborted"
                else dosql.CommitOutcomeUnknownError
            )
            with pytest.raises(again) as second:
                conn.commit()
            assert second.value.details["gtid"] == gtid
            assert "rollback()" in str(second.value)
            with pytest.raises(again):  # no write either
                conn.execute("INSERT INTO users VALUES (?, 'a-after')", (key + 10_000,))
            assert first.value.details.get("gtid") == gtid
            conn.rollback()
            assert not conn.in_transaction and conn.transaction_state == "idle"
        assert names(cluster, "a-%") == []
        # the connection is usable: a new transaction commits
        conn.execute("INSERT INTO users VALUES (?, 'a-retry')", (key,))
        conn.commit()
        assert names(cluster, "a-%") == ["a-retry"]
    finally:
        conn.close()


def test_write_after_a_rolled_back_statement_is_refused(cluster: LocalCluster) -> None:
    """Defect (b): after SHARD_UNAVAILABLE rolled the transaction back, the next write
    and rollback() returned normally and that write was committed anyway."""
    victim = "shard-1"
    live = key_on(cluster, "shard-3", 200)
    doomed = key_on(cluster, victim, 200)
    conn = dosql.connect(cluster.url, timeout=10)
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO users VALUES (?, 'b-live')", (live,))
        cur.execute("INSERT INTO users VALUES (?, 'b-doomed')", (doomed,))
        with killed(cluster, victim):
            with pytest.raises(dosql.OperationalError) as info:
                cur.execute("UPDATE users SET name = 'b-doomed2' WHERE tenant_id = ?", (doomed,))
            assert info.value.code == "SHARD_UNAVAILABLE"
            assert conn.in_transaction and conn.transaction_state == "aborted"
            with pytest.raises(dosql.TransactionAbortedError) as refused:
                cur.execute("INSERT INTO users VALUES (?, 'b-next')", (live + 10_000,))
            assert refused.value.code == "TRANSACTION_ABORTED"
            assert isinstance(refused.value, dosql.OperationalError)
            assert "SHARD_UNAVAILABLE" in str(refused.value)
            with pytest.raises(dosql.TransactionAbortedError):
                cur.executemany("INSERT INTO users VALUES (?, 'b-many')", [(live + 20_000,)])
            with pytest.raises(dosql.TransactionAbortedError):
                cur.execute("SELECT 1")
            with pytest.raises(dosql.TransactionAbortedError):
                conn.commit()
            conn.rollback()
            assert not conn.in_transaction
        assert names(cluster, "b-%") == []  # nothing of the transaction, nor the next write
        cur.execute("INSERT INTO users VALUES (?, 'b-retry')", (live,))
        conn.commit()
        assert names(cluster, "b-%") == ["b-retry"]
    finally:
        conn.close()


def test_sql_rollback_and_context_manager_end_an_aborted_transaction(
    cluster: LocalCluster,
) -> None:
    victim = "shard-0"
    doomed = key_on(cluster, victim, 300)
    conn = dosql.connect(cluster.url, timeout=10)
    try:
        conn.execute("INSERT INTO users VALUES (?, 'c-sql')", (doomed,))
        with killed(cluster, victim):
            with pytest.raises(dosql.OperationalError):
                conn.execute("UPDATE users SET name = 'x' WHERE tenant_id = ?", (doomed,))
            conn.execute("ROLLBACK")  # SQL ROLLBACK ends it too
            assert not conn.in_transaction
            # the context manager: the block's own write fails, the block rolls back
            with pytest.raises(dosql.OperationalError), conn:
                conn.execute("INSERT INTO users VALUES (?, 'c-with')", (doomed,))
            assert not conn.in_transaction
        # ... and when the block swallowed the error, the commit in __exit__ raises
        # and the transaction is rolled back, not left aborted
        live = key_on(cluster, "shard-2", 300)
        with pytest.raises(dosql.TransactionAbortedError), conn:
            conn.execute("INSERT INTO users VALUES (?, 'c-live')", (live,))
            conn.execute("INSERT INTO users VALUES (?, 'c-dead')", (doomed,))
            with killed(cluster, victim), contextlib.suppress(dosql.OperationalError):
                conn.execute("UPDATE users SET name = 'x' WHERE tenant_id = ?", (doomed,))
        assert not conn.in_transaction
        assert names(cluster, "c-%") == []
    finally:
        conn.close()


def test_constraint_violation_keeps_the_transaction_open(cluster: LocalCluster) -> None:
    key = key_on(cluster, "shard-3", 400)
    with dosql.connect(cluster.url, autocommit=True) as setup:
        setup.execute("INSERT INTO users VALUES (?, 'd-first')", (key,))
    conn = dosql.connect(cluster.url, timeout=10)
    try:
        conn.execute("INSERT INTO users VALUES (?, 'd-kept')", (key + 10_000,))
        with pytest.raises(dosql.IntegrityError):
            conn.execute("INSERT INTO users VALUES (?, 'd-dup')", (key,))
        with pytest.raises(dosql.ProgrammingError):
            conn.execute("SELEC 1")
        assert conn.in_transaction and conn.transaction_state == "open"
        conn.execute("UPDATE users SET name = 'd-kept2' WHERE tenant_id = ?", (key + 10_000,))
        conn.commit()
        assert names(cluster, "d-%") == ["d-first", "d-kept2"]
    finally:
        conn.close()


# ---------------------------------------------------------------------- socket faults


class CutProxy:
    """A loopback TCP proxy to the router that can cut its connections, for real.

    ``cut()`` closes every proxied connection now; ``cut_on_reply()`` forwards what
    the client sends but closes the connection instead of delivering the server's
    next bytes (a reply lost on the way back).
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.drop_reply = threading.Event()
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"dosql://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self.pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_server and self.drop_reply.is_set():
                    self._close(src, dst)
                    return
                dst.sendall(data)
        except OSError:
            pass
        self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        for pair in self.pairs:
            self._close(*pair)

    def cut_on_reply(self) -> None:
        self.drop_reply.set()

    def heal(self) -> None:
        self.drop_reply.clear()

    def close(self) -> None:
        self.stopped = True
        self.cut()
        self.listener.close()


@pytest.fixture
def proxy(cluster: LocalCluster) -> Iterator[CutProxy]:
    port = int(cluster.url.rsplit(":", 1)[1])
    p = CutProxy(port)
    yield p
    p.close()


def wait_until(fn: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not fn():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_dropped_socket_mid_transaction(cluster: LocalCluster, proxy: CutProxy) -> None:
    key = key_on(cluster, "shard-1", 500)
    conn = dosql.connect(proxy.url, timeout=5)
    try:
        conn.execute("INSERT INTO users VALUES (?, 'e-lost')", (key,))
        proxy.cut()
        with pytest.raises(dosql.OperationalError):  # the first call finds the socket gone
            conn.execute("INSERT INTO users VALUES (?, 'e-next')", (key + 10_000,))
        assert conn.in_transaction and conn.transaction_state == "aborted"
        # no new implicit transaction on a new session: refused until rollback()
        with pytest.raises(dosql.TransactionAbortedError) as info:
            conn.execute("INSERT INTO users VALUES (?, 'e-next2')", (key + 20_000,))
        assert "lost" in str(info.value)
        with pytest.raises(dosql.TransactionAbortedError):
            conn.commit()
        conn.rollback()  # ends it and reconnects
        assert not conn.in_transaction
        assert conn.execute("SELECT count(*) FROM users WHERE name LIKE 'e-%'").fetchone() == (0,)
        conn.execute("INSERT INTO users VALUES (?, 'e-retry')", (key,))
        conn.commit()
        assert names(cluster, "e-%") == ["e-retry"]
    finally:
        conn.close()


def test_lost_commit_reply_is_outcome_unknown(cluster: LocalCluster, proxy: CutProxy) -> None:
    key = key_on(cluster, "shard-2", 600)
    conn = dosql.connect(proxy.url, timeout=5)
    try:
        conn.execute("INSERT INTO users VALUES (?, 'f-maybe')", (key,))
        gtid = conn.transaction_id
        assert gtid
        proxy.cut_on_reply()
        with pytest.raises(dosql.CommitOutcomeUnknownError) as info:
            conn.commit()
        assert info.value.code == "COMMIT_OUTCOME_UNKNOWN"
        assert info.value.gtid == gtid and gtid in str(info.value)
        assert conn.transaction_state == "outcome_unknown"
        with pytest.raises(dosql.CommitOutcomeUnknownError):
            conn.commit()
        with pytest.raises(dosql.CommitOutcomeUnknownError):
            conn.execute("SELECT 1")
        proxy.heal()
        conn.rollback()
        assert not conn.in_transaction
        # here the commit did reach the router: the row is there
        wait_until(lambda: names(cluster, "f-%") == ["f-maybe"])
    finally:
        conn.close()


def test_transaction_outcome_lookup(cluster: LocalCluster) -> None:
    key = key_on(cluster, "shard-0", 700)
    conn = dosql.connect(cluster.url, timeout=10)
    try:
        conn.execute("INSERT INTO users VALUES (?, 'g-done')", (key,))
        committed = conn.transaction_id
        conn.commit()
        conn.execute("INSERT INTO users VALUES (?, 'g-undone')", (key + 10_000,))
        rolled = conn.transaction_id
        conn.rollback()
        assert committed and rolled
        try:
            outcome = conn.transaction_outcome(committed)
        except dosql.ProgrammingError as exc:
            if "dosql_transaction_status" in str(exc) or "no such function" in str(exc):
                pytest.skip("the router does not answer dosql_transaction_status() yet")
            raise
        assert outcome == "committed"
        assert conn.transaction_outcome(rolled) == "aborted"
        with pytest.raises(dosql.InterfaceError):
            conn.transaction_outcome("")
    finally:
        conn.close()
