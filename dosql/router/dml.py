"""UPDATE / DELETE on a sharded table that one shard cannot do by itself.

Used when the statement has subqueries, joins or UPDATE … FROM, or when an
UPDATE assigns the sharding column (the row may move to another shard). The
router first answers a SELECT built from the statement's own text through the
gather engine (:mod:`dosql.router.gather`)::

    SELECT <target>.__dosql_shard, <target>.__dosql_rid, <SET expressions…>,
           <every column of the target>
      FROM <target> [, <FROM clause>] [WHERE …]

where the gathered copy of the target table carries, per row, the shard it
came from and its rowid there. Then, in one router transaction, each
affected row is changed on its own shard by rowid: ``UPDATE … SET c = ? WHERE
rowid = ?`` or ``DELETE … WHERE rowid = ?``; a row whose new sharding value
belongs to another shard is deleted there and inserted on its new shard.
Every value is computed by SQLite (in memory) from the rows as they were
before the statement, as SQLite itself does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlglot import exp
from sqlglot.tokens import TokenType

from dosql.errors import NotSupportedError, ValidationError
from dosql.router import gather, sqltext
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.executor import Executor
    from dosql.router.plan import Plan
    from dosql.router.transactions import ClientSession, Transaction

SHARD_COL = "__dosql_shard"
RID_COL = "__dosql_rid"


@dataclass(frozen=True)
class DmlSpec:
    op: str  # "update" | "delete"
    table: str
    qual: str  # how the SELECT names the target (alias or table name)
    sets: tuple[str, ...]  # assigned columns, in SET order (update)
    alternative: str  # "OR REPLACE" … or ""
    select: Plan  # the gather plan of the SELECT
    returning: str = ""  # "RETURNING …" text: then rows are changed one statement each


def plan(st: Any, ast: exp.Expression, tname: str, vs: Any) -> DmlSpec:
    from dosql.router import planner as P
    from dosql.router.plan import Plan as PlanT

    toks = st.toks
    returning = ""
    ret_i = next(
        (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.RETURNING), None
    )
    if ret_i is not None:
        returning = st.text[toks[ret_i].start :]
        if P._has_params(st, (toks[ret_i].start, len(st.text))):
            raise NotSupportedError("parameters in RETURNING of a write that runs router-side")
        if any(
            t.depth == 0 and t.type in (TokenType.ORDER_BY, TokenType.LIMIT) for t in toks[ret_i:]
        ):
            raise NotSupportedError("ORDER BY/LIMIT after RETURNING")
    target = ast.this
    qual = str(target.alias) if target.alias else tname
    stops = {
        TokenType.FROM,
        TokenType.WHERE,
        TokenType.RETURNING,
        TokenType.ORDER_BY,
        TokenType.LIMIT,
    }
    sets: list[str] = []
    exprs: list[str] = []
    spans: list[tuple[int, int]] = []
    alternative = ""
    if isinstance(ast, exp.Update):
        op = "update"
        set_i = next(
            (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.SET), None
        )
        if set_i is None:
            raise NotSupportedError("could not find SET in this UPDATE")
        words = [t.text.upper() for t in toks[:set_i]]
        if len(words) > 2 and words[1] == "OR":
            alternative = "OR " + words[2]
            t_start = 3
        else:
            t_start = 1
        target_text = sqltext.span_text(st.text, toks, t_start, set_i)
        stop = next(
            (
                i
                for i in range(set_i + 1, len(toks))
                if toks[i].depth == 0 and toks[i].type in stops
            ),
            len(toks),
        )
        items = sqltext.split_top(toks, set_i + 1, stop, 0)
        if len(items) != len(ast.expressions):
            raise NotSupportedError("could not match the SET assignments to their text")
        for (a, b), assign in zip(items, ast.expressions, strict=True):
            col = assign.this
            if not isinstance(col, exp.Column) or toks[a + 1].type != TokenType.EQ:
                raise NotSupportedError(
                    "row-value assignments (SET (a, b) = …) on a sharded table that spans "
                    "shards are not supported yet"
                )
            sets.append(str(col.name))
            exprs.append(sqltext.span_text(st.text, toks, a + 2, b))
            spans.append((toks[a + 2].start, toks[b - 1].end))
        rest_i = stop
    else:
        op = "delete"
        from_i = next(
            (i for i, t in enumerate(toks) if t.depth == 0 and t.type == TokenType.FROM), None
        )
        if from_i is None:
            raise NotSupportedError("could not find FROM in this DELETE")
        stop = next(
            (
                i
                for i in range(from_i + 1, len(toks))
                if toks[i].depth == 0 and toks[i].type in stops
            ),
            len(toks),
        )
        target_text = sqltext.span_text(st.text, toks, from_i + 1, stop)
        rest_i = stop
    end = toks[ret_i].start if ret_i is not None else len(st.text)
    rest = st.text[toks[rest_i].start : end] if rest_i < len(toks) and rest_i != ret_i else ""
    if rest[:4].upper() == "FROM":
        rest = ", " + rest[4:].lstrip()
    q = gather.quote(qual)
    select_list = [f"{q}.{SHARD_COL}", f"{q}.{RID_COL}", *exprs]
    sql = f"SELECT {', '.join(select_list)}, {{columns}} FROM {target_text} {rest}".rstrip()
    if rest:
        spans.append((toks[rest_i].start, end))
    sel = PlanT("read", sql)
    sel_st = P.Statement(sql.replace("{columns}", f"{q}.*"))
    sel_st.views = st.views
    sel.gather = gather.build(sel_st, sel_st.ast, vs)
    sel.gather = gather.Gather(
        sel.gather.refs,
        sel.gather.allow_bare,
        sel.gather.from_names,
        sel.gather.uses_rowid,
        tag=tname,
        views=sel.gather.views,
    )
    sel.pushed_params = st.spans_params(spans)
    return DmlSpec(op, tname, qual, tuple(sets), alternative, sel, returning)


async def run(ex: Executor, p: Plan, params: Any, session: ClientSession) -> ShardResult:
    spec: DmlSpec = p.dml
    name = spec.table
    schema = await ex.local_schema(name, session.tx)
    if not schema.has_rowid:
        raise NotSupportedError(
            f"this UPDATE/DELETE of WITHOUT ROWID sharded table {name} spans shards or moves "
            "rows; not supported yet"
        )
    q = gather.quote(spec.qual)
    sel = spec.select
    cols_sql = ", ".join(f"{q}.{gather.quote(c)}" for c in schema.columns)
    if "{columns}" in sel.text:
        sel.text = sel.text.replace("{columns}", cols_sql)
    sparams = params
    if sel.pushed_params is not None and isinstance(params, list | tuple):
        sparams = [params[i] for i in sel.pushed_params if i < len(params)]
    got = await ex.run_gather(sel, sparams, session)
    table = ex.vs.table(name)
    columns = schema.columns
    ncols = len(columns)
    nsets = len(spec.sets)
    key = str(table.column).lower() if table.kind == "sharded" else None
    lower = [c.lower() for c in columns]
    ki = lower.index(key) if key in lower else None
    seen: set[tuple[int, Any]] = set()
    moved: set[tuple[str, Any]] = set()  # (shard, rowid) of rows that move away
    updates: dict[str, list[list[Any]]] = {}
    deletes: dict[str, list[list[Any]]] = {}
    inserts: dict[str, list[list[Any]]] = {}
    order = ex.order
    for row in got.rows:
        shard_idx, rid = row[0], row[1]
        if (shard_idx, rid) in seen:
            continue  # UPDATE … FROM: a row is changed once
        seen.add((shard_idx, rid))
        sid = order[shard_idx]
        if spec.op == "delete":
            deletes.setdefault(sid, []).append([rid])
            continue
        new_vals = list(row[2 : 2 + nsets])
        full = list(row[2 + nsets : 2 + nsets + ncols])
        for col, v in zip(spec.sets, new_vals, strict=True):
            full[lower.index(col.lower())] = v
        dest = sid
        if ki is not None and key in (c.lower() for c in spec.sets):
            dest = _owner(ex, name, full[ki])
        if dest == sid:
            updates.setdefault(sid, []).append([*new_vals, rid])
        else:
            deletes.setdefault(sid, []).append([rid])
            moved.add((sid, rid))
            inserts.setdefault(dest, []).append(full)
    alt = f" {spec.alternative}" if spec.alternative else ""
    tq = gather.quote(name)
    upd_sql = (
        f"UPDATE{alt} {tq} SET "
        + ", ".join(f"{gather.quote(c)} = ?" for c in spec.sets)
        + " WHERE rowid = ?"
    )
    del_sql = f"DELETE FROM {tq} WHERE rowid = ?"
    ins_alt = f" {spec.alternative}" if spec.alternative else ""
    ins_sql = (
        f"INSERT{ins_alt} INTO {tq} ({', '.join(gather.quote(c) for c in columns)}) "
        f"VALUES ({', '.join('?' * ncols)})"
    )
    touched = [s for s in order if s in updates or s in deletes or s in inserts]
    count = len(seen)
    if not touched:
        return ShardResult(columns=[], rowcount=0)

    ret = spec.returning
    moved_del = {sid: [r for r in rows if (sid, r[0]) in moved] for sid, rows in deletes.items()}

    async def many(c: Any, sql: str, seq: list[list[Any]], out: ShardResult) -> None:
        if not ret:
            await c.execute_many(sql, seq)
            return
        for params in seq:  # RETURNING: one statement per row, its rows collected
            r = await c.execute(f"{sql} {ret}", params)
            out.columns, out.decltypes = r.columns, r.decltypes
            out.rows.extend(r.rows)

    async def body(tx: Transaction | None) -> ShardResult:
        async def first(sid: str, c: Any) -> ShardResult:
            out = ShardResult()
            if sid in deletes:
                gone = [r for r in deletes[sid] if (sid, r[0]) not in moved]
                if spec.op == "delete":
                    await many(c, del_sql, gone, out)
                elif moved_del.get(sid):
                    await c.execute_many(del_sql, moved_del[sid])
            if sid in updates:
                await many(c, upd_sql, updates[sid], out)
            return out

        results: list[ShardResult] = []
        phase1 = [s for s in order if s in updates or s in deletes]
        if phase1:
            results += await ex.parallel(phase1, first, tx, write=True)

        async def second(sid: str, c: Any) -> ShardResult:
            out = ShardResult()
            await many(c, ins_sql, inserts[sid], out)
            return out

        phase2 = [s for s in order if s in inserts]
        if phase2:
            results += await ex.parallel(phase2, second, tx, write=True)
        out = ShardResult(columns=[], rowcount=count)
        for r in results:
            if r.columns:
                out.columns, out.decltypes = r.columns, r.decltypes
            out.rows.extend(r.rows)
        return out

    return await ex.in_transaction(session, body)


def _owner(ex: Executor, name: str, value: Any) -> str:
    if value is None:
        shard = ex.null_shards.get(name.lower())
        if shard is None:
            raise ValidationError(
                f"UPDATE of {name}: sharding column {ex.vs.table(name).column} would be NULL",
                code="SHARDING_KEY_NULL",
                details={"table": name},
            )
        return shard
    return ex.vs.shard_for(name, value)
