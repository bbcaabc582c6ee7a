"""Concat: the shards' rows one after the other, in shard order (no ORDER BY to keep)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dosql.router.engine.base import Line, Operator, indent
from dosql.router.engine.scatter import Scatter
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class Concat(Operator):
    source: Scatter

    @property
    def text(self) -> str:  # type: ignore[override]
        return self.source.text

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        parts = await self.source.parts(ctx, params)
        return self.source.result(parts, [row for r in parts for row in r.rows])

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        head = Line(0, "Concat", detail="rows of each shard in shard order")
        return [head, *indent(await self.source.describe(ctx, params))]
