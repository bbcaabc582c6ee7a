"""RouterSide: gather the rows a statement reads, run the client's SQL in memory.

Everything that cannot be pushed down exactly (joins that are not
co-located, subqueries, set operations, CTEs, window functions, DISTINCT
aggregates, views …) runs here: each table the statement reads is fetched
once from the shards that hold it, with its single-table WHERE conjuncts
pushed into the fetch, into an in-memory SQLite created from the tables'
own CREATE statements — SQLite's semantics by construction. See
:mod:`dosql.router.gather` for the planning half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from dosql.errors import DoSQLError, NotFoundError, NotSupportedError, QueryError
from dosql.router import gather
from dosql.router.engine.base import Line, Operator, select_params
from dosql.router.gather import ROWID_NAMES
from dosql.router.pool import ShardConnection, ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context

MAX_GATHER_ROWS = 2_000_000  # rows a router-side plan may hold in memory
_FETCH_BATCH = 200  # tables per UNION ALL fetch (SQLite allows 500 compound terms)


def undecodable(exc: DoSQLError) -> bool:
    """A shard could not return a row: it holds TEXT that is not valid UTF-8.

    Rows travel as Python text, so such a row cannot leave its shard. SQLite
    (and Python's sqlite3 on one database) only fails when that row is part of
    the answer; a merge that reads more rows than it returns must then answer
    router-side instead, where only the answer's rows are read out.
    """
    return "Could not decode to UTF-8" in exc.message


@dataclass(eq=False)
class RouterSide(Operator):
    text: str  # the client's statement (or the SELECT a router-side write derived)
    gather: gather.Gather
    keep: tuple[int, ...] | None = None  # positional parameters of ``text`` (None: all)

    async def execute_bound(self, ctx: Context, params: Any) -> ShardResult:
        """Run with the parameters of the enclosing statement (``keep`` selects them)."""
        return await self.execute(ctx, select_params(params, self.keep))

    async def jobs(
        self, ctx: Context, params: Any, *, raw: bool = False
    ) -> tuple[
        dict[str, gather.LocalSchema], dict[str, list[tuple[int, str, Any]]], list[list[str]]
    ]:
        """Per shard, the fetches of a router-side plan: (ref index, SQL, parameters).

        ``raw``: every column is fetched as two (:func:`gather.raw_columns`), so
        text that is not UTF-8 travels as bytes and is TEXT again in memory.
        """
        ex, g, tx, session = ctx.ex, self.gather, ctx.tx, ctx.session
        schemas: dict[str, gather.LocalSchema] = {}
        for ref in g.refs:
            schemas[ref.name] = await ex.local_schema(ref.name, tx)
        jobs: dict[str, list[Any]] = {}
        fetch_cols: list[list[str]] = []
        for i, ref in enumerate(g.refs):
            table = ex.vs.table(ref.name)
            schema = schemas[ref.name]
            cols = list(schema.columns)
            if g.uses_rowid and schema.has_rowid and not schema.rowid_alias:
                names = schema.names
                if table.kind == "sharded" and not ROWID_NAMES & names:
                    raise NotSupportedError(
                        f"rowid of sharded table {ref.name} is per shard (it has no INTEGER "
                        "PRIMARY KEY); the router cannot answer a statement that reads it"
                    )
                if not ROWID_NAMES & names:
                    cols = ["rowid", *cols]
            if ref.name == g.tag:
                cols = ["rowid", *schema.columns]
            fetch_cols.append(cols)
            pushed = gather.pushed_for(g, ref, schemas) if ref.candidates else []
            if raw:
                sql = "SELECT " + ", ".join(gather.raw_columns(gather.quote(c)) for c in cols)
            else:
                sql = "SELECT " + ", ".join(gather.quote(c) for c in cols)
            head = len(sql)
            sql += " FROM " + gather.quote(ref.name)
            if pushed:
                sql += (" AS " + gather.quote(ref.alias)) if ref.alias else ""
                sql += " WHERE " + " AND ".join(f"({c.text})" for c in pushed)
            fparams: Any = None
            if pushed and params:
                if isinstance(params, dict):
                    fparams = params
                else:
                    fparams = [params[k] for c in pushed for k in (c.params or ())]
            width = 2 * len(cols) if raw else len(cols)
            for sid in await ex.gather_targets(ref.name, table, pushed, params, session):
                jobs.setdefault(sid, []).append((i, sql, fparams, head, width))
        return schemas, jobs, fetch_cols

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        """Fetch every table the statement reads, run it in an in-memory SQLite.

        The table definitions are cached; DDL through this router clears them. If
        another router changed a table, the first failure refreshes them and retries.
        """
        try:
            return await self._run(ctx, params)
        except (QueryError, NotFoundError) as exc:
            if not ctx.ex.local_schemas or "no such" not in exc.message:
                raise
            ctx.ex.local_schemas.clear()
            return await self._run(ctx, params)

    async def _run(self, ctx: Context, params: Any, *, raw: bool = False) -> ShardResult:
        ex, g, tx = ctx.ex, self.gather, ctx.tx
        schemas, jobs, fetch_cols = await self.jobs(ctx, params, raw=raw)
        rows: list[list[list[Any]]] = [[] for _ in g.refs]
        ex.metrics.observe_read(len(jobs))

        async def per_shard(sid: str, c: ShardConnection) -> ShardResult:
            out = ShardResult()
            got: list[tuple[int, list[Any]]] = []
            todo = jobs[sid]
            for start in range(0, len(todo), _FETCH_BATCH):
                got.extend(await self.fetch_batch(ctx, c, todo[start : start + _FETCH_BATCH]))
            out.info = {"got": got}
            return out

        shard_ids = [s for s in ex.order if s in jobs]
        try:
            results = await ex.parallel(shard_ids, per_shard, tx, retry=tx is None)
        except QueryError as exc:
            if raw or g.tag is not None or not undecodable(exc):
                raise
            # A stored text is not UTF-8: fetch its bytes; in memory, SQLite reads
            # only the rows the statement needs (fails only if the answer holds one).
            return await self._run(ctx, params, raw=True)
        extra: list[str] = []
        for sid, r in zip(shard_ids, results, strict=True):
            for i, got in (r.info or {})["got"]:
                if g.refs[i].name == g.tag:
                    idx = ex.order.index(sid)
                    rows[i].extend([*row, idx] for row in got)
                else:
                    rows[i].extend(got)
        total = sum(len(r) for r in rows)
        if total > MAX_GATHER_ROWS:
            raise NotSupportedError(
                f"this statement needs a router-side plan over {total} rows (more than "
                f"{MAX_GATHER_ROWS}); add a WHERE on single tables that narrows them, or a "
                "condition on the sharding key"
            )
        data = []
        for i, ref in enumerate(g.refs):
            cols = fetch_cols[i]
            if ref.name == g.tag:
                cols = [gather.RID_COL, *cols[1:], gather.SHARD_COL]
                extra += [
                    f"ALTER TABLE {gather.quote(ref.name)} ADD COLUMN {gather.RID_COL}",
                    f"ALTER TABLE {gather.quote(ref.name)} ADD COLUMN {gather.SHARD_COL}",
                ]
            data.append((ref.name, cols, rows[i]))
        columns, types, out_rows = await trio.to_thread.run_sync(
            gather.run_local,
            [schemas[ref.name] for ref in g.refs],
            data,
            self.text,
            params,
            ctx.query_timeout_ms,
            extra + list(g.views),
            None,
            frozenset(ref.name for ref in g.refs) if raw else frozenset(),
            ctx.ex.query_memory_bytes,
        )
        return ShardResult(columns=columns, decltypes=types, rows=out_rows, rowcount=-1)

    async def fetch_batch(
        self, ctx: Context, c: ShardConnection, batch: list[Any]
    ) -> list[tuple[int, list[Any]]]:
        """Several table fetches in one round trip: a UNION ALL tagged by ref index.

        Each branch is padded with NULLs to the widest table; UNION ALL passes
        values through unchanged (no affinity), so every value keeps its type.
        """
        if len(batch) == 1:
            i, sql, fparams, _head, _n = batch[0]
            r = await c.execute(sql, fparams, timeout_ms=ctx.query_timeout_ms)
            return [(i, r.rows)]
        width = max(n for *_, n in batch)
        parts = []
        named: Any = None
        positional: list[Any] = []
        for i, sql, fparams, head, n in batch:
            parts.append(f"SELECT {i}, {sql[7:head]}{', NULL' * (width - n)}{sql[head:]}")
            if isinstance(fparams, dict):
                named = fparams
            elif fparams:
                positional.extend(fparams)
        query = " UNION ALL ".join(parts)
        r = await c.execute(
            query,
            named if named is not None else (positional or None),
            timeout_ms=ctx.query_timeout_ms,
        )
        by: dict[int, list[Any]] = {i: [] for i, *_ in batch}
        widths = {i: n for i, _s, _p, _h, n in batch}
        for row in r.rows:
            i = row[0]
            by[i].append(row[1 : 1 + widths[i]])
        return list(by.items())

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        _, jobs, _ = await self.jobs(ctx, params)
        shards = [s for s in ctx.ex.order if s in jobs]
        head = Line(
            0,
            "RouterSide",
            ",".join(shards),
            self.text,
            "rows gathered, statement run in an in-memory SQLite",
        )
        fetches = [
            Line(1, "Fetch", sid, sql, self.gather.refs[i].name)
            for sid in shards
            for i, sql, *_ in jobs[sid]
        ]
        return [head, *fetches]
