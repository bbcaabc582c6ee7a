"""Aggregate: COUNT/SUM/MIN/MAX/AVG/TOTAL without GROUP BY, merged from one row a shard.

Each shard returns its partial aggregates (AVG as hidden TOTAL and COUNT);
the merge is exact in SQLite's terms (integer overflow, NULL on no rows,
MIN/MAX under the argument's collation).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dosql.router import merge
from dosql.router.engine import collations
from dosql.router.engine.base import Line, Operator, indent
from dosql.router.engine.scatter import Scatter
from dosql.router.plan import AggSpec
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class Aggregate(Operator):
    source: Scatter
    aggregates: tuple[AggSpec, ...]
    probe_from: str | None  # the FROM clause, to probe MIN/MAX arguments' collations with
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:  # type: ignore[override]
        return self.source.text

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ctx = ctx.limited(None)  # one row a shard: a LIMIT above applies to the merged row
        parts = await self.source.parts(ctx, params)
        assert ctx.targets is not None
        colls = await collations.probe(
            ctx, self.aggregates, self.probe_from, ctx.targets[0], self.cache
        )
        partials = [r.rows[0] for r in parts]
        row = merge.merge_aggregates(partials, self.aggregates, colls, self.source.n_hidden)
        return self.source.result(parts, [row])

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        head = Line(0, "Aggregate", detail=", ".join(a.func for a in self.aggregates))
        return [head, *indent(await self.source.describe(ctx.limited(None), params))]
