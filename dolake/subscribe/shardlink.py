"""One subscriber's WebSocket connection to one shard (dosql.protocol, msgpack).

Requests go one at a time (a lock serialises them, since the shard answers a
connection's requests in order), so the change follower, the lag monitor and
snapshot reads can share the connection. Errors from the shard come back as
the typed exception they carry; a dead connection is RPCError
``SHARD_UNAVAILABLE``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.trio.client import connect

from dosql import protocol
from dosql.errors import RPCError

REPLY_TIMEOUT_S = 60.0


def unavailable(shard: str, why: str) -> RPCError:
    return RPCError(
        f"shard {shard} is unavailable ({why}); resume later from your last position",
        code="SHARD_UNAVAILABLE",
        details={"shard": shard},
    )


class ShardLink:
    def __init__(self, shard: str, url: str, token: str | None) -> None:
        self.shard = shard
        self.url = url
        self.token = token
        self.ws: Any = None
        self.lock = trio.Lock()
        self.ids = itertools.count(1)
        self.current_lsn = 0
        self.oldest_lsn = 0

    async def open(self, stack: AsyncExitStack) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            self.ws = await stack.enter_async_context(
                connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,
                    max_size=None,
                    open_timeout=10,
                    proxy=None,
                    close_timeout=2,
                )
            )
        except InvalidStatus as exc:
            raise unavailable(self.shard, f"HTTP {exc.response.status_code}") from None
        except (OSError, TimeoutError, InvalidHandshake, trio.TooSlowError) as exc:
            raise unavailable(self.shard, str(exc) or type(exc).__name__) from None

    async def _send(self, message: protocol.Message) -> None:
        try:
            await self.ws.send(protocol.encode(message))
        except ConnectionClosed:
            raise unavailable(self.shard, "connection closed") from None

    async def _recv(self) -> Any:
        try:
            with trio.fail_after(REPLY_TIMEOUT_S):
                reply = protocol.decode(await self.ws.recv())
        except ConnectionClosed:
            raise unavailable(self.shard, "connection closed") from None
        except trio.TooSlowError:
            raise unavailable(self.shard, "no reply") from None
        if isinstance(reply, protocol.Error):
            raise reply.to_exception()
        return reply

    async def request(self, message_of: Any) -> Any:
        """Send ``message_of(id)`` and return its single reply (Ok, Changes or a done Result)."""
        async with self.lock:
            return await self.exchange(message_of(next(self.ids)))

    async def exchange(self, message: protocol.Message) -> Any:
        """One request/reply without taking the lock (the caller holds it)."""
        await self._send(message)
        reply = await self._recv()
        while isinstance(reply, protocol.Result) and not reply.done:
            reply = await self._recv()  # callers expect small results
        return reply

    def next_id(self) -> int:
        return next(self.ids)

    async def lsn_info(self) -> tuple[int, int]:
        reply = await self.request(lambda i: protocol.LsnInfo(i))
        self.current_lsn = max(self.current_lsn, int(reply.info["current_lsn"]))
        self.oldest_lsn = int(reply.info["oldest_lsn"])
        return self.current_lsn, self.oldest_lsn

    async def read_changes(self, from_lsn: int, limit: int) -> protocol.Changes:
        reply = await self.request(lambda i: protocol.ReadChanges(i, from_lsn, limit))
        self.current_lsn = max(self.current_lsn, reply.current_lsn)
        self.oldest_lsn = reply.oldest_lsn
        return reply

    async def query(self, sql: str, params: list[Any] | None = None) -> list[list[Any]]:
        """Rows of a (small) query."""
        async with self.lock:
            await self._send(protocol.Execute(next(self.ids), sql, params))
            rows: list[list[Any]] = []
            while True:
                reply = await self._recv()
                rows.extend(reply.rows)
                if reply.done:
                    return rows

    async def stream(self, sql: str) -> AsyncIterator[tuple[list[str], list[list[Any]]]]:
        """(columns, rows) chunks of a query as the shard sends them (the caller holds
        the lock: a snapshot keeps the link for its whole read transaction)."""
        await self._send(protocol.Execute(next(self.ids), sql))
        columns: list[str] = []
        while True:
            reply = await self._recv()
            if reply.columns is not None:
                columns = reply.columns
            yield columns, reply.rows
            if reply.done:
                return
