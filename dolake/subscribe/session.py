"""One subscriber: parse its request, pull each shard's change log, send JSON events.

Tasks of a session (one trio nursery):

- one **follower per shard** pulls the shard's change log (``ReadChanges``
  from its position + 1) and turns changes into events; when the shard no
  longer retains the next LSN the changes come from the lake
  (:mod:`dolake.subscribe.history`) up to the lake's committed watermark,
  then the follower continues on the shard's log from there;
- the **sender** writes queued events to the WebSocket. The queue is bounded
  (``Limits.queue_size``): when the subscriber reads slowly the followers
  block on it and stop pulling, so the shard's retained log (and the lake)
  is the buffer, not this process's memory;
- the **monitor** compares what was sent with each shard's head; a
  subscriber more than ``max_lag`` changes behind for ``grace_s`` seconds is
  sent ``SUBSCRIBER_TOO_SLOW`` (with the position it can resume from) and
  disconnected -- never silently skipped;
- a **heartbeat** carries the current position every ``heartbeat_s``.

Order: per shard, events are queued strictly in LSN order; ``position`` on
every event is the per-shard vector at that point, so resuming from it
yields exactly what follows. A transaction's changes are contiguous in its
shard's LSN order, so its commit marker is queued as soon as the next change
has another txid, or the follower has read to the end of the log.

Distributed transactions (see :mod:`dolake.subscribe.dtx`): a follower that
reaches its shard's part of one collects the whole part and waits for the
sibling parts; the parts are queued together, under ``order_lock`` (which
every queuing of an event takes, so nothing from another shard comes in
between), in an order a per-key consumer can follow, with positions that name
the LSNs delivered out of LSN order.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed

from dolake.subscribe import debezium, dtx, events, history, position, request
from dolake.subscribe.context import SubscribeContext
from dolake.subscribe.request import Subscription
from dolake.subscribe.shardlink import ShardLink
from dosql import protocol
from dosql.errors import AuthorizationError, CDCError, DoSQLError, NotFoundError

log = logging.getLogger(__name__)

CLOSE_POLICY = 1008  # bad request, too slow
CLOSE_ERROR = 1011  # the server could not continue (shard or lake unavailable)
ERROR_SEND_TIMEOUT_S = 10.0

_USER_TABLES = (
    r"SELECT name FROM sqlite_master WHERE type = 'table' "
    r"AND name NOT LIKE '\_dosql\_%' ESCAPE '\' AND name NOT LIKE 'sqlite\_%' ESCAPE '\'"
)
_COLUMNS = 'SELECT name, type, "notnull", pk FROM pragma_table_info(?) ORDER BY cid'
_FIRST_AT = (
    "SELECT min(c.lsn) FROM _dosql_changes c JOIN _dosql_tx t ON t.txid = c.txid "
    "WHERE t.commit_ts >= ?"
)
_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = '_dosql_changes'"
_AT_LSN = (
    "SELECT t.commit_ts, t.gtid FROM _dosql_changes c JOIN _dosql_tx t ON t.txid = c.txid "
    "WHERE c.lsn = ?"
)


async def handle_subscriber(ws: Any, *, ctx: SubscribeContext) -> None:
    """Serve one ``/cdc/subscribe`` WebSocket connection until either side ends it."""
    await Session(ws, ctx).run()


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Session:
    def __init__(self, ws: Any, ctx: SubscribeContext) -> None:
        self.ws = ws
        self.ctx = ctx
        self.limits = ctx.limits
        self.links: dict[str, ShardLink] = {}
        self.vector: dict[str, int] = {}  # what has been queued (or skipped) per shard
        # LSNs above ``vector`` queued already (inside a distributed transaction only)
        self.extra: dict[str, set[int]] = {}
        self.sent: dict[str, int] = {}  # what the sender has written per shard
        self.sent_extra: dict[str, set[int]] = {}
        self.order_lock = trio.Lock()  # held while queuing events (see the module docstring)
        self.gathers: dict[str, dtx.Gather] = {}  # gtid -> parts of it read so far
        self.released: dict[str, None] = {}  # gtids delivered without all their parts
        # per shard: (commit_ts, gtid) of the last change its follower has reached
        self.last_seen: dict[str, tuple[int, str | None]] = {}
        self.at_end: dict[str, bool] = {}  # per shard: its follower has read to the log's end
        self.waiting: dict[str, str] = {}  # per shard: the gtid its follower waits in
        self.send_ch, self.recv_ch = trio.open_memory_channel[Any](self.limits.queue_size)
        self.pending: dict[str, list[int]] = {}  # shard -> [txid, commit_ts, events]
        self.schema_seen: set[str] = set()
        self.fatal: DoSQLError | None = None
        self.sending = False
        self.live = False  # heartbeats start once a snapshot (if any) is complete
        self.producers: trio.CancelScope | None = None
        self.outer: trio.Nursery | None = None
        self.fmt: Any = events.DosqlFormat()  # the shape of what is sent (see set_format)
        self.held: tuple[str, protocol.Change] | None = None  # snapshot row not yet sent

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        scope = getattr(self.ws, "scope", "admin")
        try:
            if scope not in ("read", "admin"):
                raise AuthorizationError("subscribing needs a read token", code="PERMISSION_DENIED")
            try:
                with trio.fail_after(self.limits.hello_timeout_s):
                    frame = await self.ws.recv()
            except trio.TooSlowError:
                raise request.invalid(
                    "no subscribe message received: send one JSON object such as " + request.EXAMPLE
                ) from None
            sub = request.parse(frame)
            self.set_format(sub)
            async with AsyncExitStack() as stack:
                for sid, url in self.ctx.shards().items():
                    link = ShardLink(sid, url, self.ctx.token)
                    await link.open(stack)
                    self.links[sid] = link
                await self.check_tables(sub)
                if not sub.snapshot:
                    self.vector = await self.resolve_start(sub)
                    if sub.start.kind == "position":
                        self.extra = {s: set(v) for s, v in sub.start.extra.items() if v}
                self.sent = dict(self.vector)
                self.sent_extra = _copy_extra(self.extra)
                await self.stream(sub)
        except ConnectionClosed:
            return
        except DoSQLError as exc:
            await self.send_error(exc)
        except Exception as exc:  # never leave a subscriber without a reason
            log.exception("subscriber session failed")
            await self.send_error(DoSQLError(f"internal error: {exc}", code="INTERNAL"))

    async def stream(self, sub: Subscription) -> None:
        async with trio.open_nursery() as outer:
            self.outer = outer
            outer.start_soon(self.sender, outer.cancel_scope)
            outer.start_soon(self.watch_client, outer.cancel_scope)
            with trio.CancelScope() as producers:
                self.producers = producers
                async with trio.open_nursery() as inner:
                    inner.start_soon(self.guarded, self.produce, sub)
                    inner.start_soon(self.guarded, self.monitor)
                    inner.start_soon(self.guarded, self.heartbeat)

    async def guarded(self, fn: Any, *args: Any) -> None:
        try:
            await fn(*args)
        except DoSQLError as exc:
            await self.abort(exc)
        except Exception as exc:
            log.exception("subscriber task failed")
            await self.abort(DoSQLError(f"internal error: {exc}", code="INTERNAL"))

    async def abort(self, exc: DoSQLError) -> None:
        """Stop producing; the sender sends the error event after its current frame."""
        if self.fatal is None:
            self.fatal = exc
            log.info("subscriber stopped", extra={"code": exc.code, "reason": exc.message})
        if self.producers is not None:
            self.producers.cancel()
        try:
            self.send_ch.send_nowait(None)  # wake an idle sender
        except trio.WouldBlock:
            pass  # the sender is busy and checks `fatal` after its frame
        if self.outer is not None:
            outer = self.outer

            async def last_resort() -> None:
                await trio.sleep(ERROR_SEND_TIMEOUT_S)
                outer.cancel_scope.cancel()

            outer.start_soon(last_resort)

    async def sender(self, done: trio.CancelScope) -> None:
        try:
            while True:
                item = await self.recv_ch.receive()
                if item is not None and self.fatal is None:
                    text, vector, extra = item
                    self.sending = True
                    await self.ws.send(text)
                    self.sending = False
                    self.sent, self.sent_extra = vector, extra
                if self.fatal is not None:
                    await self.send_error(self.fatal)
                    return
        except ConnectionClosed:
            return
        finally:
            done.cancel()

    async def watch_client(self, done: trio.CancelScope) -> None:
        """Anything the client sends after subscribing is ignored; its close ends the session."""
        try:
            async for _ in self.ws:
                pass
        except ConnectionClosed:
            pass
        done.cancel()

    async def send_error(self, exc: DoSQLError) -> None:
        close = CLOSE_POLICY
        if exc.code in ("SHARD_UNAVAILABLE", "INTERNAL", "HISTORY_UNAVAILABLE"):
            close = CLOSE_ERROR
        pos = position.encode(self.sent, self.sent_extra) if self.sent else None
        event = events.error_event(exc.code, exc.message, pos)
        with trio.move_on_after(ERROR_SEND_TIMEOUT_S):
            try:
                await self.ws.send(events.dumps(event))
                await self.ws.aclose(close, exc.code)
            except ConnectionClosed:
                pass

    def set_format(self, sub: Subscription) -> None:
        if sub.format == "debezium":
            ns = self.ctx.namespace
            self.fmt = debezium.DebeziumFormat(
                sub.name or ns,
                ns,
                changes_only=sub.changes_only,
                tombstones=sub.tombstones,
                schemas=sub.schemas,
            )
        else:
            self.fmt = events.DosqlFormat(changes_only=sub.changes_only)

    async def put_all(self, batch: list[dict[str, Any]]) -> None:
        for event in batch:
            await self.put(event)

    async def put(self, event: dict[str, Any]) -> None:
        await self.send_ch.send((events.dumps(event), dict(self.vector), _copy_extra(self.extra)))

    def pos(self) -> str:
        return position.encode(self.vector, self.extra)

    def mark(self, sid: str, lsn: int) -> None:
        """``lsn`` of ``sid`` is queued (or has nothing to queue): move the position."""
        at = self.vector.get(sid, 0)
        if lsn <= at:
            return
        extra = self.extra.get(sid)
        if lsn != at + 1:
            self.extra.setdefault(sid, set()).add(lsn)
            return
        at = lsn
        while extra and at + 1 in extra:
            at += 1
            extra.discard(at)
        self.vector[sid] = at
        if extra is not None and not extra:
            del self.extra[sid]

    def advance(self, sid: str, lsn: int) -> None:
        """Everything of ``sid`` through ``lsn`` is queued or has nothing to queue."""
        if lsn > self.vector.get(sid, 0):
            self.vector[sid] = lsn
            extra = {v for v in self.extra.pop(sid, set()) if v > lsn}
            if extra:
                self.extra[sid] = extra
            while self.vector[sid] + 1 in self.extra.get(sid, ()):
                self.mark(sid, self.vector[sid] + 1)

    # ------------------------------------------------------------------ setup

    async def check_tables(self, sub: Subscription) -> None:
        if sub.tables is None:
            return
        known: set[str] = set()
        for link in self.links.values():
            known |= {r[0].lower() for r in await link.query(_USER_TABLES)}
        missing = set(sub.tables) - known
        if missing:
            try:
                catalog = await _lake(self.ctx.catalog)
                known |= set(await _lake(history.tables, catalog, self.ctx.namespace))
            except Exception as exc:
                log.info("lake not readable for table check", extra={"error": str(exc)})
        missing = set(sub.tables) - known
        if missing:
            raise NotFoundError(
                f"unknown table(s): {', '.join(sorted(missing))}; tables: "
                + (", ".join(sorted(known)) or "(none yet)"),
                code="TABLE_NOT_FOUND",
            )

    async def resolve_start(self, sub: Subscription) -> dict[str, int]:
        start = sub.start
        heads = {sid: await link.lsn_info() for sid, link in self.links.items()}
        if start.kind == "latest":
            return {sid: current for sid, (current, _) in heads.items()}
        if start.kind == "earliest":
            return {sid: 0 for sid in heads}
        if start.kind == "position":
            unknown = sorted(set(start.vector) - set(heads))
            if unknown:
                raise position.bad_position(
                    f"shard(s) {', '.join(unknown)} are not in this cluster"
                )
            vector = {sid: start.vector.get(sid, 0) for sid in heads}
            for sid, lsn in vector.items():
                if lsn > heads[sid][0]:
                    # never wait silently for LSNs the shard's database may never reach
                    raise CDCError(
                        f"the position is ahead of shard {sid} (position {lsn}, shard at LSN "
                        f"{heads[sid][0]}): the position is not from this cluster, or the "
                        "shard's database went back (lost and recreated, or restored from an "
                        "older backup) and the changes after its LSN are not the ones you "
                        "were given. Restore the shard's database, or resubscribe from "
                        '"latest" or a timestamp',
                        code="SHARD_LSN_BEHIND",
                        details={"shard": sid, "position_lsn": lsn, "shard_lsn": heads[sid][0]},
                    )
            return vector
        assert start.micros is not None
        return {sid: await self.lsn_before(sid, start.micros, *heads[sid]) for sid in self.links}

    async def lsn_before(self, sid: str, micros: int, current: int, oldest: int) -> int:
        """The position just before the first change of ``sid`` committed at or after ``micros``."""
        rows = await self.links[sid].query(_FIRST_AT, [micros])
        first = rows[0][0] if rows else None
        retained = oldest <= current
        if first is None and retained:
            return current  # every retained change is older
        if first is not None and (first > oldest or oldest <= 1):
            return first - 1
        catalog = await _lake(self.ctx.catalog)
        lake_first = await _lake(history.first_lsn_at, catalog, self.ctx.namespace, sid, micros)
        if lake_first is not None:
            return lake_first - 1
        return first - 1 if first is not None else current

    # ------------------------------------------------------------------ producing

    async def produce(self, sub: Subscription) -> None:
        if sub.snapshot:
            await self.snapshot(sub)
            self.sent = dict(self.vector)
        await self.init_last_seen()
        self.live = True
        async with trio.open_nursery() as nursery:
            for sid in self.links:
                nursery.start_soon(self.guarded, self.follow, sid, sub)

    async def init_last_seen(self) -> None:
        """Where each follower starts, as (commit_ts, gtid): a distributed transaction
        whose part on a shard lies before that shard's start is not waited for."""
        for sid, link in self.links.items():
            lsn = self.vector.get(sid, 0)
            if lsn <= 0:
                continue
            try:
                rows = await link.query(_AT_LSN, [lsn])
            except DoSQLError:
                continue
            if rows:
                self.last_seen[sid] = (int(rows[0][0]), rows[0][1])

    async def follow(self, sid: str, sub: Subscription) -> None:
        link = self.links[sid]
        batch = self.limits.read_batch
        pos = self.vector[sid]
        part: list[protocol.Change] = []  # this shard's part of a distributed transaction
        while True:
            reply = await link.read_changes(pos + 1, batch)
            got = reply.changes
            if got and got[0].lsn == pos + 1:
                self.at_end[sid] = len(got) < batch
                part = await self.feed(sid, got, sub, part)
                pos = got[-1].lsn
                if len(got) < batch:  # the read saw the end of the log: a transaction boundary
                    part = await self.end_part(sid, part, sub)
                    await self.end_tx(sid)
                continue
            if not got and reply.oldest_lsn <= pos + 1:
                self.at_end[sid] = True
            part = await self.end_part(sid, part, sub)
            if not got and reply.oldest_lsn <= pos + 1:
                await self.end_tx(sid)
                await trio.sleep(self.limits.poll_s)
                continue
            self.at_end[sid] = False
            pos = await self.replay(sid, pos, reply.oldest_lsn, sub)

    async def feed(
        self, sid: str, changes: list[protocol.Change], sub: Subscription, part: list
    ) -> list[protocol.Change]:
        """Queue local changes; collect a distributed transaction's part (returned while
        it may continue in the next read) and hand it on once it is whole."""
        for ch in changes:
            if part and ch.txid != part[0].txid:
                part = await self.end_part(sid, part, sub)
            if dtx.participants(ch, self.links) is not None:
                part.append(ch)
                continue
            await self.on_change(sid, ch, sub)
        return part

    async def end_part(
        self, sid: str, part: list[protocol.Change], sub: Subscription
    ) -> list[protocol.Change]:
        if part:
            await self.join(sid, part, sub)
        return []

    async def join(self, sid: str, part: list[protocol.Change], sub: Subscription) -> None:
        """Gather ``sid``'s part of a distributed transaction with its siblings and
        queue them together (whichever follower completes the gathering queues all);
        return once the transaction is queued."""
        first = part[0]
        gtid = first.gtid
        assert gtid is not None
        await self.end_tx(sid)
        self.last_seen[sid] = (first.commit_ts, gtid)
        g = self.gathers.get(gtid)
        if gtid in self.released or (g is not None and g.ready.is_set()):
            if g is not None:
                await g.done.wait()  # the siblings went without this part: it goes alone
            await self.emit(dtx.Gather(gtid, (sid,), first.commit_ts, {sid: part}), sub)
            self.check_ready()
            return
        if g is None:
            parts = dtx.participants(first, self.links) or (sid,)
            g = self.gathers[gtid] = dtx.Gather(gtid, parts, first.commit_ts)
        g.got[sid] = part
        self.check_ready()
        self.waiting[sid] = gtid
        try:
            await self.wait_siblings(g)
        finally:
            self.waiting.pop(sid, None)
        if g.emitting:
            await g.done.wait()
            return
        g.emitting = True
        try:
            await self.emit(g, sub)
        finally:
            g.done.set()
            self.gathers.pop(gtid, None)
        self.check_ready()

    async def wait_siblings(self, g: dtx.Gather) -> None:
        """Until the gathering is complete -- or, after ``dtx_wait_s``, until every
        missing participant's follower is stalled (at the end of its log, or waiting
        in another transaction): then release what is here (see dolake/subscribe/dtx.py).
        A participant still catching up behind the transaction is waited for."""
        while not g.ready.is_set():
            with trio.move_on_after(self.limits.dtx_wait_s):
                await g.ready.wait()
            if g.ready.is_set():
                return
            missing = sorted(set(g.parts) - set(g.got))
            stalled = [
                p
                for p in missing
                if self.at_end.get(p, False) or self.waiting.get(p) not in (None, g.gtid)
            ]
            if stalled != missing:
                continue
            log.warning(
                "distributed transaction delivered without all its parts",
                extra={"gtid": g.gtid, "missing": missing, "waited_s": self.limits.dtx_wait_s},
            )
            self.released[g.gtid] = None
            while len(self.released) > 10_000:
                del self.released[next(iter(self.released))]
            g.ready.set()

    def check_ready(self) -> None:
        for g in self.gathers.values():
            if not g.ready.is_set() and g.complete(self.last_seen):
                g.ready.set()

    async def emit(self, g: dtx.Gather, sub: Subscription) -> None:
        """Queue a gathered transaction's events in delivery order, then one commit
        marker per shard that delivered events (the last one ``final``)."""
        async with self.order_lock:
            counts: dict[str, int] = {}
            for sid, ch in dtx.delivery_order(g.got):
                if await self._deliver(sid, ch, sub):
                    counts[sid] = counts.get(sid, 0) + 1
            shards = [s for s in sorted(g.got) if counts.get(s)]
            for i, sid in enumerate(shards):
                batch = self.fmt.commit(
                    sid,
                    g.got[sid][0].txid,
                    g.commit_ts,
                    counts[sid],
                    self.pos(),
                    gtid=g.gtid,
                    parts=list(g.got[sid][0].parts or g.parts),
                    final=i == len(shards) - 1,
                )
                await self.put_all(batch)

    async def replay(self, sid: str, pos: int, oldest: int, sub: Subscription) -> int:
        """Serve ``pos + 1 ..`` from the lake: the shard no longer retains it."""
        try:
            catalog = await _lake(self.ctx.catalog)
            committed = await _lake(history.committed, catalog, self.ctx.namespace)
        except Exception as exc:
            raise CDCError(
                f"shard {sid} no longer retains changes after LSN {pos} (its oldest is "
                f"{oldest}) and the lake cannot be read ({exc})",
                code="HISTORY_UNAVAILABLE",
            ) from None
        upto = committed.get(sid, 0)
        if upto <= pos:
            raise CDCError(
                f"shard {sid} no longer retains changes after LSN {pos} (its oldest is {oldest}) "
                f"and the lake has committed only through LSN {upto}: start from a later "
                'position, a later timestamp or "latest"',
                code="HISTORY_UNAVAILABLE",
            )
        skip = frozenset(t for t, owner in self.ctx.reference_tables.items() if owner != sid)
        changes = await _lake(
            lambda: history.read(
                catalog,
                self.ctx.namespace,
                sid,
                after=pos,
                upto=upto,
                wanted=sub.tables,
                skip=skip,
            )
        )
        log.info("replayed from the lake", extra={"shard": sid, "after": pos, "upto": upto})
        part = await self.feed(sid, changes, sub, [])
        await self.end_part(sid, part, sub)  # the lake's watermark is a transaction boundary
        async with self.order_lock:
            await self._end_tx_locked(sid)
            self.advance(sid, upto)
        return upto

    async def on_change(self, sid: str, ch: protocol.Change, sub: Subscription) -> None:
        """Queue the events of one change of a local transaction."""
        async with self.order_lock:
            pending = self.pending.get(sid)
            if pending is not None and pending[0] != ch.txid:
                await self._end_tx_locked(sid)
            delivered = await self._deliver(sid, ch, sub)
            if delivered:
                if pending is None or pending[0] != ch.txid:
                    self.pending[sid] = [ch.txid, ch.commit_ts, 0, ch.gtid]
                self.pending[sid][2] += 1
        self.last_seen[sid] = (ch.commit_ts, ch.gtid)
        if self.gathers:
            self.check_ready()

    async def _deliver(self, sid: str, ch: protocol.Change, sub: Subscription) -> bool:
        """Queue the event of one change (under ``order_lock``); False if it has none.
        The position moves to the change right before its own event is queued."""
        if ch.lsn <= self.vector.get(sid, 0) or ch.lsn in self.extra.get(sid, ()):
            return False  # delivered before the position this subscriber resumed from
        name = ch.table.lower()
        owner = self.ctx.reference_tables.get(name)
        wanted = sub.wants_table(name) and (owner is None or owner == sid)
        if wanted and ch.op == "schema" and ch.schema is not None:
            self.schema_seen.add(name)
            self.mark(sid, ch.lsn)
            await self.put_all(
                self.fmt.schema(
                    sid,
                    ch.table,
                    ch.schema,
                    self.pos(),
                    lsn=ch.lsn,
                    txid=ch.txid,
                    commit_ts=ch.commit_ts,
                    gtid=ch.gtid,
                )
            )
            return True
        if wanted and ch.op in sub.ops and sub.wants_key(ch.key):
            if name not in self.schema_seen:
                await self.first_schema(sid, ch)
            self.mark(sid, ch.lsn)
            await self.put_all(self.fmt.row(sid, ch, events.OP_LETTER[ch.op], self.pos()))
            return True
        self.mark(sid, ch.lsn)  # nothing to deliver
        return False

    async def end_tx(self, sid: str) -> None:
        if sid in self.pending:
            async with self.order_lock:
                await self._end_tx_locked(sid)

    async def _end_tx_locked(self, sid: str) -> None:
        pending = self.pending.pop(sid, None)
        if pending is not None:
            txid, commit_ts, count, gtid = pending
            await self.put_all(self.fmt.commit(sid, txid, commit_ts, count, self.pos(), gtid=gtid))

    async def first_schema(self, sid: str, ch: protocol.Change) -> None:
        """A table's columns before its first row event (from the shard's current definition)."""
        self.schema_seen.add(ch.table.lower())
        rows = await self.links[sid].query(_COLUMNS, [ch.table])
        schema = self.schema_from(rows, ch.after or ch.before or {})
        await self.put_all(self.fmt.schema(sid, ch.table, schema, self.pos()))

    @staticmethod
    def schema_from(rows: list[list[Any]], image: dict[str, Any]) -> protocol.TableSchema:
        if rows:
            cols = [protocol.ColumnInfo(r[0], r[1] or "", bool(r[2]), int(r[3])) for r in rows]
        else:  # the table is gone from the shard: name the columns of the image
            cols = [protocol.ColumnInfo(n, "", False, 0) for n in image]
        pk = [c.name for c in sorted((c for c in cols if c.pk), key=lambda c: c.pk)]
        return protocol.TableSchema(action="create", columns=cols, primary_key=pk)

    # ------------------------------------------------------------------ snapshot

    async def snapshot(self, sub: Subscription) -> None:
        """ "r" events of every wanted table's rows, each shard read in one read transaction
        whose change-log LSN becomes that shard's starting point (no gap, no duplicate)."""
        async with AsyncExitStack() as stack:
            for sid, link in self.links.items():
                await stack.enter_async_context(link.lock)
                await link.exchange(protocol.Begin(link.next_id(), "deferred"))
                stack.push_async_callback(self._end_read, link)
                seq = await link.exchange(protocol.Execute(link.next_id(), _SEQ))
                self.vector[sid] = int(seq.rows[0][0]) if seq.rows else 0
            for sid, link in self.links.items():
                tables = await link.exchange(protocol.Execute(link.next_id(), _USER_TABLES))
                for (table,) in tables.rows:
                    name = table.lower()
                    owner = self.ctx.reference_tables.get(name)
                    if not sub.wants_table(name) or (owner is not None and owner != sid):
                        continue
                    await self.snapshot_table(sid, link, table, sub)
            await self.snapshot_row(None)

    async def snapshot_row(self, sid: str | None, ch: protocol.Change | None = None) -> None:
        """Queue the previous snapshot row and hold this one back: Debezium marks the last
        row of a snapshot ``"snapshot": "last"``, which is known only once the next row is
        (``sid`` None: the snapshot is over, the held row is the last)."""
        if sid is not None and ch is not None and not isinstance(self.fmt, debezium.DebeziumFormat):
            await self.put_all(self.fmt.row(sid, ch, "r", self.pos(), snapshot="true"))
            return  # dosql's format has no "last": no need to hold rows back
        held, self.held = self.held, (sid, ch) if sid is not None and ch is not None else None
        if held is not None:
            state = "true" if sid is not None else "last"
            await self.put_all(self.fmt.row(held[0], held[1], "r", self.pos(), snapshot=state))

    @staticmethod
    async def _end_read(link: ShardLink) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await link.exchange(protocol.Commit(link.next_id()))
            except DoSQLError:
                pass

    async def snapshot_table(
        self, sid: str, link: ShardLink, table: str, sub: Subscription
    ) -> None:
        info = await link.exchange(protocol.Execute(link.next_id(), _COLUMNS, [table]))
        schema = self.schema_from(info.rows, {})
        if table.lower() not in self.schema_seen:
            self.schema_seen.add(table.lower())
            await self.put_all(self.fmt.schema(sid, table, schema, self.pos()))
        pk = schema.primary_key
        sql = f"SELECT * FROM {_quote(table)}"
        if not pk:
            sql = f"SELECT _rowid_ AS __dosql_rowid, * FROM {_quote(table)}"
        lsn = self.vector[sid]
        now = int(time.time() * 1_000_000)
        async for columns, rows in link.stream(sql):
            for row in rows:
                image = dict(zip(columns, row, strict=True))
                key = [image.pop("__dosql_rowid")] if not pk else [image[k] for k in pk]
                if not sub.wants_key(key):
                    continue
                ch = protocol.Change(lsn, 0, now, table, "insert", key=key, after=image)
                await self.snapshot_row(sid, ch)

    # ------------------------------------------------------------------ flow control

    async def monitor(self) -> None:
        limits = self.limits
        behind_since: dict[str, float] = {}
        period = max(0.05, min(1.0, limits.grace_s / 4))
        while True:
            await trio.sleep(period)
            idle = not self.sending and self.recv_ch.statistics().current_buffer_used == 0
            delivered = self.vector if idle else self.sent
            for sid, link in self.links.items():
                current, _ = await link.lsn_info()
                lag = current - delivered.get(sid, 0)
                if lag <= limits.max_lag:
                    behind_since.pop(sid, None)
                    continue
                since = behind_since.setdefault(sid, time.monotonic())
                if time.monotonic() - since >= limits.grace_s:
                    raise CDCError(
                        f"subscriber too slow: {lag} changes behind shard {sid} (limit "
                        f"{limits.max_lag}) for more than {_secs(limits.grace_s)}; resume from "
                        "the position in this message once you can keep up",
                        code="SUBSCRIBER_TOO_SLOW",
                        details={"shard": sid, "lag": lag},
                    )

    async def heartbeat(self) -> None:
        while True:
            await trio.sleep(self.limits.heartbeat_s)
            if self.live:
                async with self.order_lock:
                    await self.put_all(self.fmt.heartbeat(self.pos()))


def _copy_extra(extra: dict[str, set[int]]) -> dict[str, set[int]]:
    return {s: set(v) for s, v in extra.items()} if extra else {}


async def _lake(fn: Any, *args: Any) -> Any:
    """Blocking lake (pyiceberg) reads in a worker thread; a subscriber that leaves does not
    wait for them (they only read, so abandoning the thread is safe)."""
    return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)


def _secs(value: float) -> str:
    return f"{value:g}s" if math.isfinite(value) else "ever"
