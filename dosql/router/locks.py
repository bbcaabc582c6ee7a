"""Router-side deadlock detection: a wait-for graph over this router's transactions.

Each shard queues writers fairly for its write lock (dosql/shard/writelock.py),
so two router transactions can wait for each other forever: A holds shard-1's
lock and begins on shard-2, B holds shard-2's and begins on shard-1. Each shard
sees only a queue; the router sees both ends. Every transaction of this router
that begins IMMEDIATE on a shard is recorded here as waiting for that shard
while its ``Begin`` is in flight, and as holding the shard once it succeeded
(until the transaction releases its shard sessions). When a new wait closes a
cycle, the youngest transaction in the cycle (the one that first used a shard
last, so the least work is lost) is failed at once with ``DEADLOCK``: if it is
the one starting to wait, its wait is refused; otherwise its pending wait is
cancelled (the shard connection is dropped, so its queued ``Begin`` there comes
to nothing). The error carries ``details["transaction_rolled_back"] = True``,
so the router rolls the victim back on every shard and the client retries.

Deadlocks between transactions of *different* routers are invisible here; each
shard's ``lock_timeout_ms`` breaks them (``DATABASE_LOCKED``).

Shards are told apart by their :class:`ShardPool` object, so two routers in one
process (tests) never mix their graphs up; the graph itself is one per process
(:data:`graph`) and holds transactions weakly.

A deferred session that runs its first write on a shard it already has a
session on is recorded as holding that shard from then on, but its wait inside
that statement is not seen here (the lock timeout covers it); the router opens
sessions for write statements IMMEDIATE, so this happens only after a read
opened the session in a transaction the client began deferred.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import trio

from dosql.errors import ConflictError

# A waiting or holding transaction, as the graph sees it: a hashable identity
# (a dosql.router.transactions.Transaction, which imports this module).
Transaction = Hashable


class _Wait:
    __slots__ = ("shard", "pool", "scope", "victim")

    def __init__(self, shard: str, pool: Any) -> None:
        self.shard = shard
        self.pool = pool
        self.scope = trio.CancelScope()
        self.victim: list[str] | None = None  # the cycle's shard ids, once chosen as victim


class LockGraph:
    """Who holds which shard's write lock, who waits for which: cycles -> DEADLOCK."""

    def __init__(self) -> None:
        self._ages: weakref.WeakKeyDictionary[Transaction, int] = weakref.WeakKeyDictionary()
        self._held: weakref.WeakKeyDictionary[Transaction, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._waits: dict[Transaction, list[_Wait]] = {}
        self._clock = itertools.count()
        self.deadlocks = 0  # broken so far (for tests and /status)

    # ------------------------------------------------------------------ recording

    def _register(self, tx: Transaction) -> None:
        if tx not in self._ages:
            self._ages[tx] = next(self._clock)

    def held(self, tx: Transaction, shard: str, conn: Any) -> None:
        """``tx``'s session ``conn`` on ``shard`` holds the write lock (while it stays open)."""
        self._register(tx)
        self._held.setdefault(tx, {})[shard] = conn

    def _holders(self, pool: Any) -> list[Transaction]:
        out = []
        for tx, shards in list(self._held.items()):
            for sid, conn in shards.items():
                if tx.pools.get(sid) is pool and tx.conns.get(sid) is conn:
                    out.append(tx)
                    break
        return out

    # ------------------------------------------------------------------ waiting

    @contextmanager
    def waiting(self, tx: Transaction, shard: str) -> Iterator[None]:
        """Wrap a wait for ``shard``'s write lock; raises DEADLOCK if it closes a cycle."""
        self._register(tx)
        wait = _Wait(shard, tx.pools[shard])
        self._waits.setdefault(tx, []).append(wait)
        try:
            cycle = self._cycle(tx)
            if cycle is not None:
                victim = max(cycle, key=lambda t: self._ages.get(t, -1))
                shards = self._cycle_shards(cycle)
                self.deadlocks += 1
                if victim is tx:
                    raise deadlock(shard, shards)
                for w in self._waits.get(victim, []):
                    w.victim = shards
                    w.scope.cancel()
            with wait.scope:
                yield
            if wait.scope.cancelled_caught and wait.victim is not None:
                raise deadlock(shard, wait.victim)
        finally:
            waits = self._waits.get(tx, [])
            if wait in waits:
                waits.remove(wait)
            if not waits:
                self._waits.pop(tx, None)

    def _edges(self, tx: Transaction) -> list[Transaction]:
        out: list[Transaction] = []
        for w in self._waits.get(tx, []):
            out.extend(h for h in self._holders(w.pool) if h is not tx and h not in out)
        return out

    def _cycle(self, start: Transaction) -> list[Transaction] | None:
        """A cycle of waits through ``start`` (a new cycle always goes through the new wait)."""
        path: list[Transaction] = [start]
        seen: set[int] = {id(start)}

        def visit(tx: Transaction) -> list[Transaction] | None:
            for nxt in self._edges(tx):
                if nxt is start:
                    return list(path)
                if id(nxt) in seen:
                    continue
                seen.add(id(nxt))
                path.append(nxt)
                found = visit(nxt)
                if found is not None:
                    return found
                path.pop()
            return None

        return visit(start)

    def _cycle_shards(self, cycle: list[Transaction]) -> list[str]:
        return [w.shard for tx in cycle for w in self._waits.get(tx, [])]


def deadlock(shard: str, cycle_shards: list[str]) -> ConflictError:
    return ConflictError(
        f"deadlock: this transaction and another one of this router each held a write lock "
        f"the other waited for (shards {', '.join(dict.fromkeys(cycle_shards))}); this one, "
        "the youngest, was chosen to fail and is rolled back: retry it (touching shards in "
        "the same order in every transaction avoids this)",
        code="DEADLOCK",
        details={"shard": shard, "cycle": cycle_shards, "transaction_rolled_back": True},
    )


graph = LockGraph()
