"""One error hierarchy for vschema, dosql and dolake.

Every error carries a stable ``code`` (what operators grep for and clients
branch on) and a ``category``. Errors cross process boundaries as a plain
mapping (:meth:`DoSQLError.to_wire` / :func:`from_wire`), so an error raised
in a shard reaches the application through the router with its code intact.
The DB-API driver maps categories and codes onto PEP 249 exceptions.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Category(StrEnum):
    GENERAL = "general"
    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    QUERY = "query"
    STORAGE = "storage"
    AUTHORIZATION = "authorization"
    CONFIGURATION = "configuration"
    RPC = "rpc"
    CDC = "cdc"
    TRANSACTION = "transaction"


class DoSQLError(Exception):
    """Base of every project error: a code, a category, a message, details."""

    category: Category = Category.GENERAL
    default_code: str = "INTERNAL"
    trace_id: str | None = None  # the request's trace id, when it failed on a server

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"

    def to_wire(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "category": str(self.category),
            "message": self.message,
            "type": type(self).__name__,
            "details": self.details,
        }


class InternalError(DoSQLError):
    default_code = "INTERNAL"


class ValidationError(DoSQLError):
    """Input that can never succeed as given: fix the request."""

    category = Category.VALIDATION
    default_code = "INVALID_INPUT"


class NotFoundError(DoSQLError):
    category = Category.NOT_FOUND
    default_code = "NOT_FOUND"


class ConflictError(DoSQLError):
    """Constraint violations and concurrency conflicts."""

    category = Category.CONFLICT
    default_code = "CONSTRAINT_VIOLATION"


class QueryError(DoSQLError):
    """SQL that SQLite (or the router) rejects: syntax, unknown column, misuse."""

    category = Category.QUERY
    default_code = "QUERY_ERROR"


class NotSupportedError(QueryError):
    """A statement the router cannot run correctly yet; the message says why."""

    default_code = "NOT_SUPPORTED"


class StorageError(DoSQLError):
    category = Category.STORAGE
    default_code = "STORAGE_ERROR"


class AuthorizationError(DoSQLError):
    category = Category.AUTHORIZATION
    default_code = "PERMISSION_DENIED"


class ConfigurationError(DoSQLError):
    category = Category.CONFIGURATION
    default_code = "INVALID_CONFIG"


class RPCError(DoSQLError):
    """A peer is unreachable, closed the connection, or answered garbage."""

    category = Category.RPC
    default_code = "RPC_UNAVAILABLE"


class TimeoutError_(RPCError):  # noqa: N801 - avoid shadowing the builtin
    default_code = "TIMEOUT"


class CDCError(DoSQLError):
    category = Category.CDC
    default_code = "CDC_ERROR"


class TransactionAbortedError(DoSQLError):
    """The session's transaction was rolled back by an earlier error.

    Raised for every statement and COMMIT of the session until it sends
    ROLLBACK: nothing of the transaction is kept, and letting later statements
    run (or a COMMIT succeed) would tell the application a lie.
    """

    category = Category.TRANSACTION
    default_code = "TRANSACTION_ABORTED"


class CommitOutcomeUnknownError(DoSQLError):
    """A COMMIT whose outcome cannot be known: a participant was lost during its commit.

    ``details["gtid"]`` is the transaction's global id; ``SELECT
    dosql_transaction_status('<gtid>')`` answers committed / aborted / in_doubt.
    """

    category = Category.TRANSACTION
    default_code = "COMMIT_OUTCOME_UNKNOWN"


# Stable codes in use, so clients can rely on them. Adding is fine; renaming is not.
CODES: dict[str, type[DoSQLError]] = {
    "INTERNAL": InternalError,
    "INVALID_INPUT": ValidationError,
    "INVALID_MESSAGE": ValidationError,
    "MESSAGE_TOO_LARGE": ValidationError,
    "INVALID_PARAMETERS": ValidationError,
    "INVALID_VSCHEMA": ValidationError,
    "SHARDING_KEY_NULL": ValidationError,
    "VALUE_OUT_OF_RANGE": ValidationError,
    "NOT_FOUND": NotFoundError,
    "TABLE_NOT_FOUND": NotFoundError,
    "SHARD_NOT_FOUND": NotFoundError,
    "SNAPSHOT_NOT_FOUND": NotFoundError,
    "SNAPSHOT_EXPIRED": NotFoundError,
    "CONSTRAINT_VIOLATION": ConflictError,
    "UNIQUE_CONSTRAINT": ConflictError,
    "ALREADY_EXISTS": ConflictError,
    "TRANSACTION_CONFLICT": ConflictError,
    "DEADLOCK": ConflictError,
    "QUERY_ERROR": QueryError,
    "SHARDING_COLUMN_MISSING": QueryError,
    "SYNTAX_ERROR": QueryError,
    "NOT_SUPPORTED": NotSupportedError,
    "INTERNAL_TABLE": QueryError,
    "TRANSACTION_STATE": QueryError,
    "STORAGE_ERROR": StorageError,
    "DATABASE_LOCKED": StorageError,
    "PERMISSION_DENIED": AuthorizationError,
    "AUTHENTICATION_REQUIRED": AuthorizationError,
    "READ_ONLY": AuthorizationError,
    "INVALID_CONFIG": ConfigurationError,
    "MISSING_CONFIG": ConfigurationError,
    "SHARD_ID_MISMATCH": ConfigurationError,  # a database opened as another shard
    "PLACEMENT_CHANGED": ConfigurationError,  # a VSchema edit would move rows (router)
    "RPC_ERROR": RPCError,
    "RPC_UNAVAILABLE": RPCError,
    "SHARD_UNAVAILABLE": RPCError,
    "TIMEOUT": TimeoutError_,
    "QUERY_TIMEOUT": TimeoutError_,
    "CDC_ERROR": CDCError,
    "LSN_GAP": CDCError,
    "UNKNOWN_SOURCE": CDCError,
    "BUFFER_FULL": CDCError,
    "LAKE_BEHIND": CDCError,
    "SUBSCRIBER_TOO_SLOW": CDCError,
    "HISTORY_UNAVAILABLE": CDCError,
    # a shard database that is not the one the lake (or a subscriber) followed
    "SHARD_IDENTITY_MISMATCH": CDCError,
    "SHARD_LSN_BEHIND": CDCError,
    "TRANSACTION_ABORTED": TransactionAbortedError,
    "COMMIT_OUTCOME_UNKNOWN": CommitOutcomeUnknownError,
}

_BY_NAME: dict[str, type[DoSQLError]] = {
    cls.__name__: cls
    for cls in (
        DoSQLError,
        InternalError,
        ValidationError,
        NotFoundError,
        ConflictError,
        QueryError,
        NotSupportedError,
        StorageError,
        AuthorizationError,
        ConfigurationError,
        RPCError,
        TimeoutError_,
        CDCError,
        TransactionAbortedError,
        CommitOutcomeUnknownError,
    )
}


def from_wire(data: dict[str, Any]) -> DoSQLError:
    """Rebuild an error sent by :meth:`DoSQLError.to_wire`; unknown shapes become INTERNAL."""
    code = str(data.get("code") or "INTERNAL")
    cls = _BY_NAME.get(str(data.get("type"))) or CODES.get(code) or InternalError
    details = data.get("details")
    return cls(
        str(data.get("message", "")),
        code=code,
        details=details if isinstance(details, dict) else None,
    )
