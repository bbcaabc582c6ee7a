"""Route: the client's statement, unchanged, on the one shard its routing picks.

The fastest plan and the most common one (point selects, reference and
unsharded tables): SQLite on that shard answers exactly as one database
would, so nothing is rewritten and nothing merged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dosql.errors import NotSupportedError
from dosql.router.engine.base import Line, Operator, shard_lines
from dosql.router.plan import Routing
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class Route(Operator):
    text: str
    routing: Routing

    async def targets(self, ctx: Context, params: Any) -> list[str]:
        return await ctx.ex.targets(self.routing, params, ctx.session)

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        targets = ctx.targets or await self.targets(ctx, params)
        ctx.ex.metrics.observe_read(len(targets))
        if len(targets) != 1:  # whole-statement reads never need several shards
            raise NotSupportedError("this statement cannot be split over several shards")
        return await self.on(ctx, params, targets[0])

    async def on(self, ctx: Context, params: Any, sid: str) -> ShardResult:
        """Run the statement on shard ``sid`` (a reference read: any shard that answers)."""
        ex, tx = ctx.ex, ctx.tx
        text, timeout = self.text, ctx.query_timeout_ms
        run = lambda c: c.execute(text, params, timeout_ms=timeout)  # noqa: E731
        if self.routing.kind == "any" and tx is None:
            return await ex.any_shard(sid, run)
        return await ex.on_shard(sid, run, tx, retry=tx is None)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        targets = ctx.targets or await self.targets(ctx, params)
        variant = "reference" if self.routing.kind == "any" else "single_shard"
        head = Line(
            0, "Route", ",".join(targets), self.text, f"{variant}: the statement as written"
        )
        return [head, *shard_lines(targets[:1], self.text)]
