"""CreateTableAs: CREATE TABLE … AS SELECT — SQLite derives the table, the router places it.

The SELECT's tables are gathered and SQLite creates the table in memory
from them, so column names and declared types are exactly SQLite's; the
router then runs that CREATE TABLE (placement by the VSchema) and inserts
the rows, routed by key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import trio

from dosql.errors import QueryError
from dosql.router import gather
from dosql.router.catalog import quote
from dosql.router.engine.base import Line, Operator
from dosql.router.engine.router_side import RouterSide
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class CreateTableAs(Operator):
    kind: ClassVar[str] = "ddl"
    is_write: ClassVar[bool] = True
    text: str
    table: str
    source: RouterSide  # the SELECT, gathered
    if_exists: bool = False

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex, session = ctx.ex, ctx.session
        name = self.table
        if ex.vs.has_table(name) or name.lower() in ex.views:
            if self.if_exists:
                return ShardResult(columns=[], rowcount=-1)
            raise QueryError(f"table {name} already exists", code="QUERY_ERROR")
        src, g = self.source, self.source.gather
        schemas, jobs, fetch_cols = await src.jobs(ctx, None)
        got = await ex.parallel(
            [s for s in ex.order if s in jobs],
            lambda sid, c: src.fetch_batch(ctx, c, jobs[sid]),
            ctx.tx,
        )
        rows: list[list[Any]] = [[] for _ in g.refs]
        for part in got:
            for i, chunk in part:
                rows[i].extend(chunk)
        data = [(ref.name, fetch_cols[i], rows[i]) for i, ref in enumerate(g.refs)]
        ddl, out_rows = await trio.to_thread.run_sync(
            gather.create_as,
            [schemas[ref.name] for ref in g.refs],
            data,
            name,
            src.text,
            list(g.views),
        )
        await ex.run_plan(ex.plan(ddl), None, session)
        if out_rows:
            width = len(out_rows[0])
            ins = ex.plan(f"INSERT INTO {quote(name)} VALUES ({', '.join('?' * width)})")
            await ex.run_many(ins, out_rows, session)
        return ShardResult(columns=[], rowcount=-1)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        head = Line(
            0,
            "CreateTableAs",
            ctx.ex.vs.default_shard,
            self.text,
            "the table derived in memory from the gathered rows, then created and filled",
        )
        return [head]
