"""Cheap reads on the event loop: a point SELECT skips the worker-thread hop.

Handing a statement to a worker thread and its result back costs more than a
point lookup itself: two thread wake-ups, the GIL changing hands, a channel
and a watchdog task. So an autocommit SELECT is first tried on the event-loop
thread, under a budget of SQLite VM instructions (a progress handler) and
with no busy wait. If it runs past the budget, or would wait for a lock, it
is interrupted and the caller runs it again on a worker thread, where the
statement timeout and ``busy_timeout`` apply as usual. A SELECT changes
nothing, so starting it twice is safe; the budget bounds how long the event
loop is held (a few hundred microseconds at most).
"""

from __future__ import annotations

import sqlite3

from dosql import protocol
from dosql.shard.database import ConnState
from dosql.shard.executor import Shard

STEP = 1000  # VM instructions between progress-handler calls
BUDGET = 20  # progress-handler calls before the statement moves to a thread
_RETRY_ON_THREAD = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def read(
    shard: Shard, state: ConnState, sql: str, params: protocol.Params, request_id: int
) -> list[protocol.Result] | None:
    """The reply chunks of an autocommit SELECT, or None: run it on a thread instead.

    Errors other than "over budget" and "busy" are raised as on the thread
    path, for the caller to report.
    """
    calls = 0

    def tick() -> bool:
        nonlocal calls
        calls += 1
        return calls > BUDGET  # True interrupts the statement

    conn = state.conn
    chunks: list[protocol.Result] = []
    _busy_timeout(state, 0)
    conn.set_progress_handler(tick, STEP)
    try:
        outcome = shard.execute(state, sql, params, chunks.append, request_id, autocommit=True)
    except sqlite3.OperationalError as exc:
        if calls > BUDGET or (exc.sqlite_errorcode & 0xFF) in _RETRY_ON_THREAD:
            return None
        raise
    finally:
        conn.set_progress_handler(None, 0)
        _busy_timeout(state, shard.cfg.busy_timeout_ms)
    chunks.append(outcome.final)
    return chunks


def _busy_timeout(state: ConnState, ms: int) -> None:
    state.internal = True  # the authorizer refuses this pragma to clients
    try:
        state.conn.execute(f"PRAGMA busy_timeout = {int(ms)}")
    finally:
        state.internal = False
