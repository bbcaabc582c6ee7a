"""Cheap reads on the event loop: a point SELECT skips the worker-thread hop.

Handing a statement to a worker thread and its result back costs more than a
point lookup itself: two thread wake-ups, the GIL changing hands, a channel
and a watchdog task. So an autocommit SELECT is first tried on the event-loop
thread, under a budget of SQLite VM instructions (a progress handler), with
no busy wait and a small cap on string and blob sizes. If it runs past the
budget, would wait for a lock or would build a large value, it is
interrupted and the caller runs it again on a worker thread, where the
statement timeout, ``busy_timeout`` and SQLite's usual limits apply. A SELECT
changes nothing, so starting it twice is safe.

The budget counts VM instructions, and a few single instructions can do a
lot of work between two progress-handler calls: building a large string or
blob (hence the size cap) and counting a whole table for ``SELECT count(*)
FROM t`` with no WHERE (SQLite's one-instruction count, so such statements go
straight to a thread). What is left holds the event loop for well under a
millisecond.
"""

from __future__ import annotations

import re
import sqlite3

from dosql import protocol
from dosql.shard.database import ConnState
from dosql.shard.executor import Shard

STEP = 1000  # VM instructions between progress-handler calls
BUDGET = 20  # progress-handler calls before the statement moves to a thread
MAX_VALUE_BYTES = 1 << 20  # largest string or blob an inline read may build
_RETRY_ON_THREAD = (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_TOOBIG)
_WHOLE_TABLE_COUNT = re.compile(
    r"\s*SELECT\s+count\s*\(\s*\*?\s*\)(?:\s+(?:AS\s+)?\S+)?\s+FROM\s+[^\s;]+"
    r"(?:\s+(?:AS\s+)?[^\s;]+)?\s*;?\s*",
    re.IGNORECASE,
)


def read(
    shard: Shard, state: ConnState, sql: str, params: protocol.Params, request_id: int
) -> list[protocol.Result] | None:
    """The reply chunks of an autocommit SELECT, or None: run it on a thread instead.

    Errors other than "over budget", "busy" and "value too big" are raised
    as on the thread path, for the caller to report.
    """
    if _WHOLE_TABLE_COUNT.fullmatch(sql):
        return None
    calls = 0

    def tick() -> bool:
        nonlocal calls
        calls += 1
        return calls > BUDGET  # True interrupts the statement

    conn = state.conn
    chunks: list[protocol.Result] = []
    _busy_timeout(state, 0)
    max_length = conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    conn.set_progress_handler(tick, STEP)
    try:
        outcome = shard.execute(state, sql, params, chunks.append, request_id, autocommit=True)
    except sqlite3.Error as exc:
        code = getattr(exc, "sqlite_errorcode", None)
        if calls > BUDGET or (code is not None and code & 0xFF in _RETRY_ON_THREAD):
            return None
        raise
    finally:
        conn.set_progress_handler(None, 0)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, max_length)
        _busy_timeout(state, shard.cfg.busy_timeout_ms)
    chunks.append(outcome.final)
    return chunks


def _busy_timeout(state: ConnState, ms: int) -> None:
    state.internal = True  # the authorizer refuses this pragma to clients
    try:
        state.conn.execute(f"PRAGMA busy_timeout = {int(ms)}")
    finally:
        state.internal = False
