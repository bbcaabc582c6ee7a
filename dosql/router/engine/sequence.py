"""Sequence: rows of an INSERT that leave their id out get one from the table's sequence.

In front of every :class:`~.insert.Insert` into a sharded table: a row
without its INTEGER PRIMARY KEY (left out, NULL, a NULL parameter) gets an id
unique across the cluster (:mod:`dosql.router.sequences`), then the rows are
routed by key as usual. A one-row INSERT is rewritten in place (the id
goes into its parameter, or the column is added); several rows, NULL
literals and expressions are evaluated first and routed with ids filled in
(:class:`~.insert_select.InsertSelect`). Rows that all carry their id go
straight to the Insert below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dosql.errors import NotSupportedError
from dosql.router import sequences as S
from dosql.router.batch import InsertRouter
from dosql.router.engine.base import Context, Line, Operator, Services
from dosql.router.engine.insert import Insert
from dosql.router.engine.insert_select import InsertSelect
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.catalog import TableInfo


@dataclass(eq=False)
class Sequence(Operator):
    kind: ClassVar[str] = "insert"
    is_write: ClassVar[bool] = True
    insert: Insert

    @property
    def text(self) -> str:  # type: ignore[override]
        return self.insert.text

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        done = await run_insert(ctx.ex, self.insert, params, ctx.session)
        if done is not None:
            return done
        return await self.insert.execute(ctx, params)

    async def execute_many(self, ctx: Context, seq: list[Any]) -> ShardResult:
        p = self.insert
        if len(p.insert_rows) != 1:  # each parameter set in turn, ids and all
            return await Operator.execute_many(self, ctx, seq)
        if not seq:
            return ShardResult(rowcount=0)
        ex = ctx.ex
        info = await ex.learn_column_type(p.table, ctx.tx)
        ided = await plan_many(ex, p, seq, info, ctx.session)
        if ided == LOOP:  # ids only row by row (NULL literal, expression)
            return await Operator.execute_many(self, ctx, seq)
        if ided is not None:  # sequence ids filled into the parameter sets
            sql, per_shard, last_id = ided
            return await p.execute_grouped(ctx, sql, per_shard, last_id)
        per_shard = InsertRouter(p, info, ex.vs, ex.null_shards).group(seq)
        return await p.execute_grouped(ctx, p.text, per_shard)

    async def needs_ids(self, ctx: Context, params: Any) -> bool:
        """Whether some row of this INSERT may leave its sequence column NULL or out."""
        p = self.insert
        spec = S.spec_for(ctx.ex, p.table)
        if spec is None:
            return False
        info = await ctx.ex.learn_column_type(p.table, ctx.tx)
        return any(s.missing(params) is not False for s in S.slots(p, spec.column, info))

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        if not await self.needs_ids(ctx, params):
            return await self.insert.describe(ctx, params)
        table = self.insert.table.lower()
        detail = (
            f"keys assigned from sequence seq:{table} (blocks on the default shard), "
            "rows routed by key"
        )
        return [Line(0, "Sequence", ctx.ex.vs.default_shard, self.text, detail)]


async def run_insert(ex: Services, p: Insert, params: Any, session: Any) -> Any:
    """Run an INSERT … VALUES whose rows need ids; None when none does (run it as usual).

    Raises SEQUENCE_REQUIRED for a listed table whose rowid alias has no sequence.
    """
    name = str(p.table)
    spec = S.spec_for(ex, name)
    info = await ex.learn_column_type(name, session.tx)
    if spec is None:
        guard = S.guarded_column(ex, name, info)
        if guard is not None and any(s.missing(params) for s in S.slots(p, guard, info)):
            raise S.sequence_required(name, guard)
        return None
    row_slots = S.slots(p, spec.column, info)
    states = [s.missing(params) for s in row_slots]
    given = [S.given(s, params) for s, m in zip(row_slots, states, strict=True) if m is False]
    if given:
        ex.seq_ids.observe(spec.sequence, given)
    if all(m is False for m in states):
        return None
    S.check_column(spec, info)
    if len(row_slots) == 1 and row_slots[0].kind in ("absent", "param") and states[0]:
        return await _run_one(ex, p, spec, row_slots[0], params, session, info)
    if "as_select" in p.cache:  # evaluate the rows, fill in ids, route them
        head, source, source_params, columns = p.cache["as_select"]
        q = InsertSelect(p.text, p.table, source, source_params, columns, head)
        return await q.execute(Context(ex, session), params)
    raise NotSupportedError(
        f"INSERT … RETURNING / ON CONFLICT into {name} with several rows, or with an expression "
        f"or NULL literal for {spec.column}: the router cannot fill in ids from sequence "
        f"{spec.sequence} there; give {spec.column} as a ? parameter, leave it out, or insert "
        "one row at a time"
    )


async def _run_one(
    ex: Services,
    p: Insert,
    spec: S.SeqSpec,
    slot: S.Slot,
    params: Any,
    session: Any,
    info: TableInfo | None,
) -> Any:
    (new_id,) = await S.next_ids(ex, spec, 1, session)
    sql = p.text if slot.kind == "param" else S.with_column(p, spec.column, S.is_named(params))
    bound = S.fill(p, slot, params, new_id)
    name = str(p.table)
    if spec.column == str(ex.vs.table(name).column).lower():
        sid = ex.vs.shard_for(name, new_id)
    else:
        router = InsertRouter(p, info, ex.vs, ex.null_shards)
        sid = router.shard_of(
            router.key_of(p.insert_rows[0][0]), bound if slot.kind == "param" else params
        )

    async def body(tx: Any) -> Any:
        (out,) = await ex.parallel(
            [sid], lambda _s, c: c.execute(sql, bound, timeout_ms=ex.query_timeout_ms), tx
        )
        out.lastrowid = new_id
        return out

    return await ex.in_write_tx(session, [sid], body)


LOOP = "loop"  # run_many: execute the parameter sets one by one (each gets its ids)


async def plan_many(
    ex: Services, p: Insert, seq: list[Any], info: TableInfo | None, session: Any
) -> Any:
    """executemany of a one-row INSERT: ``(sql, per_shard, last_id)`` with ids filled in,
    None when no row needs one, or :data:`LOOP`."""
    name = str(p.table)
    spec = S.spec_for(ex, name)
    if spec is None:
        guard = S.guarded_column(ex, name, info)
        if guard is not None:
            (slot,) = S.slots(p, guard, info)
            if any(slot.missing(params) for params in seq):
                raise S.sequence_required(name, guard)
        return None
    (slot,) = S.slots(p, spec.column, info)
    ref = slot.ref
    if slot.kind == "param" and type(ref) is int:  # the common batch: ids as ? parameters
        values = [
            params[ref] if type(params) is list and ref < len(params) else S.given(slot, params)
            for params in seq
        ]
        states: list[bool | None] = [v is None for v in values]
        ex.seq_ids.observe(spec.sequence, values)
    else:
        states = [slot.missing(params) for params in seq]
        if slot.kind in ("param", "value"):
            given = [S.given(slot, params) for params, m in zip(seq, states, strict=True) if not m]
            ex.seq_ids.observe(spec.sequence, given)
    if not any(m is not False for m in states):
        return None
    S.check_column(spec, info)
    if slot.kind not in ("absent", "param"):
        return LOOP
    need = [i for i, m in enumerate(states) if m]
    ids = await S.next_ids(ex, spec, len(need), session)
    out = list(seq)
    for i, new_id in zip(need, ids, strict=True):
        out[i] = S.fill(p, slot, seq[i], new_id)
    named = S.is_named(seq[0])
    sql = p.text if slot.kind == "param" else S.with_column(p, spec.column, named)
    per_shard: dict[str, list[Any]]
    if spec.column == str(ex.vs.table(name).column).lower() and slot.kind == "absent":
        route = ex.vs.shard_router(name)
        per_shard = {}
        for params, new_id in zip(out, ids, strict=True):
            per_shard.setdefault(route(new_id), []).append(params)
    else:  # the key's parameter index is the same in the filled-in sets
        per_shard = InsertRouter(p, info, ex.vs, ex.null_shards).group(out)
    return sql, per_shard, ids[-1] if ids else None
