"""Router transactions: one shard session per shard, committed in turn.

A client's BEGIN opens nothing on the shards yet. The first statement of
the transaction that needs a shard takes a connection from that shard's pool,
sends ``Begin`` on it and keeps it until COMMIT/ROLLBACK, so every later
statement of the transaction on that shard runs in the same shard
transaction (and sees its own writes).

COMMIT is atomic: a transaction that wrote on one shard commits there; one
that touched several commits with two-phase commit (twophase.py). Either it
commits on every shard (one gtid, one commit timestamp), or COMMIT fails and
it is rolled back on every shard, or — only when the decisive reply was lost
and stayed lost — COMMIT fails with ``COMMIT_OUTCOME_UNKNOWN`` and the gtid
to look the outcome up with.

Statements outside a transaction that need several shards for a write (a
multi-row INSERT split over shards, writes to reference tables, DDL, a
scattered UPDATE/DELETE) run in an implicit router transaction with the same
commit rule, so a statement error on any shard leaves no shard changed.
If a shard aborts its transaction by itself (a timeout, a lost connection),
the whole router transaction is rolled back and the error says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from dosql import logs, protocol
from dosql.errors import DoSQLError, QueryError
from dosql.router import locks
from dosql.router.twophase import TwoPhaseCommit, new_gtid

if TYPE_CHECKING:
    from dosql.router.pool import ShardConnection, ShardPool


class Transaction:
    def __init__(
        self,
        pools: dict[str, ShardPool],
        order: tuple[str, ...],
        mode: str = "deferred",
        *,
        explicit: bool = True,
        atomic: bool = True,
    ) -> None:
        self.pools = pools
        self.order = order
        self.mode = mode
        self.explicit = explicit
        self.conns: dict[str, ShardConnection] = {}
        self.lock = trio.Lock()
        self.gtid = new_gtid()  # the global id its commit is recorded under on every shard
        self.atomic = atomic  # router.atomic_commit: two-phase commit across shards

    @property
    def shards(self) -> list[str]:
        return [s for s in self.order if s in self.conns]

    async def conn(self, shard_id: str, *, write: bool = False) -> ShardConnection:
        """The transaction's session on ``shard_id``, begun on first use.

        A session opened for a write statement (``write=True``) begins
        IMMEDIATE even when the client began deferred: it takes the shard's
        write lock up front (queueing fairly there), so a later read-then-write
        on that shard cannot fail on a stale snapshot. Waits for a shard's write
        lock are entered in the router's wait-for graph (dosql/router/locks.py),
        which fails the youngest transaction of a cycle with ``DEADLOCK``.
        """
        c = self.conns.get(shard_id)
        if c is not None:
            if write:  # a deferred session's first write takes the lock there
                locks.graph.held(self, shard_id, c)
            return c
        pool = self.pools[shard_id]
        mode = "immediate" if write or self.mode == "immediate" else "deferred"
        c = await pool.acquire()
        trace = logs.trace_id.get()
        try:
            if mode == "immediate":
                with locks.graph.waiting(self, shard_id):
                    await c.call(lambda rid: protocol.Begin(id=rid, mode=mode, trace_id=trace))
            else:
                await c.call(lambda rid: protocol.Begin(id=rid, mode=mode, trace_id=trace))
        except BaseException:
            pool.release(c)
            raise
        self.conns[shard_id] = c
        if mode == "immediate":
            locks.graph.held(self, shard_id, c)
        return c

    def _release(self) -> None:
        for sid, c in self.conns.items():
            self.pools[sid].release(c)
        self.conns.clear()

    async def commit(self) -> dict[str, Any]:
        """Commit on every shard of the transaction, atomically (twophase.py); reply info.

        Returns when the transaction committed. ``COMMIT_OUTCOME_UNKNOWN`` when
        the decisive reply was lost and could not be recovered in time; any
        other error: rolled back on every shard.
        """
        shards = self.shards
        try:
            if not shards:
                return {}
            tpc = TwoPhaseCommit(self.gtid, self.pools, self.conns, shards)
            # Shielded: a client that leaves mid-COMMIT must not cut the protocol short
            # (every step is bounded by the shard timeout and COMMIT_OUTCOME_WAIT_S).
            with trio.CancelScope(shield=True):
                if len(shards) == 1:
                    return await tpc.one_phase()
                if not self.atomic:
                    return await tpc.best_effort()
                return await tpc.two_phase()
        finally:
            self._release()

    async def _rollback_on(self, shard_ids: list[str]) -> None:
        for sid in shard_ids:
            c = self.conns.get(sid)
            if c is None:
                continue
            try:
                with trio.CancelScope(shield=True):
                    await c.call(lambda rid: protocol.Rollback(id=rid))
            except DoSQLError:
                c.broken = True  # the shard rolls back when the connection closes

    async def rollback(self) -> None:
        try:
            await self._rollback_on(self.shards)
        finally:
            self._release()


def no_transaction(op: str) -> QueryError:
    return QueryError(f"cannot {op} - no transaction is active", code="TRANSACTION_STATE")


def tx_aborted_by_shard(exc: DoSQLError, tx: Transaction) -> bool:
    """Did the error cost the transaction its part on some shard?

    A shard that rolled back by itself, or a shard session of this transaction
    that was lost or timed out (its outcome unknown), ends the whole router
    transaction. A shard that could not be reached before anything was begun
    there costs nothing: the transaction stays open, as after a failed
    statement in SQLite.
    """
    details: dict[str, Any] = exc.details or {}
    if details.get("transaction_rolled_back"):
        return True
    if exc.code in ("SHARD_UNAVAILABLE", "TIMEOUT"):
        shard = details.get("shard")
        return shard is None or shard in tx.conns
    # A shard session of the transaction left mid-request (cancelled by a router-side
    # timeout, a reply cut short): what it did is unknown, so the transaction is lost.
    return any(getattr(c, "broken", False) for c in tx.conns.values())
