"""The router process: the client protocol at "/", observability beside it.

Clients speak exactly what a shard speaks (Execute, ExecuteMany, Begin,
Commit, Rollback, Ping; replies Result chunks, Ok or Error), so the driver
works against either. Each client connection has a :class:`ClientSession`
(its scope and its transaction, in one of the states of
:mod:`dosql.router.session`: idle, open, aborted, outcome_unknown); requests
on one connection run in order. ``Begin`` and ``Commit`` replies carry the
transaction's global id in ``Ok.info["gtid"]`` so a driver that loses the
commit's reply can still name the transaction it must look up.

HTTP beside the protocol: ``/status`` (``transactions``: counts by state and
the oldest one's age), ``/metrics`` (``dosql_active_transactions{state}``) and
``GET /admin/transactions/active`` (every client transaction not idle).

Auth: when tokens are configured the Service refuses WebSocket handshakes
without a valid bearer token; a read-scope connection may read but every
write is refused with ``AuthorizationError(READ_ONLY)`` before anything is
sent to a shard. The router itself talks to shards with the first admin
token of the config.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed

from dosql import logs, protocol
from dosql.config import Config
from dosql.errors import (
    AuthorizationError,
    ConfigurationError,
    DoSQLError,
    NotFoundError,
    QueryError,
    RPCError,
    ValidationError,
)
from dosql.router.engine.base import Operator
from dosql.router.engine.transaction import Savepoint
from dosql.router.engine.transaction import Transaction as TransactionOp
from dosql.router.executor import Executor
from dosql.router.lake import open_lake
from dosql.router.metrics import RouterMetrics
from dosql.router.pool import ShardPool, ShardResult
from dosql.router.resolver import Resolver, transaction_status
from dosql.router.session import FAILED, ClientSession, TxState
from dosql.router.transactions import (
    Transaction,
    no_transaction,
    tx_aborted_by_shard,
)
from dosql.service import Service

log = logging.getLogger(__name__)

# Answered by the router itself (resolver.transaction_status), never sent to a shard.
_TX_STATUS = re.compile(
    r"^\s*SELECT\s+dosql_transaction_status\s*\(\s*(\?|'(?:[^']|'')*')\s*\)\s*;?\s*$",
    re.IGNORECASE,
)


def admin_token(config: Config) -> str | None:
    for token in config.tokens:
        if token.scope == "admin":
            return token.token
    if config.tokens:
        raise ConfigurationError(
            "auth.tokens has no admin token: the router needs one to reach the shards",
            details={"setting": "auth.tokens"},
        )
    return None


METADATA_POLL_S = 1.0  # how often a router looks for other routers' DDL


def _sql(message: Any) -> dict[str, str]:
    """The statement of a request, shortened, for a log line."""
    sql = getattr(message, "sql", None)
    return {"sql": sql[:200]} if isinstance(sql, str) else {}


class Router:
    def __init__(self, config: Config, vs: Any) -> None:
        self.config = config
        self.vs = vs
        for s in vs.shards:
            if not s.address:
                raise ConfigurationError(
                    f'shard {s.id} has no address in the VSchema: set address = "ws://host:port" '
                    "(LocalCluster fills these in)",
                    details={"setting": "vschema.shards"},
                )
        self.token = admin_token(config)
        self.metrics = RouterMetrics()
        self.connections = 0
        self.chunk_rows = config.shard.result_chunk_rows
        self.executor: Executor | None = None
        self.resolver: Resolver | None = None
        # Every live client session, for /status, /admin/transactions/active and
        # dosql_active_transactions{state} (counted when scraped, never drifting).
        self.sessions: set[ClientSession] = set()
        self.metrics.watch_transactions(
            self.transaction_counts, [str(s) for s in TxState if s is not TxState.IDLE]
        )
        self.service = Service(
            "router",
            tokens=config.tokens,
            registry=self.metrics.registry,
            status=self.status,
            deep_health=self.deep_health,
            routes={"/admin/transactions/active": self.active_transactions},
        )

    # ------------------------------------------------------------------ lifecycle

    async def serve(
        self, host: str, port: int, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with trio.open_nursery() as nursery:
            settings = self.vs.settings
            timeout_ms = (
                getattr(settings, "shard_timeout_ms", None) or self.config.router.shard_timeout_ms
            )
            # explicit config/env wins over the VSchema's settings
            if self.config.router.shard_timeout_ms != 10000:
                timeout_ms = self.config.router.shard_timeout_ms
            parallel = (
                getattr(settings, "max_parallel_shards", None)
                or self.config.router.max_parallel_shards
            )
            if self.config.router.max_parallel_shards != 8:
                parallel = self.config.router.max_parallel_shards
            pools = {
                s.id: ShardPool(
                    s.id,
                    _ws_url(s.address),
                    nursery=nursery,
                    token=self.token,
                    timeout_s=timeout_ms / 1000,
                    max_size=self.config.shard.max_message_size,
                )
                for s in self.vs.shards
            }
            self.executor = Executor(
                self.vs,
                pools,
                max_parallel=parallel,
                plan_cache_size=self.config.router.plan_cache_size,
                metrics=self.metrics,
                query_timeout_ms=self.config.router.query_timeout_ms,
            )
            self.executor.seq_block = self.config.router.sequence_block  # sequences
            self.executor.atomic_commit = self.config.router.atomic_commit
            self.executor.query_memory_bytes = self.config.router.query_memory_mb << 20
            self.executor.lake = open_lake(self.config, self.token)
            self.metrics.watch(pools)
            # prepared transactions left without a router
            self.resolver = Resolver(
                pools, interval_s=self.config.router.resolver_interval_ms / 1e3
            )
            self.metrics.watch_transactions(self.resolver.counts, ["prepared", "in_doubt"])
            nursery.start_soon(self.resolver.run)
            nursery.start_soon(self._watch_metadata)
            try:
                await self.executor.load_metadata()
            except DoSQLError as exc:
                log.warning("could not load table metadata yet", extra={"error": str(exc)})
            await nursery.start(
                lambda task_status: self.service.serve(
                    self.handler,
                    host,
                    port,
                    max_size=self.config.shard.max_message_size,
                    task_status=task_status,
                )
            )
            task_status.started(self.service.port)

    # ------------------------------------------------------------------ observability

    def status(self) -> dict[str, Any]:
        ex = self.executor
        pools = ex.pools if ex else {}
        return {
            "shards": [p.status() for p in pools.values()],
            "connections": self.connections,
            "plan_cache": {
                "size": len(ex.plans.plans) if ex else 0,
                "parses": self.metrics.plan_parses._value.get(),
                "hits": self.metrics.plan_hits._value.get(),
            },
            "tables": sorted(ex.vs.tables) if ex else [],
            "learned_tables": sorted(ex.learned) if ex else [],
            # tables refused because the VSchema moved them under their rows (placement.py)
            "blocked_tables": {n: e.message for n, e in ex.blocked.items()} if ex else {},
            "default_shard": self.vs.default_shard,
            "transactions": self.transaction_summary(),
            "two_phase_commit": self.resolver.status() if self.resolver else None,
        }

    def transaction_counts(self) -> dict[str, int]:
        counts = {str(s): 0 for s in TxState}
        for session in list(self.sessions):
            counts[str(session.state)] += 1
        return counts

    def transaction_summary(self) -> dict[str, Any]:
        """Client transactions by state and the oldest one's age (what stays open too long)."""
        now = time.time()
        counts = self.transaction_counts()
        ages = [now - s.began_at for s in list(self.sessions) if s.began_at is not None]
        return {
            "open": counts["open"],
            "aborted": counts["aborted"],
            "outcome_unknown": counts["outcome_unknown"],
            "oldest_age_s": round(max(ages), 3) if ages else None,
        }

    def active_transactions(self) -> dict[str, Any]:
        """``GET /admin/transactions/active``: every client transaction not idle, oldest first."""
        now = time.time()
        rows = [s.describe(now) for s in list(self.sessions) if s.state is not TxState.IDLE]
        rows.sort(key=lambda r: -(r["age_s"] or 0))
        return {"count": len(rows), "transactions": rows}

    async def deep_health(self) -> dict[str, Any]:
        assert self.executor is not None
        out: dict[str, Any] = {}

        async def one(sid: str, pool: ShardPool) -> None:
            out[sid] = await pool.ping()

        async with trio.open_nursery() as n:
            for sid, pool in self.executor.pools.items():
                n.start_soon(one, sid, pool)
        ok = all(v["status"] == "ok" for v in out.values())
        deep: dict[str, Any] = {"shards": out}
        lake = self.executor.lake
        if lake is not None:  # time travel needs it, and a dead lake writer must be seen
            deep["lake"] = await trio.to_thread.run_sync(lake.health)
            ok = ok and deep["lake"]["status"] == "ok"
        if self.executor.blocked:
            deep["blocked_tables"] = sorted(self.executor.blocked)
            ok = False
        return {"status": "ok" if ok else "degraded", **deep}

    # ------------------------------------------------------------------ client protocol

    async def handler(self, ws: Any) -> None:
        session = ClientSession(getattr(ws, "scope", "admin"))
        self.sessions.add(session)
        self.connections += 1
        self.metrics.connections.set(self.connections)
        try:
            while True:
                try:
                    frame = await ws.recv()
                except ConnectionClosed:
                    return
                await self.handle(ws, session, frame)
        except ConnectionClosed:
            return
        finally:
            self.connections -= 1
            self.metrics.connections.set(self.connections)
            tx = session.tx
            session.end()  # a client that goes away ends its transaction, whatever its state
            self.sessions.discard(session)
            if tx is not None:
                with trio.CancelScope(shield=True):
                    await tx.rollback()

    async def send(self, ws: Any, message: protocol.Message) -> None:
        await ws.send(protocol.encode(message))

    async def handle(self, ws: Any, session: ClientSession, frame: Any) -> None:
        try:
            message = protocol.decode(frame)
        except ValidationError as exc:
            rid = protocol.request_id_of(frame) if isinstance(frame, bytes) else None
            self.metrics.errors.labels(exc.code).inc()
            if not session.malformed_logged:  # once per connection: a fuzzer floods no log
                session.malformed_logged = True
                log.info("malformed request", extra={"code": exc.code, "error": exc.message[:300]})
            await self.send(ws, protocol.Error.from_exception(rid, exc))
            return
        rid = getattr(message, "id", None)
        token = logs.trace_id.set(getattr(message, "trace_id", None))
        started = time.perf_counter()
        kind = type(message).__name__.lower()
        try:
            kind = await self.dispatch(ws, session, message) or kind
        except DoSQLError as exc:
            self.metrics.errors.labels(exc.code).inc()
            if exc.code == "TABLE_NOT_FOUND" and session.tx is None:
                # a shard lacks a table this router knows: dropped or altered through
                # another router? The next statement sees the shared metadata again.
                await self._refreshed()
            log.info(
                "request failed",
                extra={"kind": kind, "code": exc.code, "error": exc.message[:300], **_sql(message)},
            )
            await self.send(ws, protocol.Error.from_exception(rid, exc))
        except (ConnectionClosed, trio.Cancelled):
            raise
        except Exception as exc:  # one request never kills the connection or the router
            log.exception("request failed", extra=_sql(message))
            err = DoSQLError(f"internal router error: {exc}", code="INTERNAL")
            self.metrics.errors.labels(err.code).inc()
            await self.send(ws, protocol.Error.from_exception(rid, err))
        finally:
            took = time.perf_counter() - started
            took_ms = took * 1e3
            self.metrics.query_duration.labels(kind).observe(took)
            self.metrics.queries.labels(kind).inc()
            if took_ms > self.config.router.slow_query_ms:
                self.metrics.slow_queries.inc()
                log.warning(
                    "slow query", extra={"kind": kind, "ms": round(took_ms, 1), **_sql(message)}
                )
            logs.trace_id.reset(token)

    async def _plan(self, sql: str) -> Operator:
        ex = self.executor
        assert ex is not None
        if not ex.meta_loaded:
            try:
                await ex.load_metadata()
            except DoSQLError as exc:
                meta_error = exc
            else:
                meta_error = None
        else:
            meta_error = None
        try:
            p = ex.plan(sql)
        except NotFoundError as exc:
            if meta_error is not None:
                raise RPCError(
                    f"{exc.message}; the router could not load table metadata from the default "
                    f"shard {ex.vs.default_shard}: {meta_error.message}",
                    code="SHARD_UNAVAILABLE",
                    details={"shard": ex.vs.default_shard},
                ) from None
            # another router may have created it since this one loaded the metadata
            if not await self._refreshed():
                raise
            p = ex.plan(sql)
        if getattr(p, "learn", None) == "policy" and meta_error is not None:
            raise meta_error
        return p

    async def _watch_metadata(self) -> None:
        """Poll the shared metadata's version: what another router created, altered or
        dropped is seen here within a second even if no statement here misses it."""
        while True:
            await trio.sleep(METADATA_POLL_S)
            if self.executor is not None and self.executor.meta_loaded:
                try:
                    await self.executor.refresh_metadata()
                except DoSQLError as exc:  # the default shard is down: the pool logs it
                    log.debug("metadata poll failed", extra={"error": exc.message})

    async def _refreshed(self) -> bool:
        """Reload the shared table metadata if another router changed it; False if not."""
        assert self.executor is not None
        try:
            return await self.executor.refresh_metadata()
        except DoSQLError as exc:
            log.warning("could not reload table metadata", extra={"error": exc.message})
            return False

    async def tx_status_result(self, asked: re.Match[str], params: Any) -> ShardResult:
        """``SELECT dosql_transaction_status(gtid)``: committed / aborted / in_doubt (resolver.py)."""
        literal = asked.group(1)
        if literal == "?":
            values = list(params.values()) if isinstance(params, dict) else list(params or [])
            gtid = values[0] if len(values) == 1 else None
        else:
            gtid = literal[1:-1].replace("''", "'")
        if not isinstance(gtid, str) or not gtid:
            raise QueryError(
                "dosql_transaction_status() takes one gtid string (from the error's "
                "details['gtid'], or the COMMIT reply's info)",
                code="INVALID_INPUT",
            )
        assert self.executor is not None
        state = await transaction_status(self.executor.pools, gtid)
        return ShardResult(columns=["dosql_transaction_status"], rows=[[state]], rowcount=-1)

    async def dispatch(self, ws: Any, session: ClientSession, m: Any) -> str | None:
        ex = self.executor
        assert ex is not None
        if isinstance(m, protocol.Execute | protocol.ExecuteMany):
            if isinstance(m, protocol.Execute):
                protocol.check_params(m.params)
            else:
                for params in m.seq_params:
                    protocol.check_params(params)
            # asked on any session, a failed one too: it is how the outcome is learned
            asked = _TX_STATUS.match(m.sql) if isinstance(m, protocol.Execute) else None
            if asked is not None:
                await self.send_result(ws, m.id, await self.tx_status_result(asked, m.params))
                return "tx_status"
            if session.failed is not None:
                # Only ROLLBACK gets through a failed transaction; everything else is refused.
                await self._failed_statement(session, m.sql)
                await self.send_result(ws, m.id, ShardResult(columns=[], rowcount=-1))
                return "tx"
            p = await self._plan(m.sql)
            if isinstance(p, Savepoint):
                await p.execute(ex.context(session), None)
                await self.send_result(ws, m.id, ShardResult(columns=[], rowcount=-1))
                return "tx"
            if isinstance(p, TransactionOp):
                await self.transaction(session, p.op, p.mode, sql=True)
                await self.send_result(ws, m.id, ShardResult(columns=[], rowcount=-1))
                return "tx"
            if p.is_write and session.read_only:
                raise AuthorizationError(
                    "this connection has a read-only token: writes are refused", code="READ_ONLY"
                )
            marks = request_marks(session.tx)
            try:
                if isinstance(m, protocol.Execute):
                    result = await ex.run_plan(p, m.params, session, m.timeout_ms)
                else:
                    result = await ex.run_many(p, m.seq_params, session)
            except DoSQLError as exc:
                tx = session.tx
                if tx is not None and (
                    tx_aborted_by_shard(exc, tx) or (p.is_write and partial_write(tx, marks, exc))
                ):
                    await ex.abort(session, exc)  # the transaction lost or half-did a part
                raise
            except Exception as exc:
                if session.tx is None:
                    raise
                # A bug mid-statement: what reached the shards is unknown, so the
                # transaction cannot be trusted any more.
                log.exception("statement failed inside a transaction")
                err = DoSQLError(f"internal router error: {exc}", code="INTERNAL")
                await ex.abort(session, err)
                raise err from exc
            await self.send_result(ws, m.id, result)
            return p.kind
        if isinstance(m, protocol.Begin):
            await self.transaction(session, "begin", m.mode)
            await self.send(ws, protocol.Ok(m.id, info={"gtid": session.gtid}))
            return "tx"
        if isinstance(m, protocol.Commit | protocol.Rollback):
            op = "commit" if isinstance(m, protocol.Commit) else "rollback"
            info = await self.transaction(session, op, "deferred")
            await self.send(ws, protocol.Ok(m.id, info=info))
            return "tx"
        if isinstance(m, protocol.Ping):
            await self.send(ws, protocol.Ok(m.id, info={"service": "router"}))
            return "ping"
        raise ValidationError(
            f"{type(m).__name__} is not a request the router serves: send Execute, ExecuteMany, "
            "Begin, Commit, Rollback or Ping",
            code="INVALID_MESSAGE",
        )

    async def _failed_statement(self, session: ClientSession, sql: str) -> None:
        """A statement on a session whose transaction failed: ROLLBACK ends it, all else fails."""
        assert self.executor is not None
        try:
            p = self.executor.plan(sql)
        except DoSQLError:
            p = None
        if isinstance(p, TransactionOp) and p.op == "rollback":
            await self.transaction(session, "rollback", "deferred", sql=True)
            return
        raise session.failure_error()

    async def transaction(
        self, session: ClientSession, op: str, mode: str, *, sql: bool = False
    ) -> dict[str, Any]:
        """BEGIN / COMMIT / ROLLBACK through the session's state machine; the reply's info.

        In a failed state BEGIN and COMMIT are refused with the failure (a failed
        commit can never be followed by one that returns normally); ROLLBACK
        returns the session to idle. COMMIT / ROLLBACK with nothing open are no-ops
        (``info["noop"]``), or ``TRANSACTION_STATE`` errors as SQL (as in SQLite).
        """
        ex = self.executor
        assert ex is not None
        state = session.state
        if op == "begin":
            session.check_usable()
            if state is TxState.OPEN:
                raise QueryError(
                    "cannot start a transaction within a transaction", code="TRANSACTION_STATE"
                )
            if mode == "immediate" and session.read_only:
                raise AuthorizationError(
                    "BEGIN IMMEDIATE takes write locks: a read-only token may only BEGIN",
                    code="READ_ONLY",
                )
            session.begin(Transaction(ex.pools, ex.order, mode, atomic=ex.atomic_commit))
            return {"gtid": session.gtid}
        if op == "rollback" and state in FAILED:
            info = {"gtid": session.gtid, "ended": str(state)}
            session.end()  # its shards were rolled back (or settled by the commit) already
            return info
        if op == "commit":
            session.check_usable()
        tx = session.tx
        if tx is None:
            if sql:
                raise no_transaction(op)
            return {"noop": True}
        if op == "commit":
            return await session.commit()
        gtid = session.gtid
        session.end()
        await tx.rollback()
        return {"gtid": gtid}

    async def send_result(self, ws: Any, rid: int, r: ShardResult) -> None:
        rows = r.rows
        n = self.chunk_rows
        if len(rows) <= n:
            await self.send(
                ws,
                protocol.Result(
                    id=rid,
                    rows=rows,
                    done=True,
                    columns=r.columns or [],
                    decltypes=r.decltypes,
                    rowcount=r.rowcount,
                    lastrowid=r.lastrowid,
                ),
            )
            return
        for start in range(0, len(rows), n):
            first = start == 0
            done = start + n >= len(rows)
            await self.send(
                ws,
                protocol.Result(
                    id=rid,
                    rows=rows[start : start + n],
                    done=done,
                    columns=(r.columns or []) if first else None,
                    decltypes=r.decltypes if first else None,
                    rowcount=r.rowcount if done else -1,
                    lastrowid=r.lastrowid if done else None,
                ),
            )


def request_marks(tx: Transaction | None) -> dict[str, int]:
    """Each shard session's request counter before a statement (see :func:`partial_write`)."""
    if tx is None:
        return {}
    return {sid: getattr(c, "next_id", 0) for sid, c in tx.conns.items()}


def partial_write(tx: Transaction, marks: dict[str, int], exc: DoSQLError) -> bool:
    """Did a failed write statement leave work behind on a shard other than the failing one?

    A shard undoes its own failed statement, but not the parts other shards
    already ran (a scattered UPDATE, a row moving shards, executemany split per
    shard): the statement is then half applied inside the transaction, which
    SQLite never allows, so the transaction must be aborted rather than left
    open to commit half a statement. A shard that only received the failing
    statement itself costs nothing (SQLite's rule: the transaction stays open).
    """
    failed = exc.details.get("shard")
    touched = {sid for sid, c in tx.conns.items() if getattr(c, "next_id", 0) != marks.get(sid, -1)}
    return bool(touched - {failed})


def _ws_url(address: str) -> str:
    if address.startswith("dosql://"):
        return "ws://" + address[len("dosql://") :]
    return address


async def main(config: Config, host: str, port: int) -> None:
    vs = config.load_vschema()
    router = Router(config, vs)
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            await nursery.start(
                lambda task_status: router.serve(host, port, task_status=task_status)
            )
            async for _sig in signals:
                log.info("stopping on signal")
                nursery.cancel_scope.cancel()
                break
