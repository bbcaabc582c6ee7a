"""The transaction a statement runs in: the session's, an implicit one, or none.

A statement that writes several shards outside a client transaction runs in
an implicit router transaction (atomic commit across them); one that writes
one shard needs none. An error that cost an open transaction aborts it
everywhere (:meth:`TxScope.abort`).

A mixin of :class:`dosql.router.executor.Executor`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from dosql.errors import DoSQLError
from dosql.router.pool import ShardPool
from dosql.router.session import ClientSession, TxState
from dosql.router.transactions import Transaction


class TxScope:
    pools: dict[str, ShardPool]
    atomic_commit: bool

    order: tuple[str, ...]  # the VSchema's shard order (Catalog.order)

    async def in_write_tx(
        self,
        session: ClientSession,
        targets: list[str],
        body: Callable[[Transaction | None], Awaitable[Any]],
        *,
        needs_tx: bool = True,
    ) -> Any:
        """Run ``body`` in the session transaction, an implicit one, or none (one shard)."""
        if session.tx is None and (len(targets) == 1 or not needs_tx):
            return await body(None)
        return await self.in_transaction(session, body)

    async def in_transaction(
        self, session: ClientSession, body: Callable[[Transaction], Awaitable[Any]]
    ) -> Any:
        """Run ``body`` in the session transaction, or in an implicit one committed after it.

        A session whose transaction failed never runs anything (the router refuses
        earlier; this guards every other way in).
        """
        session.check_usable()
        if session.tx is not None:
            return await body(session.tx)
        tx = Transaction(self.pools, self.order, explicit=False, atomic=self.atomic_commit)
        try:
            result = await body(tx)
        except BaseException:
            with trio.CancelScope(shield=True):
                await tx.rollback()
            raise
        await tx.commit()
        return result

    async def abort(self, session: ClientSession, exc: DoSQLError) -> None:
        """An error cost the open transaction: roll it back everywhere, session -> aborted.

        The session stays aborted (every statement refused with
        ``TRANSACTION_ABORTED``) until the client's ROLLBACK, so the application
        cannot mistake a later write or COMMIT for part of the lost transaction.
        """
        tx = session.tx
        if tx is None:
            return
        shards = tx.shards
        with trio.CancelScope(shield=True):
            await tx.rollback()
        exc.message += (
            f"; the transaction was rolled back on every shard it touched ({', '.join(shards)})"
        )
        exc.args = (exc.message,)
        exc.details["transaction_rolled_back"] = True
        session.fail(TxState.ABORTED, exc, shards)
