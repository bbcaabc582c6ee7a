"""MergeSort: a k-way merge of the shards' sorted parts, in SQLite's ORDER BY order.

Each shard sorted its part by the hidden key columns; the merge compares
them as SQLite does (NULLs, mixed types, the keys' collations) and drops
the hidden columns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dosql.router import merge
from dosql.router.engine import collations
from dosql.router.engine.base import Line, Operator, indent
from dosql.router.engine.scatter import Scatter
from dosql.router.plan import SortKey
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class MergeSort(Operator):
    source: Scatter
    order: tuple[SortKey, ...]
    probe_from: str | None  # the FROM clause, to probe the keys' collations with
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:  # type: ignore[override]
        return self.source.text

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        parts = await self.source.parts(ctx, params)
        assert ctx.targets is not None
        colls = await collations.probe(ctx, self.order, self.probe_from, ctx.targets[0], self.cache)
        n = self.source.n_hidden
        rows = merge.kway_merge([r.rows for r in parts], self.order, colls, n)
        return self.source.result(parts, merge.strip_hidden(rows, n))

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        head = Line(0, "MergeSort", detail=f"k-way merge on {len(self.order)} key(s)")
        return [head, *indent(await self.source.describe(ctx, params))]
