"""Time travel through the router: ``FOR SYSTEM_TIME AS OF`` and ``dosql_history()``.

The shards only hold the present; the past lives in the lake (Iceberg mirror
plus change log, read by :mod:`dolake.history`). A statement that names a
historical table is therefore always answered router-side:

1. every historical reference is resolved to a point (timestamp, snapshot,
   or an LSN of the one shard the statement is routed to) and its rows are
   read from the lake -- for a timestamp, after making sure the lake has
   committed everything the shards had committed when the point passed
   (each shard's current LSN, read now that the point is in the past; the
   lake writer is asked to flush and the router waits, bounded by the query
   timeout, else ``LAKE_BEHIND``);
2. every current table the statement also reads is fetched through the
   router's own shard execution (the normal plan path, so routing and open
   transactions behave as usual);
3. all of them are loaded into a per-query in-memory SQLite, each created
   from its CREATE TABLE text (a historical table from the definition it had
   at the point when the change log has it, renamed; else the current one when
   the columns agree; else one derived from the lake's column list), and the
   statement, with each historical reference replaced by its loaded table
   (:func:`dosql.timetravel.strip`, which keeps the original name as alias),
   runs there.

``INSERT INTO t … SELECT … FROM h FOR SYSTEM_TIME AS OF …`` runs the SELECT
that way and inserts the rows through the router. History is read-only:
writing to a historical table is refused by the parser.

Two table functions complete the picture: ``dosql_history('t')`` lists the
table's lake snapshots (:func:`dolake.history.history_rows`), and
``dosql_table_sql('t'[, 'timestamp'])`` gives the table's ``CREATE TABLE``
text as of a point (one row, column ``sql``) -- what ``dosql restore-table``
needs to recreate a dropped table under a new name.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from sqlglot import exp

from dosql import protocol
from dosql import timetravel as tt
from dosql.errors import (
    AuthorizationError,
    ConfigurationError,
    DoSQLError,
    NotSupportedError,
    QueryError,
    ValidationError,
)
from dosql.router import gather
from dosql.router.engine.route import Route
from dosql.router.engine.sharded_read import ShardedRead
from dosql.router.pool import ShardResult
from dosql.timetravel.dialect import HISTORY_FUNCTION
from dosql.timetravel.points import LsnPoint, SnapshotPoint, TimestampPoint, format_micros

log = logging.getLogger(__name__)

_MARKERS = ("system_time", HISTORY_FUNCTION, "dosql_table_sql")
DDL_FUNCTION = "dosql_table_sql"
_CACHE_SIZE = 256
_INSERT_BATCH = 500


@dataclass(frozen=True)
class Temporal:
    """A parsed statement that reads history (cached per statement text)."""

    tree: exp.Expression
    refs: tuple[tt.TemporalRef, ...]
    hists: tuple[tt.HistoryRef, ...]
    ddls: tuple[exp.Table, ...] = ()


_cache: OrderedDict[str, Temporal | None] = OrderedDict()


def detect(sql: str) -> Temporal | None:
    """The statement's historical references, or None for an ordinary statement.

    Only statements whose text mentions SYSTEM_TIME or one of the table
    functions are parsed (in the DoSQLite dialect); everything else goes the
    normal way untouched. Errors of a statement that does read history
    (malformed timestamp, write to a historical table) are raised here.
    """
    low = sql.lower()
    if not any(m in low for m in _MARKERS):
        return None
    if sql in _cache:
        _cache.move_to_end(sql)
        return _cache[sql]
    tree = tt.parse(sql)
    refs = tuple(tt.temporal_refs(tree))
    hists = tuple(tt.history_refs(tree))
    ddls = tuple(_ddl_tables(tree))
    found = Temporal(tree, refs, hists, ddls) if refs or hists or ddls else None
    _cache[sql] = found
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return found


def _ddl_tables(tree: exp.Expression) -> list[exp.Table]:
    return [
        t
        for t in tree.find_all(exp.Table, bfs=False)
        if isinstance(t.this, exp.Anonymous) and t.this.name.lower() == DDL_FUNCTION
    ]


# --------------------------------------------------------------------------- the lake


class Lake:
    """The router's handle on the lake: catalog (opened lazily) and writer URL."""

    def __init__(self, config: Any, token: str | None) -> None:
        self.config = config
        self.token = token
        self.url = config.lake.url or None
        self.namespace = config.lake.namespace or "default"
        self._catalog: Any = None

    def catalog(self) -> Any:
        if self._catalog is None:
            from dolake.catalog import open_catalog

            source = getattr(self.config, "source", None)
            data_dir = Path(source).resolve().parent if source else Path.cwd()
            self._catalog = open_catalog(self.config.lake, data_dir)
        return self._catalog

    def flush(self, table: str, timeout_s: float) -> None:
        """Ask the lake writer to commit ``table``'s buffered changes (and wait).

        Failures are logged, not raised: the caller keeps waiting for coverage
        and, past its bound, reports LAKE_BEHIND with how far behind the lake is.
        """
        if not self.url:
            return
        from dolake.flush_cli import flush

        try:
            # every table, not just ``table``: a shard's LSNs cover all its tables, and the
            # lake's global watermark only passes a change once its own table has committed
            flush(self.url, table=None, wait=True, token=self.token, timeout=max(timeout_s, 0.1))
        except DoSQLError as exc:
            log.warning("lake flush failed", extra={"table": table, "error": str(exc)})
            time.sleep(min(0.2, max(timeout_s, 0.0)))


def lake_of(router: Any) -> Lake:
    lake = getattr(router, "_timetravel_lake", None)
    if lake is None:
        if not router.config.lake.url and not router.config.lake.catalog_uri:
            raise ConfigurationError(
                "time travel reads the lake, and this router has no [lake] section "
                "(lake.url / lake.catalog_uri): run the lake writer (LocalCluster(lake=True))",
                code="MISSING_CONFIG",
            )
        lake = Lake(router.config, getattr(router, "token", None))
        router._timetravel_lake = lake
    return lake


# --------------------------------------------------------------------------- tables in memory


@dataclass
class MemTable:
    """One table of the in-memory database: how to create it, and its rows."""

    name: str  # name in memory
    ddl: list[str]  # statements that create it under ``name``
    columns: list[str]
    rows: list[Sequence[Any]] = field(default_factory=list)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _derived_ddl(name: str, columns: list[tuple[str, str]], pk: list[str]) -> str:
    cols = [f"{_q(c)} {decl}".rstrip() for c, decl in columns]
    if pk:
        cols.append(f"PRIMARY KEY ({', '.join(_q(c) for c in pk)})")
    return f"CREATE TABLE {_q(name)} ({', '.join(cols)})"


def _historical_definition(catalog: Any, namespace: str, table: str, micros: int | None) -> Any:
    """``(create_sql | None, [(column, decltype)], primary key)`` of ``table`` as of
    ``micros`` (None: latest) from the lake: the last CREATE TABLE in the change
    log at or before the point when no ALTER followed it, and the lake's column
    list and primary key (which a caller can always fall back to)."""
    import json

    import pyarrow as pa
    from pyiceberg.expressions import EqualTo

    from dolake.history import load_tables
    from dolake.schema import OVERFLOW, SCHEMA_ACTION, SCHEMA_SQL

    mirror, changelog = load_tables(catalog, namespace, table)
    props = mirror.properties
    pk = list(json.loads(props.get("dosql.primary_key", "[]")))
    decl = {n: d for n, d, _dropped in json.loads(props.get("dosql.columns", "[]"))}
    columns = [
        (f.name, decl.get(f.name, "") or "")
        for f in mirror.schema().fields
        if not f.name.startswith("_dosql_")
    ]
    create: str | None = None
    if changelog.current_snapshot() is not None:
        data = changelog.scan(
            row_filter=EqualTo("_op", "schema"),
            selected_fields=("_commit_ts", "_lsn", OVERFLOW),
        ).to_arrow()
        events = []
        stamps = data["_commit_ts"].cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
        for ts, lsn, raw in zip(
            stamps, data["_lsn"].to_pylist(), data[OVERFLOW].to_pylist(), strict=True
        ):
            try:
                ev = json.loads(raw) if raw else {}
            except ValueError:
                ev = {}
            events.append((ts, lsn, ev.get(SCHEMA_ACTION), ev.get(SCHEMA_SQL)))
        events.sort(key=lambda e: (e[0], e[1]))
        for ts, _lsn, action, sql in events:
            if micros is not None and ts > micros:
                break
            if action == "create" and sql and sql.lstrip().upper().startswith("CREATE TABLE"):
                create = sql
            elif action in ("alter", "drop"):
                create = None if action == "alter" else create
    return create, columns, pk


def _lake_ddl(catalog: Any, namespace: str, table: str, micros: int | None) -> str:
    """The CREATE TABLE text of ``table`` as of ``micros``, under its own name."""
    create, columns, pk = _historical_definition(catalog, namespace, table, micros)
    return create or _derived_ddl(table, columns, pk)


def _renamed(create: str, original: str, name: str) -> list[str]:
    """Create under the original name, then rename: no DDL text is rewritten."""
    return [create, f"ALTER TABLE {_q(original)} RENAME TO {_q(name)}"]


def _original_name(create: str, fallback: str) -> str:
    """The table name a CREATE TABLE statement creates (for the rename)."""
    try:
        tree = tt.parse(create)
    except DoSQLError:
        return fallback
    table = tree.find(exp.Table)
    return table.name if table is not None and table.name else fallback


def run_memory(
    tables: list[MemTable], sql: str, params: Any, timeout_ms: int | None
) -> tuple[list[str], list[str | None] | None, list[list[Any]]]:
    """Create and fill ``tables`` in a fresh in-memory SQLite, run ``sql`` there."""
    data = [(t.name, t.columns, list(t.rows)) for t in tables]
    return gather.run_local(tables, data, sql, params, timeout_ms)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- execution


def _now_us() -> int:
    return time.time_ns() // 1000


class TimeTravel:
    """One temporal statement's execution against a router."""

    def __init__(
        self, router: Any, session: Any, t: Temporal, params: Any, timeout_ms: int | None = None
    ) -> None:
        self.router = router
        self.ex = router.executor
        self.session = session
        self.t = t
        self.params = params
        self.timeout_ms = self.ex.query_timeout_ms or 30000
        if timeout_ms:
            self.timeout_ms = min(self.timeout_ms, timeout_ms)
        # waiting for the lake ends early enough to answer before the client gives up
        self.wait_s = max(0.2, self.timeout_ms / 1000 * 0.8 - 0.2)

    @property
    def vs(self) -> Any:
        return self.ex.vs

    async def run(self) -> ShardResult:
        tree = self.t.tree
        if isinstance(tree, exp.Insert) and isinstance(tree.expression, exp.Query):
            return await self._insert_select()
        if not isinstance(tree, exp.Query):
            raise NotSupportedError(
                "only SELECT (and INSERT … SELECT) can read FOR SYSTEM_TIME AS OF / "
                "dosql_history(); history is read-only"
            )
        columns, types, rows = await self.select(tree)
        return ShardResult(columns=columns, decltypes=types, rows=rows, rowcount=-1)

    # ------------------------------------------------------------------ SELECT

    async def select(
        self, tree: exp.Expression
    ) -> tuple[list[str], list[str | None] | None, list[list[Any]]]:
        t = self.t
        lake = lake_of(self.router)
        tables: list[MemTable] = []
        rename: dict[int, str] = {}
        lsn_shard = None
        if any(r.kind == "lsn" for r in t.refs):
            lsn_shard = await self._single_shard()
        for ref in t.refs:
            name = f"__dosql_asof_{ref.index}"
            rename[ref.index] = name
            tables.append(await self._historical(lake, ref, name, lsn_shard))
        listing: dict[int, str] = {}
        for h in t.hists:
            name = f"__dosql_history_{h.index}"
            listing[h.index] = name
            table = h.table_name(self.params).lower()
            cols, rows = await self._lake_call(lake, _history_rows, table)
            tables.append(
                MemTable(name, [_derived_ddl(name, [(c, "") for c in cols], [])], cols, rows)
            )
        stripped = tt.strip(tree, rename, history=listing)
        for i, node in enumerate(_ddl_tables(stripped)):
            name = f"__dosql_table_sql_{i}"
            tables.append(await self._ddl_table(lake, node, name))
            alias = node.args.get("alias") or exp.TableAlias(
                this=exp.to_identifier(DDL_FUNCTION, quoted=True)
            )
            node.set("this", exp.to_identifier(name, quoted=True))
            node.set("alias", alias)
        memory_names = {m.name.lower() for m in tables}
        for live in self._live_tables(stripped, memory_names):
            tables.append(await self._live(live))
        sql = stripped.sql(dialect=tt.DIALECT)
        bind = tt.remaining_params(self.params, [*t.refs, *t.hists])
        return await trio.to_thread.run_sync(
            run_memory,
            tables,
            sql,
            list(bind) if isinstance(bind, tuple) else bind,
            self.timeout_ms,
        )

    async def _lake_call(self, lake: Lake, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(catalog, namespace, *args)`` in a worker thread (pyiceberg blocks)."""

        def call() -> Any:
            return fn(lake.catalog(), lake.namespace, *args, **kwargs)

        return await trio.to_thread.run_sync(call)

    def _table_kind(self, table: str) -> Any:
        try:
            return self.vs.table(table)
        except DoSQLError:
            return None

    def _shards_of(self, table: str) -> list[str]:
        vt = self._table_kind(table)
        if vt is None or vt.kind == "sharded":
            return list(self.vs.shard_ids)
        if vt.kind == "unsharded":
            return [vt.shard]
        return [self.vs.shard_ids[0]]

    async def _current_lsns(self, shards: list[str]) -> dict[str, int]:
        out: dict[str, int] = {}

        async def one(sid: str) -> None:
            r = await self.ex.pools[sid].run(lambda c: c.call(lambda rid: protocol.LsnInfo(rid)))
            out[sid] = int((r.info or {}).get("current_lsn", 0))

        async with trio.open_nursery() as n:
            for sid in shards:
                n.start_soon(one, sid)
        return out

    async def _wait(self, lake: Lake, table: str, required: dict[str, int]) -> None:
        from dolake import history

        deadline = time.monotonic() + self.wait_s
        await self._lake_call(
            lake,
            history.wait_covered,
            table,
            required,
            lambda: lake.flush(table, deadline - time.monotonic()),
            timeout_s=self.wait_s,
        )

    async def _covered_at(self, lake: Lake, table: str, micros: int | None) -> dict[str, int]:
        """Make sure the lake holds every change of ``table`` committed at or before
        ``micros`` (None: now); returns the per-shard LSNs it was checked against."""
        now = _now_us()
        if micros is not None and micros > now:
            raise ValidationError(
                f"{format_micros(micros)} is in the future ({(micros - now) // 1000} ms from "
                "now): FOR SYSTEM_TIME AS OF reads the past; for the current rows leave the "
                "clause out",
                code="INVALID_INPUT",
                details={"ahead_ms": (micros - now) // 1000},
            )
        # read after the point has passed: every change committed by then is at or below
        required = await self._current_lsns(self._shards_of(table))
        await self._wait(lake, table, required)
        return required

    async def _historical(
        self, lake: Lake, ref: tt.TemporalRef, name: str, lsn_shard: str | None
    ) -> MemTable:
        from dolake import history

        table = ref.table.lower()
        point = ref.point(self.params, shard=lsn_shard)
        vt = self._table_kind(table)
        reference = self.vs.shard_ids[0] if vt is not None and vt.kind == "reference" else None
        kwargs: dict[str, Any] = {"reference_shard": reference}
        micros: int | None = None
        if isinstance(point, TimestampPoint):
            kwargs["required"] = await self._covered_at(lake, table, point.micros)
            micros = point.micros
        elif isinstance(point, LsnPoint):
            assert point.shard is not None
            current = (await self._current_lsns([point.shard]))[point.shard]
            if point.lsn > current:
                raise ValidationError(
                    f"LSN {point.lsn} of {point.shard} is in the future (its current LSN is "
                    f"{current})",
                    code="INVALID_INPUT",
                    details={"current_lsn": current},
                )
            await self._wait(lake, table, {point.shard: point.lsn})
        cols, rows = await self._lake_call(lake, history.rows_as_of, table, point, **kwargs)
        if isinstance(point, SnapshotPoint):
            micros = None
        ddl = await self._historical_ddl(lake, table, cols, micros, name)
        return MemTable(name, ddl, cols, rows)

    async def _historical_ddl(
        self, lake: Lake, table: str, cols: list[str], micros: int | None, name: str
    ) -> list[str]:
        create, columns, pk = await self._lake_call(lake, _historical_definition, table, micros)
        wanted = {c.lower() for c in cols}
        if create is not None and _create_columns(create) == wanted:
            return _renamed(create, _original_name(create, table), name)
        try:
            live = await self.ex.local_schema(table, self.session.tx)
        except DoSQLError:
            live = None
        if live is not None and {c.lower() for c in live.columns} == wanted:
            return _renamed(live.ddl[0], _original_name(live.ddl[0], table), name)
        decl = dict(columns)
        return [_derived_ddl(name, [(c, decl.get(c, "")) for c in cols], pk)]

    async def _ddl_table(self, lake: Lake, node: exp.Table, name: str) -> MemTable:
        """``dosql_table_sql('t'[, 'timestamp'])``: one row with the CREATE TABLE."""
        values: list[Any] = []
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
        await self._covered_at(lake, values[0].lower(), micros)
        ddl = await self._lake_call(lake, _lake_ddl, values[0].lower(), micros)
        return MemTable(name, [f"CREATE TABLE {_q(name)} (sql TEXT)"], ["sql"], [(ddl,)])

    def _live_tables(self, tree: exp.Expression, memory: set[str]) -> list[str]:
        ctes = {str(c.alias).lower() for c in tree.find_all(exp.CTE)}
        out: dict[str, str] = {}
        for table in tree.find_all(exp.Table):
            if not isinstance(table.this, exp.Identifier):
                continue  # table-valued functions run in memory as they are
            low = table.name.lower()
            if low in memory or low in ctes or low in out:
                continue
            out[low] = table.name
        return list(out.values())

    async def _live(self, name: str) -> MemTable:
        schema = await self.ex.local_schema(name, self.session.tx)
        cols = list(schema.columns)
        sql = f"SELECT {', '.join(_q(c) for c in cols)} FROM {_q(name)}"
        p = self.ex.plan(sql)
        r = await self.ex.run_plan(p, None, self.session)
        # every index of the live table goes with it (index names stay unique:
        # historical tables are created without theirs)
        return MemTable(name, list(schema.ddl), cols, r.rows)

    async def _single_shard(self) -> str:
        """The one shard the statement is routed to (for ``AS OF LSN``)."""
        refuse = NotSupportedError(
            "FOR SYSTEM_TIME AS OF LSN needs a statement routed to exactly one shard (an LSN "
            "is a position in one shard's change log, e.g. WHERE <sharding column> = value); "
            "use FOR SYSTEM_TIME AS OF TIMESTAMP '…' for a statement over several shards"
        )
        t = self.t
        plain = tt.strip(t.tree, {r.index: r.table for r in t.refs})
        try:
            p = self.ex.plan(plain.sql(dialect=tt.DIALECT))
        except DoSQLError:
            raise refuse from None
        route = p.route if isinstance(p, ShardedRead) else p if isinstance(p, Route) else None
        if route is None:
            raise refuse
        bind = tt.remaining_params(self.params, [*t.refs, *t.hists])
        targets = await route.targets(self.ex.context(self.session), bind)
        if len(targets) != 1:
            raise NotSupportedError(
                f"{refuse.message} (this statement reads shards {', '.join(targets)})"
            )
        if route.routing.kind == "any":
            return self.vs.shard_ids[0]  # reference tables: the shard that feeds the mirror
        return targets[0]

    # ------------------------------------------------------------------ INSERT … SELECT

    async def _insert_select(self) -> ShardResult:
        tree = self.t.tree
        if self.session.read_only:
            raise AuthorizationError(
                "this connection has a read-only token: writes are refused", code="READ_ONLY"
            )
        if tree.args.get("with_") or tree.args.get("with") or tree.args.get("returning"):
            raise NotSupportedError(
                "INSERT … SELECT from history supports neither WITH nor RETURNING: "
                "select the rows, then insert them"
            )
        _, _, rows = await self.select(tree.expression)
        if not rows:
            return ShardResult(columns=[], rowcount=0)
        width = len(rows[0])
        insert = tree.copy()
        insert.set(
            "expression",
            exp.Values(
                expressions=[exp.Tuple(expressions=[exp.Placeholder() for _ in range(width)])]
            ),
        )
        sql = insert.sql(dialect=tt.DIALECT)
        p = self.ex.plan(sql)
        total = 0
        for start in range(0, len(rows), _INSERT_BATCH):
            r = await self.ex.run_many(p, rows[start : start + _INSERT_BATCH], self.session)
            total += max(r.rowcount, 0)
        return ShardResult(columns=[], rowcount=total)


def _history_rows(catalog: Any, namespace: str, table: str) -> tuple[list[str], list[tuple]]:
    from dolake import history

    return history.history_rows(catalog, namespace, table)


def _create_columns(create: str) -> set[str]:
    """Lower-case column names a CREATE TABLE text defines."""
    try:
        tree = tt.parse(create)
    except DoSQLError:
        return set()
    schema = tree.find(exp.Schema)
    if schema is None:
        return set()
    return {c.name.lower() for c in schema.expressions if isinstance(c, exp.ColumnDef) and c.name}


async def execute(router: Any, session: Any, t: Temporal, message: Any) -> ShardResult:
    """Run one temporal Execute request (the router's hook calls this)."""
    if isinstance(message, protocol.ExecuteMany):
        raise NotSupportedError(
            "executemany() cannot read history: run the statement once per parameter set"
        )
    params = message.params
    if isinstance(params, Mapping):
        params = dict(params)
    try:
        return await TimeTravel(router, session, t, params, message.timeout_ms).run()
    except KeyError as exc:  # strip(): a reference the router did not load
        raise QueryError(
            f"cannot resolve historical reference: {exc}", code="QUERY_ERROR"
        ) from None
    except DoSQLError as exc:
        from dosql.router.transactions import tx_aborted_by_shard

        if session.tx is not None and tx_aborted_by_shard(exc, session.tx):
            await router.executor.abort(session, exc)  # a shard lost its part, as normally
        raise
