"""Cursor behaviour against a real shard process, PEP 249 point by point."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dosql.driver as dbapi

BIG = (
    "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < {n}) "
    "SELECT i, 'row ' || i FROM r"
)


def test_cursor_attributes_before_execute(conn: dbapi.Connection) -> None:
    cur = conn.cursor()
    assert cur.connection is conn
    assert cur.description is None
    assert cur.rowcount == -1
    assert cur.lastrowid is None
    assert cur.arraysize == 1
    assert cur.setinputsizes([10, None]) is None
    assert cur.setoutputsize(100) is None and cur.setoutputsize(100, 0) is None
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.fetchone()
    assert info.value.code == "NO_RESULT_SET"


def test_execute_returns_cursor_and_rows_are_tuples(conn: dbapi.Connection) -> None:
    cur = conn.cursor()
    assert cur.execute("SELECT 1, 'a'") is cur
    assert cur.fetchall() == [(1, "a")]


def test_description_from_declared_types(conn: dbapi.Connection, table: str) -> None:
    cur = conn.cursor()
    cur.execute(f"CREATE TABLE {table}_d (id INTEGER PRIMARY KEY, v VARCHAR(10), at DATETIME)")
    cur.execute(f"SELECT id, name, score, data FROM {table}")
    desc = cur.description
    assert [d[0] for d in desc] == ["id", "name", "score", "data"]
    assert all(len(d) == 7 and d[2:] == (None,) * 5 for d in desc)
    assert [d[1] for d in desc] == ["INTEGER", "TEXT", "REAL", "BLOB"]
    assert desc[0][1] == dbapi.NUMBER and desc[1][1] == dbapi.STRING
    assert desc[2][1] == dbapi.NUMBER and desc[3][1] == dbapi.BINARY
    assert desc[1][1] != dbapi.NUMBER
    cur.execute(f"SELECT id, v, at FROM {table}_d")
    assert [d[1] for d in cur.description] == ["INTEGER", "VARCHAR(10)", "DATETIME"]
    assert cur.description[2][1] == dbapi.DATETIME
    assert cur.description[1][1] == dbapi.STRING


def test_description_of_expressions_uses_value_types(conn: dbapi.Connection) -> None:
    cur = conn.cursor().execute("SELECT 1 AS i, 2.5 AS r, 'x' AS t, x'00' AS b, NULL AS n")
    assert [(d[0], d[1]) for d in cur.description] == [
        ("i", "INTEGER"),
        ("r", "REAL"),
        ("t", "TEXT"),
        ("b", "BLOB"),
        ("n", None),
    ]
    assert cur.description[0][1] == dbapi.NUMBER
    assert cur.description[3][1] == dbapi.BINARY


def test_rowcount_and_lastrowid(conn: dbapi.Connection, table: str) -> None:
    cur = conn.cursor()
    cur.execute(f"INSERT INTO {table} (name) VALUES ('a'), ('b'), ('c')")
    assert cur.rowcount == 3
    assert cur.lastrowid == 3
    assert cur.description is None
    cur.execute(f"INSERT INTO {table} (id, name) VALUES (10, 'd')")
    assert cur.rowcount == 1 and cur.lastrowid == 10
    cur.execute(f"UPDATE {table} SET score = 1.5 WHERE id < 3")
    assert cur.rowcount == 2
    cur.execute(f"DELETE FROM {table} WHERE id = 3")
    assert cur.rowcount == 1
    cur.execute(f"UPDATE {table} SET score = 0 WHERE id = 999")
    assert cur.rowcount == 0
    with pytest.raises(dbapi.ProgrammingError):
        cur.fetchall()  # a DML statement has no result set
    conn.commit()


def test_fetchone_fetchmany_fetchall_and_arraysize(conn: dbapi.Connection) -> None:
    cur = conn.cursor().execute(BIG.format(n=10))
    assert cur.fetchone() == (1, "row 1")
    assert cur.fetchmany() == [(2, "row 2")]  # arraysize 1
    cur.arraysize = 3
    assert [r[0] for r in cur.fetchmany()] == [3, 4, 5]
    assert [r[0] for r in cur.fetchmany(2)] == [6, 7]
    assert [r[0] for r in cur.fetchall()] == [8, 9, 10]
    assert cur.fetchone() is None
    assert cur.fetchmany(5) == []
    assert cur.fetchall() == []


def test_iteration(conn: dbapi.Connection) -> None:
    cur = conn.cursor().execute(BIG.format(n=2500))
    assert iter(cur) is cur
    assert [row[0] for row in cur] == list(range(1, 2501))
    with pytest.raises(StopIteration):
        next(cur)


def test_empty_result_keeps_description(conn: dbapi.Connection, table: str) -> None:
    cur = conn.cursor().execute(f"SELECT id, name FROM {table} WHERE id < 0")
    assert [d[0] for d in cur.description] == ["id", "name"]
    assert cur.fetchall() == []


def test_qmark_and_named_parameters(conn: dbapi.Connection, table: str) -> None:
    cur = conn.cursor()
    cur.execute(f"INSERT INTO {table} (id, name, score) VALUES (?, ?, ?)", (1, "a", 0.5))
    cur.execute(
        f"INSERT INTO {table} (id, name, score) VALUES (:id, :name, :score)",
        {"id": 2, "name": "b", "score": None},
    )
    cur.execute(
        f"SELECT id, name, score FROM {table} WHERE name = :n OR id = :i", {"n": "a", "i": 2}
    )
    assert sorted(cur.fetchall()) == [(1, "a", 0.5), (2, "b", None)]
    conn.commit()


def test_parameter_adaptation_round_trip(conn: dbapi.Connection) -> None:
    day = datetime.date(2024, 2, 29)
    moment = datetime.datetime(2024, 2, 29, 13, 5, 7, 250000)
    cur = conn.cursor().execute(
        "SELECT ?, ?, ?, ?, ?, ?, ?",
        [True, day, moment, dbapi.Time(1, 2, 3), bytearray(b"\x01"), memoryview(b"\x02"), None],
    )
    assert cur.fetchone() == (
        1,
        "2024-02-29",
        "2024-02-29 13:05:07.250000",
        "01:02:03",
        b"\x01",
        b"\x02",
        None,
    )


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(-(2**63), 2**63 - 1),
            st.floats(allow_nan=False),
            st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
            st.binary(max_size=64),
        ),
        min_size=1,
        max_size=5,
    )
)
@settings(deadline=None, max_examples=40)
def test_sqlite_values_round_trip(server, values: list) -> None:  # noqa: ANN001
    conn = dbapi.connect(server.url, timeout=10)
    try:
        placeholders = ", ".join("?" * len(values))
        row = conn.cursor().execute(f"SELECT {placeholders}", values).fetchone()
    finally:
        conn.close()
    assert list(row) == values
    assert [type(v) for v in row] == [type(v) for v in values]


def test_bad_parameters(conn: dbapi.Connection, table: str) -> None:
    cur = conn.cursor()
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.execute("SELECT ?", [object()])
    assert info.value.code == "INVALID_PARAMETERS"
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.execute("SELECT ?", "ab")
    assert info.value.code == "INVALID_PARAMETERS"
    with pytest.raises(dbapi.DataError) as info:
        cur.execute("SELECT ?", [2**64])
    assert info.value.code == "VALUE_OUT_OF_RANGE"
    # Wrong number of parameters: the server refuses it.
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.execute("SELECT ?, ?", [1])
    assert info.value.code == "INVALID_PARAMETERS"
    with pytest.raises(dbapi.InterfaceError):
        cur.execute(b"SELECT 1")  # type: ignore[arg-type]
    assert cur.execute("SELECT 1").fetchone() == (1,)  # still usable


def test_executemany(conn: dbapi.Connection, table: str) -> None:
    cur = conn.cursor()
    cur.executemany(
        f"INSERT INTO {table} (id, name) VALUES (?, ?)", [(i, f"n{i}") for i in range(5)]
    )
    assert cur.rowcount == 5
    cur.executemany(
        f"INSERT INTO {table} (id, name) VALUES (:id, :name)",
        ({"id": i, "name": f"n{i}"} for i in range(5, 8)),
    )
    assert cur.rowcount == 3
    cur.executemany(f"UPDATE {table} SET score = ? WHERE id = ?", [(1.0, 1), (2.0, 2), (3.0, 99)])
    assert cur.rowcount == 2
    cur.executemany(f"DELETE FROM {table} WHERE id = ?", [])
    assert cur.rowcount == 0
    conn.commit()
    assert cur.execute(f"SELECT count(*), sum(score) FROM {table}").fetchone() == (8, 3.0)
    with pytest.raises(dbapi.ProgrammingError):
        cur.executemany("SELECT ?", [(1,)])
    with pytest.raises(dbapi.ProgrammingError):
        cur.executemany(f"INSERT INTO {table} (id) VALUES (?)", [(object(),)])
    with pytest.raises(dbapi.IntegrityError):
        cur.executemany(f"INSERT INTO {table} (id) VALUES (?)", [(100,), (1,)])


def test_server_errors_map_to_pep_249_classes(conn: dbapi.Connection, table: str) -> None:
    cur = conn.cursor()
    cur.execute(f"INSERT INTO {table} (name) VALUES ('dup')")
    with pytest.raises(dbapi.IntegrityError) as info:
        cur.execute(f"INSERT INTO {table} (name) VALUES ('dup')")
    assert info.value.code == "UNIQUE_CONSTRAINT"
    assert info.value.__cause__ is not None and info.value.__cause__.code == "UNIQUE_CONSTRAINT"
    conn.rollback()
    cur.execute(f"CREATE TABLE {table}_nn (a INTEGER NOT NULL)")
    with pytest.raises(dbapi.IntegrityError) as info:
        cur.execute(f"INSERT INTO {table}_nn VALUES (NULL)")
    assert info.value.code == "CONSTRAINT_VIOLATION"
    conn.rollback()
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.execute("SELEC 1")
    assert info.value.code == "SYNTAX_ERROR"
    with pytest.raises(dbapi.ProgrammingError) as info:
        cur.execute("SELECT * FROM no_such_table_here")
    assert info.value.code == "TABLE_NOT_FOUND"
    assert "no_such_table_here" in str(info.value)
    assert isinstance(info.value, dbapi.DatabaseError) and isinstance(info.value, dbapi.Error)


def test_server_timeout_is_operational_error(conn: dbapi.Connection) -> None:
    conn.timeout = 0.3
    forever = (
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"
    )
    with pytest.raises(dbapi.OperationalError) as info:
        conn.cursor().execute(forever)
    assert info.value.code == "QUERY_TIMEOUT"
    conn.timeout = 10
    assert conn.cursor().execute("SELECT 2").fetchone() == (2,)  # the session survives


def test_large_result_streams_in_chunks(conn: dbapi.Connection) -> None:
    cur = conn.cursor().execute(BIG.format(n=100_000))
    stream = cur._stream
    assert stream is not None and not stream.done
    assert cur.rowcount == -1  # not known while the result streams
    first = cur.fetchmany(1000)
    assert [r[0] for r in first] == list(range(1, 1001))
    # Only the chunks needed so far were read off the socket.
    assert stream.chunks <= 3
    total, last = len(first), 0
    for row in cur:
        total += 1
        last = row[0]
        if total == 50_000:
            assert 10 < stream.chunks < 90  # pulled lazily, halfway through
    assert total == 100_000 and last == 100_000
    assert stream.done and stream.chunks >= 50


def test_another_statement_keeps_an_unfinished_result(conn: dbapi.Connection) -> None:
    big = conn.cursor().execute(BIG.format(n=20_000))
    assert big.fetchone() == (1, "row 1")
    other = conn.cursor()
    assert other.execute("SELECT 'other'").fetchone() == ("other",)
    rest = big.fetchall()  # every remaining row is still there, in order
    assert [r[0] for r in rest] == list(range(2, 20_001))


def test_reexecuting_a_cursor_discards_its_unfinished_result(conn: dbapi.Connection) -> None:
    cur = conn.cursor().execute(BIG.format(n=20_000))
    stream = cur._stream
    cur.fetchmany(10)
    assert cur.execute("SELECT 42").fetchall() == [(42,)]
    assert stream.done and not stream.buffered  # drained and dropped, not kept
    cur.execute(BIG.format(n=20_000))
    cur.close()
    assert conn.cursor().execute("SELECT 43").fetchall() == [(43,)]


def test_closed_cursor_raises_interface_error(conn: dbapi.Connection) -> None:
    cur = conn.cursor().execute("SELECT 1")
    cur.close()
    cur.close()  # idempotent
    assert cur.closed
    for call in (
        lambda: cur.execute("SELECT 1"),
        lambda: cur.executemany("INSERT INTO x VALUES (?)", [(1,)]),
        cur.fetchone,
        cur.fetchall,
        lambda: cur.fetchmany(2),
        lambda: next(cur),
    ):
        with pytest.raises(dbapi.InterfaceError) as info:
            call()
        assert info.value.code == "CURSOR_CLOSED"
    with conn.cursor() as cur2:
        cur2.execute("SELECT 1")
    assert cur2.closed


def test_connection_execute_shortcut(conn: dbapi.Connection) -> None:
    assert conn.execute("SELECT ? + 1", [1]).fetchone() == (2,)


def test_error_in_the_middle_of_a_stream(conn: dbapi.Connection) -> None:
    # abs() of the smallest integer overflows: the server fails after streaming rows.
    cur = conn.cursor().execute(
        "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r WHERE i < 10000) "
        "SELECT CASE WHEN i < 5000 THEN i ELSE abs(-9223372036854775807 - 1) END FROM r"
    )
    seen = []
    with pytest.raises(dbapi.ProgrammingError) as info:
        for row in cur:
            seen.append(row[0])
    assert seen == list(range(1, len(seen) + 1)) and 1000 <= len(seen) < 5000
    assert "overflow" in str(info.value)
    with pytest.raises(dbapi.ProgrammingError):
        cur.fetchone()  # the failure sticks: the result is incomplete
    assert conn.cursor().execute("SELECT 5").fetchone() == (5,)


def test_executemany_sends_big_inputs_in_batches(conn: dbapi.Connection, table: str) -> None:
    # 20 MB of parameters: more than one request may carry (the shard's limit is 16 MiB).
    payload = "x" * 1000
    rows = ((i, f"n{i}", payload) for i in range(20_000))  # a generator, read lazily
    cur = conn.cursor()
    cur.executemany(f"INSERT INTO {table} (id, name, data) VALUES (?, ?, ?)", rows)
    assert cur.rowcount == 20_000
    conn.commit()
    cur.execute(f"SELECT count(*), sum(length(data)), max(id) FROM {table}")
    assert cur.fetchone() == (20_000, 20_000_000, 19_999)
