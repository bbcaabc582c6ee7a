"""DoSQL: sharded SQLite behind a router, with a PEP 249 driver.

``dosql.connect(...)`` and the PEP 249 module globals and exceptions come
from :mod:`dosql.driver`; ``dosql.LocalCluster`` from :mod:`dosql.cluster`.
They are loaded lazily (module ``__getattr__``) so ``import dosql.errors``
stays light for every process that only needs the shared modules.
"""

from __future__ import annotations

from typing import Any

_DRIVER_NAMES = frozenset(
    {
        "connect",
        "Connection",
        "Cursor",
        "apilevel",
        "threadsafety",
        "paramstyle",
        "Warning",
        "Error",
        "InterfaceError",
        "DatabaseError",
        "DataError",
        "OperationalError",
        "IntegrityError",
        "InternalError",
        "ProgrammingError",
        "NotSupportedError",
        "TransactionAbortedError",
        "CommitOutcomeUnknownError",
        "Binary",
        "Date",
        "Time",
        "Timestamp",
        "DateFromTicks",
        "TimeFromTicks",
        "TimestampFromTicks",
        "STRING",
        "BINARY",
        "NUMBER",
        "DATETIME",
        "ROWID",
    }
)


def __getattr__(name: str) -> Any:
    if name == "LocalCluster":
        from dosql.cluster import LocalCluster

        return LocalCluster
    if name in ("subscribe", "subscribe_async"):
        from dosql import changefeed

        return getattr(changefeed, name)
    if name in _DRIVER_NAMES:
        from dosql import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'dosql' has no attribute {name!r}")
