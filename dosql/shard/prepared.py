"""Two-phase commit on a shard: prepared transactions that outlive their session and a crash.

SQLite has no PREPARE TRANSACTION, so a prepared transaction here is two
things: the still-open SQLite write transaction, on a connection that keeps
the shard's write lock (nobody else can write until it is decided, so its
commit cannot fail on a conflict), and a redo record of what it did
(:mod:`dosql.shard.redo`) in a sidecar database, ``<db>.2pc`` (WAL,
``synchronous=FULL``), written before ``Prepare`` is acknowledged. If the
shard dies, the open transaction dies with it; at restart each record whose
transaction has no outcome is redone in a new write transaction that is
prepared again — orphaned, as its router session is gone — until a decision
arrives.

Decisions (always from the router: its commit path or its resolver):

- ``CommitPrepared(gtid, commit_ts, parts)`` writes ``_dosql_tx`` with the
  gtid, the participants and the shared commit timestamp, and an outcome row
  (``_dosql_outcomes``), in the transaction itself, commits, then drops the
  record. Idempotent: a gtid whose outcome row exists is simply Ok.
- ``AbortPrepared(gtid)`` fences the gtid and drops the record in one sidecar
  transaction, then rolls back.
- ``TxStatus(gtid, fence=True)`` answers committed / prepared / aborted and,
  for a gtid it has never seen, fences it: from then on a ``Prepare`` or a
  one-phase ``Commit`` of that gtid is refused. That is what lets a resolver
  decide "aborted" for a transaction whose decider (the first participant)
  never prepared, without racing a router that is still in phase 1.

All of these run under one lock, so an answer cannot interleave with a
prepare or a decision of the same gtid.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dosql.errors import ConflictError, QueryError, TransactionAbortedError
from dosql.faults import crash_point
from dosql.shard import redo
from dosql.shard.database import ConnState

if TYPE_CHECKING:
    from dosql.shard.executor import Shard

log = logging.getLogger(__name__)

FENCE_RETENTION_S = 24 * 3600  # a Prepare arriving later than this after a fence is not credible


class PreparedStore:
    """The sidecar database: redo records of prepared transactions, and fences."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(
            "PRAGMA synchronous = FULL"
        )  # an acknowledged prepare survives power loss
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS prepared(gtid TEXT PRIMARY KEY, candidates TEXT NOT NULL, "
            "redo BLOB NOT NULL, prepared_at REAL NOT NULL)"
        )
        self.conn.execute("CREATE TABLE IF NOT EXISTS fenced(gtid TEXT PRIMARY KEY, at REAL)")
        self.conn.execute("DELETE FROM fenced WHERE at < ?", (time.time() - FENCE_RETENTION_S,))

    def save(self, gtid: str, candidates: list[str], record: bytes) -> None:
        self.conn.execute(
            "INSERT INTO prepared(gtid, candidates, redo, prepared_at) VALUES (?, ?, ?, ?)",
            (gtid, ",".join(candidates), record, time.time()),
        )

    def records(self) -> list[tuple[str, list[str], float]]:
        """(gtid, candidates, prepared_at) of every record, oldest first (redo via record())."""
        rows = self.conn.execute(
            "SELECT gtid, candidates, prepared_at FROM prepared ORDER BY prepared_at"
        )
        return [(g, c.split(",") if c else [], at) for g, c, at in rows]

    def record(self, gtid: str) -> bytes | None:
        row = self.conn.execute("SELECT redo FROM prepared WHERE gtid = ?", (gtid,)).fetchone()
        return row[0] if row else None

    def delete(self, gtid: str) -> None:
        """Drop a decided record without an fsync.

        Safe because the commit it stood for was made durable first: if the
        deletion is lost (power loss), the record comes back at restart, finds
        the outcome row and is dropped again (TwoPhase.recover).
        """
        self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            self.conn.execute("DELETE FROM prepared WHERE gtid = ?", (gtid,))
        finally:
            self.conn.execute("PRAGMA synchronous = FULL")

    def fence(self, gtid: str) -> None:
        """Make ``gtid`` aborted here for good and forget any record of it (one transaction)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DELETE FROM prepared WHERE gtid = ?", (gtid,))
            self.conn.execute(
                "INSERT OR REPLACE INTO fenced(gtid, at) VALUES (?, ?)", (gtid, time.time())
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def fenced(self, gtid: str) -> bool:
        return (
            self.conn.execute("SELECT 1 FROM fenced WHERE gtid = ?", (gtid,)).fetchone() is not None
        )

    def close(self) -> None:
        self.conn.close()


@dataclass
class PreparedTx:
    gtid: str
    state: ConnState  # the open SQLite transaction; it holds the shard's write lock
    candidates: list[str]
    prepared_at: float
    owner: object | None  # the session that prepared it; None once that session is gone
    pooled: bool = True  # its connection holds one of the pool's slots
    recovered: bool = False  # redone (after a restart): its connection is closed when decided

    @property
    def orphaned(self) -> bool:
        return self.owner is None

    def describe(self) -> dict[str, Any]:
        return {
            "gtid": self.gtid,
            "candidates": self.candidates,
            "age_s": round(time.time() - self.prepared_at, 3),
            "orphaned": self.orphaned,
            "recovered": self.recovered,
        }


def not_prepared(gtid: str, why: str) -> QueryError:
    return QueryError(
        f"transaction {gtid} is not prepared on this shard ({why})",
        code="TRANSACTION_NOT_PREPARED",
        details={"gtid": gtid},
    )


def check_deferred_keys(state: ConnState) -> None:
    """Fail the prepare now if a deferred foreign key would fail the COMMIT later.

    SQLite checks ``DEFERRABLE INITIALLY DEFERRED`` foreign keys only at COMMIT;
    after the decision a participant must not be able to refuse it. A full
    ``foreign_key_check`` runs only when the schema has such keys at all.
    """
    conn = state.conn
    state.internal = True
    try:
        if not conn.execute("PRAGMA foreign_keys").fetchone()[0]:
            return
        deferred = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND sql LIKE '%INITIALLY DEFERRED%'"
        ).fetchone()
        if deferred is None:
            return
        bad = conn.execute("PRAGMA foreign_key_check").fetchone()
    finally:
        state.internal = False
    if bad is not None:
        raise ConflictError(
            f"FOREIGN KEY constraint failed (table {bad[0]}, a deferred key): the transaction "
            "would fail at COMMIT, so it is not prepared and is rolled back",
            code="CONSTRAINT_VIOLATION",
            details={"table": bad[0]},
        )


class TwoPhase:
    """The shard's prepared transactions. Thread-side methods; the session does the trio side."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        self.store = PreparedStore(shard.path + ".2pc")
        self.reader = sqlite3.connect(shard.path, isolation_level=None, check_same_thread=False)
        self.reader.execute(f"PRAGMA busy_timeout = {int(shard.cfg.busy_timeout_ms)}")
        self.entries: dict[str, PreparedTx] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ lookups

    def outcome(self, gtid: str) -> tuple[int, list[str]] | None:
        """(commit_ts, parts) if ``gtid`` committed here."""
        row = self.reader.execute(
            "SELECT commit_ts, parts FROM _dosql_outcomes WHERE gtid = ?", (gtid,)
        ).fetchone()
        if row is None:
            return None
        return int(row[0]), row[1].split(",") if row[1] else []

    def check_not_fenced(self, gtid: str) -> None:
        if self.store.fenced(gtid):
            raise TransactionAbortedError(
                f"transaction {gtid} was declared aborted on this shard (a recovery gave up on "
                "it), so it cannot commit: it is rolled back; retry it",
                details={"gtid": gtid, "transaction_rolled_back": True},
            )

    # ------------------------------------------------------------------ phase 1

    def prepare(
        self, state: ConnState, gtid: str, candidates: list[str], owner: object
    ) -> dict[str, Any]:
        """Make ``state``'s transaction durable; ``{"read_only": True}`` if it wrote nothing.

        A read-only transaction is rolled back here (the caller releases its
        connection). Any error leaves the transaction open for the caller to
        roll back.
        """
        with self.lock:
            if gtid in self.entries or self.outcome(gtid) is not None:
                raise QueryError(
                    f"transaction {gtid} is already prepared or committed on this shard",
                    code="TRANSACTION_STATE",
                )
            self.check_not_fenced(gtid)
            if state.txid is None:
                self.shard.rollback(state)
                return {"read_only": True}
            check_deferred_keys(state)
            record = redo.build(state)
            crash_point("shard.prepare.before_record")
            try:
                self.store.save(gtid, candidates, record)
            except sqlite3.Error as exc:
                self.shard.storage.failed(exc)  # the sidecar's storage: /health/deep shows it
                raise
            crash_point("shard.prepare.after_record")
            self.entries[gtid] = PreparedTx(gtid, state, candidates, time.time(), owner)
            return {"last_commit_ts": self.shard.last_commit_ts}

    # ------------------------------------------------------------------ phase 2

    def commit(
        self, gtid: str, commit_ts: int, parts: list[str]
    ) -> tuple[PreparedTx | None, int | None, dict[str, Any]]:
        """Commit prepared ``gtid``: (the entry to release, its last LSN, reply info)."""
        with self.lock:
            entry = self.entries.get(gtid)
            if entry is None:
                done = self.outcome(gtid)
                if done is not None:
                    return None, None, {"already": True, "commit_ts": done[0]}
                self.check_not_fenced(gtid)
                raise not_prepared(gtid, "never prepared here, or unknown")
            crash_point("shard.commit_prepared.before")
            try:
                lsn = self.shard.commit(
                    entry.state, notify=False, gtid=gtid, parts=parts, commit_ts=commit_ts
                )
            except Exception:
                # The commit failed (an I/O error): the SQLite transaction is gone but
                # the decision stands; redo it from the record so a retry can commit.
                log.exception("commit of prepared transaction failed", extra={"gtid": gtid})
                self._redo_in_place(entry)
                raise
            # A participant's commit must survive power loss before anyone relies on it
            # (the decider's is the decision): with synchronous=NORMAL, fsync the WAL now.
            self.shard.sync_wal()
            crash_point("shard.commit_prepared.after_commit")
            self.store.delete(gtid)
            del self.entries[gtid]
            return entry, lsn, {"commit_ts": self.shard.last_commit_ts}

    def abort(self, gtid: str) -> PreparedTx | None:
        """Roll prepared ``gtid`` back and fence it; the entry to release (None if none)."""
        with self.lock:
            if self.outcome(gtid) is not None:
                raise QueryError(
                    f"transaction {gtid} has already committed on this shard; it cannot be aborted",
                    code="TRANSACTION_ALREADY_COMMITTED",
                    details={"gtid": gtid},
                )
            self.store.fence(gtid)
            entry = self.entries.pop(gtid, None)
            if entry is not None:
                self.shard.rollback(entry.state)
            return entry

    def status(self, gtid: str, fence: bool) -> dict[str, Any]:
        with self.lock:
            done = self.outcome(gtid)
            if done is not None:
                return {"state": "committed", "commit_ts": done[0], "parts": done[1]}
            entry = self.entries.get(gtid)
            if entry is not None:
                return {"state": "prepared", **entry.describe()}
            if self.store.fenced(gtid):
                return {"state": "aborted"}
            if fence:
                self.store.fence(gtid)
                return {"state": "aborted", "fenced_now": True}
            return {"state": "unknown"}

    def commit_one_phase(self, state: ConnState, gtid: str) -> int | None:
        """A one-shard transaction's COMMIT carrying its gtid: refused if the gtid is fenced."""
        with self.lock:
            try:
                self.check_not_fenced(gtid)
            except TransactionAbortedError:
                self.shard.rollback(state)
                raise
            return self.shard.commit(state, notify=False, gtid=gtid)

    # ------------------------------------------------------------------ sessions, restarts

    def orphan(self, owner: object) -> None:
        """``owner``'s session is gone: its prepared transactions wait for the resolver."""
        for entry in self.entries.values():
            if entry.owner is owner:
                entry.owner = None

    def listing(self) -> list[dict[str, Any]]:
        return [e.describe() for e in list(self.entries.values())]

    def recover(self) -> None:
        """At startup: drop records of decided transactions, redo the others (orphaned)."""
        for gtid, candidates, prepared_at in self.store.records():
            if self.outcome(gtid) is not None:
                self.store.delete(gtid)  # it committed; the record's deletion was cut short
                continue
            state = self.shard.open_connection()
            entry = PreparedTx(gtid, state, candidates, prepared_at, None, pooled=False)
            self._redo_in_place(entry)
            self.entries[gtid] = entry
            self.shard.writelock.grant(state)
            log.warning(
                "prepared transaction redone after a restart; it holds the write lock until "
                "the router decides it",
                extra={"gtid": gtid, "candidates": candidates},
            )

    def _redo_in_place(self, entry: PreparedTx) -> None:
        record = self.store.record(entry.gtid)
        if record is None:
            raise not_prepared(entry.gtid, "its redo record is missing")
        state = entry.state
        state.internal = True
        try:
            state.conn.execute("PRAGMA foreign_keys = OFF")  # cascades were logged as rows
        finally:
            state.internal = False
        self.shard.begin(state, immediate=True)
        try:
            redo.apply(
                state, record, lambda sql, params: self.shard.run_internal(state, sql, params)
            )
        except BaseException:
            self.shard.rollback(state)
            raise
        entry.recovered = True

    def close(self) -> None:
        self.store.close()
        self.reader.close()
