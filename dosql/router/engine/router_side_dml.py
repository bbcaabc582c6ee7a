"""RouterSideDml: UPDATE/DELETE that one shard cannot do by itself, done row by row.

Used when the statement has subqueries, joins or UPDATE … FROM, or when an
UPDATE assigns the sharding column (the row may move to another shard).
The affected rows and their new values are computed router-side by SQLite
(:class:`~.router_side.RouterSide` over the gathered tables, each row tagged
with its shard and rowid); then, in one router transaction, each row is
changed on its own shard by rowid, and a row whose new key belongs to
another shard is deleted there and inserted on its new shard. See
:mod:`dosql.router.dml` for the planning half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from dosql.errors import NotSupportedError, ValidationError
from dosql.router import gather
from dosql.router.dml import DmlSpec
from dosql.router.engine.base import Line, Operator, Services, indent
from dosql.router.pool import ShardResult

if TYPE_CHECKING:
    from dosql.router.engine.base import Context
    from dosql.router.transactions import Transaction


@dataclass(eq=False)
class RouterSideDml(Operator):
    kind: ClassVar[str] = "write"
    is_write: ClassVar[bool] = True
    text: str
    spec: DmlSpec

    async def execute(self, ctx: Context, params: Any) -> ShardResult:
        ex, session, spec = ctx.ex, ctx.session, self.spec
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
        got = await sel.execute_bound(ctx, params)
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
        moved_del = {
            sid: [r for r in rows if (sid, r[0]) in moved] for sid, rows in deletes.items()
        }

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

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        spec = self.spec
        head = Line(
            0, "RouterSideDml", None, self.text, f"{spec.op}: affected rows found router-side"
        )
        out = [head]
        if "{columns}" not in spec.select.text:
            from dosql.router.engine.base import select_params

            out += indent(await spec.select.describe(ctx, select_params(params, spec.select.keep)))
        out.append(
            Line(
                1,
                spec.op.capitalize(),
                None,
                None,
                "per row by rowid on its shard; moved rows deleted + inserted",
            )
        )
        return out


def _owner(ex: Services, name: str, value: Any) -> str:
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
