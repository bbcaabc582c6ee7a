"""The JSON events a subscriber receives (Debezium envelope) and how values are encoded.

This is dosql's own format, the default; ``"format": "debezium"`` gets Debezium's exact
records instead (:mod:`dolake.subscribe.debezium`, which encodes values with this
module's :func:`json_value`). The session formats through :class:`DosqlFormat` or
``DebeziumFormat``, which share one interface.

Row change::

    {"before": {...} | null, "after": {...} | null, "op": "c" | "u" | "d" | "r",
     "ts_ms": <now>, "key": [...],
     "source": {"shard", "table", "lsn", "txid", "commit_ts_ms", "gtid", "snapshot": bool},
     "position": "<resume here to get what follows>"}

Values are the SQLite values as JSON: NULL -> null, integers, reals, text;
BLOBs are base64 strings, and because SQLite typing is dynamic (a TEXT column
may hold a blob) an event that carries any blob says which values are blobs:
``"binary": {"before": [cols], "after": [cols], "key": [indexes]}`` (absent
when there is none). The schema events state this encoding too.

Other events carry a ``"type"``: ``schema`` (a table's columns, when it is
first seen and on every schema change), ``commit`` (after the last delivered
change of a transaction), ``heartbeat`` (the current position, every few
seconds), ``error`` (then the server closes the connection).
"""

from __future__ import annotations

import base64
import json
import math
import time
from typing import Any

from dosql import protocol

OP_LETTER = {"insert": "c", "update": "u", "delete": "d"}
ENCODING = {"binary": "base64", "binary_fields": "binary"}


def now_ms() -> int:
    return int(time.time() * 1000)


def json_value(v: Any) -> Any:
    """One SQLite value as JSON (BLOB -> base64 text, non-finite real -> string); shared
    with the Debezium format so both encode values the same way."""
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    return v


def json_image(image: dict[str, Any] | None, blobs: list[str]) -> dict[str, Any] | None:
    """A row image as JSON; the names of its BLOB columns are appended to ``blobs``."""
    if image is None:
        return None
    out = {}
    for name, v in image.items():
        if isinstance(v, bytes):
            blobs.append(name)
        out[name] = json_value(v)
    return out


def row_event(
    shard: str,
    ch: protocol.Change,
    op: str,
    pos: str,
    *,
    snapshot: bool = False,
) -> dict[str, Any]:
    blobs_before: list[str] = []
    blobs_after: list[str] = []
    key = list(ch.key or [])
    event: dict[str, Any] = {
        "before": json_image(ch.before, blobs_before),
        "after": json_image(ch.after, blobs_after),
        "op": op,
        "ts_ms": now_ms(),
        "key": [json_value(k) for k in key],
        "source": {
            "shard": shard,
            "table": ch.table,
            "lsn": ch.lsn,
            "txid": ch.txid,
            "commit_ts_ms": ch.commit_ts // 1000,
            "gtid": ch.gtid,
            "snapshot": snapshot,
        },
        "position": pos,
    }
    key_blobs = [i for i, k in enumerate(key) if isinstance(k, bytes)]
    if blobs_before or blobs_after or key_blobs:
        event["binary"] = {"before": blobs_before, "after": blobs_after, "key": key_blobs}
    return event


def schema_event(
    shard: str,
    table: str,
    schema: protocol.TableSchema,
    pos: str,
    *,
    lsn: int | None = None,
    txid: int | None = None,
    commit_ts: int | None = None,
    gtid: str | None = None,
) -> dict[str, Any]:
    return {
        "type": "schema",
        "table": table,
        "action": schema.action,
        "columns": [
            {"name": c.name, "type": c.decltype, "notnull": c.notnull, "pk": c.pk}
            for c in schema.columns
        ],
        "primary_key": list(schema.primary_key),
        "renamed_from": schema.renamed_from,
        "sql": schema.sql,
        "encoding": ENCODING,
        "source": {
            "shard": shard,
            "table": table,
            "lsn": lsn,
            "txid": txid,
            "commit_ts_ms": commit_ts // 1000 if commit_ts is not None else None,
            "gtid": gtid,
        },
        "position": pos,
    }


def commit_event(
    shard: str,
    txid: int,
    commit_ts: int,
    events: int,
    pos: str,
    *,
    gtid: str | None = None,
    parts: list[str] | None = None,
    final: bool = True,
) -> dict[str, Any]:
    """The end of one shard's part of a transaction. A distributed transaction's
    markers (one per shard that delivered events, all after every event of the
    transaction) carry its ``gtid`` and ``parts``; ``final`` is true on the last."""
    return {
        "type": "commit",
        "shard": shard,
        "txid": txid,
        "commit_ts_ms": commit_ts // 1000,
        "events": events,
        "gtid": gtid,
        "parts": parts,
        "final": final,
        "position": pos,
    }


def heartbeat_event(pos: str) -> dict[str, Any]:
    return {"type": "heartbeat", "ts_ms": now_ms(), "position": pos}


def error_event(code: str, message: str, pos: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if pos is not None:
        event["position"] = pos
    return event


class DosqlFormat:
    """The default event shapes (this module's functions), behind the interface the session
    formats through (see :mod:`dolake.subscribe.debezium` for the other one).

    Each method returns the events to queue, possibly none: ``changes_only`` keeps only
    row events, for consumers that treat every message as a row change."""

    def __init__(self, *, changes_only: bool = False) -> None:
        self.changes_only = changes_only

    def row(
        self, shard: str, ch: protocol.Change, op: str, pos: str, snapshot: str = "false"
    ) -> list[dict[str, Any]]:
        return [row_event(shard, ch, op, pos, snapshot=snapshot != "false")]

    def schema(
        self, shard: str, table: str, schema: protocol.TableSchema, pos: str, **source: Any
    ) -> list[dict[str, Any]]:
        return [] if self.changes_only else [schema_event(shard, table, schema, pos, **source)]

    def commit(
        self, shard: str, txid: int, commit_ts: int, count: int, pos: str, **kw: Any
    ) -> list[dict[str, Any]]:
        if self.changes_only:
            return []
        return [commit_event(shard, txid, commit_ts, count, pos, **kw)]

    def heartbeat(self, pos: str) -> list[dict[str, Any]]:
        return [] if self.changes_only else [heartbeat_event(pos)]


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
