"""WebSocket connections from the router to its shards.

Each shard has a :class:`ShardPool` of idle connections; a shard connection
runs one request at a time, so parallelism comes from several connections.
Connections are opened on demand. When a shard cannot be reached the pool
remembers it for a short, growing backoff (0.2 s up to 2 s): queries needing
it fail fast with ``RPCError(SHARD_UNAVAILABLE)`` naming the shard instead of
each waiting on a connect, and the first query after the backoff tries
again — so a shard restarted at the same address is used again without
restarting the router.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State
from websockets.trio.client import ClientConnection, connect

from dosql import logs, protocol
from dosql.errors import AuthorizationError, DoSQLError, RPCError, TimeoutError_

BACKOFF_MIN = 0.2
BACKOFF_MAX = 2.0
MAX_IDLE = 8


log = logging.getLogger(__name__)


@dataclass
class ShardResult:
    columns: list[str] | None = None
    decltypes: list[str | None] | None = None
    rows: list[list[Any]] = field(default_factory=list)
    rowcount: int = -1
    lastrowid: int | None = None
    info: dict[str, Any] | None = None  # Ok replies


def unavailable(shard_id: str, url: str, why: str) -> RPCError:
    return RPCError(
        f"shard {shard_id} ({url}) is unavailable: {why}",
        code="SHARD_UNAVAILABLE",
        details={"shard": shard_id},
    )


class ShardConnection:
    """One WebSocket to a shard; requests strictly one at a time."""

    def __init__(self, pool: ShardPool, ws: ClientConnection) -> None:
        self.pool = pool
        self.ws = ws
        self.next_id = 1
        self.broken = False

    @property
    def usable(self) -> bool:
        return not self.broken and self.ws.state is State.OPEN

    async def call(self, make: Any, timeout_s: float | None = None) -> ShardResult:
        """Send ``make(id)`` and gather its reply; errors come back raised."""
        rid = self.next_id
        self.next_id += 1
        msg = make(rid)
        timeout_s = self.pool.timeout_s if timeout_s is None else timeout_s
        started = time.perf_counter()
        result = ShardResult()
        settled = False  # the reply was read completely (or the request failed cleanly)
        try:
            with trio.fail_after(timeout_s):
                await self.ws.send(protocol.encode(msg))
                while True:
                    reply = protocol.decode(await self.ws.recv())
                    if getattr(reply, "id", None) != rid:
                        continue
                    if isinstance(reply, protocol.Error):
                        settled = True
                        raise _with_shard(reply.to_exception(), self.pool.shard_id)
                    if isinstance(reply, protocol.Ok):
                        result.info = reply.info
                        settled = True
                        break
                    if isinstance(reply, protocol.Result):
                        if reply.columns is not None and result.columns is None:
                            result.columns = reply.columns
                            result.decltypes = reply.decltypes
                        result.rows.extend(reply.rows)
                        if reply.done:
                            result.rowcount = reply.rowcount
                            result.lastrowid = reply.lastrowid
                            settled = True
                            break
                        continue
                    raise RPCError(
                        f"shard {self.pool.shard_id} answered an unexpected {type(reply).__name__}",
                        code="RPC_ERROR",
                    )
        except trio.TooSlowError:
            self.broken = True
            raise TimeoutError_(
                f"shard {self.pool.shard_id} did not answer within {timeout_s * 1000:.0f} ms "
                "(SHARD_TIMEOUT_MS)",
                code="TIMEOUT",
                details={"shard": self.pool.shard_id},
            ) from None
        except (ConnectionClosed, OSError, trio.BrokenResourceError, trio.ClosedResourceError) as e:
            self.broken = True
            self.pool.lost(f"connection lost ({type(e).__name__})")
            exc = unavailable(self.pool.shard_id, self.pool.url, "the connection was lost")
            exc.details["lost"] = True
            raise exc from None
        finally:
            self.pool.observe(time.perf_counter() - started)
            if not settled and not self.broken:
                self.broken = True
        return result

    async def execute(
        self, sql: str, params: Any = None, *, timeout_ms: int | None = None
    ) -> ShardResult:
        trace = logs.trace_id.get()
        return await self.call(
            lambda rid: protocol.Execute(
                id=rid, sql=sql, params=params, timeout_ms=timeout_ms, trace_id=trace
            )
        )

    async def execute_many(self, sql: str, seq: list[Any]) -> ShardResult:
        trace = logs.trace_id.get()
        return await self.call(
            lambda rid: protocol.ExecuteMany(id=rid, sql=sql, seq_params=seq, trace_id=trace)
        )


def _with_shard(exc: DoSQLError, shard_id: str) -> DoSQLError:
    exc.details.setdefault("shard", shard_id)
    return exc


class ShardPool:
    """Idle connections to one shard, plus its health as last seen."""

    def __init__(
        self,
        shard_id: str,
        url: str,
        *,
        nursery: trio.Nursery,
        token: str | None,
        timeout_s: float,
        max_size: int,
    ) -> None:
        self.shard_id = shard_id
        self.url = url
        self.nursery = nursery
        self.token = token
        self.timeout_s = timeout_s
        self.max_size = max_size
        self.idle: list[ShardConnection] = []
        self.in_use = 0
        self.healthy: bool | None = None  # None: never tried
        self.last_error: str | None = None
        self.down_until = 0.0
        self.backoff = BACKOFF_MIN
        self.latencies: deque[float] = deque(maxlen=1000)  # seconds, newest last
        # set by RouterMetrics.watch: the per-shard request-duration histogram
        self.on_latency: Callable[[float], None] | None = None

    def observe(self, seconds: float) -> None:
        """One request's time, kept for /status's p99 and fed to the histogram."""
        self.latencies.append(seconds)
        if self.on_latency is not None:
            self.on_latency(seconds)

    def p99(self) -> float:
        """p99 of the last 1000 requests, in seconds."""
        if not self.latencies:
            return 0.0
        values = sorted(self.latencies)
        return values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)]

    def _unhealthy(self, why: str) -> None:
        """Record the shard as down; log the transition (once, not per failed request)."""
        if self.healthy is not False:
            log.warning(
                "shard unreachable", extra={"shard": self.shard_id, "url": self.url, "error": why}
            )
        self.healthy = False
        self.last_error = why

    def lost(self, why: str) -> None:
        """A connection in use broke: drop the idle ones too (likely stale), no backoff."""
        self._unhealthy(why)
        for conn in self.idle:
            conn.broken = True
            self.nursery.start_soon(_close, conn.ws)
        self.idle.clear()

    def mark_down(self, why: str) -> None:
        self._unhealthy(why)
        self.down_until = time.monotonic() + self.backoff
        self.backoff = min(self.backoff * 2, BACKOFF_MAX)
        for conn in self.idle:
            conn.broken = True
            self.nursery.start_soon(_close, conn.ws)
        self.idle.clear()

    async def acquire(self) -> ShardConnection:
        while self.idle:
            conn = self.idle.pop()
            if conn.usable:
                self.in_use += 1
                return conn
            self.nursery.start_soon(_close, conn.ws)
        now = time.monotonic()
        if now < self.down_until:
            raise unavailable(
                self.shard_id,
                self.url,
                f"{self.last_error}; retrying in {self.down_until - now:.1f}s",
            )
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            client = connect(
                self.url,
                additional_headers=headers,
                compression=None,
                open_timeout=min(self.timeout_s, 5.0),
                max_size=self.max_size,
                proxy=None,
                ping_interval=20,
                ping_timeout=60,
                close_timeout=2,
            )
            ws = await client.connect(self.nursery)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthorizationError(
                    f"shard {self.shard_id} refused the router's token (HTTP {status}): "
                    "configure an admin token in [auth] tokens",
                    code="PERMISSION_DENIED",
                ) from None
            self.mark_down(f"handshake refused with HTTP {status}")
            raise unavailable(self.shard_id, self.url, f"HTTP {status}") from None
        except (OSError, TimeoutError, InvalidHandshake, trio.TooSlowError) as exc:
            why = str(exc) or type(exc).__name__
            self.mark_down(why)
            raise unavailable(self.shard_id, self.url, why) from None
        if self.healthy is False:
            log.warning("shard reachable again", extra={"shard": self.shard_id, "url": self.url})
        self.healthy = True
        self.last_error = None
        self.backoff = BACKOFF_MIN
        self.down_until = 0.0
        self.in_use += 1
        return ShardConnection(self, ws)

    def release(self, conn: ShardConnection) -> None:
        self.in_use -= 1
        if conn.usable and len(self.idle) < MAX_IDLE:
            self.idle.append(conn)
        else:
            self.nursery.start_soon(_close, conn.ws)

    async def run(self, fn: Any) -> Any:
        """Run ``await fn(conn)`` on a pooled connection."""
        conn = await self.acquire()
        try:
            return await fn(conn)
        finally:
            self.release(conn)

    async def ping(self, timeout_s: float = 2.0) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            await self.run(lambda c: c.call(lambda rid: protocol.Ping(id=rid), timeout_s))
        except DoSQLError as exc:
            return {"status": "down", "error": str(exc)}
        return {"status": "ok", "latency_ms": round((time.perf_counter() - started) * 1000, 2)}

    def status(self) -> dict[str, Any]:
        return {
            "id": self.shard_id,
            "address": self.url,
            "healthy": self.healthy,
            "last_error": self.last_error,
            "connections": {"idle": len(self.idle), "in_use": self.in_use},
            "latency_p99_ms": round(self.p99() * 1000, 3),
        }

    async def aclose(self) -> None:
        for conn in self.idle:
            await _close(conn.ws)
        self.idle.clear()


async def _close(ws: ClientConnection) -> None:
    with trio.move_on_after(2):
        try:
            await ws.aclose()
        except Exception:
            pass
