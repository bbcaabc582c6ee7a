"""``dosql changes``: print a shard database's change log as JSON lines (a binlog reader).

Opens the database read-only (``file:…?mode=ro``), so it works while the
shard is running. One line per change::

    {"lsn": 7, "txid": 3, "commit_ts": "2026-01-20T14:30:00.123456Z",
     "commit_ts_us": 1768919400123456, "table": "users", "op": "update",
     "key": [42], "before": {...}, "after": {...}, "schema": null}

JSON cannot carry every SQLite value as itself, so: BLOBs are written as
``{"$base64": "<standard base64>"}``; integers are JSON integers (exact);
floats use Python's shortest round-trip repr (exact); non-finite floats are
``{"$float": "nan" | "inf" | "-inf"}``. ``schema`` is the TableSchema of a
schema event as an object.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import sqlite3
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from dosql.errors import NotFoundError, StorageError
from dosql.shard.changelog import read_changes
from dosql.shard.database import open_readonly


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the shard's SQLite database file")
    parser.add_argument("--from-lsn", type=int, default=1, help="first LSN to print (default 1)")
    parser.add_argument("--table", default=None, help="only changes of this table")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many changes")


def plain(value: Any) -> Any:
    """A SQLite value as JSON (see the module docstring for the encoding)."""
    if isinstance(value, bytes):
        return {"$base64": base64.b64encode(value).decode()}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def iso(ts_us: int) -> str:
    dt = datetime.fromtimestamp(ts_us // 1_000_000, tz=UTC).replace(microsecond=ts_us % 1_000_000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def run(args: argparse.Namespace) -> int:
    if not Path(args.db).exists():
        raise NotFoundError(f"database {args.db} does not exist", code="NOT_FOUND")
    conn = open_readonly(args.db)
    try:
        try:
            conn.execute("SELECT 1 FROM _dosql_changes LIMIT 1")
        except sqlite3.OperationalError as exc:
            raise StorageError(
                f"{args.db} is not a DoSQL shard database (no change log): {exc}"
            ) from None
        lsn, remaining, out = max(args.from_lsn, 1), args.limit, sys.stdout
        while remaining is None or remaining > 0:
            batch = 1000 if remaining is None else min(remaining, 1000)
            conn.execute("BEGIN")
            try:
                changes = read_changes(conn, lsn, batch, args.table)
            finally:
                conn.execute("COMMIT")
            for ch in changes:
                record = {
                    "lsn": ch.lsn,
                    "txid": ch.txid,
                    "commit_ts": iso(ch.commit_ts),
                    "commit_ts_us": ch.commit_ts,
                    "table": ch.table,
                    "op": ch.op,
                    "key": plain(ch.key),
                    "before": plain(ch.before),
                    "after": plain(ch.after),
                    "schema": msgspec.to_builtins(ch.schema) if ch.schema is not None else None,
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            if remaining is not None:
                remaining -= len(changes)
            if len(changes) < batch:
                break
            lsn = changes[-1].lsn + 1
        out.flush()
    finally:
        conn.close()
    return 0
