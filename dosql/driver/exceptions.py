"""PEP 249 exceptions and the mapping from the project's error codes onto them.

Applications written against any DB-API driver catch ``IntegrityError``,
``ProgrammingError``, ``OperationalError`` …, so every :class:`dosql.errors.DoSQLError`
that reaches the driver (from the router, a shard, or the transport) is turned
into one of these. The original error stays reachable: ``exc.code`` is its
stable code, ``exc.category`` its category, ``exc.details`` its details, and
``exc.__cause__`` the :class:`~dosql.errors.DoSQLError` itself.

Mapping (first match wins):

==============================================  ======================
dosql error (code or class)                     PEP 249 class
==============================================  ======================
``NotSupportedError`` (``NOT_SUPPORTED``)        ``NotSupportedError``
``SHARDING_KEY_NULL``                           ``IntegrityError`` (like NOT NULL)
``VALUE_OUT_OF_RANGE``                          ``DataError``
``TRANSACTION_ABORTED``                         ``TransactionAbortedError``
``COMMIT_OUTCOME_UNKNOWN``                      ``CommitOutcomeUnknownError``
``TRANSACTION_CONFLICT``                        ``OperationalError`` (retry it)
``DEADLOCK``                                    ``OperationalError`` (retry it)
``ConflictError`` (constraints)                 ``IntegrityError``
``QueryError``, ``NotFoundError``,
``ValidationError``                             ``ProgrammingError``
``AUTHENTICATION_REQUIRED``                     ``OperationalError``
``READ_ONLY``, ``PERMISSION_DENIED`` (other
``AuthorizationError``)                         ``ProgrammingError``
``RPCError``, ``TimeoutError_``,
``StorageError``, ``CDCError``,
``ConfigurationError``                          ``OperationalError``
``InternalError`` and anything else             ``InternalError``
==============================================  ======================

Authorization is split the way psycopg splits PostgreSQL's errors: a refused
login is an operational problem of the connection (``OperationalError``),
while a statement the caller's token may not run is a programming error in
the application (``ProgrammingError``), as for ``insufficient_privilege``.
"""

from __future__ import annotations

from typing import Any

from dosql import errors as E  # noqa: N812 - short alias for the project's hierarchy


class Warning(Exception):  # noqa: A001,N818 - the name is fixed by PEP 249
    """Important warnings (PEP 249); not raised by this driver today."""


class Error(Exception):
    """Base of every error this driver raises.

    ``code`` is the project's stable error code (e.g. ``UNIQUE_CONSTRAINT``),
    ``category`` its category, ``details`` extra structured information,
    ``trace_id`` the failed request's trace id (the servers log it).
    """

    def __init__(
        self,
        message: str = "",
        *,
        code: str = "INTERNAL",
        category: str = "general",
        details: dict[str, Any] | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.category = category
        self.details: dict[str, Any] = details or {}
        self.trace_id = trace_id

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


class InterfaceError(Error):
    """Misuse of the driver itself: closed objects, wrong argument kinds."""


class DatabaseError(Error):
    """Errors reported by (or about) the database."""


class DataError(DatabaseError):
    """A value is out of range or otherwise unusable as data."""


class OperationalError(DatabaseError):
    """The database is unreachable, timed out, refused the login, or is busy."""


class TransactionAbortedError(OperationalError):
    """The transaction was rolled back by an earlier error; ``rollback()``, then retry it.

    Raised by every statement and by ``commit()`` until ``rollback()``: nothing of
    the transaction is kept, so nothing may pretend to continue or commit it.
    """


class CommitOutcomeUnknownError(OperationalError):
    """``commit()`` could not learn whether the transaction committed.

    A participant was lost in the middle of its commit, or the reply to the
    commit never arrived. :attr:`gtid` names the transaction;
    ``Connection.transaction_outcome(gtid)`` answers ``committed``, ``aborted``
    or ``in_doubt``. Raised again by every statement and ``commit()`` until
    ``rollback()``.
    """

    @property
    def gtid(self) -> str | None:
        value = self.details.get("gtid")
        return value if isinstance(value, str) else None


class IntegrityError(DatabaseError):
    """A constraint (UNIQUE, PRIMARY KEY, NOT NULL, CHECK, FOREIGN KEY) was violated."""


class InternalError(DatabaseError):
    """The database hit an internal error; report it."""


class ProgrammingError(DatabaseError):
    """The statement is wrong: syntax, unknown table, bad parameters, not permitted."""


class NotSupportedError(DatabaseError):
    """The statement or feature is not supported (yet); the message says why."""


ALL = (
    Warning,
    Error,
    InterfaceError,
    DatabaseError,
    DataError,
    OperationalError,
    IntegrityError,
    InternalError,
    ProgrammingError,
    NotSupportedError,
    TransactionAbortedError,
    CommitOutcomeUnknownError,
)

_BY_CODE: dict[str, type[Error]] = {
    "NOT_SUPPORTED": NotSupportedError,
    "TRANSACTION_ABORTED": TransactionAbortedError,
    "COMMIT_OUTCOME_UNKNOWN": CommitOutcomeUnknownError,
    "SHARDING_KEY_NULL": IntegrityError,
    "VALUE_OUT_OF_RANGE": DataError,
    "TRANSACTION_CONFLICT": OperationalError,
    "DEADLOCK": OperationalError,
    "AUTHENTICATION_REQUIRED": OperationalError,
}

_BY_CATEGORY: dict[str, type[Error]] = {
    E.Category.CONFLICT: IntegrityError,
    E.Category.QUERY: ProgrammingError,
    E.Category.NOT_FOUND: ProgrammingError,
    E.Category.VALIDATION: ProgrammingError,
    E.Category.AUTHORIZATION: ProgrammingError,
    E.Category.RPC: OperationalError,
    E.Category.STORAGE: OperationalError,
    E.Category.CDC: OperationalError,
    E.Category.CONFIGURATION: OperationalError,
    E.Category.TRANSACTION: OperationalError,
}


def class_for(code: str, category: str) -> type[Error]:
    """The PEP 249 class for a project error code and category."""
    return _BY_CODE.get(code) or _BY_CATEGORY.get(category) or InternalError


def from_dosql(exc: E.DoSQLError) -> Error:
    """Convert a project error; raise the result ``from exc`` to keep ``__cause__``."""
    category = str(exc.category)
    if isinstance(exc, E.NotSupportedError):
        cls: type[Error] = NotSupportedError
    else:
        cls = class_for(exc.code, category)
    return cls(
        exc.message, code=exc.code, category=category, details=exc.details, trace_id=exc.trace_id
    )


def wrap(exc: E.DoSQLError, cause: BaseException | None = None) -> Error:
    """The PEP 249 error for ``exc`` with ``exc`` as its ``__cause__``, ready to raise.

    ``cause`` (e.g. the OSError behind an RPCError) becomes ``exc.__cause__``.
    """
    if cause is not None:
        exc.__cause__ = cause
    converted = from_dosql(exc)
    converted.__cause__ = exc
    return converted
