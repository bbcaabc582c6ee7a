"""PEP 249 module interface: globals, exceptions, type objects, constructors, helpers."""

from __future__ import annotations

import datetime
import time

import pytest

import dosql.driver as dbapi
from dosql import errors as E
from dosql.driver.cursor import bind
from dosql.driver.exceptions import from_dosql, wrap
from dosql.driver.transport import ws_url
from dosql.driver.types import affinity, describe, type_code
from dosql.statements import kind


def test_module_globals() -> None:
    assert dbapi.apilevel == "2.0"
    assert dbapi.threadsafety == 1
    assert dbapi.paramstyle == "qmark"
    assert callable(dbapi.connect)


def test_exception_hierarchy_is_pep_249() -> None:
    assert issubclass(dbapi.Warning, Exception)
    assert not issubclass(dbapi.Warning, dbapi.Error)
    assert issubclass(dbapi.Error, Exception)
    assert issubclass(dbapi.InterfaceError, dbapi.Error)
    assert issubclass(dbapi.DatabaseError, dbapi.Error)
    assert not issubclass(dbapi.InterfaceError, dbapi.DatabaseError)
    for name in (
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
    ):
        cls = getattr(dbapi, name)
        assert issubclass(cls, dbapi.DatabaseError), name
        assert getattr(dbapi.Connection, name) is cls, name
    assert dbapi.Connection.Error is dbapi.Error
    assert dbapi.Connection.Warning is dbapi.Warning
    assert dbapi.Connection.InterfaceError is dbapi.InterfaceError
    assert dbapi.Connection.DatabaseError is dbapi.DatabaseError


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (E.NotSupportedError("cross-shard join"), dbapi.NotSupportedError),
        (E.ConflictError("dup", code="UNIQUE_CONSTRAINT"), dbapi.IntegrityError),
        (E.ConflictError("nn", code="CONSTRAINT_VIOLATION"), dbapi.IntegrityError),
        (E.ConflictError("retry", code="TRANSACTION_CONFLICT"), dbapi.OperationalError),
        (E.QueryError("bad", code="SYNTAX_ERROR"), dbapi.ProgrammingError),
        (E.NotFoundError("t", code="TABLE_NOT_FOUND"), dbapi.ProgrammingError),
        (E.ValidationError("p", code="INVALID_PARAMETERS"), dbapi.ProgrammingError),
        (E.ValidationError("null key", code="SHARDING_KEY_NULL"), dbapi.IntegrityError),
        (E.ValidationError("range", code="VALUE_OUT_OF_RANGE"), dbapi.DataError),
        (E.AuthorizationError("ro", code="READ_ONLY"), dbapi.ProgrammingError),
        (E.AuthorizationError("who", code="AUTHENTICATION_REQUIRED"), dbapi.OperationalError),
        (E.RPCError("down", code="SHARD_UNAVAILABLE"), dbapi.OperationalError),
        (E.TimeoutError_("slow", code="QUERY_TIMEOUT"), dbapi.OperationalError),
        (E.StorageError("busy", code="DATABASE_LOCKED"), dbapi.OperationalError),
        (E.ConfigurationError("cfg"), dbapi.OperationalError),
        (E.CDCError("lake", code="LAKE_BEHIND"), dbapi.OperationalError),
        (E.InternalError("bug"), dbapi.InternalError),
        (E.DoSQLError("?"), dbapi.InternalError),
    ],
)
def test_error_mapping(error: E.DoSQLError, expected: type) -> None:
    converted = from_dosql(error)
    assert type(converted) is expected
    assert converted.code == error.code
    assert converted.category == str(error.category)
    assert error.message in str(converted)
    wrapped = wrap(error)
    assert type(wrapped) is expected and wrapped.__cause__ is error


def test_error_mapping_from_the_wire_keeps_the_code() -> None:
    err = E.from_wire({"code": "NOT_SUPPORTED", "message": "no", "type": "NotSupportedError"})
    converted = wrap(err)
    assert isinstance(converted, dbapi.NotSupportedError)
    assert converted.code == "NOT_SUPPORTED"
    assert isinstance(converted.__cause__, E.NotSupportedError)


def test_constructors() -> None:
    assert dbapi.Date(2024, 2, 29) == datetime.date(2024, 2, 29)
    assert dbapi.Time(13, 5, 7) == datetime.time(13, 5, 7)
    assert dbapi.Timestamp(2024, 2, 29, 13, 5, 7) == datetime.datetime(2024, 2, 29, 13, 5, 7)
    assert dbapi.Binary(b"\x00\xff") == b"\x00\xff"
    assert isinstance(dbapi.Binary(bytearray(b"x")), bytes)
    ticks = time.mktime((2024, 2, 29, 13, 5, 7, 0, 0, -1))
    assert dbapi.DateFromTicks(ticks) == datetime.date(2024, 2, 29)
    assert dbapi.TimeFromTicks(ticks) == datetime.time(13, 5, 7)
    assert dbapi.TimestampFromTicks(ticks) == datetime.datetime(2024, 2, 29, 13, 5, 7)


@pytest.mark.parametrize(
    ("code", "matches"),
    [
        ("INTEGER", {"NUMBER"}),
        ("BIGINT", {"NUMBER"}),
        ("REAL", {"NUMBER"}),
        ("DOUBLE PRECISION", {"NUMBER"}),
        ("DECIMAL(10,2)", {"NUMBER"}),
        ("NUMERIC", {"NUMBER"}),
        ("TEXT", {"STRING"}),
        ("VARCHAR(20)", {"STRING"}),
        ("clob", {"STRING"}),
        ("BLOB", {"BINARY"}),
        ("DATE", {"DATETIME"}),
        ("DATETIME", {"DATETIME"}),
        ("TIMESTAMP", {"DATETIME"}),
        ("ROWID", {"ROWID", "NUMBER"}),
    ],
)
def test_type_objects_compare_by_affinity(code: str, matches: set[str]) -> None:
    for name in ("STRING", "BINARY", "NUMBER", "DATETIME", "ROWID"):
        obj = getattr(dbapi, name)
        assert (code == obj) is (name in matches), (code, name)
        assert (obj == code) is (name in matches), (code, name)
        assert (obj != code) is (name not in matches), (code, name)
    assert dbapi.STRING == dbapi.STRING and dbapi.STRING != dbapi.NUMBER
    assert len({dbapi.STRING, dbapi.NUMBER, dbapi.STRING}) == 2


def test_affinity_rules() -> None:
    assert affinity("INT") == "INTEGER"
    assert affinity("CHARINT") == "INTEGER"  # rule order, as SQLite documents
    assert affinity("NVARCHAR(5)") == "TEXT"
    assert affinity("") == "BLOB"
    assert affinity("FLOAT") == "REAL"
    assert affinity("BOOLEAN") == "NUMERIC"


def test_type_codes_from_decltypes_and_values() -> None:
    assert type_code("id", "integer") == "INTEGER"
    assert type_code("rowid", "INTEGER") == "ROWID"
    assert type_code("x", None, 1) == "INTEGER"
    assert type_code("x", None, 1.5) == "REAL"
    assert type_code("x", None, "a") == "TEXT"
    assert type_code("x", None, b"a") == "BLOB"
    assert type_code("x", None, None) is None
    desc = describe(["a", "b"], [None, "TEXT"], [[None, "x"], [3, "y"]])
    assert desc == (("a", "INTEGER", *[None] * 5), ("b", "TEXT", *[None] * 5))


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("INSERT INTO t VALUES (1)", "dml"),
        ("  -- c\n /* x */ insert or replace into t values (1)", "dml"),
        ("REPLACE INTO t VALUES (1)", "dml"),
        ("UPDATE t SET a = 1", "dml"),
        ("DELETE FROM t", "dml"),
        ("INSERT INTO t VALUES (1) ON CONFLICT(id) DO UPDATE SET a = 2", "dml"),
        ("WITH x AS (SELECT 1 AS a) INSERT INTO t SELECT a FROM x", "dml"),
        ("WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM r) SELECT i FROM r", "select"),
        ("SELECT 'insert' FROM t", "select"),
        ("VALUES (1)", "select"),
        ("CREATE TABLE t (a)", "ddl"),
        ("drop table t", "ddl"),
        ("ALTER TABLE t ADD b", "ddl"),
        ("BEGIN", "begin"),
        ("begin immediate transaction", "begin"),
        ("COMMIT", "commit"),
        ("END TRANSACTION", "commit"),
        ("ROLLBACK", "rollback"),
        ("ROLLBACK TO sp", "other"),
        ("ROLLBACK TRANSACTION TO SAVEPOINT sp", "other"),
        ("SAVEPOINT sp", "savepoint"),
        ("PRAGMA table_info(t)", "other"),
        ("WITH x AS (SELECT 'it''s (') INSERT INTO t SELECT * FROM x", "dml"),
        ('WITH "a""(" AS (SELECT 1) SELECT * FROM "a""("', "select"),
        ("", "other"),
    ],
)
def test_statement_kind(sql: str, expected: str) -> None:
    assert kind(sql) == expected


def test_bind_adapts_values() -> None:
    day = datetime.date(2024, 1, 2)
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert bind(()) is None and bind(None) is None
    assert bind([True, False, bytearray(b"a"), memoryview(b"b"), day, moment]) == [
        1,
        0,
        b"a",
        b"b",
        "2024-01-02",
        "2024-01-02 03:04:05",
    ]
    assert bind({"a": 1, "b": datetime.time(1, 2)}) == {"a": 1, "b": "01:02:00"}


def test_bind_sends_subclasses_of_plain_types_as_the_plain_type() -> None:
    """SQLAlchemy passes table names as ``quoted_name`` (a str subclass) in reflection."""
    import enum

    class Name(str):
        pass

    class Level(enum.IntEnum):
        HIGH = 3

    class Ratio(float):
        pass

    bound = bind([Name("t"), Level.HIGH, Ratio(0.5), {"k": Name("v")}["k"]])
    assert bound == ["t", 3, 0.5, "v"]
    assert [type(v) for v in bound] == [str, int, float, str]


@pytest.mark.parametrize(
    ("params", "error", "code"),
    [
        ([object()], dbapi.ProgrammingError, "INVALID_PARAMETERS"),
        ([[1, 2]], dbapi.ProgrammingError, "INVALID_PARAMETERS"),
        ("abc", dbapi.ProgrammingError, "INVALID_PARAMETERS"),
        (42, dbapi.ProgrammingError, "INVALID_PARAMETERS"),
        ({1: "x"}, dbapi.ProgrammingError, "INVALID_PARAMETERS"),
        ([2**63], dbapi.DataError, "VALUE_OUT_OF_RANGE"),
        ([-(2**63) - 1], dbapi.DataError, "VALUE_OUT_OF_RANGE"),
    ],
)
def test_bind_rejects_non_sqlite_values(params: object, error: type, code: str) -> None:
    with pytest.raises(error) as info:
        bind(params)
    assert info.value.code == code


def test_urls() -> None:
    assert ws_url("dosql://127.0.0.1:7000") == "ws://127.0.0.1:7000/"
    assert ws_url("ws://h:1/x") == "ws://h:1/x"
    assert ws_url("dosqls://h:1") == "wss://h:1/"
    for bad in ("http://h:1", "h:1", "dosql://", 7):
        with pytest.raises(dbapi.InterfaceError):
            ws_url(bad)  # type: ignore[arg-type]


def test_top_level_package_exposes_the_driver() -> None:
    import dosql

    assert dosql.connect is dbapi.connect
    assert dosql.apilevel == "2.0" and dosql.paramstyle == "qmark"
    assert dosql.IntegrityError is dbapi.IntegrityError
    assert dosql.NUMBER is dbapi.NUMBER
