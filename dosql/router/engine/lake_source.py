"""The leaves of a time-travel plan: where each table of the in-memory database comes from.

A statement that reads history is answered router-side (:mod:`.temporal`):
every table it names is loaded into a per-query in-memory SQLite. Each
source here loads one of them and describes itself for EXPLAIN:

- :class:`LakeAsOf` -- a table ``FOR SYSTEM_TIME AS OF`` a point, read from the
  lake (:func:`dolake.history.rows_as_of`) once the lake is known to hold
  every change committed by then (the shards' current LSNs, read now that
  the point is in the past; the lake writer is asked to flush and the
  router waits, bounded by the query timeout, else ``LAKE_BEHIND``);
- :class:`LakeHistory` -- ``dosql_history('t')``, the table's snapshots;
- :class:`LakeTableSql` -- ``dosql_table_sql('t'[, 'timestamp'])``, one row with
  the table's CREATE TABLE text as of a point;
- :class:`LiveTable` -- a current table the statement also reads, fetched
  through the router's own plan (so routing and open transactions behave as
  usual).

A historical table is created from the definition it had at the point when
the change log has it (renamed), else from the current one when the columns
agree, else from the lake's column list.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from dosql import protocol
from dosql import timetravel as tt
from dosql.errors import DoSQLError, ValidationError
from dosql.router import lake as lk
from dosql.router.engine.base import Context, Line, indent
from dosql.timetravel.points import LsnPoint, SnapshotPoint, TimestampPoint, format_micros

if TYPE_CHECKING:
    from dosql.router.lake import Lake

DDL_FUNCTION = "dosql_table_sql"


@dataclass
class MemTable:
    """One table of the in-memory database: how to create it, and its rows."""

    name: str  # name in memory
    ddl: list[str]  # statements that create it under ``name``
    columns: list[str]
    rows: list[Sequence[Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Reading:
    """What the sources of one execution share."""

    lake: Lake
    params: Any
    timeout_ms: int
    lsn_shard: str | None = None  # the one shard an ``AS OF LSN`` statement is routed to

    @property
    def wait_s(self) -> float:
        """How long to wait for the lake: early enough to answer before the client gives up."""
        return max(0.2, self.timeout_ms / 1000 * 0.8 - 0.2)


async def lake_call(lake: Lake, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(catalog, namespace, *args)`` in a worker thread (pyiceberg blocks)."""

    def call() -> Any:
        return fn(lake.catalog(), lake.namespace, *args, **kwargs)

    return await trio.to_thread.run_sync(call)


async def _lsn_info(ctx: Context, shards: list[str], **ask: Any) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}

    async def one(sid: str) -> None:
        r = await ctx.ex.pools[sid].run(lambda c: c.call(lambda rid: protocol.LsnInfo(rid, **ask)))
        out[sid] = r.info or {}

    async with trio.open_nursery() as n:
        for sid in shards:
            n.start_soon(one, sid)
    return out


async def current_lsns(ctx: Context, shards: list[str]) -> dict[str, int]:
    return {sid: int(i.get("current_lsn", 0)) for sid, i in (await _lsn_info(ctx, shards)).items()}


async def wait_covered(
    ctx: Context,
    run: Reading,
    table: str,
    required: dict[str, int],
    pending_since_us: int | None = None,
) -> None:
    from dolake import history

    deadline = time.monotonic() + run.wait_s
    await lake_call(
        run.lake,
        history.wait_covered,
        table,
        required,
        lambda: run.lake.flush(deadline - time.monotonic()),
        timeout_s=run.wait_s,
        pending_since_us=pending_since_us,
    )


def _table_kind(ctx: Context, table: str) -> Any:
    try:
        return ctx.ex.vs.table(table)
    except DoSQLError:
        return None


def _shards_of(ctx: Context, table: str) -> list[str]:
    vs = ctx.ex.vs
    vt = _table_kind(ctx, table)
    if vt is None or vt.kind == "sharded":
        return list(vs.shard_ids)
    if vt.kind == "unsharded":
        return [vt.shard]
    return [vs.shard_ids[0]]


async def covered_at(ctx: Context, run: Reading, table: str, micros: int | None) -> dict[str, int]:
    """Make sure the lake holds every change of ``table`` committed at or before
    ``micros`` (None: now); returns the per-shard LSNs it was checked against."""
    now = time.time_ns() // 1000
    if micros is not None and micros > now:
        raise ValidationError(
            f"{format_micros(micros)} is in the future ({(micros - now) // 1000} ms from "
            "now): FOR SYSTEM_TIME AS OF reads the past; for the current rows leave the "
            "clause out",
            code="INVALID_INPUT",
            details={"ahead_ms": (micros - now) // 1000},
        )
    # Asked after the point has passed, each shard names the newest change of the
    # table committed by then that the lake may not have yet (one it has released
    # is in the lake): only those are waited for, so a point the lake already
    # holds answers at once, even with the lake writer down.
    infos = await _lsn_info(ctx, _shards_of(ctx, table), table=table, through_us=micros)
    required = {sid: int(i.get("table_lsn", 0)) for sid, i in infos.items()}
    pending = [i["pending_since_us"] for i in infos.values() if i.get("pending_since_us")]
    await wait_covered(ctx, run, table, required, min(pending, default=None))
    return required


def _point_text(ref: tt.TemporalRef) -> str:
    if ref.param is not None:
        where = f"?{ref.param + 1}" if isinstance(ref.param, int) else f":{ref.param}"
        return f"{ref.kind.upper()} {where}"
    if ref.kind == "timestamp":
        return f"TIMESTAMP '{format_micros(ref.value)}'"
    if ref.kind == "snapshot":
        return str(ref.value)
    return f"LSN {ref.value}"


@dataclass(frozen=True)
class LakeAsOf:
    """A table ``FOR SYSTEM_TIME AS OF`` a point, from the lake."""

    ref: tt.TemporalRef
    name: str

    async def load(self, ctx: Context, run: Reading) -> MemTable:
        from dolake import history

        table = self.ref.table.lower()
        point = self.ref.point(run.params, shard=run.lsn_shard)
        vt = _table_kind(ctx, table)
        reference = ctx.ex.vs.shard_ids[0] if vt is not None and vt.kind == "reference" else None
        kwargs: dict[str, Any] = {"reference_shard": reference}
        micros: int | None = None
        if isinstance(point, TimestampPoint):
            kwargs["required"] = await covered_at(ctx, run, table, point.micros)
            micros = point.micros
        elif isinstance(point, LsnPoint):
            assert point.shard is not None
            current = (await current_lsns(ctx, [point.shard]))[point.shard]
            if point.lsn > current:
                raise ValidationError(
                    f"LSN {point.lsn} of {point.shard} is in the future (its current LSN is "
                    f"{current})",
                    code="INVALID_INPUT",
                    details={"current_lsn": current},
                )
            await wait_covered(ctx, run, table, {point.shard: point.lsn})
        cols, rows = await lake_call(run.lake, history.rows_as_of, table, point, **kwargs)
        if isinstance(point, SnapshotPoint):
            micros = None
        ddl = await self._ddl(ctx, run.lake, table, cols, micros)
        return MemTable(self.name, ddl, cols, rows)

    async def _ddl(
        self, ctx: Context, lake: Lake, table: str, cols: list[str], micros: int | None
    ) -> list[str]:
        create, columns, pk = await lake_call(lake, lk.historical_definition, table, micros)
        wanted = {c.lower() for c in cols}
        if create is not None and lk.create_columns(create) == wanted:
            return lk.renamed(create, lk.original_name(create, table), self.name)
        try:
            live = await ctx.ex.local_schema(table, ctx.tx)
        except DoSQLError:
            live = None
        if live is not None and {c.lower() for c in live.columns} == wanted:
            return lk.renamed(live.ddl[0], lk.original_name(live.ddl[0], table), self.name)
        decl = dict(columns)
        return [lk.derived_ddl(self.name, [(c, decl.get(c, "")) for c in cols], pk)]

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        return [Line(0, "LakeAsOf", None, None, f"{self.ref.table} AS OF {_point_text(self.ref)}")]


@dataclass(frozen=True)
class LakeHistory:
    """``dosql_history('t')``: the table's lake snapshots."""

    ref: tt.HistoryRef
    name: str

    async def load(self, ctx: Context, run: Reading) -> MemTable:
        table = self.ref.table_name(run.params).lower()
        cols, rows = await lake_call(run.lake, lk.history_rows, table)
        ddl = lk.derived_ddl(self.name, [(c, "") for c in cols], [])
        return MemTable(self.name, [ddl], cols, rows)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        table = self.ref.table if self.ref.param is None else "a parameter's table"
        return [Line(0, "LakeHistory", None, None, f"snapshots of {table}")]


@dataclass(frozen=True)
class LakeTableSql:
    """``dosql_table_sql('t'[, 'timestamp'])``: one row with the CREATE TABLE."""

    table: str
    micros: int | None
    name: str

    @classmethod
    def of(cls, node: Any, name: str) -> LakeTableSql:
        """From the table function's arguments (literals only: checked at plan time)."""
        from sqlglot import exp

        values: list[str] = []
        for arg in node.this.expressions:
            text = isinstance(arg, exp.Literal) and arg.is_string
            if text or isinstance(arg, exp.Column) and isinstance(arg.this, exp.Identifier):
                values.append(arg.name)
            else:
                values = []
                break
        if not 1 <= len(values) <= 2:
            raise ValidationError(
                f"{DDL_FUNCTION}() takes the table name and optionally a timestamp, as "
                f"literals: SELECT sql FROM {DDL_FUNCTION}('users', '2026-01-15 10:00:00')",
                code="INVALID_INPUT",
            )
        micros = tt.parse_timestamp(values[1]) if len(values) == 2 else None
        return cls(values[0].lower(), micros, name)

    async def load(self, ctx: Context, run: Reading) -> MemTable:
        await covered_at(ctx, run, self.table, self.micros)
        ddl = await lake_call(run.lake, lk.lake_ddl, self.table, self.micros)
        return MemTable(
            self.name, [f"CREATE TABLE {lk.quote(self.name)} (sql TEXT)"], ["sql"], [(ddl,)]
        )

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        when = "now" if self.micros is None else format_micros(self.micros)
        return [
            Line(0, "LakeTableSql", None, None, f"CREATE TABLE text of {self.table} as of {when}")
        ]


@dataclass(frozen=True)
class LiveTable:
    """A current table the statement reads beside history: every row, through the router."""

    name: str

    async def load(self, ctx: Context, run: Reading) -> MemTable:
        ex = ctx.ex
        schema = await ex.local_schema(self.name, ctx.tx)
        cols = list(schema.columns)
        p = ex.plan(f"SELECT {', '.join(lk.quote(c) for c in cols)} FROM {lk.quote(self.name)}")
        r = await p.execute(ctx, None)
        # every index of the live table goes with it (index names stay unique:
        # historical tables are created without theirs)
        return MemTable(self.name, list(schema.ddl), cols, r.rows)

    async def describe(self, ctx: Context, params: Any) -> list[Line]:
        head = Line(0, "LiveTable", None, None, self.name)
        try:
            inner = ctx.ex.plan(f"SELECT * FROM {lk.quote(self.name)}")
            return [head, *indent(await inner.describe(ctx, None))]
        except DoSQLError:
            return [head]


Source = LakeAsOf | LakeHistory | LakeTableSql | LiveTable
