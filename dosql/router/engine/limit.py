"""Limit: LIMIT/OFFSET after the merge, pushed down as ``LIMIT limit+offset`` per shard.

The values are bound per execution (a LIMIT may be a parameter); each
shard then returns at most the rows the merged answer can need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dosql.router import merge
from dosql.router.engine.base import Line, Operator, indent
from dosql.router.plan import Value
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class Limit(Operator):
    source: Operator  # Concat, MergeSort or Aggregate
    limit: Value | None
    offset: Value | None

    @property
    def text(self) -> str:  # type: ignore[override]
        return self.source.text

    def bind(self, params: Any) -> tuple[int | None, int, int | None]:
        """(limit, offset, rows each shard needs) for these parameters."""
        limit = merge.as_limit(self.limit.bind(params), "LIMIT") if self.limit else None
        offset = merge.as_limit(self.offset.bind(params), "OFFSET") if self.offset else 0
        per_shard = limit + max(offset, 0) if limit is not None and limit >= 0 else None
        return limit, offset, per_shard

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        limit, offset, per_shard = self.bind(params)
        out = await self.source.execute(ctx.limited(per_shard), params)
        if limit is not None or offset:
            out.rows = merge.apply_limit(out.rows, limit, offset)
        return out

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        limit, offset, per_shard = self.bind(params)
        detail = f"LIMIT {limit} OFFSET {offset} after the merge"
        below = await self.source.describe(ctx.limited(per_shard), params)
        return [Line(0, "Limit", detail=detail), *indent(below)]
