"""Connection behaviour: transactions (implicit, explicit, autocommit), closing, faults."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

import dosql.driver as dbapi
from tests.driver.conftest import Server, start_server


def _count(server: Server, table: str) -> int:
    """Rows visible to a separate session: what is committed."""
    other = dbapi.connect(server.url, timeout=10)
    try:
        return other.cursor().execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        other.close()


def test_connect_returns_open_connection(server: Server) -> None:
    conn = dbapi.connect(server.url)
    assert isinstance(conn, dbapi.Connection)
    assert conn.autocommit is False and conn.in_transaction is False
    assert conn.timeout == 30.0
    assert conn.url.startswith("ws://127.0.0.1:")
    conn.ping()
    conn.close()
    conn2 = dbapi.connect(server.url.replace("dosql://", "ws://"), timeout=5, autocommit=True)
    assert conn2.autocommit is True and conn2.timeout == 5.0
    conn2.close()


def test_implicit_transaction_commit_and_rollback(
    server: Server, conn: dbapi.Connection, table: str
) -> None:
    cur = conn.cursor()
    cur.execute(f"SELECT * FROM {table}")
    assert not conn.in_transaction  # reads do not open a transaction
    cur.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    assert conn.in_transaction
    assert _count(server, table) == 0  # not committed yet
    conn.rollback()
    assert not conn.in_transaction
    assert cur.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,)
    cur.execute(f"INSERT INTO {table} (name) VALUES ('b')")
    cur.execute(f"UPDATE {table} SET score = 2")
    conn.commit()
    assert not conn.in_transaction
    assert _count(server, table) == 1
    conn.commit()  # nothing open: a no-op
    conn.rollback()  # likewise


@pytest.mark.parametrize(
    "statement",
    [
        "INSERT INTO {t} (id, name) VALUES (1, 'x') ON CONFLICT(id) DO UPDATE SET name = 'y'",
        "REPLACE INTO {t} (id, name) VALUES (1, 'x')",
        "WITH v(n) AS (SELECT 'w') INSERT INTO {t} (name) SELECT n FROM v",
        "DELETE FROM {t}",
    ],
)
def test_writes_of_every_form_open_a_transaction(
    conn: dbapi.Connection, table: str, statement: str
) -> None:
    conn.cursor().execute(statement.format(t=table))
    assert conn.in_transaction
    conn.rollback()


def test_ddl_does_not_open_a_transaction(server: Server, conn: dbapi.Connection) -> None:
    conn.cursor().execute("CREATE TABLE ddl_auto (a)")
    assert not conn.in_transaction
    assert _count(server, "ddl_auto") == 0  # the table exists for other sessions at once
    conn.cursor().execute("INSERT INTO ddl_auto VALUES (1)")
    conn.cursor().execute("CREATE TABLE ddl_in_txn (a)")  # inside the open transaction
    conn.rollback()
    with pytest.raises(dbapi.ProgrammingError):
        conn.cursor().execute("SELECT * FROM ddl_in_txn")


def test_autocommit_mode(server: Server, table: str) -> None:
    conn = dbapi.connect(server.url, autocommit=True)
    try:
        conn.cursor().execute(f"INSERT INTO {table} (name) VALUES ('a')")
        assert not conn.in_transaction
        assert _count(server, table) == 1
        conn.commit()  # no-op
        conn.autocommit = False
        conn.cursor().execute(f"INSERT INTO {table} (name) VALUES ('b')")
        assert conn.in_transaction and _count(server, table) == 1
        conn.autocommit = True  # commits what is pending
        assert not conn.in_transaction and _count(server, table) == 2
    finally:
        conn.close()


def test_sql_text_transaction_control_is_tracked(
    server: Server, conn: dbapi.Connection, table: str
) -> None:
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute("BEGIN")
    assert conn.in_transaction
    cur.execute(f"INSERT INTO {table} (name) VALUES ('a')")
    assert _count(server, table) == 0
    conn.commit()  # commits the transaction BEGIN opened
    assert not conn.in_transaction and _count(server, table) == 1
    cur.execute("BEGIN")
    cur.execute(f"DELETE FROM {table}")
    cur.execute("ROLLBACK")
    assert not conn.in_transaction and _count(server, table) == 1


def test_context_manager_commits_or_rolls_back(server: Server, table: str) -> None:
    conn = dbapi.connect(server.url)
    try:
        with conn as c:
            assert c is conn
            c.cursor().execute(f"INSERT INTO {table} (name) VALUES ('kept')")
        assert _count(server, table) == 1 and not conn.in_transaction
        with pytest.raises(ZeroDivisionError), conn:
            conn.cursor().execute(f"INSERT INTO {table} (name) VALUES ('lost')")
            1 / 0  # noqa: B018
        assert _count(server, table) == 1 and not conn.in_transaction
        assert not conn.closed  # like sqlite3, the block does not close the connection
        with pytest.raises(dbapi.IntegrityError), conn:
            conn.cursor().execute(f"INSERT INTO {table} (name) VALUES ('kept')")
        assert _count(server, table) == 1
    finally:
        conn.close()


def test_close_rolls_back_and_is_idempotent(server: Server, table: str) -> None:
    conn = dbapi.connect(server.url)
    cur = conn.cursor()
    cur.execute(f"INSERT INTO {table} (name) VALUES ('x')")
    conn.close()
    conn.close()
    assert conn.closed
    assert _count(server, table) == 0
    for call in (
        conn.cursor,
        conn.commit,
        conn.rollback,
        conn.ping,
        lambda: cur.execute("SELECT 1"),
        lambda: conn.execute("SELECT 1"),
        lambda: setattr(conn, "autocommit", True),
    ):
        with pytest.raises(dbapi.InterfaceError) as info:
            call()
        assert info.value.code in ("CONNECTION_CLOSED", "CURSOR_CLOSED")
    with pytest.raises(dbapi.InterfaceError), conn:
        pass


def test_misuse_raises_interface_error(server: Server) -> None:
    with pytest.raises(dbapi.InterfaceError):
        dbapi.connect("http://127.0.0.1:1")
    with pytest.raises(dbapi.InterfaceError):
        dbapi.connect(server.url, timeout=0)
    with pytest.raises(dbapi.InterfaceError):
        dbapi.connect(server.url, token=123)  # type: ignore[arg-type]


def test_unreachable_server_is_operational_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(dbapi.OperationalError) as info:
        dbapi.connect(f"dosql://127.0.0.1:{port}", timeout=2)
    assert info.value.code == "RPC_UNAVAILABLE"
    assert str(port) in str(info.value)
    assert info.value.__cause__ is not None


def test_silent_server_times_out_and_breaks_the_connection(tmp_path: Path) -> None:
    with start_server(tmp_path / "stopped.db") as srv:
        conn = dbapi.connect(srv.url, timeout=0.5)
        assert conn.cursor().execute("SELECT 1").fetchone() == (1,)
        os.kill(srv.proc.pid, signal.SIGSTOP)  # the process stops answering, socket stays up
        try:
            started = time.monotonic()
            with pytest.raises(dbapi.OperationalError) as info:
                conn.cursor().execute("SELECT 1")
            assert info.value.code == "TIMEOUT"
            assert 0.5 <= time.monotonic() - started < 6
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        # Broken: later calls fail fast, even though the server is back.
        started = time.monotonic()
        with pytest.raises(dbapi.OperationalError):
            conn.cursor().execute("SELECT 1")
        assert time.monotonic() - started < 0.5
        conn.close()
        conn2 = dbapi.connect(srv.url, timeout=5)
        assert conn2.cursor().execute("SELECT 2").fetchone() == (2,)
        conn2.close()


def test_server_going_away_is_operational_error(tmp_path: Path) -> None:
    with start_server(tmp_path / "killed.db") as srv:
        conn = dbapi.connect(srv.url, timeout=5)
        cur = conn.cursor().execute(
            "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 200000) "
            "SELECT i FROM r"
        )
        cur.fetchone()
        srv.proc.kill()
        srv.proc.wait()
        with pytest.raises(dbapi.OperationalError):
            cur.fetchall()
        with pytest.raises(dbapi.OperationalError):
            conn.cursor().execute("SELECT 1")
        conn.close()


def test_wrong_path_is_refused_at_the_handshake(server: Server) -> None:
    with pytest.raises(dbapi.OperationalError) as info:
        dbapi.connect(server.url + "/nowhere", timeout=5)
    assert info.value.details["http_status"] == 404
    assert "/nowhere" in str(info.value)
