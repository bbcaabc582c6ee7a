"""One CDC session: a shard streaming its change log over WebSocket ``/cdc``.

Conversation: the shard says :class:`CDCHello`; we answer :class:`CDCWelcome`
with the watermark the lake has committed for it; then each
:class:`ChangeBatch` is answered :class:`BatchAck` (buffered) or
:class:`BatchNack` (``buffer_full`` + ``retry_after_ms``: back off and resend;
``lsn_gap`` + ``expected_lsn``: resend from there; ``invalid``/
``unknown_source``: the batch is wrong). Independently the lake sends
:class:`Committed` whenever a flush moves the shard's committed watermark.

A batch never ends inside a distributed transaction's part (the shard's
streamer extends it to the part's end), so a part is whole once buffered; the
flush holds a part back until its sibling parts from the other participants
have arrived (dolake/distributed.py). A shard such a held-back part waits for is
admitted even when the buffer is full, so the held parts can always complete.

A batch is validated completely before any of it is buffered, so nothing
from a refused batch ever reaches Iceberg. Changes the lake already holds
(``lsn <= received``: a resend after a reconnect) are acknowledged and
skipped. Garbage frames get an :class:`Error` with a code; the session and
the process go on. A hello from a shard database that is not the one the lake
followed (another incarnation, or an LSN that went back: dolake/identity.py)
is answered with an :class:`Error` (``SHARD_IDENTITY_MISMATCH`` /
``SHARD_LSN_BEHIND``) instead of the welcome.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import msgspec
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection

from dolake.buffer import Entry
from dosql import protocol
from dosql.errors import CDCError, DoSQLError, ValidationError

if TYPE_CHECKING:
    from dolake.server import LakeServer

log = logging.getLogger(__name__)


class Session:
    def __init__(self, lake: LakeServer, conn: ServerConnection) -> None:
        self.lake = lake
        self.conn = conn
        self.shard: str | None = None
        self.send_lock = trio.Lock()
        self.announced = -1
        self.closed = False

    async def send(self, msg: protocol.Message) -> None:
        async with self.send_lock:
            await self.conn.send(protocol.encode(msg))

    async def error(self, exc: DoSQLError) -> None:
        self.lake.metrics.cdc_errors.labels(exc.code).inc()
        log.warning("cdc input refused", extra={"code": exc.code, "shard": self.shard})
        await self.send(protocol.Error.from_exception(None, exc))

    async def nack(self, reason: str, message: str, **kw: int) -> None:
        self.lake.metrics.nacks.labels(reason).inc()
        await self.send(protocol.BatchNack(reason=reason, message=message, **kw))  # type: ignore[arg-type]

    async def run(self) -> None:
        try:
            async for frame in self.conn:
                try:
                    msg = protocol.decode(frame)
                except ValidationError as exc:
                    await self.error(exc)
                    continue
                if isinstance(msg, protocol.CDCHello):
                    await self.hello(msg)
                elif isinstance(msg, protocol.ChangeBatch):
                    await self.batch(msg)
                else:
                    await self.error(
                        ValidationError(
                            f"unexpected {type(msg).__name__} on /cdc: send cdc_hello, "
                            "then cdc_batch frames",
                            code="INVALID_MESSAGE",
                        )
                    )
        except ConnectionClosed:
            pass
        finally:
            self.closed = True
            self.lake.detach(self)

    async def hello(self, msg: protocol.CDCHello) -> None:
        if self.shard is not None and msg.shard != self.shard:
            await self.error(
                CDCError(
                    f"this connection already speaks for shard {self.shard!r}; "
                    "open a new connection for another shard",
                    code="UNKNOWN_SOURCE",
                )
            )
            return
        known = self.lake.known_shards
        if known is not None and msg.shard not in known:
            await self.error(
                CDCError(
                    f"unknown shard {msg.shard!r}: the VSchema has " + ", ".join(sorted(known)),
                    code="UNKNOWN_SOURCE",
                )
            )
            return
        refusal = await self.lake.admit(msg)
        if refusal is not None:
            # no welcome, no Committed (self.shard stays unset): the shard purges nothing
            self.lake.metrics.cdc_errors.labels(refusal.code).inc()
            await self.send(protocol.Error.from_exception(None, refusal))
            return
        self.shard = msg.shard
        source = await self.lake.attach(self, msg)
        self.announced = source.committed
        await self.send(protocol.CDCWelcome(committed_lsn=source.committed))

    async def batch(self, msg: protocol.ChangeBatch) -> None:
        lake = self.lake
        if self.shard is None:
            await self.nack("unknown_source", "send cdc_hello before any cdc_batch")
            return
        if msg.shard != self.shard:
            await self.nack(
                "unknown_source",
                f"batch claims shard {msg.shard!r} but this connection said hello as "
                f"{self.shard!r}",
            )
            return
        problem = _validate(msg)
        if problem:
            await self.nack("invalid", problem)
            return
        source = lake.sources[self.shard]
        if msg.last_lsn <= source.received:
            await self.send(protocol.BatchAck(last_lsn=msg.last_lsn))
            return
        if msg.first_lsn > source.received + 1:
            await self.nack(
                "lsn_gap",
                f"batch starts at LSN {msg.first_lsn} but the lake expects "
                f"{source.received + 1}: resend from there",
                expected_lsn=source.received + 1,
            )
            return
        if lake.buffer_full() and self.shard not in lake.awaited:
            # (a shard a held-back distributed transaction waits for is always taken:
            # refusing it would keep the held-back parts in the buffer for good)
            lake.request_flush()
            await self.nack(
                "buffer_full",
                "lake writer buffer is full; back off and resend",
                retry_after_ms=lake.retry_after_ms,
            )
            return
        now = time.time()
        added = 0
        for change in msg.changes:
            if change.lsn <= source.received:
                continue
            size = len(msgspec.msgpack.encode(change))
            buf = lake.buffers.add(change.table.lower(), Entry(self.shard, change, size))
            added += 1
            if buf.events >= lake.config.event_threshold:
                lake.request_flush()
        lake.metrics.events.inc(added)
        if source.oldest_pending_at is None:
            source.oldest_pending_at = now
        source.received = msg.last_lsn
        source.received_ts = max(source.received_ts, msg.changes[-1].commit_ts)
        source.last_batch_at = now
        if lake.buffers.bytes + lake.buffers.in_flight >= lake.config.max_buffer_size:
            lake.request_flush()
        lake.update_gauges()
        await self.send(protocol.BatchAck(last_lsn=msg.last_lsn))

    async def announce(self, lsn: int) -> None:
        if self.closed or self.shard is None or lsn <= self.announced:
            return
        self.announced = lsn
        try:
            await self.send(protocol.Committed(shard=self.shard, lsn=lsn))
        except ConnectionClosed:
            pass


def _validate(msg: protocol.ChangeBatch) -> str | None:
    """Why a batch cannot be buffered, or None."""
    if not msg.changes:
        return "empty batch: send at least one change"
    if msg.changes[0].lsn != msg.first_lsn or msg.changes[-1].lsn != msg.last_lsn:
        return "first_lsn/last_lsn do not match the changes in the batch"
    prev = msg.first_lsn - 1
    for ch in msg.changes:
        if ch.lsn != prev + 1:
            return f"LSNs inside the batch are not contiguous ({prev} then {ch.lsn})"
        prev = ch.lsn
        if not ch.table:
            return f"change at LSN {ch.lsn} has no table name"
        if ch.op == "schema":
            if ch.schema is None:
                return f"schema event at LSN {ch.lsn} carries no schema"
        elif ch.op == "delete":
            if ch.before is None and not ch.key:
                return f"delete at LSN {ch.lsn} has neither before image nor key"
        elif ch.after is None:
            return f"{ch.op} at LSN {ch.lsn} has no after image"
        for image in (ch.before, ch.after):
            for value in (image or {}).values():
                if not isinstance(value, type(None) | int | float | str | bytes):
                    return f"change at LSN {ch.lsn} has a value that is not a SQLite value"
    return None
