"""The subscribe message: what a subscriber asks for, parsed and checked.

One JSON text frame, for example::

    {"tables": ["users", "orders"],          # or "*" (every table, also future ones)
     "ops": ["c", "u", "d"],                 # optional: only these operations
     "filter": {"key": [42, 43]},            # optional: only rows with these primary keys
     "start": "latest",                      # "earliest" | {"timestamp": "2026-01-20T14:30:00Z"}
                                             # | {"position": "<from an earlier event>"}
     "snapshot": false,                      # true: "r" events of the current rows first
     "format": "dosql",                      # or "debezium" (dolake/subscribe/debezium.py)
     "changes_only": false,                  # row events only
     "tombstones": false, "schemas": false,  # debezium only: tombstones, JsonConverter schemas
     "name": "<server name>"}                # debezium only: source.name / topic prefix

``filter.key`` lists primary key values: a scalar for a one-column key, a
list (in key order) for a composite key; rowid tables are keyed by rowid.
Anything malformed raises ValidationError(INVALID_INPUT) with a message that
says what to send instead.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from dolake.subscribe import position
from dosql.errors import ValidationError

OPS = {"c": "insert", "u": "update", "d": "delete"}
KNOWN_KEYS = {
    "tables",
    "ops",
    "filter",
    "start",
    "snapshot",
    "format",
    "changes_only",
    "tombstones",
    "schemas",
    "name",
}
FORMATS = ("dosql", "debezium")


@dataclass(frozen=True)
class Start:
    kind: str  # "latest" | "earliest" | "timestamp" | "position"
    micros: int | None = None  # timestamp: UTC microseconds
    vector: dict[str, int] = field(default_factory=dict)  # position
    # position inside a distributed transaction: LSNs above ``vector`` already delivered
    extra: dict[str, set[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Subscription:
    tables: frozenset[str] | None  # lower-case names; None = every table
    ops: frozenset[str]  # change ops delivered ("insert", "update", "delete")
    keys: tuple[tuple[Any, ...], ...] | None  # row filter on primary key values
    start: Start
    snapshot: bool
    format: str = "dosql"  # "debezium": Kafka-style records (see dolake/subscribe/debezium.py)
    changes_only: bool = False  # row events only: no schema/commit/heartbeat messages
    tombstones: bool = False  # debezium: a record with value null after each delete
    schemas: bool = False  # debezium: {"schema", "payload"} as Kafka Connect's JsonConverter
    name: str | None = None  # debezium: the server name (topic prefix); default the namespace

    def wants_table(self, table: str) -> bool:
        return self.tables is None or table.lower() in self.tables

    def wants_key(self, key: list[Any] | None) -> bool:
        return self.keys is None or tuple(key or ()) in self.keys


def invalid(message: str) -> ValidationError:
    return ValidationError(message, code="INVALID_INPUT")


def parse(frame: str | bytes) -> Subscription:
    if isinstance(frame, bytes):
        try:
            frame = frame.decode("utf-8")
        except UnicodeDecodeError:
            raise invalid("the subscribe message must be JSON text (UTF-8)") from None
    try:
        msg = json.loads(frame)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise invalid(f"the subscribe message is not JSON ({exc}); send e.g. " + EXAMPLE) from None
    if not isinstance(msg, dict):
        raise invalid("the subscribe message must be a JSON object, e.g. " + EXAMPLE)
    unknown = sorted(set(msg) - KNOWN_KEYS)
    if unknown:
        raise invalid(
            f"unknown field(s) {', '.join(unknown)} in the subscribe message; known: "
            + ", ".join(sorted(KNOWN_KEYS))
        )
    return Subscription(
        tables=_tables(msg.get("tables")),
        ops=_ops(msg.get("ops")),
        keys=_keys(msg.get("filter")),
        start=_start(msg.get("start", "latest")),
        snapshot=_snapshot(msg),
        **_format(msg),
    )


EXAMPLE = '{"tables": ["users"], "start": "latest"}'


def _tables(raw: Any) -> frozenset[str] | None:
    if raw == "*":
        return None
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(t, str) and t.strip() for t in raw)
    ):
        raise invalid('"tables" must be "*" or a non-empty list of table names')
    return frozenset(t.strip().lower() for t in raw)


def _ops(raw: Any) -> frozenset[str]:
    if raw is None:
        return frozenset(OPS.values())
    if not isinstance(raw, list) or not raw or not all(o in OPS for o in raw):
        raise invalid('"ops" must be a non-empty list of "c" (insert), "u" (update), "d" (delete)')
    return frozenset(OPS[o] for o in raw)


def _keys(raw: Any) -> tuple[tuple[Any, ...], ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"key"} or not isinstance(raw["key"], list):
        raise invalid('"filter" must be {"key": [values]} (primary key values to follow)')
    keys = []
    for value in raw["key"]:
        parts = value if isinstance(value, list) else [value]
        if not all(v is None or isinstance(v, int | float | str) for v in parts):
            raise invalid(
                '"filter.key" values must be numbers or strings (lists for composite keys)'
            )
        keys.append(tuple(parts))
    return tuple(keys)


def _start(raw: Any) -> Start:
    if raw in ("latest", "earliest"):
        return Start(raw)
    if isinstance(raw, dict) and set(raw) == {"timestamp"}:
        return Start("timestamp", micros=parse_timestamp(raw["timestamp"]))
    if isinstance(raw, dict) and set(raw) == {"position"}:
        vector, extra = position.decode_full(raw["position"])
        return Start("position", vector=vector, extra=extra)
    raise invalid(
        '"start" must be "latest", "earliest", {"timestamp": "<ISO 8601>"} or '
        '{"position": "<position string from an event>"}'
    )


def parse_timestamp(raw: Any) -> int:
    """ISO 8601 (naive = UTC) or epoch milliseconds -> UTC microseconds."""
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return int(raw * 1000)
    if isinstance(raw, str):
        text = raw.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            if value.tzinfo is None:
                value = value.replace(tzinfo=dt.UTC)
            delta = value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
            return delta // dt.timedelta(microseconds=1)
    raise invalid(
        '"start.timestamp" must be an ISO 8601 time such as "2026-01-20T14:30:00Z" '
        "(naive times are UTC) or epoch milliseconds"
    )


def _format(msg: dict[str, Any]) -> dict[str, Any]:
    """The output options; the Debezium-only ones are refused with the default format
    rather than ignored, so a subscriber never silently gets another shape than it asked."""
    fmt = msg.get("format", "dosql")
    if fmt not in FORMATS:
        raise invalid('"format" must be "dosql" (the default) or "debezium"')
    out: dict[str, Any] = {"format": fmt}
    for opt in ("changes_only", "tombstones", "schemas"):
        raw = msg.get(opt, False)
        if not isinstance(raw, bool):
            raise invalid(f'"{opt}" must be true or false')
        if raw and opt != "changes_only" and fmt != "debezium":
            raise invalid(f'"{opt}" needs "format": "debezium"')
        out[opt] = raw
    name = msg.get("name")
    if name is not None:
        if fmt != "debezium":
            raise invalid('"name" needs "format": "debezium"')
        if not isinstance(name, str) or not name.strip():
            raise invalid('"name" (the Debezium server name / topic prefix) must be a string')
        out["name"] = name.strip()
    return out


def _snapshot(msg: dict[str, Any]) -> bool:
    raw = msg.get("snapshot", False)
    if not isinstance(raw, bool):
        raise invalid('"snapshot" must be true or false')
    if raw and msg.get("start", "latest") != "latest":
        raise invalid('"snapshot": true starts at the snapshot; leave "start" out (or "latest")')
    return raw
