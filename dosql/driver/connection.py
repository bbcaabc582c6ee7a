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
  rolls back when it raises (or when the commit itself fails); it is not
  closed (like :mod:`sqlite3`).

The transaction's state mirrors the server's (see :mod:`dosql.router.session`):
after an error that cost the transaction (a shard lost its part, a failed
commit, the connection to the server dropped) the transaction is *aborted*:
:attr:`in_transaction` stays True, every statement and :meth:`commit` raise
:class:`~dosql.driver.exceptions.TransactionAbortedError`, and only
:meth:`rollback` (or SQL ``ROLLBACK``) ends it, so a later write can never be
committed on its own as if it were part of the lost transaction. A commit
whose outcome cannot be known (a participant lost mid-commit, or the reply to
``Commit`` lost with the socket) raises
:class:`~dosql.driver.exceptions.CommitOutcomeUnknownError` carrying the
transaction's ``gtid``; :meth:`transaction_outcome` looks it up later. If
the socket dropped, :meth:`rollback` also opens a new one, so the
connection is usable again.

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
    TransactionAbortedError = X.TransactionAbortedError
    CommitOutcomeUnknownError = X.CommitOutcomeUnknownError

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
        self._token = token
        self._closed = False
        self._autocommit = bool(autocommit)
        self._in_txn = False
        self._gtid: str | None = None  # the open transaction's global id, when known
        # The error that ended the open transaction (aborted or outcome unknown):
        # while set, only rollback() is allowed.
        self._failure: X.Error | None = None
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
        """True while a transaction is open on the server, or aborted and not rolled back."""
        return self._in_txn

    @property
    def transaction_state(self) -> str:
        """``idle``, ``open``, ``aborted`` or ``outcome_unknown`` (as on the router)."""
        if not self._in_txn:
            return "idle"
        failure = self._current_failure()
        if failure is None:
            return "open"
        return "outcome_unknown" if isinstance(failure, X.CommitOutcomeUnknownError) else "aborted"

    @property
    def transaction_id(self) -> str | None:
        """The global id (gtid) of the open or failed transaction, when the server gave one."""
        return self._gtid if self._in_txn else None

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
        """Commit the open transaction; a no-op when none is open.

        Returns only when the server committed every part of it. Raises the
        server's error when the commit failed (the transaction is then aborted:
        :meth:`rollback` ends it), :class:`TransactionAbortedError` when it was
        already aborted, and :class:`CommitOutcomeUnknownError` (with the gtid)
        when its outcome cannot be known.
        """
        transport = self._live()
        if not self._in_txn:
            return
        self._raise_if_failed()
        message = P.Commit(id=transport.next_id(), trace_id=new_trace_id())
        try:
            transport.prepare()
            transport.send(message)
        except X.Error as exc:
            # Commit never left: the server rolls back a session that goes away.
            failure = self._fail(exc, lost="before the commit was sent")
            raise failure from failure.__cause__
        try:
            reply = transport.receive(message.id)
            if isinstance(reply, P.Error):
                raise X.wrap(reply.to_exception())
            if not isinstance(reply, P.Ok | P.Result):
                raise X.InterfaceError(
                    f"unexpected reply {type(reply).__name__} to Commit",
                    code="INVALID_MESSAGE",
                    category="rpc",
                )
        except X.Error as exc:
            failure = self._fail_unknown(exc) if transport.broken else self._fail(exc)
            raise failure from failure.__cause__
        info = getattr(reply, "info", None) or {}
        self._gtid = info.get("gtid") or self._gtid
        self._end_transaction()

    def rollback(self) -> None:
        """Roll back the open (or aborted) transaction; a no-op when none is open.

        After the socket to the server dropped, the server has rolled the
        transaction back already; rollback() then reconnects so the connection
        can be used again (if the server cannot be reached, the next call says so).
        """
        transport = self._live()
        if not self._in_txn:
            return
        try:
            if not transport.broken:
                transport.call(P.Rollback(id=transport.next_id(), trace_id=new_trace_id()))
        except X.Error as exc:
            if exc.code != "TRANSACTION_STATE" and not transport.broken:
                raise
        finally:
            # Rolled back, never begun, or the session is gone (which rolls back too).
            self._end_transaction()
            if transport.broken:
                self._reconnect()

    def transaction_outcome(self, gtid: str) -> str:
        """What became of transaction ``gtid``: ``committed``, ``aborted`` or ``in_doubt``.

        For a :class:`CommitOutcomeUnknownError` (its ``gtid``). Runs
        ``SELECT dosql_transaction_status(?)`` on a fresh connection to the same
        router, so it works whatever state this connection is in.
        """
        if not isinstance(gtid, str) or not gtid:
            raise X.InterfaceError(
                f"gtid must be a non-empty string, not {gtid!r}",
                code="INVALID_INPUT",
                category="validation",
            )
        with contextlib.closing(
            Connection(self.url, token=self._token, timeout=self.timeout, autocommit=True)
        ) as other:
            row = other.cursor().execute("SELECT dosql_transaction_status(?)", (gtid,)).fetchone()
        return str(row[0]) if row else "unknown"

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
        self._end_transaction()
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
            try:
                self.commit()
            except X.Error:
                # As sqlite3 does: a failed commit is rolled back so the connection is
                # left idle; the commit's error (with its gtid, if unknown) propagates.
                if not self._closed:
                    with contextlib.suppress(X.Error):
                        self.rollback()
                raise
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
        """Refuse statements of a failed transaction; open the implicit one a write needs."""
        if self._in_txn:
            if statement_kind != "rollback":
                self._raise_if_failed()
            return
        if statement_kind == "dml" and not self._autocommit:
            transport = self._live()
            # IMMEDIATE: the transaction opens for a write, so take the write lock now
            # rather than fail with DATABASE_LOCKED when upgrading a read later.
            reply = transport.call(
                P.Begin(id=transport.next_id(), mode="immediate", trace_id=new_trace_id())
            )
            self._in_txn = True
            self._failure = None
            info = getattr(reply, "info", None) or {}
            self._gtid = info.get("gtid") if isinstance(info.get("gtid"), str) else None

    def _after(self, statement_kind: str) -> None:
        """Track transaction control sent as SQL text."""
        if statement_kind in ("begin", "savepoint"):
            if not self._in_txn:
                self._gtid = None  # SQL BEGIN's reply carries no gtid
            self._in_txn = True
        elif statement_kind in ("commit", "rollback"):
            self._end_transaction()

    def _failed(self, exc: X.Error) -> None:
        """A statement failed: does the error say the transaction is gone? Mirror it.

        The router marks such errors with ``details["transaction_state"]``; a shard
        with ``details["transaction_rolled_back"]``; a dropped socket takes the
        server's transaction with it.
        """
        details = exc.details or {}
        if details.get("transaction_state") in ("aborted", "outcome_unknown"):
            # The server says its session transaction failed (even one this side had
            # not seen begin, e.g. SAVEPOINT outside a transaction): mirror it.
            self._in_txn = True
            self._gtid = details.get("gtid") or self._gtid
            self._failure = exc
        elif self._in_txn and (
            exc.code in ("TRANSACTION_ABORTED", "COMMIT_OUTCOME_UNKNOWN")
            or details.get("transaction_rolled_back")
            or (self._transport is not None and self._transport.broken is not None)
        ):
            # Without the marker (a shard server, a statement's own implicit commit
            # outside a transaction) only an open transaction can have been lost.
            self._failure = exc

    # ------------------------------------------------------------------ state machine

    def _current_failure(self) -> X.Error | None:
        """The recorded failure; a socket that dropped mid-transaction counts as one."""
        if self._failure is None and self._in_txn:
            transport = self._transport
            if transport is not None and transport.broken is not None:
                self._failure = X.OperationalError(
                    f"the connection to the server was lost ({transport.broken}) and the "
                    "server rolled the transaction back",
                    code="RPC_UNAVAILABLE",
                    category="rpc",
                )
        return self._failure

    def _raise_if_failed(self) -> None:
        failure = self._current_failure()
        if failure is None:
            return
        details = {"gtid": self._gtid, "cause_code": failure.code}
        if isinstance(failure, X.CommitOutcomeUnknownError) or (
            failure.code == "COMMIT_OUTCOME_UNKNOWN"
        ):
            raise X.CommitOutcomeUnknownError(
                f"the outcome of the commit of transaction {self._gtid} is unknown "
                f"({failure}); look it up with connection.transaction_outcome(gtid), then "
                "call rollback() to end the transaction",
                code="COMMIT_OUTCOME_UNKNOWN",
                category="transaction",
                details=details,
            )
        raise X.TransactionAbortedError(
            f"the transaction was rolled back because {failure}; call rollback() to end "
            "it, then retry the transaction",
            code="TRANSACTION_ABORTED",
            category="transaction",
            details=details,
        )

    def _fail(self, exc: X.Error, lost: str | None = None) -> X.Error:
        """commit() failed: the transaction is aborted (or unknown, if the server says so)."""
        if exc.code == "COMMIT_OUTCOME_UNKNOWN" or (
            (exc.details or {}).get("transaction_state") == "outcome_unknown"
        ):
            return self._fail_unknown(exc)
        self._gtid = (exc.details or {}).get("gtid") or self._gtid
        if lost is not None:
            failure = X.TransactionAbortedError(
                f"the connection to the server was lost {lost} ({exc}); the server rolled "
                "the transaction back: call rollback() to end it, then retry the transaction",
                code="TRANSACTION_ABORTED",
                category="transaction",
                details={"gtid": self._gtid, "cause_code": exc.code},
            )
            failure.__cause__ = exc
            self._failure = failure
            return failure
        self._failure = exc
        return exc

    def _fail_unknown(self, exc: X.Error) -> X.Error:
        """The commit's outcome is unknown: remember it and say how to look it up."""
        gtid = (exc.details or {}).get("gtid") or self._gtid
        self._gtid = gtid
        if isinstance(exc, X.CommitOutcomeUnknownError):
            failure: X.Error = exc
        else:
            failure = X.CommitOutcomeUnknownError(
                f"the reply to the commit of transaction {gtid} was lost ({exc}): it may or "
                "may not have committed; look it up with connection.transaction_outcome(gtid), "
                "then call rollback() to end the transaction",
                code="COMMIT_OUTCOME_UNKNOWN",
                category="transaction",
                details={"gtid": gtid, "cause_code": exc.code},
            )
            failure.__cause__ = exc
        self._failure = failure
        return failure

    def _end_transaction(self) -> None:
        self._in_txn = False
        self._failure = None
        self._gtid = None

    def _reconnect(self) -> None:
        """A new socket in place of a dropped one (only between transactions)."""
        old = self._transport
        if old is None:
            return
        try:
            self._transport = Transport(old.url, token=self._token, timeout=old.timeout)
        except X.Error:
            return  # the server is still away: the old transport keeps saying why
        old.close()


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
