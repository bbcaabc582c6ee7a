"""The router process: the client protocol at "/", observability beside it.

Clients speak exactly what a shard speaks (Execute, ExecuteMany, Begin,
Commit, Rollback, Ping; replies Result chunks, Ok or Error), so the driver
works against either. Each client connection has a :class:`ClientSession`
(its scope and open transaction); requests on one connection run in order.

Auth: when tokens are configured the Service refuses WebSocket handshakes
without a valid bearer token; a read-scope connection may read but every
write is refused with ``AuthorizationError(READ_ONLY)`` before anything is
sent to a shard. The router itself talks to shards with the first admin
token of the config.
"""

from __future__ import annotations

import logging
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
from dosql.router.executor import Executor
from dosql.router.metrics import RouterMetrics
from dosql.router.plan import Plan
from dosql.router.pool import ShardPool, ShardResult
from dosql.router.transactions import (
    ClientSession,
    Transaction,
    no_transaction,
    tx_aborted_by_shard,
)
from dosql.service import Service

log = logging.getLogger(__name__)


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
        self.service = Service(
            "router",
            tokens=config.tokens,
            registry=self.metrics.registry,
            status=self.status,
            deep_health=self.deep_health,
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
            self.metrics.watch(pools)
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
            "default_shard": self.vs.default_shard,
        }

    async def deep_health(self) -> dict[str, Any]:
        assert self.executor is not None
        out: dict[str, Any] = {}

        async def one(sid: str, pool: ShardPool) -> None:
            out[sid] = await pool.ping()

        async with trio.open_nursery() as n:
            for sid, pool in self.executor.pools.items():
                n.start_soon(one, sid, pool)
        ok = all(v["status"] == "ok" for v in out.values())
        return {"status": "ok" if ok else "degraded", "shards": out}

    # ------------------------------------------------------------------ client protocol

    async def handler(self, ws: Any) -> None:
        session = ClientSession(getattr(ws, "scope", "admin"))
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
            if session.tx is not None:
                tx, session.tx = session.tx, None
                self.metrics.active_tx.dec()
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
            await self.send(ws, protocol.Error.from_exception(rid, exc))
        except (ConnectionClosed, trio.Cancelled):
            raise
        except Exception as exc:  # one request never kills the connection or the router
            log.exception("request failed")
            err = DoSQLError(f"internal router error: {exc}", code="INTERNAL")
            self.metrics.errors.labels(err.code).inc()
            await self.send(ws, protocol.Error.from_exception(rid, err))
        finally:
            self.metrics.query_duration.labels(kind).observe((time.perf_counter() - started) * 1e3)
            self.metrics.queries.labels(kind).inc()
            logs.trace_id.reset(token)

    async def _plan(self, sql: str) -> Plan:
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
            raise
        if p.ddl_learn == "policy" and meta_error is not None:
            raise meta_error
        return p

    async def dispatch(self, ws: Any, session: ClientSession, m: Any) -> str | None:
        ex = self.executor
        assert ex is not None
        if isinstance(m, protocol.Execute | protocol.ExecuteMany):
            if isinstance(m, protocol.Execute):
                protocol.check_params(m.params)
            else:
                for params in m.seq_params:
                    protocol.check_params(params)
            from dosql.router import timetravel  # FOR SYSTEM_TIME / dosql_history(): the lake

            temporal = timetravel.detect(m.sql)
            if temporal is not None:
                result = await timetravel.execute(self, session, temporal, m)
                await self.send_result(ws, m.id, result)
                return "timetravel"
            p = await self._plan(m.sql)
            if p.kind == "tx" and p.tx_op in ("savepoint", "release", "rollback_to"):
                had = session.tx is not None
                await ex.savepoint(session, p)
                self.metrics.active_tx.inc((session.tx is not None) - had)
                await self.send_result(ws, m.id, ShardResult(columns=[], rowcount=-1))
                return "tx"
            if p.kind == "tx":
                await self.transaction(session, p.tx_op, p.tx_mode, sql=True)  # type: ignore[arg-type]
                await self.send_result(ws, m.id, ShardResult(columns=[], rowcount=-1))
                return "tx"
            if p.is_write and session.read_only:
                raise AuthorizationError(
                    "this connection has a read-only token: writes are refused", code="READ_ONLY"
                )
            try:
                if isinstance(m, protocol.Execute):
                    result = await ex.run_plan(p, m.params, session)
                else:
                    result = await ex.run_many(p, m.seq_params, session)
            except DoSQLError as exc:
                if session.tx is not None and tx_aborted_by_shard(exc, session.tx):
                    await ex.abort(session, exc)  # a shard lost its part: roll back everywhere
                raise
            await self.send_result(ws, m.id, result)
            return p.kind
        if isinstance(m, protocol.Begin):
            await self.transaction(session, "begin", m.mode)
            await self.send(ws, protocol.Ok(m.id))
            return "tx"
        if isinstance(m, protocol.Commit | protocol.Rollback):
            op = "commit" if isinstance(m, protocol.Commit) else "rollback"
            had = session.tx is not None
            await self.transaction(session, op, "deferred")
            await self.send(ws, protocol.Ok(m.id, info={} if had else {"noop": True}))
            return "tx"
        if isinstance(m, protocol.Ping):
            await self.send(ws, protocol.Ok(m.id, info={"service": "router"}))
            return "ping"
        raise ValidationError(
            f"{type(m).__name__} is not a request the router serves: send Execute, ExecuteMany, "
            "Begin, Commit, Rollback or Ping",
            code="INVALID_MESSAGE",
        )

    async def transaction(
        self, session: ClientSession, op: str, mode: str, *, sql: bool = False
    ) -> None:
        ex = self.executor
        assert ex is not None
        if op == "begin":
            if session.tx is not None:
                raise QueryError(
                    "cannot start a transaction within a transaction", code="TRANSACTION_STATE"
                )
            if mode == "immediate" and session.read_only:
                raise AuthorizationError(
                    "BEGIN IMMEDIATE takes write locks: a read-only token may only BEGIN",
                    code="READ_ONLY",
                )
            session.tx = Transaction(ex.pools, ex.order, mode)
            self.metrics.active_tx.inc()
            return
        tx = session.tx
        if tx is None:
            if sql:
                raise no_transaction(op)
            return
        session.tx = None
        self.metrics.active_tx.dec()
        if op == "commit":
            await tx.commit()
        else:
            await tx.rollback()

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
