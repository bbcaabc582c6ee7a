"""DB-API 2.0 (PEP 249) driver for DoSQL: ``dosql.driver.connect("dosql://HOST:PORT")``.

Speaks :mod:`dosql.protocol` over one WebSocket per connection to a router or
a shard (both serve the same client protocol). See :mod:`.connection` for
transactions, :mod:`.cursor` for parameters, rows and streaming,
:mod:`.types` for type codes, and :mod:`.exceptions` for how project error
codes map onto PEP 249 exceptions (every exception has ``code``, ``category``
and ``details``; errors from the server keep the original
:class:`dosql.errors.DoSQLError` as ``__cause__``).

Driver-side error codes (beyond :data:`dosql.errors.CODES`):
``CONNECTION_CLOSED`` and ``CURSOR_CLOSED`` (InterfaceError: a closed object
was used), ``NO_RESULT_SET`` (ProgrammingError: fetch without a result set),
``INVALID_INPUT`` for wrong argument kinds.

Transaction failures (both ``OperationalError`` subclasses):
:class:`TransactionAbortedError` (``TRANSACTION_ABORTED``: the transaction was
rolled back by an earlier error; every statement and ``commit()`` raise it
until ``rollback()``) and :class:`CommitOutcomeUnknownError`
(``COMMIT_OUTCOME_UNKNOWN``: the commit's outcome is unknown; ``exc.gtid`` and
``Connection.transaction_outcome(gtid)`` find it out).
"""

from __future__ import annotations

from dosql.driver.connection import Connection, connect
from dosql.driver.cursor import Cursor
from dosql.driver.exceptions import (
    CommitOutcomeUnknownError,
    DatabaseError,
    DataError,
    Error,
    IntegrityError,
    InterfaceError,
    InternalError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
    TransactionAbortedError,
    Warning,
)
from dosql.driver.types import (
    BINARY,
    DATETIME,
    NUMBER,
    ROWID,
    STRING,
    Binary,
    Date,
    DateFromTicks,
    Time,
    TimeFromTicks,
    Timestamp,
    TimestampFromTicks,
)

apilevel = "2.0"
threadsafety = 1  # threads may share the module, but not connections
paramstyle = "qmark"  # ":name" placeholders with a mapping work too

__all__ = [
    "BINARY",
    "DATETIME",
    "NUMBER",
    "ROWID",
    "STRING",
    "Binary",
    "CommitOutcomeUnknownError",
    "Connection",
    "Cursor",
    "DataError",
    "DatabaseError",
    "Date",
    "DateFromTicks",
    "Error",
    "IntegrityError",
    "InterfaceError",
    "InternalError",
    "NotSupportedError",
    "OperationalError",
    "ProgrammingError",
    "Time",
    "TimeFromTicks",
    "Timestamp",
    "TimestampFromTicks",
    "TransactionAbortedError",
    "Warning",
    "apilevel",
    "connect",
    "paramstyle",
    "threadsafety",
]
