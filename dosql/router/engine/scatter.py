"""Scatter: the pushed-down form of a SELECT on several shards, parts returned unmerged.

The planner rewrote the statement so each shard's part can be merged
exactly: ORDER BY terms and AVG's TOTAL/COUNT travel as hidden trailing
columns (``n_hidden``), a LIMIT above becomes ``LIMIT limit+offset`` per
shard. The operators above (Concat, MergeSort, Aggregate) merge the parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dosql.router.engine.base import Line, Operator, select_params, shard_lines, spread
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class Scatter(Operator):
    text: str  # the pushed SQL
    keep: tuple[int, ...] | None  # positional parameters it uses (None: all)
    n_hidden: int = 0

    def shard_sql(self, limit: int | None) -> str:
        return self.text if limit is None else f"{self.text} LIMIT {limit}"

    async def parts(self, ctx: Context, params: Any) -> list[ShardResult]:
        """Each target shard's reply, in target order."""
        ex, tx = ctx.ex, ctx.tx
        assert ctx.targets is not None
        sql, timeout = self.shard_sql(ctx.shard_limit), ctx.query_timeout_ms
        pparams = select_params(params, self.keep)
        return await ex.parallel(
            ctx.targets,
            lambda sid, c: c.execute(sql, pparams, timeout_ms=timeout),
            tx,
            retry=tx is None,
        )

    def result(self, parts: list[ShardResult], rows: list[Any]) -> ShardResult:
        """The merged answer: the first part's columns without the hidden ones."""
        first = parts[0]
        width = len(first.columns or [])
        keep = width - self.n_hidden
        return ShardResult(
            columns=(first.columns or [])[:keep],
            decltypes=(first.decltypes or [None] * width)[:keep],
            rows=rows,
            rowcount=-1,
        )

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        targets = ctx.targets or []
        sql = self.shard_sql(ctx.shard_limit)
        kind = spread(targets, ctx.ex.order)
        return [Line(0, "Scatter", ",".join(targets), sql, kind), *shard_lines(targets, sql)]
