"""Explain: EXPLAIN <statement> — the operator tree as rows, nothing executed.

Columns ``step``, ``operator`` (indented two spaces a level), ``shard``,
``sql`` (what that shard gets, or the operator's SQL), ``detail``. Routing is
decided with the given parameters, as a run would: the tree shows the branch
that would answer (one shard, the merge tree, or router-side).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dosql.router.engine.base import Operator
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context

COLUMNS = ["step", "operator", "shard", "sql", "detail"]


@dataclass(eq=False)
class Explain(Operator):
    kind: ClassVar[str] = "explain"
    text: str
    inner: Operator

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        lines = await self.inner.describe(ctx, params)
        rows = [
            [i, "  " * line.depth + line.operator, line.shard, line.sql, line.detail]
            for i, line in enumerate(lines)
        ]
        return ShardResult(columns=list(COLUMNS), decltypes=[None] * 5, rows=rows, rowcount=-1)
