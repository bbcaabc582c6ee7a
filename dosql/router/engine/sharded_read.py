"""ShardedRead: a SELECT on a sharded table — one shard, the merge tree, or router-side.

Which one is only known when the statement runs: the routing's conditions
are bound to the parameters. One target shard gets the client's statement
as written (:class:`~.route.Route`); several get the pushed-down tree
(``multi``: Concat/MergeSort/Aggregate/Limit over a Scatter, or a
GroupAggregate); a statement that cannot be merged exactly runs
router-side (``fallback``). A pushdown that turns out inexact at run time —
a shard row holds text that is not UTF-8 and the merge might drop it, a
GROUP BY the partials cannot answer — answers router-side too, so the
router never answers differently from SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dosql.errors import NotSupportedError, QueryError
from dosql.router.engine.base import Line, Operator
from dosql.router.engine.group_aggregate import GroupAggregate
from dosql.router.engine.route import Route
from dosql.router.engine.router_side import RouterSide, undecodable
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class ShardedRead(Operator):
    route: Route  # the client's statement, routed by the sharding column's conditions
    multi: Operator | None = None  # several shards: the merge tree (None: cannot merge)
    fallback: RouterSide | None = None  # the router-side plan (None: cannot gather)
    refuse: str | None = None  # why the statement cannot be merged over several shards
    colocated: tuple[str, ...] = ()  # a co-located join's tables: exact under BINARY keys

    @property
    def text(self) -> str:  # type: ignore[override]
        return self.route.text

    @property
    def table(self) -> str | None:
        return self.route.routing.table

    async def _choose(self, ctx: Context, params: Any) -> tuple[list[str], Operator]:
        """The target shards and the operator that answers for them."""
        targets = await self.route.targets(ctx, params)
        colocated_inexact = self.colocated and not await ctx.ex.binary_keys(self.colocated, ctx.tx)
        if colocated_inexact and self.fallback is not None:
            return targets, self.fallback
        if len(targets) == 1:
            return targets, self.route
        if self.multi is not None:
            return targets, self.multi
        if self.fallback is not None:
            return targets, self.fallback
        if self.refuse:
            raise NotSupportedError(
                f"{self.refuse} (this statement needs shards {', '.join(targets)})"
            )
        raise NotSupportedError("this statement cannot be split over several shards")

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        targets, op = await self._choose(ctx, params)
        if op is self.fallback:
            return await op.execute(ctx, params)
        if op is self.route:
            ctx.ex.metrics.observe_read(1)
            return await self.route.on(ctx, params, targets[0])
        ctx = ctx.at(targets)
        if isinstance(op, GroupAggregate):
            try:
                return await op.execute(ctx, params)
            except (NotSupportedError, QueryError) as exc:
                if self.fallback is None:
                    raise
                if not undecodable(exc):
                    self.multi = None  # not exact here after all: router-side from now on
                return await self.fallback.execute(ctx, params)
        ctx.ex.metrics.observe_read(len(targets))
        if self.fallback is None:
            return await op.execute(ctx, params)
        try:
            return await op.execute(ctx, params)
        except QueryError as exc:
            if not undecodable(exc):
                raise
            # A shard row holds text that is not UTF-8; the merge might drop it (LIMIT,
            # OFFSET, MIN/MAX), where SQLite never reads it out: answer router-side.
            return await self.fallback.execute(ctx, params)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        targets, op = await self._choose(ctx, params)
        return await op.describe(ctx.at(targets), params)
