"""Transaction and Savepoint: BEGIN/COMMIT/ROLLBACK and SAVEPOINT/RELEASE/ROLLBACK TO.

BEGIN/COMMIT/ROLLBACK change the client session's state machine, which the
server owns (:meth:`dosql.router.server.Router.transaction`): the operator
only carries what the statement asked. Savepoints run here, on every shard
of the router transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import trio

from dosql.errors import DoSQLError, QueryError
from dosql.router.engine.base import Line, Operator
from dosql.router.pool import ShardResult
from dosql.router.transactions import Transaction as RouterTransaction
from dosql.router.transactions import tx_aborted_by_shard

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class Transaction(Operator):
    kind: ClassVar[str] = "tx"
    text: str
    op: Literal["begin", "commit", "rollback"]
    mode: Literal["deferred", "immediate"] = "deferred"

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        return [Line(0, "Transaction", None, self.text, self.op)]


@dataclass(eq=False)
class Savepoint(Operator):
    kind: ClassVar[str] = "tx"
    text: str
    op: Literal["savepoint", "release", "rollback_to"]
    name: str

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        """SAVEPOINT / RELEASE / ROLLBACK TO on every shard of the router transaction.

        A SAVEPOINT makes every shard join the transaction first, so a later
        ROLLBACK TO also undoes work on shards the transaction had not touched
        yet. Outside a transaction, SAVEPOINT starts one that the RELEASE of that
        savepoint commits (as in SQLite). A RELEASE / ROLLBACK TO that ran on some
        shards but failed on another leaves the shards disagreeing about what the
        transaction holds, so it aborts the transaction (as does any error that
        cost a shard its part).
        """
        ex, session, p = ctx.ex, ctx.session, self
        session.check_usable()
        name = self.name.lower()
        tx = session.tx
        stack: list[tuple[str, bool]] = getattr(tx, "savepoints", []) if tx else []
        if p.op == "savepoint":
            started = tx is None
            if tx is None:
                tx = RouterTransaction(ex.pools, ex.order, "deferred", atomic=ex.atomic_commit)
                session.begin(tx)
            try:
                for sid in ex.order:
                    c = await tx.conn(sid)
                    await c.execute(p.text)
            except DoSQLError as exc:
                if started:
                    session.end()
                    with trio.CancelScope(shield=True):
                        await tx.rollback()
                elif tx_aborted_by_shard(exc, tx):
                    await ex.abort(session, exc)
                raise
            except BaseException:
                if started:
                    session.end()
                    with trio.CancelScope(shield=True):
                        await tx.rollback()
                raise
            stack.append((name, started))
            tx.savepoints = stack  # type: ignore[attr-defined]
            return ShardResult(columns=[], rowcount=-1)
        idx = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == name), None)
        if tx is None or idx is None:
            raise QueryError(f"no such savepoint: {p.name}", code="QUERY_ERROR")
        done = 0
        try:
            for sid in tx.shards:
                await tx.conns[sid].execute(p.text)
                done += 1
        except DoSQLError as exc:
            if done or tx_aborted_by_shard(exc, tx):
                await ex.abort(session, exc)
            raise
        if p.op == "rollback_to":
            del stack[idx + 1 :]
            return ShardResult(columns=[], rowcount=-1)
        started = stack[idx][1]
        del stack[idx:]
        if started:  # releasing the savepoint that began the transaction commits it
            await session.commit()
        return ShardResult(columns=[], rowcount=-1)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        return [Line(0, "Savepoint", None, self.text, self.op)]
