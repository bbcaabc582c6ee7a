"""The shard side of CDC: stream the change log to the lake writer, forever.

``run()`` connects to ``<lake_url>/cdc``, says hello, learns from the welcome
the watermark the lake has committed for this shard, and streams the change
log from the next LSN in LSN order, one batch in flight at a time. It keeps
no state of its own: after any reconnect (its own restart, the lake's, a
dropped connection) it resumes from the lake's committed watermark, and the
lake skips what it already has -- so nothing is lost or duplicated.

- Batches: whatever is available up to ``CDC_BATCH_SIZE`` changes, extended
  to the end of a distributed transaction's part the limit would split (a batch
  never splits one: the lake takes a batch's end for the end of the parts in it), is
  sent at once (low latency, so a flush right after a write sees it); when the log is
  drained the streamer waits for a new change, re-checking at least every
  ``CDC_BATCH_TIMEOUT_MS``.
- ``buffer_full`` nack: back off (``retry_after_ms``, at least
  ``CDC_RETRY_DELAY_MS``, doubling with jitter) and resend the same changes;
  never drop. Connection failures back off the same way.
- ``Committed(lsn)``: ``changelog.release(lsn)`` -- the shard may purge.
- A hello refused with ``SHARD_IDENTITY_MISMATCH`` / ``SHARD_LSN_BEHIND``: the
  lake followed another incarnation of this shard's database, or has committed
  past what this database ever had (it was lost and recreated). Nothing is
  released (the lake never says Committed, so nothing is purged); the refusal is
  logged as an error, shown in :class:`StreamStatus` (the shard's ``/status``
  and ``/health/deep``), and the hello retried with backoff: the operator may
  restore the database, after which the next hello is welcomed.
- The lake's watermark below the oldest LSN the shard still has means
  changes were purged that the lake never committed: data loss. That is
  logged as an error and streaming stops rather than skipping the hole.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.trio.client import connect

from dosql import protocol
from dosql.config import CDCConfig
from dosql.errors import CDCError, ValidationError

log = logging.getLogger(__name__)

REPLY_TIMEOUT_S = 120.0
MAX_BACKOFF_MS = 10_000


# Hello refusals: the lake will not follow this database (see dolake/identity.py).
REFUSALS = frozenset({"SHARD_IDENTITY_MISMATCH", "SHARD_LSN_BEHIND"})


class DataLoss(CDCError):
    pass


class Refused(CDCError):
    """The lake refused this shard's hello: its database is not the one the lake followed."""


@dataclass
class StreamStatus:
    """What the streamer is doing, for the shard's ``/status`` and ``/health/deep``."""

    state: str = "connecting"  # connecting | streaming | refused | stopped
    committed_lsn: int | None = None  # the lake's, from the last welcome
    refused: dict[str, Any] | None = None  # code, message, at (UTC seconds), attempts

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "committed_lsn": self.committed_lsn, "refused": self.refused}


def backoff_ms(base_ms: int, attempt: int) -> float:
    """Exponential backoff with full jitter in [delay/2, delay]."""
    delay = min(MAX_BACKOFF_MS, base_ms * (2 ** min(attempt, 16)))
    return delay / 2 + random.random() * delay / 2


async def run(
    changelog: Any,
    *,
    shard_id: str,
    lake_url: str,
    cdc: CDCConfig,
    token: str | None = None,
    incarnation: str = "",
    status: StreamStatus | None = None,
) -> None:
    """Stream ``changelog`` to the lake writer until cancelled (or data loss)."""
    url = lake_url.replace("dolake://", "ws://").rstrip("/") + "/cdc"
    status = status if status is not None else StreamStatus()
    attempt = 0
    while True:
        streamer = _Stream(changelog, shard_id, url, cdc, token, incarnation, status)
        try:
            try:
                await streamer.session()
            except BaseExceptionGroup as group:
                raise _first(group) from None
        except Refused as exc:
            attempts = (status.refused or {}).get("attempts", 0) + 1
            status.state = "refused"
            status.refused = {
                "code": exc.code,
                "message": exc.message,
                "at": time.time(),
                "attempts": attempts,
            }
            log.error(
                "CDC REFUSED by the lake: this shard's database is not the one the lake "
                "followed; nothing is streamed or purged until it is resolved (retrying)",
                extra={"shard": shard_id, "code": exc.code, "error": exc.message},
            )
        except DataLoss as exc:
            status.state = "stopped"
            log.error(
                "CDC DATA LOSS: streaming stopped; the lake needs the missing changes "
                "restored (or a re-seed) before it can resume",
                extra={"shard": shard_id, "error": str(exc)},
            )
            return
        except InvalidURI:
            log.error("invalid lake url; CDC disabled", extra={"url": url})
            return
        except Exception as exc:  # any failure: reconnect and resume from the watermark
            expected = (OSError, ConnectionClosed, InvalidHandshake, CDCError, ValidationError)
            log.log(
                logging.WARNING if isinstance(exc, expected) else logging.ERROR,
                "CDC connection to the lake failed; retrying",
                extra={"shard": shard_id, "url": url, "error": f"{type(exc).__name__}: {exc}"},
            )
        attempt = 0 if streamer.welcomed else attempt + 1
        await trio.sleep(backoff_ms(cdc.retry_delay_ms, attempt) / 1000)


class _Stream:
    def __init__(
        self,
        changelog: Any,
        shard: str,
        url: str,
        cdc: CDCConfig,
        token: str | None,
        incarnation: str = "",
        status: StreamStatus | None = None,
    ) -> None:
        self.changelog = changelog
        self.shard = shard
        self.url = url
        self.cdc = cdc
        self.token = token
        self.incarnation = incarnation
        self.status = status if status is not None else StreamStatus()
        self.welcomed = False
        self.replies: trio.MemorySendChannel[Any]
        self.reply_rx: trio.MemoryReceiveChannel[Any]
        self.replies, self.reply_rx = trio.open_memory_channel(16)

    async def session(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        async with connect(
            self.url, additional_headers=headers, max_size=None, compression=None
        ) as ws:
            current = await trio.to_thread.run_sync(self.changelog.current_lsn)
            oldest = await trio.to_thread.run_sync(self.changelog.oldest_lsn)
            await ws.send(
                protocol.encode(
                    protocol.CDCHello(
                        shard=self.shard,
                        current_lsn=current,
                        oldest_lsn=oldest,
                        token=self.token,
                        incarnation=self.incarnation,
                    )
                )
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.reader, ws)
                welcome = await self.reply()
                if isinstance(welcome, protocol.Error) and welcome.code in REFUSALS:
                    raise Refused(welcome.message, code=welcome.code, details=welcome.details)
                if not isinstance(welcome, protocol.CDCWelcome):
                    raise CDCError(f"lake answered hello with {welcome!r}")
                committed = welcome.committed_lsn
                self.welcomed = True
                self.status.state, self.status.refused = "streaming", None
                self.status.committed_lsn = committed
                log.info("CDC connected", extra={"shard": self.shard, "committed_lsn": committed})
                if committed + 1 < oldest:
                    raise DataLoss(
                        f"the lake has committed through LSN {committed} but this shard's "
                        f"change log starts at {oldest}: LSNs {committed + 1}..{oldest - 1} "
                        "are gone",
                        code="CDC_ERROR",
                    )
                if committed > 0:
                    await self.release(committed)
                await self.stream(ws, committed + 1)
                nursery.cancel_scope.cancel()

    async def reader(self, ws: Any) -> None:
        """Dispatch lake frames: Committed -> release; everything else -> replies."""
        try:
            async for frame in ws:
                msg = protocol.decode(frame)
                if isinstance(msg, protocol.Committed):
                    if msg.shard == self.shard:
                        self.status.committed_lsn = msg.lsn
                        await self.release(msg.lsn)
                    continue
                await self.replies.send(msg)
        finally:
            await self.replies.aclose()

    async def release(self, lsn: int) -> None:
        """Let the shard purge what the lake committed; a failure (e.g. the
        database is busy) only delays the purge until the next announcement."""
        try:
            await trio.to_thread.run_sync(self.changelog.release, lsn)
        except Exception as exc:
            log.warning(
                "could not release committed changes; will retry on the next commit",
                extra={"shard": self.shard, "lsn": lsn, "error": f"{type(exc).__name__}: {exc}"},
            )

    async def reply(self) -> Any:
        with trio.fail_after(REPLY_TIMEOUT_S):
            try:
                return await self.reply_rx.receive()
            except trio.EndOfChannel:
                raise CDCError("the lake closed the CDC connection") from None

    def read(self, next_lsn: int) -> list[Any]:
        """The next batch, never ending inside a distributed transaction's part: the
        lake holds a distributed transaction back until every participant's part has
        arrived, and takes a part as whole once a batch holding it ended."""
        read_batch = getattr(self.changelog, "read_batch", None)
        if read_batch is not None:
            return read_batch(next_lsn, self.cdc.batch_size)
        return self.changelog.read(next_lsn, self.cdc.batch_size)  # a log without the method

    async def stream(self, ws: Any, next_lsn: int) -> None:
        attempt = 0
        wait_s = self.cdc.batch_timeout_ms / 1000
        while True:
            changes = await trio.to_thread.run_sync(self.read, next_lsn)
            if not changes:
                with trio.move_on_after(wait_s):
                    await self.changelog.wait_for_change(next_lsn - 1)
                continue
            if changes[0].lsn != next_lsn:
                oldest = await trio.to_thread.run_sync(self.changelog.oldest_lsn)
                if changes[0].lsn > next_lsn and next_lsn < oldest:
                    raise DataLoss(
                        f"LSN {next_lsn} is needed by the lake but the change log starts at "
                        f"{oldest}",
                        code="CDC_ERROR",
                    )
            batch = protocol.ChangeBatch(
                shard=self.shard,
                first_lsn=changes[0].lsn,
                last_lsn=changes[-1].lsn,
                changes=changes,
            )
            await ws.send(protocol.encode(batch))
            reply = await self.reply()
            if isinstance(reply, protocol.BatchAck):
                next_lsn = max(next_lsn, reply.last_lsn + 1)
                attempt = 0
                continue
            if isinstance(reply, protocol.BatchNack):
                if reply.reason == "lsn_gap" and reply.expected_lsn is not None:
                    stuck = reply.expected_lsn == next_lsn  # we sent from there already
                    next_lsn = reply.expected_lsn
                    if not stuck:
                        continue
                    log.error(
                        "the lake expects an LSN this shard's change log does not return",
                        extra={"shard": self.shard, "expected_lsn": reply.expected_lsn},
                    )
                delay = max(reply.retry_after_ms, backoff_ms(self.cdc.retry_delay_ms, attempt))
                attempt += 1
                level = logging.DEBUG if reply.reason == "buffer_full" else logging.ERROR
                log.log(
                    level,
                    "CDC batch refused; backing off",
                    extra={"shard": self.shard, "reason": reply.reason, "detail": reply.message},
                )
                await trio.sleep(delay / 1000)
                continue
            if isinstance(reply, protocol.Error):
                raise reply.to_exception()
            raise CDCError(f"unexpected reply from the lake: {reply!r}")


def _first(group: BaseExceptionGroup) -> BaseException:
    """The meaningful error inside a nursery's exception group."""
    leaves: list[BaseException] = []

    def walk(exc: BaseException) -> None:
        if isinstance(exc, BaseExceptionGroup):
            for inner in exc.exceptions:
                walk(inner)
        else:
            leaves.append(exc)

    walk(group)
    for exc in leaves:
        if not isinstance(exc, trio.Cancelled):
            return exc
    return leaves[0] if leaves else group
