"""SQLite exceptions -> the project's typed errors (codes clients can branch on)."""

from __future__ import annotations

import sqlite3

from dosql.errors import (
    AuthorizationError,
    ConflictError,
    DoSQLError,
    NotFoundError,
    QueryError,
    StorageError,
    TimeoutError_,
    ValidationError,
)
from dosql.shard.database import ConnState

_SYNTAX_MARKERS = ("syntax error", "incomplete input", "unrecognized token")
_STORAGE = ("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CANTOPEN")


def map_error(exc: BaseException, state: ConnState | None = None) -> DoSQLError:
    """Translate what sqlite3 raised while running a client statement."""
    if isinstance(exc, DoSQLError):
        return exc
    message = str(exc)
    name = getattr(exc, "sqlite_errorname", "") or ""
    if name == "SQLITE_AUTH" or (
        state is not None and state.denied and "not authorized" in message
    ):
        code, text = (
            state.denied if state is not None and state.denied else ("PERMISSION_DENIED", message)
        )
        if code == "READ_ONLY" or code == "PERMISSION_DENIED":
            return AuthorizationError(text, code=code)
        return QueryError(text, code=code)
    if isinstance(exc, OverflowError):
        return ValidationError(f"parameter out of range: {message}", code="INVALID_PARAMETERS")
    if isinstance(exc, sqlite3.ProgrammingError):
        low = message.lower()
        if "binding" in low or "parameter" in low or "supplied" in low:
            return ValidationError(
                f"{message} (check the number and names of the ? / :name parameters)",
                code="INVALID_PARAMETERS",
            )
        if "one statement at a time" in low:
            return QueryError(
                "send exactly one SQL statement per Execute (found more than one)",
                code="QUERY_ERROR",
            )
        return QueryError(message, code="QUERY_ERROR")
    if isinstance(exc, sqlite3.InterfaceError):
        return ValidationError(f"bad parameter: {message}", code="INVALID_PARAMETERS")
    if name == "SQLITE_INTERRUPT":
        return TimeoutError_("statement interrupted: it ran past its timeout", code="QUERY_TIMEOUT")
    if name.startswith("SQLITE_CONSTRAINT"):
        if name in ("SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"):
            return ConflictError(message, code="UNIQUE_CONSTRAINT")
        return ConflictError(message, code="CONSTRAINT_VIOLATION")
    if name == "SQLITE_BUSY_SNAPSHOT":
        # Not a lock wait: waiting longer cannot help, the snapshot is stale.
        return ConflictError(
            "another session committed a write after this transaction started reading, so it "
            "cannot write: roll back and retry, and begin write transactions with "
            'mode="immediate" (BEGIN IMMEDIATE)',
            code="TRANSACTION_CONFLICT",
        )
    if name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
        # Writers queue in writelock.py, so SQLite's own lock is busy only when
        # something outside that queue (another process on the file, the shard's
        # maintenance) held it for all of busy_timeout_ms.
        return StorageError(
            f"{message}: SQLite's write lock stayed busy for busy_timeout_ms (held outside "
            "the shard's writer queue, e.g. by another process on the database file); retry "
            "later, or raise busy_timeout_ms (env DOSQL_BUSY_TIMEOUT_MS)",
            code="DATABASE_LOCKED",
        )
    if any(name.startswith(s) for s in _STORAGE) or name == "SQLITE_READONLY":
        return StorageError(message, code="STORAGE_ERROR")
    low = message.lower()
    if any(m in low for m in _SYNTAX_MARKERS):
        return QueryError(message, code="SYNTAX_ERROR")
    if low.startswith("no such table"):
        return NotFoundError(message, code="TABLE_NOT_FOUND")
    if isinstance(exc, sqlite3.Error):
        return QueryError(message, code="QUERY_ERROR")
    return DoSQLError(f"internal error: {type(exc).__name__}: {message}", code="INTERNAL")
