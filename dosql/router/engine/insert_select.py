"""InsertSelect: INSERT … SELECT (or VALUES with expressions) — the source runs through the router.

The source is planned and answered like any SELECT (so it may read every
shard, join, aggregate); its rows are then routed by key and inserted with
one ExecuteMany per shard, ids from the table's sequence filled in where
the rows leave them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dosql.errors import NotSupportedError, QueryError, ValidationError
from dosql.router import sequences
from dosql.router.catalog import quote
from dosql.router.engine.base import Line, Operator, combine, indent, select_params
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context
    from dosql.router.transactions import Transaction


def insert_head(head: str, name: str, columns: list[str]) -> str:
    """``INSERT [OR …] INTO name (columns) VALUES (?, …)`` keeping the head's OR clause."""
    words = head.split()
    alt = f" OR {words[2]}" if len(words) > 2 and words[1].upper() == "OR" else ""
    return (
        f"INSERT{alt} INTO {quote(name)} ({', '.join(quote(c) for c in columns)}) "
        f"VALUES ({', '.join('?' * len(columns))})"
    )


@dataclass(eq=False)
class InsertSelect(Operator):
    kind: ClassVar[str] = "write"
    is_write: ClassVar[bool] = True
    text: str
    table: str
    source_sql: str  # the SELECT / VALUES part of the statement
    source_params: tuple[int, ...] | None  # its positional parameters (None: all)
    columns: tuple[str, ...] | None  # the INSERT's column list (None: the table's)
    insert_sql: str  # the INSERT head ("INSERT OR … INTO t(cols) ")

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        """Run the source through the router, then route its rows."""
        p, ex, session = self, ctx.ex, ctx.session
        src = ex.plan(p.source_sql)
        if src.kind != "read":
            raise NotSupportedError("the source of this INSERT is not a query")
        got = await src.execute(ctx, select_params(params, p.source_params))
        name = p.table
        table = ex.vs.table(name)
        info = await ex.learn_column_type(name, session.tx)
        if p.columns is not None:
            columns = list(p.columns)
        elif info is not None:
            columns = [c.lower() for c in info.columns]
        else:
            raise QueryError(f"no such table: {name}", code="TABLE_NOT_FOUND")
        width = len(got.columns or [])
        if got.rows and width != len(columns):
            raise QueryError(
                f"table {name} has {len(columns)} columns but {width} values were supplied",
                code="QUERY_ERROR",
            )
        sql = p.insert_sql.rstrip() + " VALUES (" + ", ".join("?" * len(columns)) + ")"
        per_shard: dict[str, list[Any]] = {}
        assigned: int | None = None
        spec = sequences.spec_for(ex, name) if table.kind == "sharded" else None
        guard = sequences.guarded_column(ex, name, info) if table.kind == "sharded" else None
        if guard is not None and (
            guard not in columns or any(r[columns.index(guard)] is None for r in got.rows)
        ):
            raise sequences.sequence_required(name, guard)
        if spec is not None:
            key = spec.column
            sequences.check_column(spec, info)
            rows_in = [list(r) for r in got.rows]
            if key not in columns:
                columns = [*columns, key]
                for r in rows_in:
                    r.append(None)
                sql = insert_head(p.insert_sql, name, columns)
            ki = columns.index(key)
            ex.seq_ids.observe(spec.sequence, [r[ki] for r in rows_in if r[ki] is not None])
            missing = [r for r in rows_in if r[ki] is None]
            if missing:
                for r, new_id in zip(
                    missing,
                    await sequences.next_ids(ex, spec, len(missing), session),
                    strict=True,
                ):
                    r[ki] = new_id
                assigned = missing[-1][ki]
            got.rows = rows_in
        if table.kind == "sharded":
            key = str(table.column).lower()
            ki = columns.index(key) if key in columns else -1
            for row in got.rows:
                v = row[ki] if ki >= 0 else None
                if v is None:
                    nullable = name.lower() in ex.null_shards and (
                        ki >= 0 or (info is not None and info.defaults.get(key) is None)
                    )
                    if not nullable:
                        raise ValidationError(
                            f"INSERT into {name}: sharding column {key} is NULL; every row needs "
                            "a value for it",
                            code="SHARDING_KEY_NULL",
                            details={"table": name, "column": key},
                        )
                    sid = ex.null_shards[name.lower()]
                else:
                    sid = ex.vs.shard_for(name, v)
                per_shard.setdefault(sid, []).append(row)
        elif table.kind == "unsharded":
            per_shard[table.shard] = list(got.rows)
        else:
            per_shard = {sid: list(got.rows) for sid in ex.order}
        targets = [s for s in ex.order if s in per_shard]
        if not targets:
            return ShardResult(columns=[], rowcount=0)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await ex.parallel(
                targets, lambda sid, c: c.execute_many(sql, per_shard[sid]), tx, write=True
            )
            out = combine(results)
            if table.kind == "reference":
                out.rowcount = len(got.rows)
            if assigned is not None:
                out.lastrowid = assigned
            return out

        return await ex.in_write_tx(session, targets, body)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        src = ctx.ex.plan(self.source_sql)
        head = Line(
            0,
            "InsertSelect",
            None,
            self.insert_sql.rstrip(),
            "source query through the router, rows grouped by owning shard, ExecuteMany",
        )
        below = await src.describe(ctx, select_params(params, self.source_params))
        return [head, *indent(below)]
