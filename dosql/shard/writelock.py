"""A shard's write lock as a fair FIFO queue on the trio side.

SQLite allows one writer per database and makes the others spin in its busy
handler: no order (a late writer can overtake one that waited seconds), a
worker thread blocked per waiter, and a hard failure after ``busy_timeout``
however short the queue. The shard therefore queues writers here, on the
event loop, *before* they touch SQLite: a write transaction holds this lock
from its ``BEGIN IMMEDIATE`` (or, for a deferred transaction, from its first
write statement) to its end, an autocommit write statement for the length of
the statement. Whoever holds it finds SQLite's write lock free, so SQLite's
busy handler only ever waits for the shard's own short internal writes.
Readers never come here (WAL: they never wait for a writer).

API (trio side, one event loop):

- ``await lock.acquire(owner, timeout=s)`` queues ``owner`` (any hashable
  object) and returns the milliseconds it waited once it holds the lock; it
  raises ``StorageError(DATABASE_LOCKED)`` naming the wait and the
  ``lock_timeout_ms`` setting when ``timeout`` passes first. Cancelled while
  waiting, it leaves the queue; cancelled just after being granted, it
  releases again, so the lock is never lost.
- ``lock.release(owner)`` hands the lock to the next waiter in arrival order;
  releasing what ``owner`` does not hold is a no-op (so every cleanup path may
  call it).
- ``lock.transfer(owner, new_owner)`` moves a held lock to another owner
  without letting anybody in between. The shard acquires with a ticket
  before it takes a pooled connection (a queued writer does not pin a
  connection) and transfers the lock to the connection's ``ConnState``, so
  the holder is the *connection*, not the session: a prepared two-phase-commit
  transaction keeps its connection — and with it the write lock — after its
  session is gone, and ``Shard.release(state)`` (or ``lock.release(state)``)
  frees it when the decision is applied. ``lock.holds(owner)`` tells.
- ``waiting`` (queued writers) and ``holder`` are read by ``/metrics``; each
  finished wait is reported to the ``observe`` callback in seconds (the
  ``dosql_write_lock_wait_seconds`` histogram).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable

import trio

from dosql.errors import StorageError
from dosql.statements import kind

_OTHER_WRITES = re.compile(r"^\s*(?:ANALYZE|REINDEX)\b|^\s*PRAGMA\b[^;]*=", re.IGNORECASE)


def takes_write_lock(sql: str) -> bool:
    """Does this statement write, so it must queue for the write lock first?

    DML and DDL do; so do ANALYZE, REINDEX and PRAGMA assignments. SELECTs,
    savepoints and PRAGMA reads do not (a savepoint sent to every shard of a
    transaction must not lock them all).
    """
    k = kind(sql)
    return k in ("dml", "ddl") or (k == "other" and bool(_OTHER_WRITES.match(sql)))


class _Waiter:
    __slots__ = ("owner", "event", "granted")

    def __init__(self, owner: object) -> None:
        self.owner = owner
        self.event = trio.Event()
        self.granted = False


class WriteLock:
    """One shard's write lock: FIFO, owner-tracked, bounded waits."""

    def __init__(self, shard_id: str, *, observe: Callable[[float], None] | None = None) -> None:
        self.shard_id = shard_id
        self.holder: object | None = None
        self._queue: deque[_Waiter] = deque()
        self.observe = observe  # set by ShardMetrics: each wait, in seconds

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def holds(self, owner: object) -> bool:
        return self.holder is not None and self.holder is owner

    async def acquire(self, owner: object, *, timeout: float) -> float:
        """Hold the lock for ``owner``; milliseconds waited. DATABASE_LOCKED after ``timeout``."""
        if self.holds(owner):
            return 0.0
        started = time.perf_counter()
        if self.holder is None and not self._queue:
            self.holder = owner
            self._done(0.0)
            return 0.0
        waiter = _Waiter(owner)
        self._queue.append(waiter)
        try:
            with trio.move_on_after(timeout):
                await waiter.event.wait()
        except BaseException:  # cancelled from outside: give back whatever we got
            self._abandon(waiter)
            raise
        waited = (time.perf_counter() - started) * 1000
        if waiter.granted:
            self._done(waited)
            return waited
        self._abandon(waiter)
        self._done(waited)
        raise StorageError(
            f"waited {waited:.0f} ms for shard {self.shard_id}'s write lock, held by another "
            f"write transaction ({len(self._queue)} more writers queued), and gave up: keep write "
            "transactions short, or raise lock_timeout_ms ([shard] in the config, env "
            "DOSQL_LOCK_TIMEOUT_MS); then retry",
            code="DATABASE_LOCKED",
            details={
                "shard": self.shard_id,
                "waited_ms": round(waited),
                "lock_timeout_ms": round(timeout * 1000),
            },
        )

    def release(self, owner: object) -> None:
        """Free the lock if ``owner`` holds it, handing it to the oldest waiter."""
        if not self.holds(owner):
            return
        self.holder = None
        if self._queue:
            nxt = self._queue.popleft()
            nxt.granted = True
            self.holder = nxt.owner
            nxt.event.set()

    def grant(self, owner: object) -> None:
        """Take the free lock without waiting (a shard's startup: a redone prepared transaction)."""
        if self.holder is not None or self._queue:
            raise RuntimeError(f"shard {self.shard_id}'s write lock is not free")
        self.holder = owner

    def transfer(self, owner: object, new_owner: object) -> None:
        """Move a held lock to ``new_owner`` (nobody else can take it in between)."""
        if not self.holds(owner):
            raise RuntimeError(f"transfer of shard {self.shard_id}'s write lock by a non-holder")
        self.holder = new_owner

    def _abandon(self, waiter: _Waiter) -> None:
        if waiter.granted:
            self.release(waiter.owner)
        else:
            try:
                self._queue.remove(waiter)
            except ValueError:
                pass

    def _done(self, waited_ms: float) -> None:
        if self.observe is not None:
            self.observe(waited_ms / 1000)
