"""PEP 249 ``Connection``: one WebSocket session with implicit transactions.

Transactions follow :mod:`sqlite3`'s legacy behaviour so code written for it
ports unchanged:

- With ``autocommit`` False (the default), the driver sends ``Begin`` before
  the first ``INSERT``/``UPDATE``/``DELETE``/``REPLACE`` (including
  ``INSERT ... ON CONFLICT`` upserts and ``WITH ... INSERT``) when no
  transaction is open; :meth:`commit` and :meth:`rollback` end it. Other
  statements (``SELECT``, DDL such as ``CREATE TABLE``, ``PRAGMA``) do not
  open a transaction — as in :mod:`sqlite3` — so DDL outside a transaction
  takes effect at once; inside an open transaction it is part of it.
- With ``autocommit`` True, no transaction is opened implicitly: every
  statement commits on its own. Setting ``autocommit`` to True commits a
  pending transaction first; setting it to False opens none until the next
  write.
- ``BEGIN``/``COMMIT``/``ROLLBACK`` sent as SQL text are tracked, so
  :attr:`in_transaction` and :meth:`commit` stay right.
- :meth:`commit`/:meth:`rollback` with no open transaction do nothing.
- :meth:`close` rolls back an open transaction (PEP 249: closing without
  committing discards the changes).
- As a context manager the connection commits when the block succeeds and
  rolls back when it raises; it is not closed (like :mod:`sqlite3`).

A connection must not be shared between threads without locking
(``threadsafety = 1``).
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from dosql import protocol as P  # noqa: N812
from dosql.driver import exceptions as X  # noqa: N812
from dosql.driver.cursor import Cursor
from dosql.driver.transport import Transport, new_trace_id


class Connection:
    """A session with a DoSQL router or shard (see the module docstring)."""

    # PEP 249 optional extension: the exception classes as connection attributes.
    Warning = X.Warning
    Error = X.Error
    InterfaceError = X.InterfaceError
    DatabaseError = X.DatabaseError
    DataError = X.DataError
    OperationalError = X.OperationalError
    IntegrityError = X.IntegrityError
    InternalError = X.InternalError
    ProgrammingError = X.ProgrammingError
    NotSupportedError = X.NotSupportedError

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        autocommit: bool = False,
    ) -> None:
        self._closed = True  # until the socket is open, so __del__ is safe
        self._transport: Transport | None = None
        timeout = _check_timeout(timeout)
        if token is not None and not isinstance(token, str):
            raise X.InterfaceError(
                f"token must be a string, not {type(token).__name__}",
                code="INVALID_INPUT",
                category="validation",
            )
        self._transport = Transport(url, token=token, timeout=timeout)
        self._closed = False
        self._autocommit = bool(autocommit)
        self._in_txn = False
        self._cursors: weakref.WeakSet[Cursor] = weakref.WeakSet()

    # ------------------------------------------------------------------ attributes

    @property
    def url(self) -> str:
        return self._transport.url if self._transport else ""

    @property
    def timeout(self) -> float:
        """Seconds a statement may run (sent as ``timeout_ms``); settable."""
        return self._live().timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._live().timeout = _check_timeout(value)

    @property
    def autocommit(self) -> bool:
        return self._autocommit

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self._live()
        if value and self._in_txn:
            self.commit()
        self._autocommit = bool(value)

    @property
    def in_transaction(self) -> bool:
        """True while a transaction is open on the server (as far as this session knows)."""
        return self._in_txn

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ PEP 249 methods

    def cursor(self) -> Cursor:
        self._live()
        cur = Cursor(self)
        self._cursors.add(cur)
        return cur

    def commit(self) -> None:
        """Commit the open transaction; a no-op when none is open."""
        transport = self._live()
        if not self._in_txn:
            return
        try:
            transport.call(P.Commit(id=transport.next_id(), trace_id=new_trace_id()))
        except X.Error as exc:
            # The server says there is no transaction: it is over either way.
            if exc.code == "TRANSACTION_STATE" or transport.broken:
                self._in_txn = False
            raise
        self._in_txn = False

    def rollback(self) -> None:
        """Roll back the open transaction; a no-op when none is open."""
        transport = self._live()
        if not self._in_txn:
            return
        try:
            transport.call(P.Rollback(id=transport.next_id(), trace_id=new_trace_id()))
        except X.Error as exc:
            if exc.code != "TRANSACTION_STATE":
                raise
        finally:
            # Rolled back, never begun, or the session is gone (which rolls back too).
            self._in_txn = False

    def close(self) -> None:
        """Close the session, rolling back an open transaction; idempotent."""
        if self._closed:
            return
        self._closed = True
        for cur in list(self._cursors):
            cur._closed = True  # noqa: SLF001 - the connection owns its cursors
        transport = self._transport
        if transport is None:
            return
        # Roll back explicitly so the server has released its locks when close()
        # returns; with a result still streaming, closing the socket is enough
        # (the server rolls back a session that goes away).
        if self._in_txn and not transport.broken and transport.active is None:
            with contextlib.suppress(X.Error):
                transport.call(P.Rollback(id=transport.next_id()))
        self._in_txn = False
        transport.close()

    def __enter__(self) -> Connection:
        self._live()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc_type is None:
            self.commit()
        elif not self._closed:
            self.rollback()
        return False

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self._closed and self._transport is not None:
                self._transport.close()

    # ------------------------------------------------------------------ extensions

    def execute(self, sql: str, parameters: Any = ()) -> Cursor:
        """Shortcut (as in :mod:`sqlite3`): a new cursor that executed ``sql``."""
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        return self.cursor().executemany(sql, seq_of_parameters)

    def ping(self) -> None:
        """Round trip to the server; raises OperationalError if it does not answer."""
        self._live().ping()

    # ------------------------------------------------------------------ for the cursor

    def _live(self) -> Transport:
        if self._closed or self._transport is None:
            raise X.InterfaceError(
                "the connection is closed: open a new one with dosql.connect()",
                code="CONNECTION_CLOSED",
                category="validation",
            )
        return self._transport

    def _before(self, statement_kind: str) -> None:
        """Open the implicit transaction a write needs (autocommit off)."""
        if statement_kind == "dml" and not self._autocommit and not self._in_txn:
            transport = self._live()
            # IMMEDIATE: the transaction opens for a write, so take the write lock now
            # rather than fail with DATABASE_LOCKED when upgrading a read later.
            transport.call(
                P.Begin(id=transport.next_id(), mode="immediate", trace_id=new_trace_id())
            )
            self._in_txn = True

    def _after(self, statement_kind: str) -> None:
        """Track transaction control sent as SQL text."""
        if statement_kind in ("begin", "savepoint"):
            self._in_txn = True
        elif statement_kind in ("commit", "rollback"):
            self._in_txn = False


def _check_timeout(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise X.InterfaceError(
            f"timeout must be a positive number of seconds, not {value!r}",
            code="INVALID_INPUT",
            category="validation",
        )
    return float(value)


def connect(
    url: str,
    token: str | None = None,
    timeout: float = 30.0,
    autocommit: bool = False,
) -> Connection:
    """Open a session with a DoSQL router (or shard) at ``dosql://HOST:PORT``.

    ``token`` is sent as ``Authorization: Bearer <token>``; ``timeout`` (seconds)
    bounds every statement on the server and every wait on the socket.
    """
    return Connection(url, token=token, timeout=timeout, autocommit=autocommit)
