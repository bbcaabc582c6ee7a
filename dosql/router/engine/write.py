"""Write: the client's UPDATE/DELETE (or VACUUM, a reference-table write …) on every routed shard.

Each shard changes its own rows with the statement as written; several
shards run in one router transaction (atomic commit) unless the statement
needs none (``needs_tx`` false: VACUUM/ANALYZE/REINDEX cannot run in one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dosql.errors import NotSupportedError
from dosql.router.engine.base import Line, Operator, combine, shard_lines, spread
from dosql.router.plan import Routing
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context
    from dosql.router.transactions import Transaction


@dataclass(eq=False)
class Write(Operator):
    kind: ClassVar[str] = "write"
    is_write: ClassVar[bool] = True
    text: str
    routing: Routing
    table: str | None = None
    needs_tx: bool = True  # several shards: wrap in one router transaction
    refuse: str | None = None  # why the statement cannot run on several shards

    async def targets(self, ctx: Context, params: Any) -> list[str]:
        return await ctx.ex.targets(self.routing, params, ctx.session)

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex = ctx.ex
        targets = await self.targets(ctx, params)
        if len(targets) > 1 and self.refuse:
            raise NotSupportedError(f"{self.refuse} (needs shards {', '.join(targets)})")
        text, timeout = self.text, ctx.query_timeout_ms

        async def body(tx: Transaction | None) -> ShardResult:
            results = await ex.parallel(
                targets, lambda sid, c: c.execute(text, params, timeout_ms=timeout), tx, write=True
            )
            return combine(results)

        return await ex.in_write_tx(ctx.session, targets, body, needs_tx=self.needs_tx)

    async def execute_many(self, ctx: Context, seq: list[Any]) -> ShardResult:
        """executemany: the parameter sets grouped per shard, one ExecuteMany per shard."""
        ex = ctx.ex
        per_shard: dict[str, list[Any]] = {}
        for params in seq:
            for sid in await self.targets(ctx, params):
                per_shard.setdefault(sid, []).append(params)
        targets = [s for s in ex.order if s in per_shard]
        if not targets:
            return ShardResult(rowcount=0)
        text = self.text

        async def body(tx: Transaction | None) -> ShardResult:
            results = await ex.parallel(
                targets, lambda sid, c: c.execute_many(text, per_shard[sid]), tx, write=True
            )
            return combine(results)

        return await ex.in_write_tx(ctx.session, targets, body)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        targets = await self.targets(ctx, params)
        order = ctx.ex.order
        variant = spread(targets, order)
        if self.routing.kind == "all" and len(order) > 1:
            variant = "reference"
        head = Line(
            0, "Write", ",".join(targets), self.text, f"{variant}: on {len(targets)} shard(s)"
        )
        return [head, *shard_lines(targets, self.text)]
