"""Fanning out to shards: one shard, several in parallel, or the first that answers.

Shard requests run in parallel, at most ``max_parallel_shards`` at once, each
bounded by the pool's timeout. A query that needs an unreachable shard fails
with ``RPCError(SHARD_UNAVAILABLE)`` naming it; queries that do not need it
are unaffected. Reads outside a transaction retry once on a fresh connection
when a pooled connection turns out to be dead (a restarted shard).

A mixin of :class:`dosql.router.executor.Executor` (its ``pools``, ``limiter``
and ``order``), kept apart so shard access reads as one concept.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from dosql.errors import DoSQLError
from dosql.router.pool import ShardConnection, ShardPool, ShardResult

if TYPE_CHECKING:
    from dosql.router.transactions import Transaction


class Fanout:
    pools: dict[str, ShardPool]
    limiter: trio.CapacityLimiter

    order: tuple[str, ...]  # the VSchema's shard order (Catalog.order)

    async def on_shard(
        self,
        sid: str,
        fn: Callable[[ShardConnection], Awaitable[ShardResult]],
        tx: Transaction | None,
        *,
        retry: bool = False,
        write: bool = False,
    ) -> ShardResult:
        # Waits for a shard's write lock never hold a slot of the router-wide limiter:
        # a transaction holding that lock may need a slot for its next statement, and
        # slots held by its queued waiters would deadlock it until the lock timeout.
        # So a transaction's Begin (which may queue) runs before the limiter, and
        # writes (which may queue) skip it; reads never wait for a lock (WAL).
        conn = await tx.conn(sid, write=write) if tx is not None else None
        async with contextlib.nullcontext() if write else self.limiter:
            if conn is not None:  # write: the session there began IMMEDIATE
                return await fn(conn)
            try:
                return await self.pools[sid].run(fn)
            except DoSQLError as exc:
                if retry and exc.code == "SHARD_UNAVAILABLE" and exc.details.get("lost"):
                    return await self.pools[sid].run(fn)
                raise

    async def parallel(
        self,
        shard_ids: list[str],
        fn: Callable[[str, ShardConnection], Awaitable[ShardResult]],
        tx: Transaction | None,
        *,
        retry: bool = False,
        write: bool = False,
    ) -> list[ShardResult]:
        if len(shard_ids) == 1:
            sid = shard_ids[0]
            return [await self.on_shard(sid, lambda c: fn(sid, c), tx, retry=retry, write=write)]
        if tx is not None and (write or tx.mode == "immediate"):
            # Take the shards' write locks one at a time in VSchema order: two
            # statements that lock several shards then never deadlock each other.
            for sid in sorted(shard_ids, key=self.order.index):
                await tx.conn(sid, write=write)
        results: dict[str, ShardResult] = {}
        errors: dict[str, DoSQLError] = {}

        async def one(sid: str) -> None:
            try:
                results[sid] = await self.on_shard(
                    sid, lambda c: fn(sid, c), tx, retry=retry, write=write
                )
            except DoSQLError as exc:
                errors[sid] = exc

        async with trio.open_nursery() as nursery:
            for sid in shard_ids:
                nursery.start_soon(one, sid)
        if errors:
            unavailable = [
                s for s in shard_ids if s in errors and errors[s].code == "SHARD_UNAVAILABLE"
            ]
            first = errors[
                unavailable[0] if unavailable else next(s for s in shard_ids if s in errors)
            ]
            if len(unavailable) > 1:
                first.message += f" (also unavailable: {', '.join(unavailable[1:])})"
                first.args = (first.message,)
            raise first
        return [results[s] for s in shard_ids]

    async def any_shard(
        self, first: str, run: Callable[[ShardConnection], Awaitable[ShardResult]]
    ) -> ShardResult:
        """Reference-table read: the first shard that answers (a full copy is everywhere)."""
        order = [first] + [s for s in self.order if s != first]
        error: DoSQLError | None = None
        for sid in order:
            try:
                return await self.on_shard(sid, run, None, retry=True)
            except DoSQLError as exc:
                if exc.code != "SHARD_UNAVAILABLE":
                    raise
                error = error or exc
        assert error is not None
        raise error
