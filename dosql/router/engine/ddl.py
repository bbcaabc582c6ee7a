"""DDL: CREATE/DROP/ALTER TABLE and CREATE INDEX on every shard that holds the table.

Several shards run in one router transaction. A table created under the
``default_table`` policy is learned (placement, key type, sequence) and
stored as cluster metadata after the DDL committed; a dropped one is
forgotten. Any DDL clears the router's cached schemas and plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dosql.errors import DoSQLError
from dosql.router.engine.base import Line, Operator, combine, shard_lines
from dosql.router.plan import Routing
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context
    from dosql.router.transactions import Transaction


@dataclass(eq=False)
class DDL(Operator):
    kind: ClassVar[str] = "ddl"
    is_write: ClassVar[bool] = True
    text: str
    routing: Routing
    action: str  # create_table, create_index, drop_table, alter
    table: str | None = None
    learn: Literal["listed", "policy"] | None = None  # CREATE TABLE: what to learn after
    if_exists: bool = False

    async def targets(self, ctx: Context, params: Any) -> list[str]:
        return await ctx.ex.targets(self.routing, params, ctx.session)

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex, session = ctx.ex, ctx.session
        targets = await self.targets(ctx, params)
        text = self.text

        async def body(tx: Transaction | None) -> ShardResult:
            results = await ex.parallel(
                targets, lambda sid, c: c.execute(text, params), tx, write=True
            )
            return combine(results)

        try:
            result = await ex.in_write_tx(session, targets, body)
            if self.action == "create_table" and self.learn and self.table:
                # after the implicit transaction committed (or inside the client's own)
                await ex.learn_table(self.table, self.learn, targets[0], session.tx)
            if self.action == "drop_table" and self.table and self.table.lower() in ex.learned:
                await ex.forget_table(self.table, session.tx)
            if self.table:
                await ex.announce_ddl(self.table, session.tx)
            return result
        finally:
            forget(ctx, self.table)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        targets = await self.targets(ctx, params)
        head = Line(
            0, "DDL", ",".join(targets), self.text, f"{self.action} on {len(targets)} shard(s)"
        )
        return [head, *shard_lines(targets, self.text)]


def forget(ctx: Context, table: str | None) -> None:
    """After DDL: cached schemas and plans may describe what no longer exists."""
    ex = ctx.ex
    if table:
        ex.schema.pop(table.lower(), None)
    ex.local_schemas.clear()
    ex.clear_plans()


@dataclass(eq=False)
class DropIndex(Operator):
    """DROP INDEX on every shard: fine where a shard lacks it (an index lives per table)."""

    kind: ClassVar[str] = "ddl"
    is_write: ClassVar[bool] = True
    text: str
    if_exists: bool = False

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex = ctx.ex
        ok: list[ShardResult] = []
        errors: list[DoSQLError] = []
        try:
            for sid in ex.order:
                try:
                    ok.append(
                        await ex.on_shard(sid, lambda c: c.execute(self.text), ctx.tx, write=True)
                    )
                except DoSQLError as exc:
                    if "no such index" not in exc.message:
                        raise
                    errors.append(exc)
            if not ok and not self.if_exists:
                raise errors[0]
            return combine(ok) if ok else ShardResult(columns=[], rowcount=-1)
        finally:
            forget(ctx, None)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        targets = list(ctx.ex.order)
        head = Line(
            0, "DDL", ",".join(targets), self.text, f"drop_index on {len(targets)} shard(s)"
        )
        return [head, *shard_lines(targets, self.text)]
