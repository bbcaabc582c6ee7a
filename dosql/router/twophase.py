"""Atomic commit across shards: the router's side of two-phase commit.

A transaction that wrote on one shard commits there in one phase (``Commit``
with its gtid). One that touched several runs two-phase commit over the
shards' ``Prepare`` / ``CommitPrepared`` / ``AbortPrepared`` / ``TxStatus``
(dosql/shard/prepared.py):

1. **Prepare** on every shard of the transaction, in parallel, naming them all
   as ``candidates`` in VSchema shard order. A shard where nothing changed
   answers read-only and drops out. Any failure: ``AbortPrepared`` everywhere
   (which also fences the gtid, so a Prepare still in flight is refused) and
   the transaction is rolled back — definitely, on every shard.
2. **Decide** on the *decider*, the first candidate that prepared: its
   ``CommitPrepared`` is the commit point. ``commit_ts`` is the maximum of now
   and every participant's last commit timestamp, the same on all of them;
   ``parts`` are the participants' ids, sorted. If the decider's reply is
   lost, the router asks it again on a new connection (``TxStatus``, then
   ``CommitPrepared`` again: both are idempotent) until
   ``commit_outcome_wait_s``; only then does COMMIT answer
   ``COMMIT_OUTCOME_UNKNOWN``.
3. **Complete** on the other participants, in parallel, retried on new
   connections. A participant that stays unreachable commits later through
   the resolver (resolver.py): the decision is already durable on the
   decider, so COMMIT reports success (``info["pending"]`` names them).

The rule the resolver applies to a prepared transaction left without its
router — walk the candidates in order, fencing each unknown one; the first
that committed means commit, the first still prepared is the decider and,
if orphaned, is aborted — gives the same answer as the router's own path,
because the router only ever commits on the first candidate that prepared.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import trio

from dosql import protocol
from dosql.errors import CommitOutcomeUnknownError, DoSQLError, TransactionAbortedError
from dosql.faults import crash_point

if TYPE_CHECKING:
    from dosql.router.pool import ShardConnection, ShardPool, ShardResult

log = logging.getLogger(__name__)

COMMIT_OUTCOME_WAIT_S = 10.0  # how long COMMIT keeps asking a lost decider before "unknown"
RETRY_PAUSE_S = 0.2


def new_gtid() -> str:
    """A global transaction id: unique across routers and restarts."""
    return uuid.uuid4().hex


def lost(exc: DoSQLError, conn: ShardConnection) -> bool:
    """Did the request's reply go missing (so what the shard did is unknown)?"""
    return conn.broken or exc.code in ("SHARD_UNAVAILABLE", "TIMEOUT")


async def call_fresh(pool: ShardPool, make: Any) -> ShardResult:
    """One request on a pooled connection (not the transaction's, which may be gone)."""
    return await pool.run(lambda c: c.call(make))


async def retry_fresh(pool: ShardPool, make: Any, deadline: float) -> ShardResult:
    """``call_fresh`` until it gets an answer (a reply or a shard's error) or ``deadline``."""
    while True:
        try:
            return await call_fresh(pool, make)
        except DoSQLError as exc:
            if exc.code not in ("SHARD_UNAVAILABLE", "TIMEOUT") or time.monotonic() >= deadline:
                raise
        await trio.sleep(RETRY_PAUSE_S)


class TwoPhaseCommit:
    """One commit of a router transaction over its shard sessions ``conns`` (shard order)."""

    def __init__(
        self,
        gtid: str,
        pools: dict[str, ShardPool],
        conns: dict[str, ShardConnection],
        shards: list[str],
    ) -> None:
        self.gtid = gtid
        self.pools = pools
        self.conns = conns
        self.shards = shards
        self.outcome_wait_s = COMMIT_OUTCOME_WAIT_S

    # ------------------------------------------------------------------ one shard

    async def one_phase(self) -> dict[str, Any]:
        (sid,) = self.shards
        conn = self.conns[sid]
        try:
            await conn.call(lambda rid: protocol.Commit(id=rid, gtid=self.gtid))
        except DoSQLError as exc:
            if not lost(exc, conn):
                raise  # the shard answered: it rolled back
            return await self.settle_lost_one_phase(sid, exc)
        return {}

    async def settle_lost_one_phase(self, sid: str, cause: DoSQLError) -> dict[str, Any]:
        """The COMMIT's reply was lost: ask the shard (fencing), so the answer is definite."""
        deadline = time.monotonic() + self.outcome_wait_s
        try:
            res = await retry_fresh(
                self.pools[sid],
                lambda rid: protocol.TxStatus(id=rid, gtid=self.gtid, fence=True),
                deadline,
            )
        except DoSQLError as exc:
            raise self.unknown([sid], f"{cause.message}; then {exc.message}") from None
        state = (res.info or {}).get("state")
        if state == "committed":
            return {"recovered": True}
        raise self.rolled_back(f"shard {sid} lost the connection before committing")

    # ------------------------------------------------------------------ several shards

    async def best_effort(self) -> dict[str, Any]:
        """``atomic_commit = false``: one-phase commits shard after shard (the bench baseline).

        Not atomic: a failure after the first commit leaves the transaction
        applied on the shards before it (``details["committed"]`` names them).
        """
        committed: list[str] = []
        for sid in self.shards:
            try:
                await self.conns[sid].call(lambda rid: protocol.Commit(id=rid, gtid=self.gtid))
            except DoSQLError as exc:
                exc.details.update({"committed": committed, "failed_shard": sid})
                if committed:
                    exc.message += f"; already committed on {', '.join(committed)} (best effort)"
                    exc.args = (exc.message,)
                raise
            committed.append(sid)
        return {}

    async def two_phase(self) -> dict[str, Any]:
        prepared = await self.prepare_all()
        participants = [s for s in self.shards if s in prepared]
        if not participants:
            return {}  # nothing was written anywhere
        commit_ts = max([time.time_ns() // 1000] + [prepared[s] for s in participants])
        parts = sorted(participants)
        decider, rest = participants[0], participants[1:]
        crash_point("router.2pc.before_decision")
        await self.decide(decider, commit_ts, parts)
        crash_point("router.2pc.after_decision")
        pending = await self.complete(rest, commit_ts, parts)
        return {"pending": pending} if pending else {}

    async def prepare_all(self) -> dict[str, int]:
        """Phase 1: shard -> its last commit_ts, for the shards that prepared (not read-only)."""
        prepared: dict[str, int] = {}
        errors: dict[str, DoSQLError] = {}

        async def one(sid: str) -> None:
            try:
                res = await self.conns[sid].call(
                    lambda rid: protocol.Prepare(id=rid, gtid=self.gtid, candidates=self.shards)
                )
            except DoSQLError as exc:
                errors[sid] = exc
                return
            info = res.info or {}
            if not info.get("read_only"):
                prepared[sid] = int(info.get("last_commit_ts", 0))

        async with trio.open_nursery() as nursery:
            for sid in self.shards:
                nursery.start_soon(one, sid)
        if errors:
            sid, exc = next((s, errors[s]) for s in self.shards if s in errors)
            with trio.CancelScope(shield=True):
                unreached = await self.abort_all()
            if unreached:  # cannot happen silently: the resolver finishes the abort
                log.warning(
                    "abort could not reach every shard; the resolver completes it",
                    extra={"gtid": self.gtid, "shards": unreached},
                )
            exc.message = (
                f"the transaction could not be prepared on shard {sid} ({exc.message}); it was "
                "rolled back on every shard"
            )
            exc.args = (exc.message,)
            exc.details.update({"gtid": self.gtid, "failed_shard": sid, "committed": []})
            exc.details["transaction_rolled_back"] = True
            raise exc
        return prepared

    async def abort_all(self) -> list[str]:
        """AbortPrepared (fence) on every shard of the transaction; the shards not reached.

        Once every candidate is fenced, no candidate can commit, so the abort
        is decided even where the prepared state is still to be dropped.
        """
        unreached: list[str] = []

        async def one(sid: str) -> None:
            make = lambda rid: protocol.AbortPrepared(id=rid, gtid=self.gtid)  # noqa: E731
            conn = self.conns.get(sid)
            try:
                if conn is not None and conn.usable:
                    await conn.call(make)
                else:
                    await call_fresh(self.pools[sid], make)
            except DoSQLError:
                unreached.append(sid)

        async with trio.open_nursery() as nursery:
            for sid in self.shards:
                nursery.start_soon(one, sid)
        return unreached

    async def decide(self, decider: str, commit_ts: int, parts: list[str]) -> None:
        """Phase 2 on the decider: once it answers, the transaction has committed."""
        make = lambda rid: protocol.CommitPrepared(  # noqa: E731
            id=rid, gtid=self.gtid, commit_ts=commit_ts, parts=parts
        )
        conn = self.conns[decider]
        try:
            await conn.call(make)
            return
        except DoSQLError as exc:
            if not lost(exc, conn):
                # The decider answered that it did not commit (an I/O error; it stays
                # prepared): nothing committed anywhere, so abort everywhere.
                with trio.CancelScope(shield=True):
                    unreached = await self.abort_all()
                if unreached:
                    raise self.unknown(unreached, exc.message) from None
                raise self.rolled_back(f"shard {decider}: {exc.message}") from None
            cause = exc
        deadline = time.monotonic() + self.outcome_wait_s
        try:  # ask again on a new connection: CommitPrepared is idempotent
            await retry_fresh(self.pools[decider], make, deadline)
        except DoSQLError as exc:
            if isinstance(exc, TransactionAbortedError):
                # the resolver aborted it while the router could not reach the shard
                raise self.rolled_back(f"shard {decider} aborted it: {exc.message}") from None
            raise self.unknown([decider], f"{cause.message}; then {exc.message}") from None

    async def complete(self, shards: list[str], commit_ts: int, parts: list[str]) -> list[str]:
        """Phase 3: commit the other participants; those left to the resolver."""
        pending: list[str] = []
        make = lambda rid: protocol.CommitPrepared(  # noqa: E731
            id=rid, gtid=self.gtid, commit_ts=commit_ts, parts=parts
        )

        async def one(sid: str) -> None:
            conn = self.conns[sid]
            try:
                await conn.call(make)
                return
            except DoSQLError as exc:
                if not lost(exc, conn):
                    log.error(
                        "participant refused a decided commit",
                        extra={"gtid": self.gtid, "shard": sid, "error": exc.message},
                    )
                    pending.append(sid)
                    return
            try:
                await retry_fresh(self.pools[sid], make, time.monotonic() + self.outcome_wait_s)
            except DoSQLError:
                pending.append(sid)

        with trio.CancelScope(shield=True):  # the decision is made: finish whatever happens
            async with trio.open_nursery() as nursery:
                for sid in shards:
                    nursery.start_soon(one, sid)
        if pending:
            log.warning(
                "committed; some participants commit later through the resolver",
                extra={"gtid": self.gtid, "shards": pending},
            )
        return sorted(pending)

    # ------------------------------------------------------------------ errors

    def unknown(self, shards: list[str], why: str) -> CommitOutcomeUnknownError:
        return CommitOutcomeUnknownError(
            f"the outcome of transaction {self.gtid} is unknown: the reply of its commit on "
            f"shard {', '.join(shards)} was lost ({why})",
            details={"gtid": self.gtid, "shards": shards},
        )

    def rolled_back(self, why: str) -> TransactionAbortedError:
        return TransactionAbortedError(
            f"the commit of transaction {self.gtid} failed and it was rolled back on every shard "
            f"({why}); retry it",
            details={"gtid": self.gtid, "transaction_rolled_back": True, "committed": []},
        )
