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

import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

import vschema
from dosql.errors import DoSQLError, NotSupportedError, QueryError, ValidationError
from dosql.router import merge, metadata
from dosql.router.metrics import RouterMetrics
from dosql.router.plan import Pin, Plan, RangeCond, Value
from dosql.router.planner import plan as make_plan
from dosql.router.pool import ShardConnection, ShardPool, ShardResult
from dosql.router.transactions import ClientSession, Transaction

log = logging.getLogger(__name__)

_PROBE = (
    "(SELECT count(*) FROM (SELECT {e} FROM {f} WHERE 0 UNION SELECT 'a' UNION SELECT 'A')),"
    "(SELECT count(*) FROM (SELECT {e} FROM {f} WHERE 0 UNION SELECT 'a' UNION SELECT 'a '))"
)


def _collation_from_probe(nocase_count: Any, rtrim_count: Any) -> str | None:
    return {(2, 2): "BINARY", (1, 2): "NOCASE", (2, 1): "RTRIM"}.get((nocase_count, rtrim_count))


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class TableInfo:
    columns: list[str]
    types: dict[str, str]
    pk: list[str]
    key_collation: str | None


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
        self.learned = learned
        self._set_vs(metadata.overlay(self.base, learned))
        self.meta_loaded = True

    def plan(self, sql: str) -> Plan:
        p = self.plans.get(sql)
        if p is not None:
            self.metrics.plan_hits.inc()
            return p
        self.metrics.plan_parses.inc()
        try:
            p = make_plan(sql, self.vs)
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
            r = await c.execute("SELECT name, type, pk FROM pragma_table_info(?)", [name])
            if not r.rows:
                return None
            columns = [row[0] for row in r.rows]
            types = {row[0].lower(): row[1] for row in r.rows}
            pk = [row[0] for row in sorted((x for x in r.rows if x[2]), key=lambda x: x[2])]
            coll = None
            if table.kind == "sharded" and table.column:
                probe = "SELECT " + _PROBE.format(e=_quote(table.column), f=_quote(name))
                pr = await c.execute(probe)
                coll = _collation_from_probe(*pr.rows[0])
            return TableInfo(columns, types, pk, coll)

        if tx is not None and sid in tx.conns:
            return await fetch(tx.conns[sid])
        return await self.pools[sid].run(fetch)

    async def _learn_column_type(self, name: str, tx: Transaction | None) -> TableInfo | None:
        info = await self.table_info(name, tx)
        table = self.vs.table(name)
        if info is not None and table.kind == "sharded" and table.column_type is None:
            decl = info.types.get(str(table.column).lower())
            if decl is not None:
                new = vschema.Table(
                    "sharded",
                    column=table.column,
                    vindex=table.vindex,
                    column_type=decl,
                    vindex_name=table.vindex_name,
                )
                self._set_vs(self.vs.with_table(table.name, new))
        return info

    # ------------------------------------------------------------------ shard runs

    async def on_shard(
        self,
        sid: str,
        fn: Callable[[ShardConnection], Awaitable[ShardResult]],
        tx: Transaction | None,
        *,
        retry: bool = False,
    ) -> ShardResult:
        async with self.limiter:
            if tx is not None:
                return await fn(await tx.conn(sid))
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
    ) -> list[ShardResult]:
        if len(shard_ids) == 1:
            sid = shard_ids[0]
            return [await self.on_shard(sid, lambda c: fn(sid, c), tx, retry=retry)]
        results: dict[str, ShardResult] = {}
        errors: dict[str, DoSQLError] = {}

        async def one(sid: str) -> None:
            try:
                results[sid] = await self.on_shard(sid, lambda c: fn(sid, c), tx, retry=retry)
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
        targets = await self.targets(p, params, session)
        self.metrics.observe_read(len(targets))
        tx = session.tx
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
        if session.tx is not None:
            return await body(session.tx)
        if len(targets) == 1 or not needs_tx:
            return await body(None)
        tx = Transaction(self.pools, self.order, explicit=False)
        try:
            result = await body(tx)
        except BaseException:
            with trio.CancelScope(shield=True):
                await tx.rollback()
            raise
        await tx.commit()
        return result

    async def abort(self, session: ClientSession, exc: DoSQLError) -> None:
        tx = session.tx
        if tx is None:
            return
        session.tx = None
        self.metrics.active_tx.dec()
        shards = tx.shards
        with trio.CancelScope(shield=True):
            await tx.rollback()
        exc.message += (
            f"; the transaction was rolled back on every shard it touched ({', '.join(shards)})"
        )
        exc.args = (exc.message,)
        exc.details["transaction_rolled_back"] = True

    async def run_write(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        targets = await self.targets(p, params, session)
        if len(targets) > 1 and p.refuse_scatter:
            raise NotSupportedError(f"{p.refuse_scatter} (needs shards {', '.join(targets)})")

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(
                targets,
                lambda sid, c: c.execute(p.text, params, timeout_ms=self.query_timeout_ms),
                tx,
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
        key_index = p.key_index
        if key_index is None:
            if info is None:
                raise QueryError(f"no such table: {name}", code="TABLE_NOT_FOUND")
            lower = [c.lower() for c in info.columns]
            key_index = lower.index(str(p.key_column).lower())
        groups: dict[str, list[int]] = {}
        for i, (value, _s, _e, _pi) in enumerate(p.insert_rows):
            if p.key_index is None:
                vals = value.const
                if key_index >= len(vals):
                    raise QueryError(
                        f"table {name} has {len(info.columns) if info else '?'} columns but "
                        f"{len(vals)} values were supplied",
                        code="QUERY_ERROR",
                    )
                value = vals[key_index]
                if value is None:
                    raise NotSupportedError(
                        f"the value for sharding column {p.key_column} in an INSERT into {name} "
                        "must be a literal or a parameter"
                    )
            v = value.bind(params)
            if v is None:
                raise ValidationError(
                    f"INSERT into {name}: sharding column {p.key_column} is NULL; every row needs "
                    "a value for it",
                    code="SHARDING_KEY_NULL",
                    details={"table": name, "column": p.key_column},
                )
            groups.setdefault(self.vs.shard_for(name, v), []).append(i)
        return {s: groups[s] for s in self.order if s in groups}

    async def run_insert(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
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
            )
            return _combine(results)

        return await self._in_write_tx(session, targets, body)

    async def run_many(self, p: Plan, seq: list[Any], session: ClientSession) -> ShardResult:
        """executemany: param sets grouped per shard, one ExecuteMany per shard."""
        if p.kind == "read":
            raise QueryError("executemany() can only execute DML statements", code="QUERY_ERROR")
        if p.kind not in ("write", "insert") or (p.kind == "insert" and len(p.insert_rows) != 1):
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

            return await self._in_write_tx(session, list(self.order), loop)
        per_shard: dict[str, list[Any]] = {}
        for params in seq:
            if p.kind == "insert":
                shards = list(await self._insert_groups(p, params, session))
            else:
                shards = await self.targets(p, params, session)
            for sid in shards:
                per_shard.setdefault(sid, []).append(params)
        targets = [s for s in self.order if s in per_shard]
        if not targets:
            return ShardResult(rowcount=0)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(
                targets, lambda sid, c: c.execute_many(p.text, per_shard[sid]), tx
            )
            return _combine(results)

        return await self._in_write_tx(session, targets, body)

    # ------------------------------------------------------------------ DDL

    async def run_ddl(self, p: Plan, params: Any, session: ClientSession) -> ShardResult:
        targets = await self.targets(p, params, session)
        if p.tolerate_missing:
            return await self._drop_index(p, targets, session)

        async def body(tx: Transaction | None) -> ShardResult:
            results = await self.parallel(targets, lambda sid, c: c.execute(p.text, params), tx)
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
            self.plans.clear()

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
            table = self.vs.table(name)
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
        default = self.vs.default_shard
        conn = await tx.conn(default) if tx is not None else None
        await metadata.store(self.pools[default], name.lower(), entry, conn)
        self.learned[name.lower()] = entry
        self._set_vs(vs)

    async def _forget_table(self, name: str, tx: Transaction | None) -> None:
        default = self.vs.default_shard
        try:
            conn = await tx.conn(default) if tx is not None else None
            await metadata.store(self.pools[default], name.lower(), None, conn)
        finally:
            self.learned.pop(name.lower(), None)
            self._set_vs(metadata.overlay(self.base, self.learned))

    async def _drop_index(self, p: Plan, targets: list[str], session: ClientSession) -> ShardResult:
        ok: list[ShardResult] = []
        errors: list[DoSQLError] = []
        for sid in targets:
            try:
                ok.append(await self.on_shard(sid, lambda c: c.execute(p.text), session.tx))
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
        raise NotSupportedError(f"plan kind {p.kind} cannot run here")


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
