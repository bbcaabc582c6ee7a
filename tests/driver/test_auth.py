"""Bearer-token authentication as the driver sees it: refused logins, read-only tokens."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import dosql.driver as dbapi
from tests.driver.conftest import Server, start_server


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    db = tmp_path_factory.mktemp("auth") / "auth.db"
    with start_server(db, env={"DOSQL_TOKENS": "rtok:read,atok:admin"}) as srv:
        with dbapi.connect(srv.url, token="atok") as admin:
            admin.cursor().execute("CREATE TABLE secrets (id INTEGER PRIMARY KEY, v TEXT)")
            admin.cursor().execute("INSERT INTO secrets (v) VALUES ('s1')")
        yield srv


@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_missing_or_wrong_token_is_refused(secured: Server, token: str | None) -> None:
    with pytest.raises(dbapi.OperationalError) as info:
        dbapi.connect(secured.url, token=token, timeout=5)
    assert info.value.code == "AUTHENTICATION_REQUIRED"
    assert info.value.details["http_status"] == 401
    assert "token" in str(info.value)


def test_admin_token_reads_and_writes(secured: Server) -> None:
    conn = dbapi.connect(secured.url, token="atok")
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO secrets (v) VALUES ('s2')")
        conn.rollback()
        assert cur.execute("SELECT v FROM secrets ORDER BY id").fetchall() == [("s1",)]
    finally:
        conn.close()


def test_read_token_reads_but_cannot_write(secured: Server) -> None:
    conn = dbapi.connect(secured.url, token="rtok", autocommit=True)
    try:
        cur = conn.cursor()
        assert cur.execute("SELECT v FROM secrets").fetchall() == [("s1",)]
        for statement in (
            "INSERT INTO secrets (v) VALUES ('evil')",
            "UPDATE secrets SET v = 'evil'",
            "DELETE FROM secrets",
        ):
            with pytest.raises(dbapi.ProgrammingError) as info:
                cur.execute(statement)
            assert info.value.code == "READ_ONLY"
            assert info.value.category == "authorization"
    finally:
        conn.close()
    admin = dbapi.connect(secured.url, token="atok")
    try:
        assert admin.cursor().execute("SELECT v FROM secrets").fetchall() == [("s1",)]
    finally:
        admin.close()


def test_read_token_write_inside_implicit_transaction(secured: Server, tmp_path: Path) -> None:
    conn = dbapi.connect(secured.url, token="rtok")  # autocommit off: Begin goes first
    try:
        with pytest.raises(dbapi.ProgrammingError) as info:
            conn.cursor().execute("INSERT INTO secrets (v) VALUES ('evil')")
        assert info.value.code == "READ_ONLY"
        conn.rollback()
        assert not conn.in_transaction
        assert conn.cursor().execute("SELECT count(*) FROM secrets").fetchone() == (1,)
    finally:
        conn.close()
