"""Sequence state of a shard: a sidecar SQLite database next to the shard's own.

Routers hand out ids for ``INTEGER PRIMARY KEY`` columns from sequences and
reserve them here in blocks (``ReserveIds``). The state lives in
``<db>.seq``, not in the shard's database, for one reason: a reservation must
never take the write lock a client's open transaction may hold on the
shard's database (it would wait behind it and fail with DATABASE_LOCKED), nor
commit a write there behind a deferred transaction's back (its next write
would fail with a stale snapshot). A separate file has its own lock, held
only for the instant of one reservation.

Durability: WAL with ``synchronous = FULL``, so a reservation the router has
been told about survives a kill -9 of the shard (and a power cut). Each
reservation moves ``next_id`` past the block before replying, so a block is
never handed out twice; ids of blocks a router did not use up are skipped.

Migration: a sequence this sidecar does not know yet starts from the value a
router kept in ``_dosql_meta`` under ``seq:<name>`` (how sequences were stored
before), read through a separate connection (a plain read: in WAL it neither
waits for nor blocks writers), so an existing cluster keeps counting.
"""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from dosql.errors import StorageError, ValidationError

MAX_ID = 2**63 - 1
MAX_BLOCK = 1_000_000_000
LEGACY_PREFIX = "seq:"  # dosql.router.metadata.SEQ_PREFIX, the pre-sidecar home of sequences

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS sequences ("
    " name TEXT PRIMARY KEY,"
    " next_id INTEGER NOT NULL"  # the lowest id not yet handed out
    ")"
)


class SequenceStore:
    """Block reservations for every sequence of one shard (thread-safe)."""

    def __init__(self, db_path: str, busy_timeout_ms: int = 5000) -> None:
        self.db_path = str(db_path)
        self.path = self.db_path + ".seq"
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = sqlite3.connect(
                self.path,
                isolation_level=None,
                check_same_thread=False,
                timeout=self.busy_timeout_ms / 1000,
            )
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(_SCHEMA)
            self._conn = conn
        return self._conn

    def reserve(self, name: str, count: int, floor: int) -> tuple[int, int]:
        """Ids ``[start, stop)`` of ``name``: ``count`` of them, none below ``floor``."""
        _check(name, count, floor)
        with self._lock:
            try:
                return self._reserve(name, count, floor)
            except sqlite3.Error as exc:
                self.close()  # reopen on the next call
                raise StorageError(
                    f"could not reserve ids of sequence {name!r} in {self.path}: {exc}; "
                    "check the shard's disk and retry",
                    code="SEQUENCE_STORAGE",
                    details={"sequence": name, "path": self.path},
                ) from None

    def _reserve(self, name: str, count: int, floor: int) -> tuple[int, int]:
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute("SELECT next_id FROM sequences WHERE name = ?", (name,)).fetchone()
            stored = int(row[0]) if row is not None else self._legacy(name)
            start = max(stored, floor, 1)
            stop = start + count
            if stop > MAX_ID:
                raise ValidationError(
                    f"sequence {name!r} is exhausted: {count} more ids from {start} would pass "
                    f"{MAX_ID}",
                    code="SEQUENCE_EXHAUSTED",
                    details={"sequence": name, "next_id": start},
                )
            conn.execute(
                "INSERT INTO sequences(name, next_id) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET next_id = excluded.next_id",
                (name, stop),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return start, stop

    def _legacy(self, name: str) -> int:
        """The next id the shard's ``_dosql_meta`` recorded for ``name`` (1 if none)."""
        try:
            conn = sqlite3.connect(self.db_path, isolation_level=None, timeout=2)
        except sqlite3.Error:
            return 1
        try:
            row = conn.execute(
                "SELECT value FROM _dosql_meta WHERE key = ?", (LEGACY_PREFIX + name,)
            ).fetchone()
        except sqlite3.Error:  # no _dosql_meta (not a shard database): nothing to migrate
            return 1
        finally:
            conn.close()
        try:
            return int(row[0]) if row is not None and row[0] is not None else 1
        except (TypeError, ValueError):
            return 1

    def peek(self) -> dict[str, int]:
        """Every sequence's next id (for tests and status pages)."""
        with self._lock:
            rows = self._connection().execute("SELECT name, next_id FROM sequences").fetchall()
        return {str(n): int(v) for n, v in rows}

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


def _check(name: Any, count: Any, floor: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValidationError("ReserveIds needs a sequence name", code="INVALID_INPUT")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BLOCK:
        raise ValidationError(
            f"ReserveIds count must be an integer from 1 to {MAX_BLOCK}, not {count!r}",
            code="INVALID_INPUT",
        )
    if isinstance(floor, bool) or not isinstance(floor, int) or not -(2**63) <= floor <= MAX_ID:
        raise ValidationError(
            f"ReserveIds floor must be a 64-bit integer, not {floor!r}", code="INVALID_INPUT"
        )


_stores: dict[str, SequenceStore] = {}
_stores_lock = threading.Lock()


def store_for(db_path: str, busy_timeout_ms: int = 5000) -> SequenceStore:
    """The one store of the shard database at ``db_path`` (opened on first use)."""
    with _stores_lock:
        store = _stores.get(db_path)
        if store is None:
            store = _stores[db_path] = SequenceStore(db_path, busy_timeout_ms)
        return store
