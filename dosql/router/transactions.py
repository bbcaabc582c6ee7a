"""Router transactions: one shard session per shard, committed in turn.

A client's BEGIN opens nothing on the shards yet. The first statement of
the transaction that needs a shard takes a connection from that shard's pool,
sends ``Begin`` on it and keeps it until COMMIT/ROLLBACK, so every later
statement of the transaction on that shard runs in the same shard
transaction (and sees its own writes).

COMMIT semantics (current behaviour; atomic multi-shard commit comes later):

- A transaction that touched one shard commits atomically there.
- A transaction that touched several shards commits them one after the other,
  in VSchema shard order. If a commit fails, the shards not yet committed are
  rolled back and the error names the shards that had already committed
  (``details["committed"]``; their changes stay), the shard whose commit
  failed (``details["failed_shard"]``) and those rolled back
  (``details["rolled_back"]``).

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
    ) -> None:
        self.pools = pools
        self.order = order
        self.mode = mode
        self.explicit = explicit
        self.conns: dict[str, ShardConnection] = {}
        self.lock = trio.Lock()

    @property
    def shards(self) -> list[str]:
        return [s for s in self.order if s in self.conns]

    async def conn(self, shard_id: str) -> ShardConnection:
        """The transaction's session on ``shard_id``, begun on first use."""
        if shard_id in self.conns:
            return self.conns[shard_id]
        pool = self.pools[shard_id]
        c = await pool.acquire()
        trace = logs.trace_id.get()
        try:
            await c.call(lambda rid: protocol.Begin(id=rid, mode=self.mode, trace_id=trace))  # type: ignore[arg-type]
        except BaseException:
            pool.release(c)
            raise
        self.conns[shard_id] = c
        return c

    def _release(self) -> None:
        for sid, c in self.conns.items():
            self.pools[sid].release(c)
        self.conns.clear()

    async def commit(self) -> None:
        shards = self.shards
        committed: list[str] = []
        try:
            for i, sid in enumerate(shards):
                c = self.conns[sid]
                try:
                    await c.call(lambda rid: protocol.Commit(id=rid))
                except DoSQLError as exc:
                    rest = shards[i + 1 :]
                    await self._rollback_on(rest)
                    if committed:
                        exc.message = (
                            f"commit failed on shard {sid}: {exc.message}; the transaction had "
                            f"already committed on {', '.join(committed)} (those changes stay); "
                            + (
                                f"rolled back on {', '.join(rest)}"
                                if rest
                                else "nothing to roll back"
                            )
                        )
                    elif rest:
                        exc.message = (
                            f"commit failed on shard {sid}: {exc.message}; rolled back on "
                            f"{', '.join(rest)}; nothing was committed"
                        )
                    exc.args = (exc.message,)
                    exc.details.update(
                        {"committed": committed, "failed_shard": sid, "rolled_back": rest}
                    )
                    raise
                committed.append(sid)
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


class ClientSession:
    """Per client connection: scope and the open transaction, if any."""

    def __init__(self, scope: str) -> None:
        self.scope = scope
        self.tx: Transaction | None = None

    @property
    def read_only(self) -> bool:
        return self.scope == "read"


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
    return False
