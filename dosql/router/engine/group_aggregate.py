"""GroupAggregate: GROUP BY over several shards — partial aggregates per shard, final step in memory.

Each shard groups its rows (``g.pushed``); the partials are loaded into an
in-memory ``__partials`` table whose columns carry the group keys' collations
and affinities, and ``g.final`` (the client's HAVING/ORDER BY/LIMIT over the
merged groups) runs there. See :mod:`dosql.router.groupby` for the rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from dosql.errors import NotSupportedError
from dosql.router import groupby
from dosql.router.catalog import PROBE, collation_from_probe
from dosql.router.engine.base import Line, Operator, indent
from dosql.router.engine.scatter import Scatter
from dosql.router.gather import ROWID_NAMES
from dosql.router.pool import ShardResult
from dosql.router.statement import Statement

if TYPE_CHECKING:
    from dosql.router.engine.base import Context


@dataclass(eq=False)
class GroupAggregate(Operator):
    text: str  # the client's statement (re-planned from it when a name is a column)
    table: str
    group: groupby.GroupPlan

    def _scatter(self, g: groupby.GroupPlan) -> Scatter:
        """The partial step's Scatter (kept with the plan it was made for)."""
        got = g.cache.get("scatter")
        if got is None:
            got = g.cache["scatter"] = Scatter(g.pushed, g.pushed_params)
        return got

    async def resolve(self, ctx: Context) -> groupby.GroupPlan:
        """``group``, re-planned once if a name it read as an alias is a table column.

        SQLite reads a GROUP BY/HAVING name as the column when the table has one of
        that name (the alias only otherwise); the planner does not know the columns.
        """
        g = self.group
        if g.shadow and "resolved" not in g.cache:
            schema = await ctx.ex.local_schema(self.table, ctx.tx)
            names = schema.names | (ROWID_NAMES if schema.has_rowid else frozenset())
            if groupby.needs_columns(g, names):
                st = Statement(self.text)
                g = self.group = groupby.plan(st, st.ast, columns=names)
            g.cache["resolved"] = True
        return g

    async def _learn(self, ctx: Context, g: groupby.GroupPlan, sid: str) -> None:
        """The partials' collations, output names/types and key affinities (once)."""
        ex, tx = ctx.ex, ctx.tx
        colls: list[str | None] = [None] * len(g.columns)
        probes = [(i, e) for i, e in enumerate(g.probes) if e is not None]
        if probes:
            sql = "SELECT " + ",".join(PROBE.format(e=e, f=g.from_text) for _, e in probes)
            r = await ex.on_shard(sid, lambda c: c.execute(sql), tx)
            row = r.rows[0]
            for k, (i, _) in enumerate(probes):
                coll = collation_from_probe(row[2 * k], row[2 * k + 1])
                if coll is None:
                    raise NotSupportedError("unknown collation of a GROUP BY expression")
                colls[i] = coll
        schema = await ex.local_schema(self.table, tx)
        info = await ex.table_info(self.table, tx)
        declared = {c.lower(): c for c in schema.names_cased}
        names, types = [], []
        for name, kind in g.names:
            if kind == "column":
                names.append(declared.get(name.lower(), name))
                types.append(info.types.get(name.lower()) if info else None)
            else:
                names.append(name)
                types.append(None)
        affinity = []
        for src in g.affinity:  # each group key keeps its affinity in the final step
            if src is None:
                affinity.append("")
            elif src[0] == "column":
                declared_type = info.types.get(src[1]) if info else None
                if info is None or src[1] not in info.types:
                    raise NotSupportedError("unknown type of a GROUP BY column")
                affinity.append(groupby.affinity_type(declared_type))
            else:
                affinity.append(src[1])
        g.cache.update(colls=colls, names=names, types=types, affinity=affinity)

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex = ctx.ex
        assert ctx.targets is not None
        g = await self.resolve(ctx)
        if "colls" not in g.cache:
            await self._learn(ctx, g, ctx.targets[0])
        parts = await self._scatter(g).parts(ctx.limited(None), params)
        ex.metrics.observe_read(len(ctx.targets))
        partials = [row for r in parts for row in r.rows]
        rows = await trio.to_thread.run_sync(
            groupby.run_final,
            g,
            g.cache["colls"],
            partials,
            ctx.query_timeout_ms,
            g.cache["affinity"],
        )
        return ShardResult(
            columns=list(g.cache["names"]), decltypes=list(g.cache["types"]), rows=rows, rowcount=-1
        )

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        g = await self.resolve(ctx)
        head = Line(0, "GroupAggregate", None, g.final, "partials merged in memory (__partials)")
        below = await self._scatter(g).describe(ctx.limited(None), params)
        return [head, *indent(below)]
