"""TemporalSelect / TemporalInsert: statements that read history, answered router-side.

The shards only hold the present, so a statement naming ``FOR SYSTEM_TIME AS
OF``, ``dosql_history()`` or ``dosql_table_sql()`` runs in a per-query
in-memory SQLite: each of its sources (:mod:`.lake_source`) loads one table
-- historical ones from the lake, current ones through the router -- and the
statement, with each historical reference replaced by its loaded table (the
original name kept as alias, so ``users.name`` still resolves), runs there.
``INSERT INTO t … SELECT … FROM h FOR SYSTEM_TIME AS OF …`` runs its SELECT
that way and inserts the rows through the router's own INSERT plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import trio
from sqlglot import exp

from dosql import timetravel as tt
from dosql.errors import NotSupportedError
from dosql.router import gather
from dosql.router.engine.base import Line, Operator, indent
from dosql.router.engine.lake_source import MemTable, Reading, Source
from dosql.router.engine.route import Route
from dosql.router.engine.sharded_read import ShardedRead
from dosql.router.lake import missing_lake
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context

_INSERT_BATCH = 500
_DEFAULT_TIMEOUT_MS = 30000


def _no_executemany() -> NotSupportedError:
    return NotSupportedError(
        "executemany() cannot read history: run the statement once per parameter set"
    )


def run_memory(
    tables: list[MemTable], sql: str, params: Any, timeout_ms: int | None, budget: int | None
) -> tuple[list[str], list[str | None] | None, list[list[Any]]]:
    """Create and fill ``tables`` in a fresh in-memory SQLite, run ``sql`` there."""
    data = [(t.name, t.columns, list(t.rows)) for t in tables]
    return gather.run_local(
        tables,  # type: ignore[arg-type]
        data,
        sql,
        params,
        timeout_ms,
        budget_bytes=budget,
    )


@dataclass(eq=False)
class TemporalSelect(Operator):
    text: str
    refs: tuple[tt.TemporalRef, ...]
    hists: tuple[tt.HistoryRef, ...]
    sources: tuple[Source, ...]
    memory_sql: str  # the statement over the loaded tables
    lsn_sql: str | None = None  # the statement on current tables: routes ``AS OF LSN``

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        columns, types, rows = await self.select(ctx, params)
        return ShardResult(columns=columns, decltypes=types, rows=rows, rowcount=-1)

    async def execute_many(self, ctx: Context, seq: list[Any]) -> ShardResult:
        raise _no_executemany()

    async def select(
        self, ctx: Context, params: Any
    ) -> tuple[list[str], list[str | None] | None, list[list[Any]]]:
        lake = ctx.ex.lake
        if lake is None:
            raise missing_lake()
        if isinstance(params, tuple):
            params = list(params)
        timeout_ms = ctx.query_timeout_ms or _DEFAULT_TIMEOUT_MS
        shard = await self._single_shard(ctx, params) if self.lsn_sql else None
        run = Reading(lake, params, timeout_ms, shard)
        tables = [await source.load(ctx, run) for source in self.sources]
        bind = tt.remaining_params(params, [*self.refs, *self.hists])
        return await trio.to_thread.run_sync(
            run_memory, tables, self.memory_sql, bind, timeout_ms, ctx.ex.query_memory_bytes
        )

    async def _single_shard(self, ctx: Context, params: Any) -> str:
        """The one shard the statement is routed to (an LSN is a position in one
        shard's change log)."""
        assert self.lsn_sql is not None
        refuse = NotSupportedError(
            "FOR SYSTEM_TIME AS OF LSN needs a statement routed to exactly one shard (an LSN "
            "is a position in one shard's change log, e.g. WHERE <sharding column> = value); "
            "use FOR SYSTEM_TIME AS OF TIMESTAMP '…' for a statement over several shards"
        )
        try:
            p = ctx.ex.plan(self.lsn_sql)
        except Exception:
            raise refuse from None
        route = p.route if isinstance(p, ShardedRead) else p if isinstance(p, Route) else None
        if route is None:
            raise refuse
        bind = tt.remaining_params(params, [*self.refs, *self.hists])
        targets = await route.targets(ctx, bind)
        if len(targets) != 1:
            raise NotSupportedError(
                f"{refuse.message} (this statement reads shards {', '.join(targets)})"
            )
        if route.routing.kind == "any":
            return ctx.ex.vs.shard_ids[0]  # reference tables: the shard that feeds the mirror
        return targets[0]

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        head = Line(
            0,
            "TemporalSelect",
            None,
            self.memory_sql,
            "lake and shard rows loaded into an in-memory SQLite, statement run there",
        )
        lines = [head]
        for source in self.sources:
            lines.extend(indent(await source.describe(ctx, params)))
        return lines


@dataclass(eq=False)
class TemporalInsert(Operator):
    """INSERT … SELECT whose SELECT reads history: rows inserted through the router."""

    kind: ClassVar[str] = "write"
    is_write: ClassVar[bool] = True
    text: str
    select: TemporalSelect
    insert: exp.Insert  # the statement, its source to be replaced by VALUES (?, …)

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        _, _, rows = await self.select.select(ctx, params)
        if not rows:
            return ShardResult(columns=[], rowcount=0)
        p = ctx.ex.plan(self._values_sql(len(rows[0])))
        total = 0
        for start in range(0, len(rows), _INSERT_BATCH):
            r = await p.execute_many(ctx, rows[start : start + _INSERT_BATCH])
            total += max(r.rowcount, 0)
        return ShardResult(columns=[], rowcount=total)

    async def execute_many(self, ctx: Context, seq: list[Any]) -> ShardResult:
        raise _no_executemany()

    def _values_sql(self, width: int) -> str:
        insert = self.insert.copy()
        row = exp.Tuple(expressions=[exp.Placeholder() for _ in range(width)])
        insert.set("expression", exp.Values(expressions=[row]))
        return insert.sql(dialect=tt.DIALECT)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        head = Line(
            0,
            "TemporalInsert",
            None,
            self._values_sql(1).replace("(?)", "(…)"),
            f"rows of the SELECT inserted through the router, {_INSERT_BATCH} a batch",
        )
        return [head, *indent(await self.select.describe(ctx, params))]
