"""The shard engine: a connection pool and the thread-side statement runner.

Transactions are the shard's, never SQLite's implicit ones: a statement
outside a session transaction runs inside ``BEGIN`` … ``COMMIT`` issued by
the shard. Writers first queue for the shard's write lock on the trio side
(:mod:`dosql.shard.writelock`: FIFO, bounded by ``lock_timeout_ms``): an
autocommit write statement for its length, a session transaction from its
BEGIN IMMEDIATE (``Begin(mode="immediate")`` or SQL ``BEGIN
IMMEDIATE``/``EXCLUSIVE``) or, when it began deferred, from its first write
statement, to its end. Holding it, they find SQLite's lock free. Reads take
nothing and never queue behind a writer (WAL). A deferred transaction that
reads, then writes after another session committed, gets
``TRANSACTION_CONFLICT`` (SQLite's snapshot rule) — write transactions should
begin immediate.

Before every COMMIT of a transaction that captured changes the shard writes
``_dosql_tx(txid, commit_ts)``; commit_ts is ``max(now, previous commit_ts)``
in UTC microseconds, computed while the SQLite write lock is held, so commit
timestamps never decrease along LSN order. Transaction ids are allocated at a
transaction's first captured change (also under the write lock), so they
increase in commit order; a rolled-back transaction may leave an unused id.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from dosql import protocol
from dosql.config import ShardConfig
from dosql.errors import StorageError
from dosql.shard import capture, identity, redo
from dosql.shard.changelog import ChangeLog, lsn_bounds
from dosql.shard.database import TRIGGER_PREFIX, ConnState, open_connection
from dosql.shard.decltypes import decltypes
from dosql.shard.prepared import PreparedTx, TwoPhase
from dosql.shard.storage import StorageMonitor
from dosql.shard.writelock import WriteLock
from dosql.statements import kind

Emit = Callable[[protocol.Result], None]
MAX_CONNECTIONS = 64


@dataclass
class StatementOutcome:
    final: protocol.Result  # the done=True chunk, for the caller to send
    # Set when an autocommit statement committed changes: the caller must pass it
    # to ChangeLog.committed() (from the trio thread, no hop needed).
    committed_lsn: int | None


def iter_chunks(cur: sqlite3.Cursor, max_rows: int, max_bytes: int) -> Iterator[list[list[Any]]]:
    """Rows in chunks of at most ``max_rows`` rows and (roughly) ``max_bytes`` bytes.

    Rows are fetched from SQLite one chunk at a time, so a result is never
    held in memory whole; the byte bound keeps chunks of wide rows well
    under the peers' maximum message size.
    """
    while True:
        fetched = cur.fetchmany(max_rows)
        if not fetched:
            return
        out: list[list[Any]] = []
        size = 0
        for row in fetched:
            n = 16 + sum(len(v) * 2 if isinstance(v, str | bytes) else 9 for v in row)
            if out and size + n > max_bytes:
                yield out
                out, size = [], 0
            out.append(list(row))
            size += n
        yield out


class Shard:
    """One SQLite database: pool of connections, txid/commit_ts counters, change log."""

    def __init__(self, shard_id: str, path: str, cfg: ShardConfig) -> None:
        self.shard_id = shard_id
        self.path = str(path)
        self.cfg = cfg
        self._lock = threading.Lock()
        self._next_txid = 0
        self._last_commit_ts = 0
        self._free: list[ConnState] = []
        self._all: list[ConnState] = []
        self._slots: trio.Semaphore | None = None
        self.limiter = trio.CapacityLimiter(MAX_CONNECTIONS + 8)
        self.writelock = WriteLock(shard_id)  # writers queue here, not in SQLite's busy handler
        self.open_transactions = 0
        self.sessions = 0
        # storage state for /health/deep, and which connections to recycle (storage.py)
        self.storage = StorageMonitor(self.path, cfg.min_free_bytes)
        admin = self._open()
        self.identity: identity.Identity
        try:
            self._startup(admin)
        except BaseException:  # e.g. another shard's database: leave nothing open
            admin.conn.close()
            raise
        self._free.append(admin)
        reader = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        reader.execute(f"PRAGMA busy_timeout = {int(cfg.busy_timeout_ms)}")
        self.changelog = ChangeLog(reader, self._open(), reopen=self._reopen_internal)
        self.twophase = TwoPhase(self)  # prepared transactions (two-phase commit)
        self.twophase.recover()

    # ------------------------------------------------------------------ setup

    def _open(self) -> ConnState:
        state = open_connection(self.path, self.cfg, self.allocate_txid)
        # Opened while the file is not writable, SQLite made it read-only for good:
        # serve this one request with it, then close it (see storage.py).
        state.recycle = not self.storage.writable()
        self._all.append(state)
        return state

    def _reopen_internal(self, old: ConnState) -> ConnState:
        """A fresh connection for the change log's writer after a storage error.

        The new one is opened first: if that fails too, the old one stays in use.
        """
        new = self._open()
        self.discard(old)
        return new

    def note_failure(self, state: ConnState | None, exc: BaseException) -> None:
        """A write path raised: if it was a storage error, record it and recycle ``state``."""
        if self.storage.failed(exc) is not None and state is not None:
            state.recycle = True

    def open_connection(self) -> ConnState:
        """A connection outside the pool (a redone prepared transaction's; see discard)."""
        return self._open()

    def discard(self, state: ConnState) -> None:
        """Close a connection that is not going back to the pool."""
        self._rollback_quietly(state)
        if state in self._all:
            self._all.remove(state)
        state.conn.close()

    def _startup(self, state: ConnState) -> None:
        """Create internal tables, load counters, reconcile triggers with the schema."""
        conn = state.conn
        state.internal = True
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                capture.ensure_internal_tables(conn)
                self.identity = identity.ensure(conn, self.shard_id, self.path)
                txid, ts = conn.execute(
                    "SELECT coalesce(max(txid), 0), coalesce(max(commit_ts), 0) FROM _dosql_tx"
                ).fetchone()
                self._next_txid, self._last_commit_ts = int(txid), int(ts)
                state.txid = None
                capture.sync_schema(conn)
                self._finish(state)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        finally:
            state.internal = False
            state.txid = None

    # ------------------------------------------------------------------ counters

    def allocate_txid(self) -> int:
        with self._lock:
            self._next_txid += 1
            return self._next_txid

    def next_commit_ts(self, chosen: int | None = None) -> int:
        """``max(now, previous)``; or the router's ``chosen`` one for a two-phase commit.

        A chosen timestamp is at least every participant's last one (the router
        takes the max of what Prepare reported, and the prepared transaction
        kept the write lock since), so the order along LSNs still holds.
        """
        with self._lock:
            ts = max(time.time_ns() // 1000 if chosen is None else chosen, self._last_commit_ts)
            self._last_commit_ts = ts
            return ts

    @property
    def last_commit_ts(self) -> int:
        return self._last_commit_ts

    # ------------------------------------------------------------------ pool (trio side)

    async def acquire(
        self, *, read_only: bool, timeout: float | None = None, write: bool = False
    ) -> ConnState:
        """A connection for one statement or one session transaction (waits for a free one).

        ``write=True`` first queues for the shard's write lock (FIFO, bounded by
        ``lock_timeout_ms``; see writelock.py), then takes the connection, which
        becomes the lock's holder until :meth:`release` — so a queued writer
        does not pin one of the pooled connections while it waits.
        """
        ticket = object() if write else None
        if ticket is not None:
            await self.writelock.acquire(ticket, timeout=self.cfg.lock_timeout_ms / 1000)
        try:
            state = await self._connection(timeout)
        except BaseException:
            if ticket is not None:
                self.writelock.release(ticket)
            raise
        if ticket is not None:
            self.writelock.transfer(ticket, state)
        state.read_only = read_only
        state.txid = None
        return state

    async def _connection(self, timeout: float | None) -> ConnState:
        if self._slots is None:
            self._slots = trio.Semaphore(MAX_CONNECTIONS)
        wait = timeout if timeout is not None else self.cfg.query_timeout_ms / 1000
        with trio.move_on_after(wait) as scope:
            await self._slots.acquire()
        if scope.cancelled_caught:
            raise StorageError(
                f"all {MAX_CONNECTIONS} connections of this shard are busy (open transactions): "
                "retry later, and keep transactions short",
                code="DATABASE_LOCKED",
            )
        try:
            return self._free.pop() if self._free else await trio.to_thread.run_sync(self._open)
        except BaseException:
            self._slots.release()
            raise

    async def lock_for_write(self, state: ConnState) -> None:
        """Queue a deferred session transaction for the write lock before its first write."""
        await self.writelock.acquire(state, timeout=self.cfg.lock_timeout_ms / 1000)

    def release(self, state: ConnState) -> None:
        """Back to the pool: roll back what is still open, then free the write lock.

        Every path out of a statement or transaction (commit, rollback, error,
        timeout, session closed) ends here, so the write lock cannot leak. A
        prepared two-phase-commit transaction simply does not release its
        connection until its decision is applied.
        """
        if state.conn.in_transaction:  # never hand out a connection with a transaction open
            self._rollback_quietly(state)
        self.writelock.release(state)
        state.read_only = False
        state.internal = False
        if state.recycle:
            # A storage error may have left it read-only for good (storage.py): close
            # it; the next request opens a fresh one, writable once the storage is.
            self.discard(state)
        else:
            self._free.append(state)
        assert self._slots is not None
        self._slots.release()

    # ------------------------------------------------------------------ thread side

    def begin(self, state: ConnState, immediate: bool) -> None:
        state.txid = None
        state.ddl_log = []
        state.internal = True
        try:
            state.conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        except BaseException as exc:
            self.note_failure(state, exc)
            raise
        finally:
            state.internal = False

    def commit(
        self,
        state: ConnState,
        *,
        notify: bool = True,
        gtid: str | None = None,
        parts: list[str] | None = None,
        commit_ts: int | None = None,
    ) -> int | None:
        """COMMIT (writing the transaction's _dosql_tx row); returns its last LSN if it logged.

        ``notify=False`` leaves waking the change-log waiters to the caller (the
        trio side does it without a thread hop). ``gtid``/``parts``/``commit_ts``:
        the router's id of the transaction, its participants and the commit
        timestamp they all share (two-phase commit; see prepared.py).
        """
        state.internal = True
        try:
            lsn = self._finish(state, gtid, parts, commit_ts)
        except BaseException as exc:
            self.note_failure(state, exc)
            self._rollback_quietly(state)
            raise
        finally:
            state.internal = False
            state.txid = None
        self.storage.write_ok()
        if lsn is not None and notify:
            self.changelog.committed(lsn)
        return lsn

    def _finish(
        self,
        state: ConnState,
        gtid: str | None = None,
        parts: list[str] | None = None,
        commit_ts: int | None = None,
    ) -> int | None:
        """Write the transaction's bookkeeping rows and COMMIT.

        A transaction with a ``gtid`` also leaves an outcome row
        (``_dosql_outcomes``), kept after the change log is purged, so the
        shard can answer "did it commit?" for days (prepared.py).
        """
        conn = state.conn
        lsn = None
        if state.txid is not None:
            ts = self.next_commit_ts(commit_ts)
            joined = ",".join(parts) if parts else None
            conn.execute(
                "INSERT INTO _dosql_tx(txid, commit_ts, gtid, parts) VALUES (?, ?, ?, ?)",
                (state.txid, ts, gtid, joined),
            )
            if gtid is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO _dosql_outcomes(gtid, commit_ts, parts, decided_at) "
                    "VALUES (?, ?, ?, ?)",
                    (gtid, ts, joined, int(time.time())),
                )
            lsn = lsn_bounds(conn)[0]
        conn.execute("COMMIT")
        return lsn

    def sync_wal(self) -> None:
        """Make every commit so far durable against power loss (fsync the WAL).

        With ``synchronous = NORMAL`` (the default) a WAL-mode COMMIT survives a
        process crash but not a power cut. Two-phase commit needs its
        CommitPrepared to survive both, at the cost of this one fsync.
        """
        if self.cfg.synchronous == "FULL":
            return  # COMMIT already synced the WAL
        try:
            fd = os.open(self.path + "-wal", os.O_RDONLY)
        except FileNotFoundError:
            return  # nothing in the WAL: the commit went to the database file, synced
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def run_internal(self, state: ConnState, sql: str, params: protocol.Params) -> None:
        """Run one statement as a client statement inside ``state``'s transaction (redo's DDL)."""
        self.execute(state, sql, params, lambda _chunk: None, 0, autocommit=False)

    def finish_prepared(self, entry: PreparedTx) -> None:
        """A decided prepared transaction: free its write lock and its connection (trio side)."""
        if not entry.recovered:
            self.release(entry.state)
            return
        self.writelock.release(entry.state)
        self.discard(entry.state)
        if entry.pooled:
            assert self._slots is not None
            self._slots.release()

    def rollback(self, state: ConnState) -> None:
        state.internal = True
        try:
            if state.conn.in_transaction:
                state.conn.execute("ROLLBACK")
        finally:
            state.internal = False
            state.txid = None

    def _rollback_quietly(self, state: ConnState) -> None:
        for _ in range(3):
            try:
                self.rollback(state)
                return
            except sqlite3.Error:
                continue

    def execute(
        self,
        state: ConnState,
        sql: str,
        params: protocol.Params,
        emit: Emit,
        request_id: int,
        *,
        autocommit: bool,
        many: Iterable[protocol.Params] | None = None,
    ) -> StatementOutcome:
        """Run one client statement (or executemany), streaming result chunks through emit.

        The final ``done`` chunk is returned (not emitted) once an autocommit
        statement has committed, so a client never sees success for something
        that did not commit.
        """
        # A SELECT (or WITH … SELECT, VALUES) cannot change anything, so it needs no captured transaction of its
        # own: SQLite's implicit one is enough and saves a BEGIN and a COMMIT.
        autocommit = autocommit and kind(sql) != "select"
        if autocommit:
            self.begin(state, immediate=False)
        cur: sqlite3.Cursor | None = None
        # DDL in a session transaction is remembered for a prepare's redo record (redo.py).
        ddl_from = redo.max_lsn(state.conn) if not autocommit and kind(sql) == "ddl" else None
        try:
            cur = self._run_user(state, sql, params, many)
            if state.ddl_seen:
                state.internal = True
                try:
                    capture.sync_schema(state.conn, state.altered)
                finally:
                    state.internal = False
                if ddl_from is not None and many is None:
                    state.ddl_log.append((sql, params, ddl_from, redo.max_lsn(state.conn)))
            rows: list[list[Any]] = []
            columns: list[str] | None = []  # statements without result columns
            decl: list[str | None] | None = None
            if cur.description is not None:
                columns = [d[0] for d in cur.description]
                decl = decltypes(state.conn, sql, len(columns))
                chunks = iter_chunks(
                    cur, self.cfg.result_chunk_rows, self.cfg.max_message_size // 4
                )
                rows = next(chunks, [])
                for nxt in chunks:  # one chunk of look-ahead: the last one goes out with done
                    emit(protocol.Result(request_id, rows, False, columns, decl))
                    columns = decl = None  # only the first chunk carries them
                    rows = nxt
            # The connection's last_insert_rowid also moves with the shard's own
            # bookkeeping inserts: report it only for statements that inserted rows.
            rowcount = cur.rowcount
            lastrowid = cur.lastrowid if state.inserted and rowcount > 0 else None
            cur.close()
            cur = None
            lsn = self.commit(state, notify=False) if autocommit else None
        except BaseException as exc:
            self.note_failure(state, exc)
            if cur is not None:
                # Reset the statement first: while it is active an interrupt() aimed
                # at it stays armed and would hit the ROLLBACK (or the next client).
                try:
                    cur.close()
                except sqlite3.Error:
                    pass
            if autocommit:
                self._rollback_quietly(state)
            raise
        final = protocol.Result(request_id, rows, True, columns, decl, rowcount, lastrowid)
        return StatementOutcome(final, lsn)

    def _run_user(
        self,
        state: ConnState,
        sql: str,
        params: protocol.Params,
        many: Iterable[protocol.Params] | None,
    ) -> sqlite3.Cursor:
        conn = state.conn
        state.begin_statement()

        def run() -> sqlite3.Cursor:
            if many is not None:
                return conn.executemany(sql, many)
            return conn.execute(sql, params if params is not None else ())

        try:
            return run()
        except sqlite3.OperationalError as exc:
            # ALTER TABLE ... DROP COLUMN refuses to run while a trigger names the
            # column: drop the table's capture triggers (sync_schema re-creates them)
            # and try again, all inside a savepoint so a failure restores them.
            if TRIGGER_PREFIX not in str(exc) or not state.altered:
                raise
            altered = set(state.altered)
            state.internal = True
            conn.execute("SAVEPOINT _dosql_ddl")
            try:
                for table in altered:
                    capture.drop_triggers(conn, table)
                state.internal = False
                state.begin_statement()
                cur = run()
                state.altered |= altered
                state.internal = True
                conn.execute("RELEASE _dosql_ddl")
                return cur
            except BaseException:
                state.internal = True
                conn.execute("ROLLBACK TO _dosql_ddl")
                conn.execute("RELEASE _dosql_ddl")
                raise
            finally:
                state.internal = False

    # ------------------------------------------------------------------ metadata

    def meta_get(self, state: ConnState, prefix: str) -> dict[str, str | None]:
        rows = state.conn.execute(
            "SELECT key, value FROM _dosql_meta WHERE substr(key, 1, length(?)) = ? ORDER BY key",
            (prefix, prefix),
        )
        return {k: v for k, v in rows}

    def meta_set(self, state: ConnState, key: str, value: str | None) -> None:
        """Not captured as a change: _dosql_meta has no capture triggers."""
        state.internal = True
        try:
            own_tx = not state.conn.in_transaction
            if own_tx:
                state.conn.execute("BEGIN IMMEDIATE")
            try:
                if value is None:
                    state.conn.execute("DELETE FROM _dosql_meta WHERE key = ?", (key,))
                else:
                    state.conn.execute(
                        "INSERT INTO _dosql_meta(key, value) VALUES (?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                        (key, value),
                    )
                # every change bumps the version, in the same transaction: a router polls
                # it to learn that another router changed what they share
                state.conn.execute(
                    "INSERT INTO _dosql_meta(key, value) VALUES (?, '1') ON CONFLICT(key) "
                    "DO UPDATE SET value = CAST(value AS INTEGER) + 1",
                    (protocol.META_VERSION_KEY,),
                )
                if own_tx:
                    state.conn.execute("COMMIT")
            except BaseException as exc:
                self.note_failure(state, exc)
                if own_tx and state.conn.in_transaction:
                    state.conn.execute("ROLLBACK")
                raise
        finally:
            state.internal = False

    # ------------------------------------------------------------------ observability

    def storage_bytes(self) -> tuple[int, int]:
        """(database file size, WAL file size) in bytes."""

        def size(p: str) -> int:
            try:
                return os.path.getsize(p)
            except OSError:
                return 0

        return size(self.path), size(self.path + "-wal")

    def health_check(self) -> dict[str, Any]:
        """Readable and intact (``quick_check``), and is the storage taking writes?

        ``error`` if the database cannot be read or is damaged; ``degraded`` if it
        reads but its storage is ``read_only``, ``full`` or had an ``io_error``
        (storage.py): writes fail, reads still work.
        """
        storage = self.storage.report()
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=2)
        try:
            ok = conn.execute("SELECT count(*) FROM _dosql_tx").fetchone() is not None
            quick = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
        finally:
            conn.close()
        status = "ok" if ok and quick == "ok" else "error"
        if status == "ok" and storage["state"] != "ok":
            status = "degraded"
        return {"status": status, "quick_check": quick, "storage": storage}

    def close(self) -> None:
        """Checkpoint the WAL into the database and close every connection."""
        for state in self._all:
            try:
                if state.conn.in_transaction:
                    state.conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        try:
            self.changelog.close()
            self.twophase.close()
        except sqlite3.Error:
            pass
        first = True
        for state in self._all:
            try:
                if first:
                    state.internal = True
                    state.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                    first = False
            except sqlite3.Error:
                pass
            finally:
                state.conn.close()
        self._all.clear()
        self._free.clear()
