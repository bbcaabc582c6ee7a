"""One WebSocket session: requests in order, an optional pinned transaction.

A session handles its requests one at a time. Outside a transaction every
statement borrows a pooled connection and runs in its own transaction;
``Begin`` (or SQL ``BEGIN``) pins a connection to the session until
``Commit``/``Rollback`` (or SQL ``COMMIT``/``END``/``ROLLBACK``), or until the
session ends, which rolls it back.

Errors inside a transaction: a failing statement is undone by SQLite and the
transaction stays open — unless SQLite itself abandoned the transaction
(some errors do), or the statement hit its timeout: a timed-out statement
inside a transaction always rolls the whole transaction back (SQLite does so
for interrupted writes; the shard does the same for reads so the outcome
does not depend on the statement). Such errors carry
``details["transaction_rolled_back"] = True`` and the session is back to
autocommit. A COMMIT that fails (e.g. a deferred foreign key) rolls back.

Replies: Execute/ExecuteMany -> Result chunks (SQL BEGIN/COMMIT/ROLLBACK too:
one empty Result); Begin/Commit/Rollback -> Ok (``info["noop"]`` when there
was no transaction to end); Ping -> Ok(info={"shard"}); ReadChanges ->
Changes; LsnInfo and ReleaseChanges -> Ok(info={"current_lsn",
"oldest_lsn"}); MetaGet -> Ok(info={"values": {key: value}}); MetaSet -> Ok.
MetaGet, MetaSet and ReleaseChanges need admin scope.

Two-phase commit (prepared.py): Prepare -> Ok(info={"read_only"} or
{"last_commit_ts"}); the prepared transaction leaves the session, which may
begin another, and is decided from any admin session by CommitPrepared /
AbortPrepared; TxStatus and ListPrepared tell what is prepared or decided.
A session that ends with a prepared transaction leaves it orphaned, never
rolled back.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

import trio
from websockets.exceptions import ConnectionClosed

from dosql import logs, protocol
from dosql.errors import AuthorizationError, DoSQLError, QueryError, ValidationError
from dosql.shard import inline, sequences
from dosql.shard.database import ConnState
from dosql.shard.errormap import map_error
from dosql.shard.executor import Shard, StatementOutcome
from dosql.shard.metrics import ShardMetrics
from dosql.shard.writelock import takes_write_lock
from dosql.statements import kind

log = logging.getLogger(__name__)

_TX_SQL = re.compile(
    r"^\s*(?:(BEGIN)(?:\s+(DEFERRED|IMMEDIATE|EXCLUSIVE))?(?:\s+TRANSACTION)?"
    r"|(COMMIT|END)(?:\s+TRANSACTION)?|(ROLLBACK)(?:\s+TRANSACTION)?)\s*;?\s*$",
    re.IGNORECASE,
)

_VACUUM = re.compile(r"^\s*VACUUM\s*;?\s*$", re.IGNORECASE)


class Session:
    def __init__(self, shard: Shard, metrics: ShardMetrics, ws: Any, scope: str) -> None:
        self.shard = shard
        self.metrics = metrics
        self.ws = ws
        self.read_only = scope == "read"
        self.admin = scope == "admin"
        self.tx: ConnState | None = None

    # ------------------------------------------------------------------ loop

    async def serve(self) -> None:
        self.shard.sessions += 1
        try:
            while True:
                try:
                    frame = await self.ws.recv()
                except ConnectionClosed:
                    return
                await self.handle(frame)
        except ConnectionClosed:
            return
        finally:
            self.shard.sessions -= 1
            self.shard.twophase.orphan(self)  # its prepared transactions wait for a decision
            with trio.CancelScope(shield=True):
                await self.end_transaction(commit=False)

    async def send(self, message: protocol.Message) -> None:
        await self.ws.send(protocol.encode(message))

    async def send_error(self, request_id: int | None, exc: DoSQLError) -> None:
        self.metrics.errors.labels(exc.code).inc()
        await self.send(protocol.Error.from_exception(request_id, exc))

    async def handle(self, frame: bytes | str) -> None:
        try:
            message = protocol.decode(frame)
        except ValidationError as exc:
            rid = protocol.request_id_of(frame) if isinstance(frame, bytes) else None
            await self.send_error(rid, exc)
            return
        rid = getattr(message, "id", None)
        op = type(message).__name__
        token = logs.trace_id.set(getattr(message, "trace_id", None))
        started = time.perf_counter()
        try:
            await self.dispatch(message)
        except DoSQLError as exc:
            await self.send_error(rid, exc)
        except (ConnectionClosed, trio.Cancelled):
            raise
        except Exception as exc:  # never let one request kill the session
            log.exception("request failed", extra={"op": op})
            await self.send_error(rid, DoSQLError(f"internal error: {exc}", code="INTERNAL"))
        finally:
            self.metrics.query_duration.labels(op).observe(time.perf_counter() - started)
            logs.trace_id.reset(token)

    async def dispatch(self, m: Any) -> None:
        if isinstance(m, protocol.Execute):
            await self.execute(m.id, m.sql, m.params, m.timeout_ms)
        elif isinstance(m, protocol.ExecuteMany):
            await self.execute(m.id, m.sql, None, m.timeout_ms, many=m.seq_params)
        elif isinstance(m, protocol.Begin):
            await self.begin(m.mode == "immediate")
            await self.send(protocol.Ok(m.id))
        elif isinstance(m, protocol.Commit | protocol.Rollback):
            commit = isinstance(m, protocol.Commit)
            gtid = m.gtid if isinstance(m, protocol.Commit) else None
            had = await self.end_transaction(commit=commit, gtid=gtid)
            await self.send(protocol.Ok(m.id, info={} if had else {"noop": True}))
        elif isinstance(m, protocol.Prepare):
            await self.send(protocol.Ok(m.id, info=await self.prepare(m.gtid, m.candidates)))
        elif isinstance(m, protocol.CommitPrepared | protocol.AbortPrepared):
            self.require_admin(type(m).__name__)
            await self.send(protocol.Ok(m.id, info=await self.decide(m)))
        elif isinstance(m, protocol.TxStatus):
            self.require_admin("TxStatus")
            tp = self.shard.twophase
            info = await trio.to_thread.run_sync(
                tp.status, m.gtid, m.fence, limiter=self.shard.limiter
            )
            await self.send(protocol.Ok(m.id, info=info))
        elif isinstance(m, protocol.ListPrepared):
            self.require_admin("ListPrepared")
            await self.send(protocol.Ok(m.id, info={"prepared": self.shard.twophase.listing()}))
        elif isinstance(m, protocol.Ping):
            await self.send(protocol.Ok(m.id, info={"shard": self.shard.shard_id}))
        elif isinstance(m, protocol.ReadChanges):
            await self.read_changes(m)
        elif isinstance(m, protocol.LsnInfo):
            cl = self.shard.changelog
            info = {"current_lsn": cl.current_lsn(), "oldest_lsn": cl.oldest_lsn()}
            if m.table is not None:
                lsn, since = await trio.to_thread.run_sync(
                    cl.table_pending, m.table, m.through_us, limiter=self.shard.limiter
                )
                info |= {"table_lsn": lsn, "pending_since_us": since}
            await self.send(protocol.Ok(m.id, info=info))
        elif isinstance(m, protocol.MetaGet):
            self.require_admin("MetaGet")
            values = await self.with_connection(lambda s: self.shard.meta_get(s, m.prefix))
            await self.send(protocol.Ok(m.id, info={"values": values}))
        elif isinstance(m, protocol.MetaSet):
            self.require_admin("MetaSet")
            await self.with_connection(lambda s: self.shard.meta_set(s, m.key, m.value), write=True)
            await self.send(protocol.Ok(m.id))
        elif isinstance(m, protocol.ReserveIds):  # sequence blocks: dosql/shard/sequences.py
            self.require_admin("ReserveIds")
            store = sequences.store_for(self.shard.path, self.shard.cfg.busy_timeout_ms)
            start, stop = await trio.to_thread.run_sync(
                store.reserve, m.name, m.count, m.floor, limiter=self.shard.limiter
            )
            await self.send(protocol.Ok(m.id, info={"start": start, "stop": stop}))
        elif isinstance(m, protocol.ReleaseChanges):
            self.require_admin("ReleaseChanges")
            cl = self.shard.changelog
            await trio.to_thread.run_sync(cl.release, m.lsn, limiter=self.shard.limiter)
            info = {"current_lsn": cl.current_lsn(), "oldest_lsn": cl.oldest_lsn()}
            await self.send(protocol.Ok(m.id, info=info))
        else:
            raise ValidationError(
                f"{type(m).__name__} is not a request a shard serves: send Execute, ExecuteMany, "
                "Begin, Commit, Rollback, Prepare, CommitPrepared, AbortPrepared, TxStatus, "
                "ListPrepared, Ping, ReadChanges, LsnInfo, MetaGet, MetaSet, ReserveIds or "
                "ReleaseChanges",
                code="INVALID_MESSAGE",
            )

    def require_admin(self, op: str) -> None:
        if not self.admin:
            raise AuthorizationError(f"{op} needs an admin token", code="PERMISSION_DENIED")

    # ------------------------------------------------------------------ transactions

    async def begin(self, immediate: bool) -> None:
        if self.tx is not None:
            raise QueryError(
                "a transaction is already open in this session: Commit or Rollback it first",
                code="TRANSACTION_STATE",
            )
        if immediate and self.read_only:
            raise AuthorizationError(
                "BEGIN IMMEDIATE takes the write lock: read-only scope may only BEGIN (deferred)",
                code="READ_ONLY",
            )
        # IMMEDIATE: queue for the shard's write lock first (FIFO, lock_timeout_ms);
        # the connection then holds it until the transaction ends (Shard.release).
        state = await self.shard.acquire(read_only=self.read_only, write=immediate)
        try:
            if immediate:  # SQLite's lock is free for the holder, but BEGIN does I/O: a thread
                await trio.to_thread.run_sync(
                    self.shard.begin, state, immediate, limiter=self.shard.limiter
                )
            else:  # a deferred BEGIN takes no lock and does no I/O: no thread hop
                self.shard.begin(state, immediate)
        except BaseException as exc:
            self.shard.release(state)
            if isinstance(exc, Exception):
                raise map_error(exc, state) from None
            raise
        self.tx = state
        self.shard.open_transactions += 1

    async def end_transaction(self, *, commit: bool, gtid: str | None = None) -> bool:
        """Commit or roll back the session transaction; False if there was none.

        A commit with the router's ``gtid`` is recorded under it and refused
        when a recovery fenced that gtid (prepared.py).
        """
        state = self.tx
        if state is None:
            return False
        self.tx = None
        self.shard.open_transactions -= 1
        try:
            if commit:
                tp = self.shard.twophase
                lsn = await trio.to_thread.run_sync(
                    lambda: (
                        tp.commit_one_phase(state, gtid)
                        if gtid is not None
                        else self.shard.commit(state, notify=False)
                    ),
                    limiter=self.shard.limiter,
                )
                self.committed(lsn)
            else:
                await trio.to_thread.run_sync(
                    self.shard.rollback, state, limiter=self.shard.limiter
                )
        except Exception as exc:
            raise map_error(exc, state) from None
        finally:
            self.shard.release(state)
        return True

    # ------------------------------------------------------------------ two-phase commit

    async def prepare(self, gtid: str, candidates: list[str]) -> dict[str, Any]:
        """Phase 1 for the session transaction (see prepared.py).

        Prepared, the transaction leaves the session (which can begin another)
        and keeps its connection and write lock until it is decided. Read-only,
        it simply ends. If the prepare fails, the transaction is rolled back.
        """
        state = self.tx
        if state is None:
            raise QueryError(
                "no transaction is open in this session: nothing to prepare",
                code="TRANSACTION_STATE",
            )
        if self.read_only:
            raise AuthorizationError("Prepare needs a write token", code="READ_ONLY")
        tp = self.shard.twophase
        try:
            info = await trio.to_thread.run_sync(
                tp.prepare, state, gtid, candidates, self, limiter=self.shard.limiter
            )
        except Exception as exc:
            with trio.CancelScope(shield=True):
                await self.end_transaction(commit=False)
            err = exc if isinstance(exc, DoSQLError) else map_error(exc, state)
            err.details["transaction_rolled_back"] = True
            raise err from None
        self.tx = None
        self.shard.open_transactions -= 1
        if info.get("read_only"):
            self.shard.release(state)
        return info

    async def decide(self, m: protocol.CommitPrepared | protocol.AbortPrepared) -> dict[str, Any]:
        """Phase 2 for a prepared transaction, from any session (the router's, or its resolver)."""
        tp = self.shard.twophase
        if isinstance(m, protocol.AbortPrepared):
            entry = await trio.to_thread.run_sync(tp.abort, m.gtid, limiter=self.shard.limiter)
            if entry is not None:
                self.shard.finish_prepared(entry)
            return {} if entry is not None else {"noop": True}
        try:
            entry, lsn, info = await trio.to_thread.run_sync(
                tp.commit, m.gtid, m.commit_ts, m.parts, limiter=self.shard.limiter
            )
        except Exception as exc:
            raise map_error(exc, None) from None
        if entry is not None:
            self.shard.finish_prepared(entry)
            self.committed(lsn)
        return info

    # ------------------------------------------------------------------ statements

    async def execute(
        self,
        request_id: int,
        sql: str,
        params: protocol.Params,
        timeout_ms: int | None,
        *,
        many: list[protocol.Params] | None = None,
    ) -> None:
        if many is None:
            tx_match = _TX_SQL.match(sql)
            if tx_match:
                await self.transaction_sql(request_id, tx_match)
                return
            if _VACUUM.match(sql):
                await self.vacuum(request_id)
                return
            protocol.check_params(params)
        else:
            for p in many:
                protocol.check_params(p)
        timeout = (timeout_ms or self.shard.cfg.query_timeout_ms) / 1000
        write = not self.read_only and (many is not None or takes_write_lock(sql))
        if self.tx is not None:
            if write and not self.shard.writelock.holds(self.tx):
                await self.shard.lock_for_write(self.tx)  # a deferred transaction's first write
            await self.run_statement(self.tx, request_id, sql, params, timeout, many, False)
            return
        # An autocommit write queues for the write lock for the length of the statement.
        state = await self.shard.acquire(read_only=self.read_only, timeout=timeout, write=write)
        try:
            if many is None and await self.read_inline(state, request_id, sql, params):
                return
            await self.run_statement(state, request_id, sql, params, timeout, many, True)
        finally:
            self.shard.release(state)

    async def read_inline(
        self, state: ConnState, request_id: int, sql: str, params: protocol.Params
    ) -> bool:
        """Answer a cheap autocommit SELECT without a thread hop (see inline.py).

        False: not a SELECT, or too costly to run on the event loop.
        """
        if kind(sql) != "select":
            return False
        try:
            replies = inline.read(self.shard, state, sql, params, request_id)
        except Exception as exc:
            self.metrics.reads.labels("inline").inc()
            await self.statement_failed(state, request_id, exc, False)
            return True
        if replies is None:  # not suited, or over budget: on a thread
            self.metrics.reads.labels("thread").inc()
            return False
        self.metrics.reads.labels("inline").inc()
        for reply in replies:
            await self.send(reply)
        return True

    async def transaction_sql(self, request_id: int, match: re.Match[str]) -> None:
        if match.group(1):
            mode = (match.group(2) or "").upper()
            await self.begin(mode in ("IMMEDIATE", "EXCLUSIVE"))
        else:
            await self.end_transaction(commit=bool(match.group(3)))
        await self.send(protocol.Result(request_id, [], True, [], None, -1, None))

    async def vacuum(self, request_id: int) -> None:
        """VACUUM cannot run inside a transaction, so it is the one statement run without."""
        if self.tx is not None:
            raise QueryError("VACUUM cannot run inside a transaction", code="TRANSACTION_STATE")
        if self.read_only:
            raise AuthorizationError("VACUUM needs an admin token", code="READ_ONLY")

        def run(state: ConnState) -> None:
            state.internal = True  # VACUUM attaches a temporary database internally
            try:
                state.conn.execute("VACUUM")
            finally:
                state.internal = False

        await self.with_connection(run, write=True)
        await self.send(protocol.Result(request_id, [], True, [], None, -1, None))

    async def run_statement(
        self,
        state: ConnState,
        request_id: int,
        sql: str,
        params: protocol.Params,
        timeout: float,
        many: list[protocol.Params] | None,
        autocommit: bool,
    ) -> None:
        """Run in a worker thread; relay its Result chunks as they come; enforce the timeout."""
        shard = self.shard
        send_ch, recv_ch = trio.open_memory_channel[protocol.Result](0)
        trio_token = trio.lowlevel.current_trio_token()
        box: dict[str, Any] = {}
        done = trio.Event()

        def emit(chunk: protocol.Result) -> None:
            trio.from_thread.run(send_ch.send, chunk, trio_token=trio_token)

        def work() -> StatementOutcome:
            return shard.execute(
                state, sql, params, emit, request_id, autocommit=autocommit, many=many
            )

        async def worker() -> None:
            try:
                box["outcome"] = await trio.to_thread.run_sync(work, limiter=shard.limiter)
            except Exception as exc:
                box["error"] = exc
            finally:
                send_ch.close()
                done.set()

        async def watchdog() -> None:
            with trio.move_on_after(timeout):
                await done.wait()
                return
            box["timed_out"] = True
            state.conn.interrupt()

        closed: ConnectionClosed | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(worker)
                nursery.start_soon(watchdog)
                try:
                    async with recv_ch:
                        async for chunk in recv_ch:
                            await self.send(chunk)
                except ConnectionClosed as exc:  # the client left: stop the statement
                    closed = exc
                    state.conn.interrupt()
                except BaseException:
                    state.conn.interrupt()  # stop the statement; the worker cleans up
                    raise
        finally:
            if "outcome" in box:  # committed, whatever happens to the reply
                self.committed(box["outcome"].committed_lsn)
        if closed is not None:
            raise closed
        if "error" not in box:
            outcome: StatementOutcome = box["outcome"]
            await self.send(outcome.final)
            return
        await self.statement_failed(state, request_id, box["error"], box.get("timed_out", False))

    async def statement_failed(
        self, state: ConnState, request_id: int, raw: BaseException, timed_out: bool
    ) -> None:
        exc = map_error(raw, state)  # SQLITE_INTERRUPT -> QUERY_TIMEOUT
        if self.tx is state and (timed_out or not state.conn.in_transaction):
            with trio.CancelScope(shield=True):
                await self.end_transaction(commit=False)
            exc.details["transaction_rolled_back"] = True
            exc.message += "; the session transaction was rolled back"
        await self.send_error(request_id, exc)

    # ------------------------------------------------------------------ helpers

    def committed(self, lsn: int | None) -> None:
        if lsn is not None:
            self.shard.changelog.committed(lsn)
            self.metrics.observe_commit(lsn)

    async def with_connection(self, fn: Any, *, write: bool = False) -> Any:
        if self.tx is not None:
            return await trio.to_thread.run_sync(fn, self.tx, limiter=self.shard.limiter)
        state = await self.shard.acquire(read_only=self.read_only, write=write)
        try:
            return await trio.to_thread.run_sync(fn, state, limiter=self.shard.limiter)
        except Exception as exc:
            raise map_error(exc, state) from None
        finally:
            self.shard.release(state)

    async def read_changes(self, m: protocol.ReadChanges) -> None:
        if m.limit < 0 or m.from_lsn < 0:
            raise ValidationError("from_lsn and limit must be >= 0", code="INVALID_INPUT")
        cl = self.shard.changelog
        changes = await trio.to_thread.run_sync(
            cl.read, m.from_lsn, min(m.limit, 100_000), m.table, limiter=self.shard.limiter
        )
        await self.send(
            protocol.Changes(
                m.id, changes, current_lsn=cl.current_lsn(), oldest_lsn=cl.oldest_lsn()
            )
        )
