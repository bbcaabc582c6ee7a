"""EXPLAIN <statement> through the router: the plan as rows, nothing executed.

Columns: ``step`` (0 is the summary), ``kind``, ``shard``, ``sql``, ``detail``.

Row 0's ``kind`` is the plan kind:

- ``single_shard`` — one shard gets the client's statement unchanged;
- ``multi_shard``  — some (not all) shards of a sharded table, results merged;
- ``scatter``      — every shard, results merged;
- ``reference``    — reference tables only: read from one shard (writes: all);
- ``router_side``  — rows gathered from the shards, the statement run by the
  router in an in-memory SQLite;
- ``ddl``, ``transaction``, ``noop``.

Later rows: ``shard`` (SQL sent to one shard), ``fetch`` (a router-side
plan's table fetch) and the router-side steps (``concat``, ``merge_sort``,
``aggregate``, ``limit``, ``router_side``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dosql.errors import NotSupportedError
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.executor import Executor
    from dosql.router.plan import Plan
    from dosql.router.transactions import ClientSession

COLUMNS = ["step", "kind", "shard", "sql", "detail"]


def _spread(ex: Executor, targets: list[str]) -> str:
    if len(targets) == 1:
        return "single_shard"
    return "scatter" if len(targets) == len(ex.order) else "multi_shard"


async def describe(ex: Executor, p: Plan, params: Any, session: ClientSession) -> ShardResult:
    inner = p.inner
    assert inner is not None
    rows: list[list[Any]] = []

    def add(kind: str, shard: str | None, sql: str | None, detail: str = "") -> None:
        rows.append([len(rows), kind, shard, sql, detail])

    if inner.kind == "read":
        await _read(ex, inner, params, session, add)
    elif inner.kind == "write" and inner.source_sql is not None:
        src = ex.plan(inner.source_sql)
        add("router_side", None, inner.text, "source query through the router, rows routed")
        await _read(ex, src, params, session, add)
        add("insert", None, inner.insert_sql, "rows grouped by owning shard, ExecuteMany")
    elif inner.kind == "write" and inner.dml is not None:
        spec = inner.dml
        add("router_side", None, inner.text, f"{spec.op}: affected rows found router-side")
        if "{columns}" not in spec.select.text:
            await _read(ex, spec.select, params, session, add)
        add(spec.op, None, None, "per row by rowid on its shard; moved rows deleted + inserted")
    elif inner.kind == "ddl" and inner.route is None:  # views, CREATE TABLE … AS
        kind = "router_side" if inner.ddl_action == "create_table_as" else "ddl"
        add(kind, ex.vs.default_shard, inner.text, str(inner.ddl_action))
    elif inner.kind in ("write", "ddl"):
        targets = await ex.targets(inner, params, session)
        route = inner.route
        kind = "ddl" if inner.kind == "ddl" else _spread(ex, targets)
        if inner.kind == "write" and route is not None and route.kind == "all":
            kind = "reference" if len(ex.order) > 1 else kind
        add(kind, ",".join(targets), inner.text, f"{inner.kind} on {len(targets)} shard(s)")
        for sid in targets:
            add("shard", sid, inner.text)
    elif (
        inner.kind == "insert"
        and str(inner.table).lower() in ex.sequences
        and await ex._needs_ids(inner, params, session)
    ):
        add(
            "router_side",
            ex.vs.default_shard,
            inner.text,
            f"keys assigned from sequence seq:{str(inner.table).lower()} (blocks on the default "
            "shard), rows routed by key",
        )
    elif inner.kind == "insert":
        groups = await ex._insert_groups(inner, params, session)
        targets = list(groups)
        add(_spread(ex, targets), ",".join(targets), inner.text, "rows split by sharding key")
        for sid, idxs in groups.items():
            add("shard", sid, inner.text, f"{len(idxs)} row(s)")
    elif inner.kind == "tx":
        add("transaction", None, inner.text, str(inner.tx_op))
    elif inner.kind == "noop":
        add("noop", None, inner.text, "nothing to do")
    else:
        raise NotSupportedError(f"EXPLAIN of a {inner.kind} statement")
    return ShardResult(columns=list(COLUMNS), decltypes=[None] * 5, rows=rows, rowcount=-1)


async def _read(ex: Executor, p: Plan, params: Any, session: ClientSession, add: Any) -> None:
    if p.route is not None:
        targets = await ex.targets(p, params, session)
        if len(targets) == 1:
            kind = "reference" if p.route.kind == "any" else "single_shard"
            add(kind, targets[0], p.text, "the statement as written, on one shard")
            add("shard", targets[0], p.text)
            return
        if p.group is not None:
            g = await ex.resolve_group(p, session.tx)
            add(_spread(ex, targets), ",".join(targets), g.pushed, "partial aggregation per shard")
            for sid in targets:
                add("shard", sid, g.pushed)
            add("aggregate", None, g.final, "partials merged in memory (__partials)")
            return
        if p.gather is None or not (p.refuse_scatter or p.pushed is None):
            add(_spread(ex, targets), ",".join(targets), p.pushed, "pushed down, merged")
            for sid in targets:
                add("shard", sid, p.pushed)
            if p.aggregates is not None:
                add("aggregate", None, None, ", ".join(a.func for a in p.aggregates))
            elif p.order:
                add("merge_sort", None, None, f"k-way merge on {len(p.order)} key(s)")
            else:
                add("concat", None, None, "rows of each shard in shard order")
            if p.limit is not None or p.offset is not None:
                add("limit", None, None, "LIMIT/OFFSET applied after the merge")
            return
    _, jobs, _ = await ex.gather_jobs(p, params, session)
    shards = [s for s in ex.order if s in jobs]
    add("router_side", ",".join(shards), p.text, "rows gathered, statement run in memory")
    for sid in shards:
        for i, sql, *_ in jobs[sid]:
            add("fetch", sid, sql, p.gather.refs[i].name)
    add("router_side", None, p.text, "in-memory SQLite over the gathered rows")
