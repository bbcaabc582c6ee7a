"""PEP 249 ``Cursor``: runs statements and hands out rows as they stream in.

Rows are tuples of SQLite values (None, int, float, str, bytes). A result set
is read from the socket one chunk at a time as the caller fetches, so a large
result never sits whole in memory. If another statement is sent on the same
connection before a cursor has read all of its rows, the rest of them are
read off the socket first and kept in that cursor (it still returns every
row, at the cost of memory); rows of a result the cursor itself gave up (by
executing again or closing) are discarded instead.

``rowcount`` is the number of rows changed by INSERT/UPDATE/DELETE/REPLACE
(summed over ``executemany``), and -1 for a statement that returns rows until
the server reports a count at the end of the result. ``lastrowid`` is the
rowid of the last inserted row when the server reports one, else it keeps
its previous value (None at first), as in :mod:`sqlite3`.

Parameters: a sequence for ``?`` placeholders or a mapping for ``:name``
placeholders (keys without the colon). Values must be None, int (64-bit),
float, str, bytes (bytearray/memoryview are sent as bytes), bool (sent as
0/1), or date/time/datetime, which are sent as ISO 8601 text like
:mod:`sqlite3`'s default adapters. Anything else raises ``ProgrammingError``
(code ``INVALID_PARAMETERS``); an integer outside 64 bits raises
``DataError`` (code ``VALUE_OUT_OF_RANGE``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import msgspec

from dosql import errors as E  # noqa: N812
from dosql import protocol as P  # noqa: N812
from dosql.driver import exceptions as X  # noqa: N812
from dosql.driver.transport import ResultStream, new_trace_id
from dosql.driver.types import adapt, describe
from dosql.statements import kind

if TYPE_CHECKING:
    from dosql.driver.connection import Connection

Row = tuple[Any, ...]
BATCH_ROWS = 5000
BATCH_BYTES = 4 * 1024 * 1024
_encode = msgspec.msgpack.Encoder().encode


class Cursor:
    """Executes statements on its connection and fetches their rows."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection  # PEP 249 optional extension
        self.arraysize = 1
        self.description: tuple[tuple[Any, ...], ...] | None = None
        self._closed = False
        self._stream: ResultStream | None = None
        self._rows: deque[list[Any]] = deque()
        self._rowcount = -1
        self._lastrowid: int | None = None

    # ------------------------------------------------------------------ attributes

    @property
    def rowcount(self) -> int:
        stream = self._stream
        if stream is not None and stream.done:
            return stream.rowcount
        return self._rowcount

    @property
    def lastrowid(self) -> int | None:
        stream = self._stream
        if stream is not None and stream.done and stream.lastrowid is not None:
            return stream.lastrowid
        return self._lastrowid

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ execution

    def execute(self, operation: str, parameters: Any = ()) -> Cursor:
        """Run one statement; returns the cursor (so ``cur.execute(...).fetchall()`` works)."""
        transport = self._check()
        sql = _check_sql(operation)
        params = bind(parameters)
        self._reset()
        statement_kind = kind(sql)
        conn = self.connection
        if statement_kind == "rollback" and conn.transaction_state in (
            "aborted",
            "outcome_unknown",
        ):
            conn.rollback()  # ends it even when the socket that held it is gone
            return self
        conn._before(statement_kind)  # noqa: SLF001
        transport = conn._live()  # noqa: SLF001 - _before may have had to reconnect
        message = P.Execute(
            id=transport.next_id(),
            sql=sql,
            params=params,
            timeout_ms=_ms(transport.timeout),
            trace_id=new_trace_id(),
        )
        try:
            stream = transport.execute(message)
        except X.Error as exc:
            conn._failed(exc)  # noqa: SLF001 - the server's transaction state, mirrored
            raise
        conn._after(statement_kind)  # noqa: SLF001
        self._start(stream)
        return self

    def executemany(self, operation: str, seq_of_parameters: Iterable[Any]) -> Cursor:
        """Run one INSERT/UPDATE/DELETE/REPLACE once per parameter set (see :func:`batches`)."""
        transport = self._check()
        sql = _check_sql(operation)
        statement_kind = kind(sql)
        if statement_kind != "dml":
            raise X.ProgrammingError(
                "executemany() runs INSERT, UPDATE, DELETE or REPLACE statements; "
                "use execute() for other statements",
                code="INVALID_INPUT",
                category="validation",
            )
        if isinstance(seq_of_parameters, str | bytes) or not isinstance(
            seq_of_parameters, Iterable
        ):
            raise X.ProgrammingError(
                "executemany() needs an iterable of parameter sequences or mappings",
                code="INVALID_PARAMETERS",
                category="validation",
            )
        self._reset()
        total, begun = 0, False
        for batch in batches(seq_of_parameters):
            if not begun:  # only once there is something valid to send
                self.connection._before(statement_kind)  # noqa: SLF001
                begun = True
            message = P.ExecuteMany(
                id=transport.next_id(),
                sql=sql,
                seq_params=batch,
                timeout_ms=_ms(transport.timeout),
                trace_id=new_trace_id(),
            )
            try:
                stream = transport.execute(message)
            except X.Error as exc:
                self.connection._failed(exc)  # noqa: SLF001
                raise
            total += max(stream.rowcount, 0)
            if stream.lastrowid is not None:
                self._lastrowid = stream.lastrowid
            self._rowcount = total
        self._rowcount = total
        return self

    # ------------------------------------------------------------------ fetching

    def fetchone(self) -> Row | None:
        self._check_results()
        return self._next()

    def fetchmany(self, size: int | None = None) -> list[Row]:
        self._check_results()
        size = self.arraysize if size is None else size
        out: list[Row] = []
        while len(out) < size:
            row = self._next()
            if row is None:
                break
            out.append(row)
        return out

    def fetchall(self) -> list[Row]:
        self._check_results()
        out: list[Row] = []
        while (row := self._next()) is not None:
            out.append(row)
        return out

    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row:
        self._check_results()
        row = self._next()
        if row is None:
            raise StopIteration
        return row

    # ------------------------------------------------------------------ the rest of PEP 249

    def close(self) -> None:
        """Release the cursor; unread rows are discarded. Idempotent."""
        self._closed = True
        self._drop()

    def setinputsizes(self, sizes: Any) -> None:
        """Does nothing: SQLite values need no size hints."""

    def setoutputsize(self, size: int, column: int | None = None) -> None:
        """Does nothing: large columns arrive whole."""

    def __enter__(self) -> Cursor:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._drop()
        except Exception:  # never raise from a finalizer
            return

    # ------------------------------------------------------------------ internals

    def _check(self):  # noqa: ANN202 - returns the live Transport
        if self._closed:
            raise X.InterfaceError(
                "the cursor is closed: create a new one with connection.cursor()",
                code="CURSOR_CLOSED",
                category="validation",
            )
        return self.connection._live()  # noqa: SLF001

    def _check_results(self) -> None:
        self._check()
        if self.description is None:
            raise X.ProgrammingError(
                "no result set to fetch from: execute a statement that returns rows first",
                code="NO_RESULT_SET",
                category="query",
            )

    def _reset(self) -> None:
        self._drop()
        self._rows.clear()
        self.description = None
        self._rowcount = -1

    def _drop(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            if stream.done and stream.lastrowid is not None:
                self._lastrowid = stream.lastrowid
            stream.discard()

    def _start(self, stream: ResultStream) -> None:
        self._stream = stream
        if stream.columns:
            self.description = describe(stream.columns, stream.decltypes, stream.first_rows)
        self._rows.extend(stream.first_rows)

    def _next(self) -> Row | None:
        while not self._rows:
            stream = self._stream
            chunk = stream.next_chunk() if stream is not None else None
            if chunk is None:
                return None
            self._rows.extend(chunk)
        return tuple(self._rows.popleft())


def batches(seq_of_parameters: Iterable[Any]) -> Iterator[list[P.Params]]:
    """Bound parameter sets in requests of at most BATCH_ROWS sets / about BATCH_BYTES.

    Keeps every request well under the server's message size limit and reads a
    generator lazily, so ``executemany`` over millions of rows never holds them
    all. As in :mod:`sqlite3`, sets already sent stay executed if a later one
    fails (inside the implicit transaction, rollback() undoes them all).
    """
    batch: list[P.Params] = []
    size = 0
    for params in seq_of_parameters:
        bound = bind(params)
        n = len(_encode(bound))
        if batch and (len(batch) >= BATCH_ROWS or size + n > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(bound)
        size += n
    if batch:
        yield batch


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


def _check_sql(operation: Any) -> str:
    if not isinstance(operation, str):
        raise X.InterfaceError(
            f"the statement must be a str, not {type(operation).__name__}",
            code="INVALID_INPUT",
            category="validation",
        )
    return operation


# Types adapt() passes through unchanged (ints only within 64 bits), checked by exact
# type so the usual row of plain values skips adapt()'s isinstance chain.
_AS_IS = frozenset({str, float, bytes, type(None)})
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1


def _as_is(values: list[Any]) -> bool:
    """True when adapt() would return every one of ``values`` unchanged."""
    for value in values:
        t = type(value)
        if t is int:
            if not _INT_MIN <= value <= _INT_MAX:
                return False
        elif t not in _AS_IS:
            return False
    return True


def bind(parameters: Any) -> P.Params:
    """Validate and adapt one parameter set (sequence or mapping) for the wire."""
    if parameters is None:
        return None
    if type(parameters) is tuple or type(parameters) is list:
        values = list(parameters)
        if _as_is(values):  # executemany's common case: nothing to adapt
            return values or None
    try:
        if isinstance(parameters, Mapping):
            out: dict[str, Any] = {}
            for name, value in parameters.items():
                if not isinstance(name, str):
                    raise TypeError(f"parameter names must be str, not {type(name).__name__}")
                out[name] = _adapt(value, name)
            return out
        if isinstance(parameters, Sequence) and not isinstance(
            parameters, str | bytes | bytearray | memoryview
        ):
            return [_adapt(value, i + 1) for i, value in enumerate(parameters)] or None
    except OverflowError as exc:
        failure = X.wrap(E.ValidationError(str(exc), code="VALUE_OUT_OF_RANGE"))
        raise failure from failure.__cause__
    except TypeError as exc:
        failure = X.wrap(E.ValidationError(str(exc), code="INVALID_PARAMETERS"))
        raise failure from failure.__cause__
    failure = X.wrap(
        E.ValidationError(
            f"parameters of type {type(parameters).__name__} are not supported: pass a "
            "sequence (for ?) or a mapping (for :name)",
            code="INVALID_PARAMETERS",
        )
    )
    raise failure from failure.__cause__


def _adapt(value: Any, where: int | str) -> Any:
    try:
        return adapt(value)
    except TypeError as exc:
        raise TypeError(f"parameter {where}: {exc}") from None
    except OverflowError as exc:
        raise OverflowError(f"parameter {where}: {exc}") from None
