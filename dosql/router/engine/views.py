"""ViewDDL: CREATE VIEW / DROP VIEW — views are cluster metadata, read router-side.

A view over sharded tables means nothing on one shard, so it is stored
(``view:<name>`` on the default shard) and every read of it runs
router-side with the view recreated in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dosql.router import metadata
from dosql.router.engine.base import Line, Operator
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class ViewDDL(Operator):
    kind: ClassVar[str] = "ddl"
    is_write: ClassVar[bool] = True
    text: str
    action: Literal["create_view", "drop_view"]
    name: str
    if_exists: bool = False

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex, session = ctx.ex, ctx.session
        name = self.name.lower()
        default = ex.vs.default_shard
        conn = await session.tx.conn(default) if session.tx is not None else None
        try:
            if self.action == "create_view":
                if name in ex.views and self.if_exists:
                    return ShardResult(columns=[], rowcount=-1)
                await metadata.store_view(ex.pools[default], name, self.text, conn)
                ex.views[name] = self.text
                ex.meta_changes += 1
            else:
                await metadata.store_view(ex.pools[default], name, None, conn)
                ex.views.pop(name, None)
                ex.meta_changes += 1
        finally:
            ex.clear_plans()
        return ShardResult(columns=[], rowcount=-1)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        return [Line(0, "DDL", ctx.ex.vs.default_shard, self.text, self.action)]
