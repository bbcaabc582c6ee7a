"""The shard's change log as an API: read by LSN, watermarks, release, wait.

This is what the CDC streamer (``dosql.shard.streamer``) and the
ReadChanges / LsnInfo / ReleaseChanges protocol ops use. Reads go through a
dedicated connection (WAL: they never block, and never see uncommitted
changes); ``release`` deletes through its own connection in internal mode.

LSN watermarks:
- ``current_lsn()``: the highest committed LSN (0 for an empty shard). It is
  the AUTOINCREMENT counter, so it survives purges and never goes back.
- ``oldest_lsn()``: the lowest LSN still retained; when every change has
  been released it is ``current_lsn() + 1`` (the next LSN that will exist),
  so "``from_lsn >= oldest_lsn()``" always means "nothing is missing".
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable

import msgspec
import trio

from dosql import protocol
from dosql.shard.capture import OUTCOME_RETENTION_S
from dosql.shard.database import ConnState
from dosql.shard.errormap import map_error

_COLUMNS = """c.lsn, c.txid, t.commit_ts, c.tbl, c.op, c.key, c.before, c.after, c.schema,
    t.gtid, t.parts"""
_READ = (
    "SELECT "
    + _COLUMNS
    + """ FROM _dosql_changes c JOIN _dosql_tx t ON t.txid = c.txid
    WHERE c.lsn >= ? {extra} ORDER BY c.lsn LIMIT ?"""
)
# The rest of one transaction after ``lsn``: its changes are contiguous in LSN order
# (one SQLite transaction), so the scan stops at the first change of another txid.
_REST = (
    "SELECT "
    + _COLUMNS
    + """ FROM _dosql_changes c JOIN _dosql_tx t ON t.txid = c.txid
    WHERE c.lsn > ? ORDER BY c.lsn"""
)
_REST_CHUNK = 1000

_schema_decoder = msgspec.msgpack.Decoder(protocol.TableSchema)


def row_to_change(row: tuple) -> protocol.Change:
    lsn, txid, commit_ts, tbl, op, key, before, after, schema, gtid, parts = row
    dec = msgspec.msgpack.decode
    return protocol.Change(
        lsn=lsn,
        txid=txid,
        commit_ts=commit_ts,
        table=tbl,
        op=op,
        key=dec(key) if key is not None else None,
        before=dec(before) if before is not None else None,
        after=dec(after) if after is not None else None,
        schema=_schema_decoder.decode(schema) if schema is not None else None,
        gtid=gtid,
        parts=parts.split(",") if parts else None,
    )


def read_changes(
    conn: sqlite3.Connection,
    from_lsn: int,
    limit: int,
    table: str | None = None,
    *,
    whole_distributed: bool = False,
) -> list[protocol.Change]:
    """Committed changes with ``lsn >= from_lsn`` in LSN order (shared with ``dosql changes``).

    ``whole_distributed``: if the ``limit`` cut falls inside a distributed
    transaction (``parts`` naming 2+ shards), read on to its last change, so a
    reader (the CDC streamer) never hands on part of one: the lake takes a
    batch's end for the end of every distributed part in it, to commit all parts
    of a transaction in one snapshot. The result may then exceed ``limit`` by the
    size of that transaction's part. Local transactions are still cut at
    ``limit`` (a huge one must not become one huge batch: the lake's buffer bound
    and backpressure work in batches). Call inside a read transaction.
    """
    if table is None:
        rows = conn.execute(_READ.format(extra=""), (from_lsn, limit)).fetchall()
    else:
        rows = conn.execute(_READ.format(extra="AND c.tbl = ?"), (from_lsn, table, limit))
        rows = rows.fetchall()
    if whole_distributed and rows and len(rows) >= limit and _distributed(rows[-1][-1]):
        rows.extend(_rest_of_transaction(conn, rows[-1][0], rows[-1][1], table))
    return [row_to_change(r) for r in rows]


def _distributed(parts: str | None) -> bool:
    return bool(parts) and len(set(parts.split(","))) >= 2


def _rest_of_transaction(
    conn: sqlite3.Connection, lsn: int, txid: int, table: str | None
) -> list[tuple]:
    """The changes of transaction ``txid`` after ``lsn`` (of ``table`` only, if given)."""
    out: list[tuple] = []
    cur = conn.execute(_REST, (lsn,))
    try:
        while True:
            chunk = cur.fetchmany(_REST_CHUNK)
            for row in chunk:
                if row[1] != txid:
                    return out
                if table is None or row[3] == table:
                    out.append(row)
            if len(chunk) < _REST_CHUNK:
                return out
    finally:
        cur.close()


def lsn_bounds(conn: sqlite3.Connection) -> tuple[int, int]:
    """(current, oldest) as stored in the database."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = '_dosql_changes'").fetchone()
    current = int(row[0]) if row else 0
    row = conn.execute("SELECT min(lsn) FROM _dosql_changes").fetchone()
    oldest = int(row[0]) if row and row[0] is not None else current + 1
    return current, oldest


class ChangeLog:
    """Change-log access for one shard (thread-safe sync methods + one async wait)."""

    def __init__(
        self,
        reader: sqlite3.Connection,
        writer: ConnState,
        reopen: Callable[[ConnState], ConnState] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        # After a storage error the writer is replaced (it may be read-only for good,
        # see storage.py); a failed release is simply retried by the lake's next one.
        self._reopen = reopen
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._current, self._oldest = lsn_bounds(reader)
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._trio_thread: int | None = None
        self._changed: trio.Event | None = None

    # ------------------------------------------------------------------ trio binding

    def bind(self) -> None:
        """Attach to the running trio loop (call once from inside trio)."""
        self._trio_token = trio.lowlevel.current_trio_token()
        self._trio_thread = threading.get_ident()
        self._changed = trio.Event()

    # ------------------------------------------------------------------ contract API

    def read(
        self,
        from_lsn: int,
        limit: int,
        table: str | None = None,
        *,
        whole_distributed: bool = False,
    ) -> list[protocol.Change]:
        """Committed changes from ``from_lsn`` (inclusive), at most ``limit``, in LSN order
        (``whole_distributed``: past ``limit`` to the end of a distributed transaction's
        part the cut would split)."""
        with self._read_lock:
            self._reader.execute("BEGIN")
            try:
                return read_changes(
                    self._reader,
                    max(int(from_lsn), 0),
                    max(int(limit), 0),
                    table,
                    whole_distributed=whole_distributed,
                )
            finally:
                self._reader.execute("COMMIT")

    def read_batch(self, from_lsn: int, limit: int) -> list[protocol.Change]:
        """A CDC batch: about ``limit`` changes, never part of a distributed
        transaction's part (see :func:`read_changes`)."""
        return self.read(from_lsn, limit, whole_distributed=True)

    def table_pending(self, table: str, through_us: int | None) -> tuple[int, int | None]:
        """``(newest LSN, oldest commit time)`` of the retained changes of ``table``
        committed at or before ``through_us`` (``(0, None)`` when there are none).

        Retained means not yet released by the lake writer, so a change of the
        table that is not here is in the lake: time travel to a point waits
        for these LSNs only, not for the shard's other tables.
        """
        through = time.time_ns() // 1000 if through_us is None else int(through_us)
        with self._read_lock:
            row = self._reader.execute(
                "SELECT max(c.lsn), min(t.commit_ts) FROM _dosql_changes c "
                "JOIN _dosql_tx t ON t.txid = c.txid "
                "WHERE lower(c.tbl) = lower(?) AND t.commit_ts <= ?",
                (table, through),
            ).fetchone()
        if row is None or row[0] is None:
            return 0, None
        return int(row[0]), int(row[1])

    def current_lsn(self) -> int:
        with self._state_lock:
            return self._current

    def oldest_lsn(self) -> int:
        with self._state_lock:
            return self._oldest

    def release(self, through_lsn: int) -> None:
        """The lake committed everything through ``through_lsn``: purge it from the shard.

        The newest transaction row is always kept so the txid and commit
        timestamp counters keep increasing across restarts.
        """
        through = min(int(through_lsn), self.current_lsn())
        if through < self.oldest_lsn():
            return
        with self._write_lock:
            conn = self._writer.conn
            self._writer.internal = True
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute("DELETE FROM _dosql_changes WHERE lsn <= ?", (through,))
                    conn.execute(
                        "DELETE FROM _dosql_tx WHERE txid < coalesce("
                        "(SELECT min(txid) FROM _dosql_changes), "
                        "(SELECT max(txid) FROM _dosql_tx))"
                    )
                    conn.execute(
                        "DELETE FROM _dosql_outcomes WHERE decided_at < ?",
                        (int(time.time()) - OUTCOME_RETENTION_S,),
                    )
                    current, oldest = lsn_bounds(conn)
                    conn.execute("COMMIT")
                except BaseException as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if isinstance(exc, sqlite3.Error):
                        self._recycle_writer(exc)
                        raise map_error(exc) from None
                    raise
            finally:
                self._writer.internal = False
        with self._state_lock:
            self._oldest = max(self._oldest, oldest)
            self._current = max(self._current, current)

    def _recycle_writer(self, exc: sqlite3.Error) -> None:
        """Replace the writer connection after a storage error (call holding _write_lock)."""
        from dosql.shard.storage import classify

        if self._reopen is None or classify(exc) is None:
            return
        try:
            self._writer = self._reopen(self._writer)
        except sqlite3.Error:
            pass  # cannot open one now: keep the old writer, try again at the next failure

    async def wait_for_change(self, after_lsn: int) -> None:
        """Return once ``current_lsn() > after_lsn``."""
        assert self._changed is not None, "ChangeLog.bind() was not called"
        while self.current_lsn() <= after_lsn:
            await self._changed.wait()

    # ------------------------------------------------------------------ shard side

    def committed(self, lsn: int) -> None:
        """A transaction committed changes up to ``lsn`` (call from any thread)."""
        with self._state_lock:
            if lsn <= self._current:
                return
            self._current = lsn
        if self._trio_token is None:
            return
        if threading.get_ident() == self._trio_thread:
            self._notify()
            return
        try:
            trio.from_thread.run_sync(self._notify, trio_token=self._trio_token)
        except trio.RunFinishedError:
            pass

    def _notify(self) -> None:
        # Wake every waiter; each re-checks current_lsn() and waits on the new event.
        event, self._changed = self._changed, trio.Event()
        if event is not None:
            event.set()

    def close(self) -> None:
        with self._read_lock:
            self._reader.close()
