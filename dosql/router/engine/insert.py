"""Insert: INSERT … VALUES into a sharded table, each row sent to the shard its key names.

The rows' text spans are cut out of the client's statement, so every shard
gets the client's own SQL holding only its rows (and only their
parameters); one shard gets the statement unchanged. executemany of a
one-row INSERT groups the parameter sets per shard
(:class:`dosql.router.batch.InsertRouter`), one ExecuteMany a shard.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from dosql.router.batch import InsertRouter
from dosql.router.engine.base import Line, Operator, combine, spread
from dosql.router.plan import Value
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context
    from dosql.router.transactions import Transaction


@dataclass(eq=False)
class Insert(Operator):
    kind: ClassVar[str] = "insert"
    is_write: ClassVar[bool] = True
    text: str
    table: str
    key_column: str
    key_index: int | None  # position in the VALUES tuple; None: table order; -1: not given
    insert_rows: tuple[tuple[Value, int, int, tuple[int, ...]], ...]  # key, start, end, params
    insert_head: int  # char offset where the first row starts
    insert_tail: int  # char offset after the last row
    # head_params / tail_params (positional parameters outside the rows), as_select (the
    # INSERT as head + VALUES source, for sequences); seq_slots (sequences, at run time)
    cache: dict[Any, Any] = field(default_factory=dict)

    async def groups(self, ctx: Context, params: Any) -> dict[str, list[int]]:
        """Row indices grouped by owning shard (shard order)."""
        ex = ctx.ex
        info = await ex.learn_column_type(self.table, ctx.tx)
        router = InsertRouter(self, info, ex.vs, ex.null_shards)
        groups: dict[str, list[int]] = {}
        for i, (value, _s, _e, _pi) in enumerate(self.insert_rows):
            groups.setdefault(router.shard_of(router.key_of(value), params), []).append(i)
        return {s: groups[s] for s in ex.order if s in groups}

    def shard_text(self, idxs: list[int], params: Any) -> tuple[str, Any]:
        """The statement holding only rows ``idxs``, and the parameters it uses."""
        rows = [self.insert_rows[i] for i in idxs]
        text = self.text
        sql = (
            text[: self.insert_head]
            + ", ".join(text[s:e] for _, s, e, _ in rows)
            + text[self.insert_tail :]
        )
        if isinstance(params, list | tuple) and params:
            keep = list(self.cache["head_params"])
            for _, _, _, pi in rows:
                keep.extend(pi)
            keep.extend(self.cache["tail_params"])
            return sql, [params[i] for i in keep]
        return sql, params

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex = ctx.ex
        groups = await self.groups(ctx, params)
        targets = list(groups)
        if len(targets) == 1:
            texts = {targets[0]: (self.text, params)}
        else:
            texts = {sid: self.shard_text(idxs, params) for sid, idxs in groups.items()}
        timeout = ctx.query_timeout_ms

        async def body(tx: Transaction | None) -> ShardResult:
            results = await ex.parallel(
                targets,
                lambda sid, c: c.execute(texts[sid][0], texts[sid][1], timeout_ms=timeout),
                tx,
                write=True,
            )
            return combine(results)

        return await ex.in_write_tx(ctx.session, targets, body)

    async def execute_grouped(
        self, ctx: Context, sql: str, per_shard: dict[str, list[Any]], last_id: Any = None
    ) -> ShardResult:
        """One ExecuteMany of ``sql`` per shard with that shard's parameter sets."""
        ex = ctx.ex
        targets = [s for s in ex.order if s in per_shard]
        if not targets:
            return ShardResult(rowcount=0)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await ex.parallel(
                targets, lambda sid, c: c.execute_many(sql, per_shard[sid]), tx, write=True
            )
            out = combine(results)
            if last_id is not None:
                out.lastrowid = last_id
            return out

        return await ex.in_write_tx(ctx.session, targets, body)

    async def execute_many(self, ctx: Context, seq: list[Any]) -> ShardResult:
        if len(self.insert_rows) != 1:
            return await super().execute_many(ctx, seq)
        if not seq:
            return ShardResult(rowcount=0)
        # one VALUES row: the table is resolved once, then each set costs a hash
        ex = ctx.ex
        info = await ex.learn_column_type(self.table, ctx.tx)
        per_shard = InsertRouter(self, info, ex.vs, ex.null_shards).group(seq)
        return await self.execute_grouped(ctx, self.text, per_shard)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        groups = await self.groups(ctx, params)
        targets = list(groups)
        variant = spread(targets, ctx.ex.order)
        head = Line(
            0, "Insert", ",".join(targets), self.text, f"{variant}: rows split by sharding key"
        )
        shards = []
        for sid, idxs in groups.items():
            sql = self.text if len(targets) == 1 else self.shard_text(idxs, params)[0]
            shards.append(Line(1, "shard", sid, sql, f"{len(idxs)} row(s)"))
        return [head, *shards]
