"""Declared column types of a result set (``sqlite3_column_decltype``).

Python's sqlite3 module does not expose declared types, and the protocol
promises them on the first Result chunk. We read them from the prepared
statement through the same ``libsqlite3`` the ``_sqlite3`` extension is linked
against (ctypes), finding the statement by its SQL text among the
connection's prepared statements (or, when it has already finished,
preparing it again without running it). A self-test at import decides whether this
works on the running interpreter; if not, decltypes are reported as None
rather than guessed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
import sys

_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL | None:
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return None  # the connection struct layout below is CPython 3.11's
    name = ctypes.util.find_library("sqlite3") or "libsqlite3.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.sqlite3_next_stmt.restype = ctypes.c_void_p
    lib.sqlite3_next_stmt.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.sqlite3_sql.restype = ctypes.c_char_p
    lib.sqlite3_sql.argtypes = [ctypes.c_void_p]
    lib.sqlite3_stmt_busy.restype = ctypes.c_int
    lib.sqlite3_stmt_busy.argtypes = [ctypes.c_void_p]
    lib.sqlite3_column_count.restype = ctypes.c_int
    lib.sqlite3_column_count.argtypes = [ctypes.c_void_p]
    lib.sqlite3_column_decltype.restype = ctypes.c_char_p
    lib.sqlite3_column_decltype.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.sqlite3_prepare_v2.restype = ctypes.c_int
    lib.sqlite3_prepare_v2.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.POINTER(ctypes.c_void_p),
        ctypes.c_void_p,
    ]
    lib.sqlite3_finalize.restype = ctypes.c_int
    lib.sqlite3_finalize.argtypes = [ctypes.c_void_p]
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        return None  # not the library the sqlite3 module uses
    return lib


def _db_pointer(conn: sqlite3.Connection) -> int | None:
    # CPython 3.11 pysqlite_Connection: PyObject_HEAD; sqlite3 *db; ...
    return ctypes.c_void_p.from_address(id(conn) + object.__basicsize__).value


def decltypes(conn: sqlite3.Connection, sql: str, ncols: int) -> list[str | None] | None:
    """Declared types of the result columns of the statement ``sql`` just run on ``conn``."""
    if _lib is None or ncols == 0:
        return None
    db = _db_pointer(conn)
    if not db:
        return None
    target = sql.encode()
    found = None
    stmt = _lib.sqlite3_next_stmt(db, None)
    while stmt:
        if _lib.sqlite3_sql(stmt) == target and _lib.sqlite3_column_count(stmt) == ncols:
            found = stmt
            if _lib.sqlite3_stmt_busy(stmt):
                break
        stmt = _lib.sqlite3_next_stmt(db, stmt)
    if found is not None:
        return _read(found, ncols)
    # The statement already finished and was finalized (an empty result): prepare
    # it again, without running it, just to read its column declarations.
    handle = ctypes.c_void_p()
    if _lib.sqlite3_prepare_v2(db, target, len(target), ctypes.byref(handle), None) != 0:
        return None
    try:
        if not handle.value or _lib.sqlite3_column_count(handle.value) != ncols:
            return None
        return _read(handle.value, ncols)
    finally:
        _lib.sqlite3_finalize(handle.value)


def _read(stmt: int, ncols: int) -> list[str | None]:
    assert _lib is not None
    out: list[str | None] = []
    for i in range(ncols):
        raw = _lib.sqlite3_column_decltype(stmt, i)
        out.append(raw.decode() if raw is not None else None)
    return out


def _self_test() -> bool:
    conn = sqlite3.connect(":memory:", cached_statements=0)
    try:
        conn.execute("CREATE TABLE t(a BIGINT, b)")
        conn.execute("INSERT INTO t VALUES (1, 2)")
        sql = "SELECT a, b, 1 FROM t"
        cur = conn.execute(sql)
        running = decltypes(conn, sql, 3) == ["BIGINT", None, None] and cur.fetchall() == [
            (1, 2, 1)
        ]
        empty = "SELECT b, a FROM t WHERE 0"
        conn.execute(empty).fetchall()
        return running and decltypes(conn, empty, 2) == [None, "BIGINT"]
    except Exception:
        return False
    finally:
        conn.close()


_lib = _load()
if _lib is not None and not _self_test():
    _lib = None
