"""Running plans: bind parameters, pick shards, fan out, merge.

Shard requests run in parallel, at most ``MAX_PARALLEL_SHARDS`` at once, each
bounded by ``SHARD_TIMEOUT_MS``. A query that needs an unreachable shard fails
with ``RPCError(SHARD_UNAVAILABLE)`` naming it; queries that do not need it
are unaffected. Reads outside a transaction retry once on a fresh connection
when a pooled connection turns out to be dead (a restarted shard).

The executor also keeps what it learns about table schemas from the shards
(column order and declared types from ``pragma_table_info``, the sharding
column's collation by probing), because routing a value needs the sharding
column's affinity (42 and '42' land together in an INTEGER column) and
pinning a text value is only sound under the BINARY collation.
"""

from __future__ import annotations

import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

import vschema
from dosql import protocol
from dosql.errors import DoSQLError, NotFoundError, NotSupportedError, QueryError, ValidationError
from dosql.router import dml, explain, gather, groupby, merge, metadata, sequences
from dosql.router.batch import InsertRouter
from dosql.router.gather import ROWID_NAMES
from dosql.router.metrics import RouterMetrics
from dosql.router.plan import Pin, Plan, RangeCond, Value
from dosql.router.planner import Statement
from dosql.router.planner import plan as make_plan
from dosql.router.pool import ShardConnection, ShardPool, ShardResult
from dosql.router.session import TxState
from dosql.router.transactions import ClientSession, Transaction, tx_aborted_by_shard

log = logging.getLogger(__name__)

MAX_GATHER_ROWS = 2_000_000  # rows a router-side plan may hold in memory
_FETCH_BATCH = 200  # tables per UNION ALL fetch (SQLite allows 500 compound terms)

_PROBE = (
    "(SELECT count(*) FROM (SELECT {e} FROM {f} WHERE 0 UNION SELECT 'a' UNION SELECT 'A')),"
    "(SELECT count(*) FROM (SELECT {e} FROM {f} WHERE 0 UNION SELECT 'a' UNION SELECT 'a '))"
)


def _collation_from_probe(nocase_count: Any, rtrim_count: Any) -> str | None:
    return {(2, 2): "BINARY", (1, 2): "NOCASE", (2, 1): "RTRIM"}.get((nocase_count, rtrim_count))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _undecodable(exc: DoSQLError) -> bool:
    """A shard could not return a row: it holds TEXT that is not valid UTF-8.

    Rows travel as Python text, so such a row cannot leave its shard. SQLite
    (and Python's sqlite3 on one database) only fails when that row is part of
    the answer; a merge that reads more rows than it returns must then answer
    router-side instead, where only the answer's rows are read out.
    """
    return "Could not decode to UTF-8" in exc.message


@dataclass
class TableInfo:
    columns: list[str]
    types: dict[str, str]
    pk: list[str]
    key_collation: str | None
    defaults: dict[str, Any] = field(default_factory=dict)  # column (lower) -> dflt_value


class PlanCache:
    def __init__(self, size: int) -> None:
        self.size = size
        self.plans: OrderedDict[str, Plan] = OrderedDict()

    def get(self, sql: str) -> Plan | None:
        p = self.plans.get(sql)
        if p is not None:
            self.plans.move_to_end(sql)
        return p

    def put(self, sql: str, p: Plan) -> None:
        if self.size <= 0:
            return
        self.plans[sql] = p
        while len(self.plans) > self.size:
            self.plans.popitem(last=False)

    def clear(self) -> None:
        self.plans.clear()


def _select_params(params: Any, keep: tuple[int, ...] | None) -> Any:
    if keep is None or not isinstance(params, list | tuple):
        return params
    return [params[i] for i in keep if i < len(params)]


class Executor:
    def __init__(
        self,
        base: Any,
        pools: dict[str, ShardPool],
        *,
        max_parallel: int,
        plan_cache_size: int,
        metrics: RouterMetrics,
        query_timeout_ms: int | None = None,
    ) -> None:
        self.base = base
        self.vs = base
        self.learned: dict[str, dict[str, Any]] = {}
        self.pools = pools
        self.limiter = trio.CapacityLimiter(max_parallel)
        self.plans = PlanCache(plan_cache_size)
        self.metrics = metrics
        self.schema: dict[str, TableInfo] = {}
        self.query_timeout_ms = query_timeout_ms
        self.meta_loaded = False
        self.local_schemas: dict[str, gather.LocalSchema] = {}
        self.null_shards: dict[str, str] = {}  # table -> shard that holds NULL-key rows
        self.sequences: set[str] = set()  # tables whose keys the router assigns
        self.views: dict[str, str] = {}  # views created through the router: name -> DDL
        self.seq_ids = sequences.IdBlocks()  # this router's reserved id blocks
        self.seq_block = 1000  # ids reserved at a time (router.sequence_block)
        self.atomic_commit = True  # two-phase commit across shards (router.atomic_commit)

    # ------------------------------------------------------------------ VSchema state

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.vs.shard_ids)

    def _set_vs(self, vs: Any) -> None:
        self.vs = vs
        self.plans.clear()

    async def load_metadata(self) -> None:
        """Tables created under the default_table policy (best effort; retried on demand)."""
        if self.meta_loaded:
            return
        learned = await metadata.load(self.pools[self.vs.default_shard])
        self.views = await metadata.load_views(self.pools[self.vs.default_shard])
        self.learned = learned
        self.null_shards = metadata.null_shards(learned)
        self.sequences = metadata.sequences(learned)
        self._set_vs(metadata.overlay(self.base, learned))
        self.meta_loaded = True

    def plan(self, sql: str) -> Plan:
        p = self.plans.get(sql)
        if p is not None:
            self.metrics.plan_hits.inc()
            return p
        self.metrics.plan_parses.inc()
        try:
            p = make_plan(sql, self.vs, self.views)
        except DoSQLError:
            raise
        except Exception as exc:  # a planner gap must never turn into a wrong answer
            log.exception("planner failed", extra={"sql": sql[:200]})
            raise NotSupportedError(
                f"the router could not plan this statement ({type(exc).__name__}: {exc})"
            ) from None
        self.plans.put(sql, p)
        return p

    # ------------------------------------------------------------------ schema knowledge

    async def table_info(self, name: str, tx: Transaction | None = None) -> TableInfo | None:
        key = name.lower()
        if key in self.schema:
            return self.schema[key]
        table = self.vs.table(name)
        candidates = [table.shard] if table.kind == "unsharded" else list(self.order)
        if tx is not None:  # a table created in this transaction is visible only there
            candidates = [s for s in tx.shards if s in candidates] + candidates
        for sid in candidates:
            try:
                info = await self._fetch_info(sid, name, table, tx)
            except DoSQLError:
                continue
            if info is None:
                return None
            if tx is None or sid not in tx.conns:
                self.schema[key] = info
            return info
        return None

    async def _fetch_info(
        self, sid: str, name: str, table: Any, tx: Transaction | None
    ) -> TableInfo | None:
        async def fetch(c: ShardConnection) -> TableInfo | None:
            r = await c.execute(
                "SELECT name, type, pk, dflt_value FROM pragma_table_info(?)", [name]
            )
            if not r.rows:
                return None
            columns = [row[0] for row in r.rows]
            defaults = {str(row[0]).lower(): row[3] for row in r.rows}
            types = {row[0].lower(): row[1] for row in r.rows}
            pk = [row[0] for row in sorted((x for x in r.rows if x[2]), key=lambda x: x[2])]
            coll = None
            if table.kind == "sharded" and table.column:
                probe = "SELECT " + _PROBE.format(e=_quote(table.column), f=_quote(name))
                pr = await c.execute(probe)
                coll = _collation_from_probe(*pr.rows[0])
            return TableInfo(columns, types, pk, coll, defaults)

        if tx is not None and sid in tx.conns:
            return await fetch(tx.conns[sid])
        return await self.pools[sid].run(fetch)

    async def _learn_column_type(self, name: str, tx: Transaction | None) -> TableInfo | None:
        info = await self.table_info(name, tx)
        table = self.vs.table(name)
        if info is not None and table.kind == "sharded":
            self._record_column_type(table, info.types)
        return info

    def _record_column_type(self, table: vschema.Table, types: dict[str, str]) -> None:
        """Learn a sharded table's key type from its declaration, for routing by affinity."""
        decl = types.get(str(table.column).lower())
        if table.column_type is None and decl is not None:
            new = vschema.Table(
                "sharded",
                column=table.column,
                vindex=table.vindex,
                column_type=decl,
                vindex_name=table.vindex_name,
            )
            self._set_vs(self.vs.with_table(table.name, new))

    # ------------------------------------------------------------------ shard runs

    async def on_shard(
        self,
        sid: str,
        fn: Callable[[ShardConnection], Awaitable[ShardResult]],
        tx: Transaction | None,
        *,
        retry: bool = False,
        write: bool = False,
    ) -> ShardResult:
        # Waits for a shard's write lock never hold a slot of the router-wide limiter:
        # a transaction holding that lock may need a slot for its next statement, and
        # slots held by its queued waiters would deadlock it until the lock timeout.
        # So a transaction's Begin (which may queue) runs before the limiter, and
        # writes (which may queue) skip it; reads never wait for a lock (WAL).
        conn = await tx.conn(sid, write=write) if tx is not None else None
        async with contextlib.nullcontext() if write else self.limiter:
            if conn is not None:  # write: the session there began IMMEDIATE
                return await fn(conn)
            try:
                return await self.pools[sid].run(fn)
            except DoSQLError as exc:
                if retry and exc.code == "SHARD_UNAVAILABLE" and exc.details.get("lost"):
                    return await self.pools[sid].run(fn)
                raise

    async def parallel(
        self,
        shard_ids: list[str],
        fn: Callable[[str, ShardConnection], Awaitable[ShardResult]],
        tx: Transaction | None,
        *,
        retry: bool = False,
        write: bool = False,
    ) -> list[ShardResult]:
        if len(shard_ids) == 1:
            sid = shard_ids[0]
            return [await self.on_shard(sid, lambda c: fn(sid, c), tx, retry=retry, write=write)]
        if tx is not None and (write or tx.mode == "immediate"):
            # Take the shards' write locks one at a time in VSchema order: two
            # statements that lock several shards then never deadlock each other.
            for sid in sorted(shard_ids, key=self.order.index):
                await tx.conn(sid, write=write)
        results: dict[str, ShardResult] = {}
        errors: dict[str, DoSQLError] = {}

        async def one(sid: str) -> None:
            try:
                results[sid] = await self.on_shard(
                    sid, lambda c: fn(sid, c), tx, retry=retry, write=write
                )
            except DoSQLError as exc:
                errors[sid] = exc

        async with trio.open_nursery() as nursery:
            for sid in shard_ids:
                nursery.start_soon(one, sid)
        if errors:
            unavailable = [
                s for s in shard_ids if s in errors and errors[s].code == "SHARD_UNAVAILABLE"
            ]
            first = errors[
                unavailable[0] if unavailable else next(s for s in shard_ids if s in errors)
            ]
            if len(unavailable) > 1:
                first.message += f" (also unavailable: {', '.join(unavailable[1:])})"
                first.args = (first.message,)
            raise first
        return [results[s] for s in shard_ids]

    # ------------------------------------------------------------------ routing

    def _bind_values(self, values: tuple[Value, ...], params: Any) -> list[Any]:
        return [v.bind(params) for v in values]

    async def targets(self, p: Plan, params: Any, session: ClientSession) -> list[str]:
        route = p.route
        assert route is not None
        if route.kind == "all":
            return list(self.order)
        if route.kind == "shard":
            return [route.shard]  # type: ignore[list-item]
        if route.kind == "any":
            tx = session.tx
            if tx is not None and tx.shards:
                return [tx.shards[0]]
            for sid in self.order:
                if self.pools[sid].healthy is not False:
                    return [sid]
            return [self.order[0]]
        # sharded
        name = route.table
        assert name is not None
        if not route.conds:
            return list(self.order)
        info = await self._learn_column_type(name, session.tx)
        if info is None:
            return list(self.order)
        result = set(self.order)
        for cond in route.conds:
            shards = self._cond_shards(name, cond, params, info)
            if shards is not None:
                result &= shards
        if not result:  # no row can match: any one shard gives the right (empty) answer
            return [self.order[0]]
        return [s for s in self.order if s in result]

    def _cond_shards(self, name: str, cond: Any, params: Any, info: TableInfo) -> set[str] | None:
        binary = info.key_collation == "BINARY"
        if isinstance(cond, Pin):
            values = self._bind_values(cond.values, params)
            out: set[str] = set()
            for v in values:
                if v is None:
                    continue
                if isinstance(v, str) and not binary:
                    return None
                try:
                    out.add(self.vs.shard_for(name, v))
                except ValidationError as exc:
                    if exc.code in ("VALUE_OUT_OF_RANGE", "SHARDING_KEY_NULL"):
                        continue
                    return None
            return out
        if isinstance(cond, RangeCond):
            low = cond.low.bind(params) if cond.low is not None else None
            high = cond.high.bind(params) if cond.high is not None else None
            if (cond.low is not None and low is None) or (cond.high is not None and high is None):
                return set()  # comparison with NULL matches nothing
            if (isinstance(low, str) or isinstance(high, str)) and not binary:
                return None
            try:
                return set(
                    self.vs.shards_for_range(
                        name,
                        low,
                        high,
                        low_inclusive=cond.low_inclusive,
                        high_inclusive=cond.high_inclusive,
                    )
                )
            except (ValidationError, TypeError):
                return None
        return None

    # ------------------------------------------------------------------ reads

    async def _collations(self, p: Plan, sid: str, tx: Transaction | None) -> list[str | None]:
        """Collations of the sort keys (or MIN/MAX arguments), probed once per plan."""
        specs = p.order if p.aggregates is None else p.aggregates
        if "collations" in p.cache:
            return p.cache["collations"]
        out: list[str | None] = [None] * len(specs)
        probes: list[tuple[int, str]] = []
        for i, s in enumerate(specs):
            if s.collation:
                out[i] = s.collation if s.collation in merge.KNOWN_COLLATIONS else None
            elif s.probe is not None:
                probes.append((i, s.probe))
        if probes and p.probe_from:
            sql = "SELECT " + ",".join(_PROBE.format(e=e, f=p.probe_from) for _, e in probes)
            try:
                r = await self.on_shard(sid, lambda c: c.execute(sql), tx)
                row = r.rows[0]
                for k, (i, _) in enumerate(probes):
                    out[i] = _collation_from_probe(row[2 * k], row[2 * k + 1])
            except DoSQLError:
                return out  # unknown: text comparisons will be refused
        p.cache["collations"] = out
        return out

    async def _any_shard(
        self, first: str, run: Callable[[ShardConnection], Awaitable[ShardResult]]
    ) -> ShardResult:
        """Reference-table read: the first shard that answers (a full copy is everywhere)."""
        order = [first] + [s for s in self.order if s != first]
        error: DoSQLError | None = None
        for sid in order:
            try:
                return await self.on_shard(sid, run, None, retry=True)
            except DoSQLError as exc:
                if exc.code != "SHARD_UNAVAILABLE":
                    raise
                error = error or exc
        assert error is not None
        raise error

    async def run_read(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        if p.route is None:
            return await self.run_gather(p, params, session)
        targets = await self.targets(p, params, session)
        tx = session.tx
        if "colocated" in p.cache and not await self._binary_keys(p.cache["colocated"], tx):
            return await self.run_gather(p, params, session)
        if len(targets) > 1 and p.group is not None:
            try:
                return await self.run_group(p, targets, params, session)
            except (NotSupportedError, QueryError) as exc:
                if p.gather is None:
                    raise
                if not _undecodable(exc):
                    p.group = None  # not exact here after all: gather from now on
                return await self.run_gather(p, params, session)
        if len(targets) > 1 and p.gather is not None and (p.refuse_scatter or p.pushed is None):
            return await self.run_gather(p, params, session)
        if len(targets) > 1 and p.gather is not None and not p.refuse_scatter:
            self.metrics.observe_read(len(targets))
            try:
                return await self._run_pushed(p, targets, params, tx)
            except QueryError as exc:
                if not _undecodable(exc):
                    raise
                # A shard row holds text that is not UTF-8; the merge might drop it (LIMIT,
                # OFFSET, MIN/MAX), where SQLite never reads it out: answer router-side.
                return await self.run_gather(p, params, session)
        self.metrics.observe_read(len(targets))
        if len(targets) == 1:
            run = lambda c: c.execute(p.text, params, timeout_ms=self.query_timeout_ms)  # noqa: E731
            if p.route is not None and p.route.kind == "any" and tx is None:
                return await self._any_shard(targets[0], run)
            return await self.on_shard(targets[0], run, tx, retry=tx is None)
        if p.refuse_scatter:
            raise NotSupportedError(
                f"{p.refuse_scatter} (this statement needs shards {', '.join(targets)})"
            )
        if p.pushed is None:  # whole-statement reads never need several shards
            raise NotSupportedError("this statement cannot be split over several shards")
        return await self._run_pushed(p, targets, params, tx)

    async def _run_pushed(
        self, p: Plan, targets: list[str], params: Any, tx: Transaction | None
    ) -> ShardResult:
        """Scatter ``p.pushed`` and merge: concatenation, k-way ORDER BY, aggregates, LIMIT."""
        assert p.pushed is not None
        limit = merge.as_limit(p.limit.bind(params), "LIMIT") if p.limit else None
        offset = merge.as_limit(p.offset.bind(params), "OFFSET") if p.offset else 0
        sql = p.pushed
        if p.aggregates is None and limit is not None and limit >= 0:
            sql += f" LIMIT {limit + max(offset, 0)}"
        pparams = _select_params(params, p.pushed_params)
        results = await self.parallel(
            targets,
            lambda sid, c: c.execute(sql, pparams, timeout_ms=self.query_timeout_ms),
            tx,
            retry=tx is None,
        )
        first = results[0]
        width = len(first.columns or [])
        out = ShardResult(
            columns=(first.columns or [])[: width - p.n_hidden],
            decltypes=(first.decltypes or [None] * width)[: width - p.n_hidden],
        )
        if p.aggregates is not None:
            colls = await self._collations(p, targets[0], tx)
            partials = [r.rows[0] for r in results]
            rows = [merge.merge_aggregates(partials, p.aggregates, colls, p.n_hidden)]
        elif p.order:
            colls = await self._collations(p, targets[0], tx)
            rows = merge.kway_merge([r.rows for r in results], p.order, colls, p.n_hidden)
            rows = merge.strip_hidden(rows, p.n_hidden)
        else:
            rows = [row for r in results for row in r.rows]
        if limit is not None or offset:
            rows = merge.apply_limit(rows, limit, offset)
        out.rows = rows
        out.rowcount = -1
        return out

    async def _binary_keys(self, names: list[str], tx: Transaction | None) -> bool:
        """Co-located joins compare keys: only exact under BINARY key collations."""
        for name in names:
            if self.vs.table(name).kind != "sharded":
                continue
            info = await self.table_info(name, tx)
            if info is None or info.key_collation != "BINARY":
                return False
        return True

    # ------------------------------------------------------------------ partial aggregation

    async def resolve_group(self, p: Plan, tx: Transaction | None) -> groupby.GroupPlan:
        """``p.group``, re-planned once if a name it read as an alias is a table column.

        SQLite reads a GROUP BY/HAVING name as the column when the table has one of
        that name (the alias only otherwise); the planner does not know the columns.
        """
        g: groupby.GroupPlan = p.group
        if g.shadow and "resolved" not in g.cache:
            assert p.table is not None
            schema = await self.local_schema(p.table, tx)
            names = schema.names | (ROWID_NAMES if schema.has_rowid else frozenset())
            if groupby.needs_columns(g, names):
                st = Statement(p.text)
                g = p.group = groupby.plan(st, st.ast, columns=names)
            g.cache["resolved"] = True
        return g

    async def run_group(
        self, p: Plan, targets: list[str], params: Any, session: ClientSession
    ) -> ShardResult:
        """GROUP BY over several shards: per-shard partials, final step in memory."""
        tx = session.tx
        g = await self.resolve_group(p, tx)
        if "colls" not in g.cache:
            colls: list[str | None] = [None] * len(g.columns)
            probes = [(i, e) for i, e in enumerate(g.probes) if e is not None]
            if probes:
                sql = "SELECT " + ",".join(_PROBE.format(e=e, f=g.from_text) for _, e in probes)
                r = await self.on_shard(targets[0], lambda c: c.execute(sql), tx)
                row = r.rows[0]
                for k, (i, _) in enumerate(probes):
                    coll = _collation_from_probe(row[2 * k], row[2 * k + 1])
                    if coll is None:
                        raise NotSupportedError("unknown collation of a GROUP BY expression")
                    colls[i] = coll
            assert p.table is not None
            schema = await self.local_schema(p.table, tx)
            info = await self.table_info(p.table, tx)
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
        pparams = _select_params(params, g.pushed_params)
        results = await self.parallel(
            targets,
            lambda sid, c: c.execute(g.pushed, pparams, timeout_ms=self.query_timeout_ms),
            tx,
            retry=tx is None,
        )
        self.metrics.observe_read(len(targets))
        partials = [row for r in results for row in r.rows]
        rows = await trio.to_thread.run_sync(
            groupby.run_final,
            g,
            g.cache["colls"],
            partials,
            self.query_timeout_ms,
            g.cache["affinity"],
        )
        return ShardResult(
            columns=list(g.cache["names"]), decltypes=list(g.cache["types"]), rows=rows, rowcount=-1
        )

    # ------------------------------------------------------------------ router-side reads

    async def local_schema(self, name: str, tx: Transaction | None) -> gather.LocalSchema:
        """The DDL and columns of ``name``, read once from a shard that holds it."""
        key = name.lower()
        if tx is None and key in self.local_schemas:
            return self.local_schemas[key]
        table = self.vs.table(name)
        if table.kind == "unsharded":
            sid = table.shard
        elif tx is not None and tx.shards:
            sid = tx.shards[0]
        else:
            sid = next((s for s in self.order if self.pools[s].healthy is not False), self.order[0])

        async def fetch(c: ShardConnection) -> ShardResult:
            ddl = await c.execute(
                "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? COLLATE NOCASE "
                "AND type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type = 'index'",
                [name],
            )
            cols = await c.execute(
                "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)", [name]
            )
            ddl.info = {"cols": cols.rows}
            return ddl

        r = await self.on_shard(sid, fetch, tx, retry=tx is None)
        cols = (r.info or {}).get("cols") or []
        if not r.rows or not cols:
            raise QueryError(f"no such table: {name}", code="TABLE_NOT_FOUND")
        create = r.rows[0][1]
        if str(create).lstrip().upper().startswith("CREATE VIRTUAL"):
            raise NotSupportedError(
                f"virtual table {name} in a statement the router answers by gathering rows"
            )
        pk = [c for c in cols if c[2]]
        rowid_alias = len(pk) == 1 and str(pk[0][1]).upper() == "INTEGER"
        has_rowid = "WITHOUT" not in str(create).upper().split(")")[-1]
        info = gather.LocalSchema(
            ddl=[row[1] for row in r.rows],
            columns=[c[0] for c in cols if not c[3]],
            names=frozenset(str(c[0]).lower() for c in cols),
            rowid_alias=rowid_alias,
            has_rowid=has_rowid,
            names_cased=tuple(str(c[0]) for c in cols),
        )
        if tx is None:
            self.local_schemas[key] = info
        return info

    async def gather_jobs(
        self, p: Plan, params: Any, session: ClientSession, *, raw: bool = False
    ) -> tuple[
        dict[str, gather.LocalSchema], dict[str, list[tuple[int, str, Any]]], list[list[str]]
    ]:
        """Per shard, the fetches of a router-side plan: (ref index, SQL, parameters).

        ``raw``: every column is fetched as two (:func:`gather.raw_columns`), so
        text that is not UTF-8 travels as bytes and is TEXT again in memory.
        """
        g: gather.Gather = p.gather
        tx = session.tx
        schemas: dict[str, gather.LocalSchema] = {}
        for ref in g.refs:
            schemas[ref.name] = await self.local_schema(ref.name, tx)
        jobs: dict[str, list[Any]] = {}
        fetch_cols: list[list[str]] = []
        for i, ref in enumerate(g.refs):
            table = self.vs.table(ref.name)
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
            for sid in await self._gather_targets(ref.name, table, pushed, params, session):
                jobs.setdefault(sid, []).append((i, sql, fparams, head, width))
        return schemas, jobs, fetch_cols

    async def run_gather(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        """Fetch every table the statement reads, run it in an in-memory SQLite.

        The table definitions are cached; DDL through this router clears them. If
        another router changed a table, the first failure refreshes them and retries.
        """
        try:
            return await self._run_gather(p, params, session)
        except (QueryError, NotFoundError) as exc:
            if not self.local_schemas or "no such" not in exc.message:
                raise
            self.local_schemas.clear()
            return await self._run_gather(p, params, session)

    async def _run_gather(
        self, p: Plan, params: Any, session: ClientSession, *, raw: bool = False
    ) -> ShardResult:
        g: gather.Gather = p.gather
        tx = session.tx
        schemas, jobs, fetch_cols = await self.gather_jobs(p, params, session, raw=raw)
        rows: list[list[list[Any]]] = [[] for _ in g.refs]
        self.metrics.observe_read(len(jobs))

        async def per_shard(sid: str, c: ShardConnection) -> ShardResult:
            out = ShardResult()
            got: list[tuple[int, list[Any]]] = []
            todo = jobs[sid]
            for start in range(0, len(todo), _FETCH_BATCH):
                got.extend(await self._fetch_batch(c, todo[start : start + _FETCH_BATCH]))
            out.info = {"got": got}
            return out

        shard_ids = [s for s in self.order if s in jobs]
        try:
            results = await self.parallel(shard_ids, per_shard, tx, retry=tx is None)
        except QueryError as exc:
            if raw or g.tag is not None or not _undecodable(exc):
                raise
            # A stored text is not UTF-8: fetch its bytes; in memory, SQLite reads
            # only the rows the statement needs (fails only if the answer holds one).
            return await self._run_gather(p, params, session, raw=True)
        extra: list[str] = []
        for sid, r in zip(shard_ids, results, strict=True):
            for i, got in (r.info or {})["got"]:
                if g.refs[i].name == g.tag:
                    idx = self.order.index(sid)
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
                cols = [dml.RID_COL, *cols[1:], dml.SHARD_COL]
                extra += [
                    f"ALTER TABLE {gather.quote(ref.name)} ADD COLUMN {dml.RID_COL}",
                    f"ALTER TABLE {gather.quote(ref.name)} ADD COLUMN {dml.SHARD_COL}",
                ]
            data.append((ref.name, cols, rows[i]))
        columns, types, out_rows = await trio.to_thread.run_sync(
            gather.run_local,
            [schemas[ref.name] for ref in g.refs],
            data,
            p.text,
            params,
            self.query_timeout_ms,
            extra + list(g.views),
            None,
            frozenset(ref.name for ref in g.refs) if raw else frozenset(),
        )
        return ShardResult(columns=columns, decltypes=types, rows=out_rows, rowcount=-1)

    async def _fetch_batch(
        self, c: ShardConnection, batch: list[Any]
    ) -> list[tuple[int, list[Any]]]:
        """Several table fetches in one round trip: a UNION ALL tagged by ref index.

        Each branch is padded with NULLs to the widest table; UNION ALL passes
        values through unchanged (no affinity), so every value keeps its type.
        """
        if len(batch) == 1:
            i, sql, fparams, _head, _n = batch[0]
            r = await c.execute(sql, fparams, timeout_ms=self.query_timeout_ms)
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
            timeout_ms=self.query_timeout_ms,
        )
        by: dict[int, list[Any]] = {i: [] for i, *_ in batch}
        widths = {i: n for i, _s, _p, _h, n in batch}
        for row in r.rows:
            i = row[0]
            by[i].append(row[1 : 1 + widths[i]])
        return list(by.items())

    async def _gather_targets(
        self, name: str, table: Any, pushed: list[Any], params: Any, session: ClientSession
    ) -> list[str]:
        if table.kind == "unsharded":
            return [table.shard]
        if table.kind == "reference":
            tx = session.tx
            if tx is not None and tx.shards:
                return [tx.shards[0]]
            return [
                next((s for s in self.order if self.pools[s].healthy is not False), self.order[0])
            ]
        conds = [c for conj in pushed for c in conj.conds]
        if not conds:
            return list(self.order)
        info = await self._learn_column_type(name, session.tx)
        if info is None:
            return list(self.order)
        result = set(self.order)
        for cond in conds:
            shards = self._cond_shards(name, cond, params, info)
            if shards is not None:
                result &= shards
        if not result:
            return [self.order[0]]
        return [s for s in self.order if s in result]

    # ------------------------------------------------------------------ writes

    async def _in_write_tx(
        self,
        session: ClientSession,
        targets: list[str],
        body: Callable[[Transaction | None], Awaitable[Any]],
        *,
        needs_tx: bool = True,
    ) -> Any:
        """Run ``body`` in the session transaction, an implicit one, or none (one shard)."""
        if session.tx is None and (len(targets) == 1 or not needs_tx):
            return await body(None)
        return await self.in_transaction(session, body)

    async def in_transaction(
        self, session: ClientSession, body: Callable[[Transaction], Awaitable[Any]]
    ) -> Any:
        """Run ``body`` in the session transaction, or in an implicit one committed after it.

        A session whose transaction failed never runs anything (the router refuses
        earlier; this guards every other way in).
        """
        session.check_usable()
        if session.tx is not None:
            return await body(session.tx)
        tx = Transaction(self.pools, self.order, explicit=False, atomic=self.atomic_commit)
        try:
            result = await body(tx)
        except BaseException:
            with trio.CancelScope(shield=True):
                await tx.rollback()
            raise
        await tx.commit()
        return result

    async def savepoint(self, session: ClientSession, p: Plan) -> None:
        """SAVEPOINT / RELEASE / ROLLBACK TO on every shard of the router transaction.

        A SAVEPOINT makes every shard join the transaction first, so a later
        ROLLBACK TO also undoes work on shards the transaction had not touched
        yet. Outside a transaction, SAVEPOINT starts one that the RELEASE of that
        savepoint commits (as in SQLite). A RELEASE / ROLLBACK TO that ran on some
        shards but failed on another leaves the shards disagreeing about what the
        transaction holds, so it aborts the transaction (as does any error that
        cost a shard its part).
        """
        session.check_usable()
        name = str(p.table).lower()
        tx = session.tx
        stack: list[tuple[str, bool]] = getattr(tx, "savepoints", []) if tx else []
        if p.tx_op == "savepoint":
            started = tx is None
            if tx is None:
                tx = Transaction(self.pools, self.order, "deferred", atomic=self.atomic_commit)
                session.begin(tx)
            try:
                for sid in self.order:
                    c = await tx.conn(sid)
                    await c.execute(p.text)
            except DoSQLError as exc:
                if started:
                    session.end()
                    with trio.CancelScope(shield=True):
                        await tx.rollback()
                elif tx_aborted_by_shard(exc, tx):
                    await self.abort(session, exc)
                raise
            except BaseException:
                if started:
                    session.end()
                    with trio.CancelScope(shield=True):
                        await tx.rollback()
                raise
            stack.append((name, started))
            tx.savepoints = stack  # type: ignore[attr-defined]
            return
        idx = next((i for i in range(len(stack) - 1, -1, -1) if stack[i][0] == name), None)
        if tx is None or idx is None:
            raise QueryError(f"no such savepoint: {p.table}", code="QUERY_ERROR")
        done = 0
        try:
            for sid in tx.shards:
                await tx.conns[sid].execute(p.text)
                done += 1
        except DoSQLError as exc:
            if done or tx_aborted_by_shard(exc, tx):
                await self.abort(session, exc)
            raise
        if p.tx_op == "rollback_to":
            del stack[idx + 1 :]
            return
        started = stack[idx][1]
        del stack[idx:]
        if started:  # releasing the savepoint that began the transaction commits it
            await session.commit()

    async def abort(self, session: ClientSession, exc: DoSQLError) -> None:
        """An error cost the open transaction: roll it back everywhere, session -> aborted.

        The session stays aborted (every statement refused with
        ``TRANSACTION_ABORTED``) until the client's ROLLBACK, so the application
        cannot mistake a later write or COMMIT for part of the lost transaction.
        """
        tx = session.tx
        if tx is None:
            return
        shards = tx.shards
        with trio.CancelScope(shield=True):
            await tx.rollback()
        exc.message += (
            f"; the transaction was rolled back on every shard it touched ({', '.join(shards)})"
        )
        exc.args = (exc.message,)
        exc.details["transaction_rolled_back"] = True
        session.fail(TxState.ABORTED, exc, shards)

    async def _needs_ids(self, p: Plan, params: Any, session: ClientSession) -> bool:
        """Whether some row of this INSERT may leave its sequence column NULL or out."""
        spec = sequences.spec_for(self, str(p.table))
        if spec is None:
            return False
        info = await self._learn_column_type(str(p.table), session.tx)
        return any(s.missing(params) is not False for s in sequences.slots(p, spec.column, info))

    async def next_ids(self, name: str, n: int, session: ClientSession) -> list[int]:
        """``n`` ids for table ``name`` from its sequence (see dosql/router/sequences.py)."""
        spec = sequences.spec_for(self, name)
        if spec is None:
            raise QueryError(f"table {name} has no sequence", code="QUERY_ERROR")
        return await sequences.next_ids(self, spec, n, session)

    async def run_insert_select(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        """INSERT … SELECT: run the source through the router, then route its rows."""
        assert p.source_sql is not None and p.table is not None and p.insert_sql is not None
        src = self.plan(p.source_sql)
        if src.kind != "read":
            raise NotSupportedError("the source of this INSERT is not a query")
        got = await self.run_read(src, _select_params(params, p.source_params), session)
        name = p.table
        table = self.vs.table(name)
        info = await self._learn_column_type(name, session.tx)
        if p.insert_columns is not None:
            columns = list(p.insert_columns)
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
        spec = sequences.spec_for(self, name) if table.kind == "sharded" else None
        guard = sequences.guarded_column(self, name, info) if table.kind == "sharded" else None
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
                sql = _insert_head(p.insert_sql, name, columns)
            ki = columns.index(key)
            self.seq_ids.observe(spec.sequence, [r[ki] for r in rows_in if r[ki] is not None])
            missing = [r for r in rows_in if r[ki] is None]
            if missing:
                for r, new_id in zip(
                    missing,
                    await sequences.next_ids(self, spec, len(missing), session),
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
                    nullable = name.lower() in self.null_shards and (
                        ki >= 0 or (info is not None and info.defaults.get(key) is None)
                    )
                    if not nullable:
                        raise ValidationError(
                            f"INSERT into {name}: sharding column {key} is NULL; every row needs "
                            "a value for it",
                            code="SHARDING_KEY_NULL",
                            details={"table": name, "column": key},
                        )
                    sid = self.null_shards[name.lower()]
                else:
                    sid = self.vs.shard_for(name, v)
                per_shard.setdefault(sid, []).append(row)
        elif table.kind == "unsharded":
            per_shard[table.shard] = list(got.rows)
        else:
            per_shard = {sid: list(got.rows) for sid in self.order}
        targets = [s for s in self.order if s in per_shard]
        if not targets:
            return ShardResult(columns=[], rowcount=0)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(
                targets, lambda sid, c: c.execute_many(sql, per_shard[sid]), tx, write=True
            )
            out = _combine(results)
            if table.kind == "reference":
                out.rowcount = len(got.rows)
            if assigned is not None:
                out.lastrowid = assigned
            return out

        return await self._in_write_tx(session, targets, body)

    async def run_write(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        if p.source_sql is not None:
            return await self.run_insert_select(p, params, session)
        if p.dml is not None:
            return await dml.run(self, p, params, session)
        targets = await self.targets(p, params, session)
        if len(targets) > 1 and p.refuse_scatter:
            raise NotSupportedError(f"{p.refuse_scatter} (needs shards {', '.join(targets)})")

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(
                targets,
                lambda sid, c: c.execute(p.text, params, timeout_ms=self.query_timeout_ms),
                tx,
                write=True,
            )
            return _combine(results)

        return await self._in_write_tx(session, targets, body, needs_tx=p.needs_tx)

    async def _insert_groups(
        self, p: Plan, params: Any, session: ClientSession
    ) -> dict[str, list[int]]:
        """Row indices of a multi-row INSERT grouped by owning shard (shard order)."""
        name = p.table
        assert name is not None
        info = await self._learn_column_type(name, session.tx)
        router = InsertRouter(p, info, self.vs, self.null_shards)
        groups: dict[str, list[int]] = {}
        for i, (value, _s, _e, _pi) in enumerate(p.insert_rows):
            groups.setdefault(router.shard_of(router.key_of(value), params), []).append(i)
        return {s: groups[s] for s in self.order if s in groups}

    async def run_insert(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        if p.table is not None:  # rows that need ids from a sequence (or refuse without one)
            done = await sequences.run_insert(self, p, params, session)
            if done is not None:
                return done
        groups = await self._insert_groups(p, params, session)
        targets = list(groups)
        if len(targets) == 1:
            texts = {targets[0]: (p.text, params)}
        else:
            texts = {}
            for sid, idxs in groups.items():
                rows = [p.insert_rows[i] for i in idxs]
                sql = (
                    p.text[: p.insert_head]
                    + ", ".join(p.text[s:e] for _, s, e, _ in rows)
                    + p.text[p.insert_tail :]
                )
                if isinstance(params, list | tuple) and params:
                    keep = list(p.cache["head_params"])
                    for _, _, _, pi in rows:
                        keep.extend(pi)
                    keep.extend(p.cache["tail_params"])
                    texts[sid] = (sql, [params[i] for i in keep])
                else:
                    texts[sid] = (sql, params)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(
                targets,
                lambda sid, c: c.execute(
                    texts[sid][0], texts[sid][1], timeout_ms=self.query_timeout_ms
                ),
                tx,
                write=True,
            )
            return _combine(results)

        return await self._in_write_tx(session, targets, body)

    async def run_many(self, p: Plan, seq: list[Any], session: ClientSession) -> ShardResult:
        """executemany: param sets grouped per shard, one ExecuteMany per shard."""
        if p.kind == "read":
            raise QueryError("executemany() can only execute DML statements", code="QUERY_ERROR")

        # general case: one execution per parameter set, in one transaction
        async def loop(tx: Transaction | None) -> ShardResult:
            sub = ClientSession(session.scope)
            sub.tx = tx
            total = ShardResult(rowcount=0)
            for params in seq:
                r = await self.run_plan(p, params, sub)
                total.rowcount += max(r.rowcount, 0)
                total.lastrowid = r.lastrowid
            return total

        if (
            p.kind not in ("write", "insert")
            or (p.kind == "insert" and len(p.insert_rows) != 1)
            or p.route is None
        ):
            return await self._in_write_tx(session, list(self.order), loop)
        per_shard: dict[str, list[Any]] = {}
        sql, last_id = p.text, None
        if p.kind == "insert" and seq:
            # one VALUES row: the table is resolved once, then each set costs a hash
            assert p.table is not None
            info = await self._learn_column_type(p.table, session.tx)
            ided = await sequences.plan_many(self, p, seq, info, session)
            if ided == sequences.LOOP:  # ids only row by row (NULL literal, expression)
                return await self._in_write_tx(session, list(self.order), loop)
            if ided is not None:  # sequence ids filled into the parameter sets
                sql, per_shard, last_id = ided
            else:
                per_shard = InsertRouter(p, info, self.vs, self.null_shards).group(seq)
        elif p.kind != "insert":
            for params in seq:
                for sid in await self.targets(p, params, session):
                    per_shard.setdefault(sid, []).append(params)
        targets = [s for s in self.order if s in per_shard]
        if not targets:
            return ShardResult(rowcount=0)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(
                targets, lambda sid, c: c.execute_many(sql, per_shard[sid]), tx, write=True
            )
            out = _combine(results)
            if last_id is not None:
                out.lastrowid = last_id
            return out

        return await self._in_write_tx(session, targets, body)

    # ------------------------------------------------------------------ DDL

    async def run_ddl(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        if p.ddl_action in ("create_view", "drop_view"):
            return await self._view_ddl(p, session)
        if p.ddl_action == "create_table_as":
            return await self._create_table_as(p, session)
        targets = await self.targets(p, params, session)
        if p.tolerate_missing:
            return await self._drop_index(p, targets, session)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(
                targets, lambda sid, c: c.execute(p.text, params), tx, write=True
            )
            return _combine(results)

        try:
            result = await self._in_write_tx(session, targets, body)
            if p.ddl_action == "create_table" and p.ddl_learn and p.table:
                # after the implicit transaction committed (or inside the client's own)
                await self._learn_table(p, targets[0], session.tx)
            if p.ddl_action == "drop_table" and p.table and p.table.lower() in self.learned:
                await self._forget_table(p.table, session.tx)
            return result
        finally:
            if p.table:
                self.schema.pop(p.table.lower(), None)
            self.local_schemas.clear()
            self.plans.clear()

    async def _create_table_as(self, p: Plan, session: ClientSession) -> ShardResult:
        """CREATE TABLE … AS SELECT: SQLite derives the table in memory from the gathered
        rows (so column names and declared types are exactly SQLite's); the router then
        creates that table (placement by the VSchema) and routes the rows."""
        name = str(p.table)
        if self.vs.has_table(name) or name.lower() in self.views:
            if p.if_exists:
                return ShardResult(columns=[], rowcount=-1)
            raise QueryError(f"table {name} already exists", code="QUERY_ERROR")
        tx = session.tx
        src = Plan("read", p.source_sql or "", gather=p.gather)
        schemas, jobs, fetch_cols = await self.gather_jobs(src, None, session)
        got = await self.parallel(
            [s for s in self.order if s in jobs],
            lambda sid, c: self._fetch_batch(c, jobs[sid]),  # type: ignore[arg-type,return-value]
            tx,
        )
        rows: list[list[Any]] = [[] for _ in p.gather.refs]
        for part in got:
            for i, chunk in part:  # type: ignore[attr-defined]
                rows[i].extend(chunk)
        data = [(ref.name, fetch_cols[i], rows[i]) for i, ref in enumerate(p.gather.refs)]
        ddl, out_rows = await trio.to_thread.run_sync(
            gather.create_as,
            [schemas[ref.name] for ref in p.gather.refs],
            data,
            name,
            p.source_sql,
            list(p.gather.views),
        )
        await self.run_plan(self.plan(ddl), None, session)
        if out_rows:
            width = len(out_rows[0])
            ins = self.plan(f"INSERT INTO {_quote(name)} VALUES ({', '.join('?' * width)})")
            await self.run_many(ins, out_rows, session)
        return ShardResult(columns=[], rowcount=-1)

    async def _view_ddl(self, p: Plan, session: ClientSession) -> ShardResult:
        """Views live in cluster metadata (``view:<name>``); reads of them run router-side."""
        name = str(p.table).lower()
        default = self.vs.default_shard
        conn = await session.tx.conn(default) if session.tx is not None else None
        try:
            if p.ddl_action == "create_view":
                if name in self.views and p.if_exists:
                    return ShardResult(columns=[], rowcount=-1)
                await metadata.store_view(self.pools[default], name, p.text, conn)
                self.views[name] = p.text
            else:
                await metadata.store_view(self.pools[default], name, None, conn)
                self.views.pop(name, None)
        finally:
            self.plans.clear()
        return ShardResult(columns=[], rowcount=-1)

    async def _learn_table(self, p: Plan, sid: str, tx: Transaction | None) -> None:
        name = p.table
        assert name is not None
        self.schema.pop(name.lower(), None)

        async def fetch(c: ShardConnection) -> ShardResult:
            return await c.execute("SELECT name, type, pk FROM pragma_table_info(?)", [name])

        r = await (
            fetch(tx.conns[sid])
            if tx is not None and sid in tx.conns
            else self.pools[sid].run(fetch)
        )
        if not r.rows:
            return
        types = {row[0].lower(): row[1] for row in r.rows}
        if p.ddl_learn == "listed":
            if not self.vs.has_table(name):
                return
            self._record_column_type(self.vs.table(name), types)
            return
        if self.vs.has_table(name):  # CREATE TABLE IF NOT EXISTS of a known table
            return
        if self.vs.default_table == "unsharded":
            table = vschema.unsharded_table(self.vs.default_shard)
        else:
            pk = [row for row in r.rows if row[2]]
            key = sorted(pk, key=lambda x: x[2])[0][0] if pk else r.rows[0][0]
            table = vschema.sharded_table(
                key, vschema.hash_vindex(), column_type=types[key.lower()]
            )
        vs = self.vs.with_table(name, table)
        entry = metadata.table_entry(vs, name)
        if table.kind == "sharded":
            key_row = next(row for row in r.rows if row[0].lower() == str(table.column).lower())
            rowid_alias = (key_row[2] and sum(1 for row in r.rows if row[2]) == 1) and str(
                key_row[1]
            ).upper() == "INTEGER"
            if not rowid_alias:  # the key may be NULL: such rows live on the default shard
                entry[metadata.NULL_SHARD] = self.vs.default_shard
            else:  # the router assigns keys left out, from a sequence
                entry[metadata.SEQUENCE] = True
        default = self.vs.default_shard
        conn = await tx.conn(default, write=True) if tx is not None else None
        await metadata.store(self.pools[default], name.lower(), entry, conn)
        self.learned[name.lower()] = entry
        self.null_shards = metadata.null_shards(self.learned)
        self.sequences = metadata.sequences(self.learned)
        self._set_vs(vs)

    async def _forget_table(self, name: str, tx: Transaction | None) -> None:
        default = self.vs.default_shard
        try:
            conn = await tx.conn(default, write=True) if tx is not None else None
            await metadata.store(self.pools[default], name.lower(), None, conn)
            if name.lower() in self.sequences:
                key = metadata.SEQ_PREFIX + name.lower()
                target = conn or None
                if target is not None:
                    await target.call(lambda rid: protocol.MetaSet(id=rid, key=key, value=None))
                else:
                    await self.pools[default].run(
                        lambda c: c.call(lambda rid: protocol.MetaSet(id=rid, key=key, value=None))
                    )
        finally:
            self.seq_ids.forget(name.lower())
            self.learned.pop(name.lower(), None)
            self.null_shards = metadata.null_shards(self.learned)
            self.sequences = metadata.sequences(self.learned)
            self._set_vs(metadata.overlay(self.base, self.learned))

    async def _drop_index(self, p: Plan, targets: list[str], session: ClientSession) -> ShardResult:
        ok: list[ShardResult] = []
        errors: list[DoSQLError] = []
        for sid in targets:
            try:
                ok.append(
                    await self.on_shard(sid, lambda c: c.execute(p.text), session.tx, write=True)
                )
            except DoSQLError as exc:
                if "no such index" not in exc.message:
                    raise
                errors.append(exc)
        if not ok and not p.if_exists:
            raise errors[0]
        return _combine(ok) if ok else ShardResult(columns=[], rowcount=-1)

    # ------------------------------------------------------------------ entry points

    async def run_plan(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        if p.kind == "read":
            return await self.run_read(p, params, session)
        if p.kind == "insert":
            return await self.run_insert(p, params, session)
        if p.kind == "write":
            return await self.run_write(p, params, session)
        if p.kind == "ddl":
            return await self.run_ddl(p, params, session)
        if p.kind == "noop":
            return ShardResult(columns=[], rowcount=-1)
        if p.kind == "explain":
            return await explain.describe(self, p, params, session)
        raise NotSupportedError(f"plan kind {p.kind} cannot run here")


def _insert_head(head: str, name: str, columns: list[str]) -> str:
    """``INSERT [OR …] INTO name (columns) VALUES (?, …)`` keeping the head's OR clause."""
    words = head.split()
    alt = f" OR {words[2]}" if len(words) > 2 and words[1].upper() == "OR" else ""
    return (
        f"INSERT{alt} INTO {_quote(name)} ({', '.join(_quote(c) for c in columns)}) "
        f"VALUES ({', '.join('?' * len(columns))})"
    )


def _combine(results: list[ShardResult]) -> ShardResult:
    out = ShardResult(rowcount=0)
    counted = False
    for r in results:
        if r.columns and out.columns is None:
            out.columns, out.decltypes = r.columns, r.decltypes
        out.rows.extend(r.rows)
        if r.rowcount >= 0:
            out.rowcount += r.rowcount
            counted = True
        if r.lastrowid is not None:
            out.lastrowid = r.lastrowid
    if not counted:
        out.rowcount = -1
    if out.columns is None:
        out.columns = []
    return out
