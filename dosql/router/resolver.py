"""Deciding prepared transactions that lost their router, and answering "did gtid commit?".

A prepared transaction whose router session went away (the router died, or
its connection to the shard dropped) is *orphaned*: it still holds its
shard's write lock, waiting for a decision. Every router runs a resolver
that lists each shard's prepared transactions every ``interval_s`` and
decides the orphaned ones by the rule of twophase.py: walk the candidates
in order with ``TxStatus(fence=True)``:

- a candidate that **committed** means the transaction committed: commit
  the orphan with the same ``commit_ts`` and ``parts``;
- the first candidate still **prepared** is the decider: if it is orphaned
  too, nobody can commit it any more — abort it, then the orphan; if its
  router session is alive, the router is deciding: wait;
- an **aborted** candidate (or one that never saw the gtid, now fenced so it
  never will) did not decide: go on to the next.

The walk always ends at the orphan itself at the latest. Unreachable
candidates leave the transaction in doubt until a later pass. Several
routers may run resolvers at once: fences and idempotent decisions make
their answers agree.

:func:`transaction_status` answers ``SELECT dosql_transaction_status(gtid)``
the same way, over all shards: committed, aborted, or in_doubt.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from dosql import protocol
from dosql.errors import DoSQLError
from dosql.router.twophase import call_fresh

if TYPE_CHECKING:
    from dosql.router.pool import ShardPool

log = logging.getLogger(__name__)


async def _decide(pool: ShardPool, gtid: str, commit: tuple[int, list[str]] | None) -> None:
    """Abort (``commit`` None) or commit a prepared ``gtid`` on one shard; both idempotent."""
    if commit is None:
        make: Any = lambda rid: protocol.AbortPrepared(id=rid, gtid=gtid)  # noqa: E731
    else:
        ts, parts = commit
        make = lambda rid: protocol.CommitPrepared(  # noqa: E731
            id=rid, gtid=gtid, commit_ts=ts, parts=parts
        )
    await call_fresh(pool, make)


async def tx_status(pool: ShardPool, gtid: str) -> dict[str, Any]:
    res = await call_fresh(pool, lambda rid: protocol.TxStatus(id=rid, gtid=gtid, fence=True))
    return res.info or {}


class Resolver:
    def __init__(
        self, pools: dict[str, ShardPool], *, interval_s: float = 1.0, min_age_s: float = 0.5
    ) -> None:
        self.pools = pools
        self.interval_s = interval_s
        self.min_age_s = min_age_s  # let a router that just lost a connection retry first
        self.prepared: dict[tuple[str, str], dict[str, Any]] = {}  # (shard, gtid) -> listing
        self.in_doubt: dict[tuple[str, str], str] = {}  # (shard, gtid) -> why undecided
        self.decided = {"committed": 0, "aborted": 0}
        self.last_pass: float | None = None

    # ------------------------------------------------------------------ loop

    async def run(self) -> None:
        while True:
            # first wait: a router that just lost its connections retries before we decide
            await trio.sleep(self.interval_s)
            try:
                await self.pass_once()
            except Exception:  # never let one bad pass stop the resolver
                log.exception("resolver pass failed")

    async def pass_once(self) -> None:
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        for sid, pool in self.pools.items():
            try:
                res = await call_fresh(pool, lambda rid: protocol.ListPrepared(id=rid))
            except DoSQLError:
                continue  # a shard that is down keeps what it has prepared
            for entry in (res.info or {}).get("prepared", []):
                seen[(sid, entry["gtid"])] = entry
        self.prepared = seen
        for (sid, gtid), entry in list(seen.items()):
            if not entry.get("orphaned") or entry.get("age_s", 0) < self.min_age_s:
                self.in_doubt.pop((sid, gtid), None)
                continue
            try:
                outcome = await self.resolve(sid, gtid, entry.get("candidates") or [sid])
            except DoSQLError as exc:  # e.g. decided meanwhile by another router: next pass
                outcome = f"deciding it failed: [{exc.code}] {exc.message}"
            if outcome in self.decided:
                self.decided[outcome] += 1
                self.in_doubt.pop((sid, gtid), None)
                log.info(
                    "resolved a prepared transaction",
                    extra={"gtid": gtid, "shard": sid, "outcome": outcome},
                )
            else:
                self.in_doubt[(sid, gtid)] = outcome
        self.in_doubt = {k: v for k, v in self.in_doubt.items() if k in seen}
        self.last_pass = time.time()

    async def resolve(self, sid: str, gtid: str, candidates: list[str]) -> str:
        """Decide orphan ``gtid`` on shard ``sid``: "committed", "aborted", or why it waits."""
        for cand in candidates:
            pool = self.pools.get(cand)
            if pool is None:
                return f"candidate shard {cand} is not in the VSchema"
            try:
                info = await tx_status(pool, gtid)
            except DoSQLError as exc:
                return f"candidate shard {cand} is unreachable: {exc.message}"
            state = info.get("state")
            if state == "committed":
                await self.decide(sid, gtid, commit=(int(info["commit_ts"]), list(info["parts"])))
                return "committed"
            if state == "prepared":
                if not info.get("orphaned"):
                    return f"its router is deciding it on shard {cand}"
                if cand != sid:
                    await self.decide(cand, gtid, commit=None)
                await self.decide(sid, gtid, commit=None)
                return "aborted"
        return "no candidate decided it"  # unreachable: the orphan itself is prepared

    async def decide(self, sid: str, gtid: str, commit: tuple[int, list[str]] | None) -> None:
        await _decide(self.pools[sid], gtid, commit)

    # ------------------------------------------------------------------ observability

    def counts(self) -> dict[str, int]:
        return {"prepared": len(self.prepared), "in_doubt": len(self.in_doubt)}

    def status(self) -> dict[str, Any]:
        return {
            "prepared": [
                {"shard": sid, **entry} for (sid, _), entry in sorted(self.prepared.items())
            ],
            "in_doubt": [
                {"shard": sid, "gtid": gtid, "waiting_because": why}
                for (sid, gtid), why in sorted(self.in_doubt.items())
            ],
            "resolved": dict(self.decided),
            "last_pass": self.last_pass,
        }


async def transaction_status(
    pools: dict[str, ShardPool], gtid: str, *, settle_s: float = 5.0
) -> str:
    """``committed`` / ``aborted`` / ``in_doubt`` for ``gtid``, asking (and fencing) every shard.

    Fencing makes "aborted" final: a shard that had not seen the gtid will
    refuse it from now on. A shard that cannot be asked leaves the answer
    in doubt unless another one already says committed.

    "committed" is answered once every reachable participant has applied
    the commit, so that a read right after it sees the whole transaction:
    a part still prepared and orphaned (its router died after the decision)
    is committed here with the decider's ``commit_ts`` and ``parts``, as the
    resolver would a moment later; a part whose router is still completing
    it is waited for, up to ``settle_s``.
    """
    deadline = trio.current_time() + settle_s
    while True:
        infos = await _ask_every_shard(pools, gtid)
        states = {str(info.get("state")) for info in infos.values()}
        decided = next((i for i in infos.values() if i.get("state") == "committed"), None)
        if decided is None:
            return "aborted" if states <= {"aborted"} else "in_doubt"
        parts = [sid for sid, info in infos.items() if info.get("state") == "prepared"]
        if not parts:
            return "committed"
        commit = (int(decided["commit_ts"]), list(decided["parts"]))
        for sid in parts:
            if infos[sid].get("orphaned"):
                with contextlib.suppress(DoSQLError):  # asked again on the next round
                    await _decide(pools[sid], gtid, commit)
        if trio.current_time() >= deadline:
            return "committed"  # the decision is durable; a part commits through the resolver
        await trio.sleep(0.05)


async def _ask_every_shard(pools: dict[str, ShardPool], gtid: str) -> dict[str, dict[str, Any]]:
    """``TxStatus(gtid, fence=True)`` on every shard at once; an unreachable one: state unreachable."""
    infos: dict[str, dict[str, Any]] = {}

    async def one(sid: str, pool: ShardPool) -> None:
        try:
            infos[sid] = await tx_status(pool, gtid)
        except DoSQLError:
            infos[sid] = {"state": "unreachable"}

    async with trio.open_nursery() as nursery:
        for sid, pool in pools.items():
            nursery.start_soon(one, sid, pool)
    return infos
