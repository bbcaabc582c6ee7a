"""The Debezium format of the change stream (``"format": "debezium"`` in the subscribe request).

Why a second format: Debezium consumers (Flink's ``debezium-json``, Kafka Connect
sinks, anything written against Debezium's documentation) accept only Debezium's
exact envelope, and they get each message as a Kafka record: a key, a value, a
topic. Over a WebSocket one frame carries one such record::

    {"topic": "<name>.<db>.<table>",
     "key": {"id": 7} | null,                  # the primary key as a record (null: no PK)
     "value": {"before", "after", "source", "op", "ts_ms", "transaction"} | null,
     "position": "<resume here>"}              # dosql's resume token, like a Kafka offset

``value`` is exactly Debezium's change-event value; ``value: null`` is a tombstone
(after a delete, with ``"tombstones": true``). With ``"schemas": true`` key and value
are each ``{"schema": {...}, "payload": ...}`` as Kafka Connect's JsonConverter writes
them with ``schemas.enable=true``.

Besides row records (unless ``"changes_only": true``): transaction metadata records as
Debezium's ``provide.transaction.metadata`` writes them (topic ``<name>.transaction``,
value ``{"status": "BEGIN"|"END", "id", "ts_ms", "event_count", "data_collections"}``)
in place of dosql's commit markers, and heartbeat records (topic
``__debezium-heartbeat.<name>``, value ``{"ts_ms"}``). dosql's schema events are not
sent: the ``schema`` part carries the columns. A row consumer keeps the records whose
``value`` has ``op`` (or filters by topic).

``transaction.id`` is the global transaction id (gtid) when the change has one, so every
event of a distributed transaction carries the same id on every shard, else
``"<shard>:<txid>"``; ``total_order`` numbers the delivered events of the transaction
from 1, ``data_collection_order`` those of its table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from dolake.subscribe import events
from dosql import protocol

CONNECTOR = "dosql"


def _version() -> str:
    try:
        return metadata.version("dosql")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0.0.0"


VERSION = _version()


def connect_type(decltype: str) -> str:
    """Kafka Connect type of a column, by SQLite's type-affinity rules (SQLite typing is
    dynamic: a value stored against its column's affinity keeps its own JSON type)."""
    t = (decltype or "").upper()
    if "INT" in t:
        return "int64"
    if any(s in t for s in ("CHAR", "CLOB", "TEXT")):
        return "string"
    if not t or "BLOB" in t:
        return "bytes"
    return "double"  # REAL, FLOA, DOUB and NUMERIC affinity


def _field(field_name: str, type_: str, optional: bool, **extra: Any) -> dict[str, Any]:
    return {"type": type_, "optional": optional, **extra, "field": field_name}


def _struct(name: str, fields: list[dict[str, Any]], optional: bool, **kw: Any) -> dict[str, Any]:
    return {"type": "struct", "fields": fields, "optional": optional, "name": name, **kw}


SOURCE_FIELDS = [
    _field("version", "string", False),
    _field("connector", "string", False),
    _field("name", "string", False),
    _field("ts_ms", "int64", False),
    _field("snapshot", "string", True, name="io.debezium.data.Enum", version=1,
           parameters={"allowed": "true,last,false,incremental"}),
    _field("db", "string", False),
    _field("table", "string", True),
    _field("shard", "string", False),
    _field("lsn", "int64", True),
    _field("txid", "int64", True),
    _field("gtid", "string", True),
]  # fmt: skip
TRANSACTION_BLOCK = _struct(
    "event.block",
    [
        _field("id", "string", False),
        _field("total_order", "int64", False),
        _field("data_collection_order", "int64", False),
    ],
    True,
    version=1,
)


@dataclass
class _Table:
    columns: list[tuple[str, str]]  # (name, Kafka Connect type)
    primary_key: list[str]


@dataclass
class _Tx:
    total: int = 0
    per_table: dict[str, int] = field(default_factory=dict)
    ts_ms: int = 0


class DebeziumFormat:
    """Turns the session's changes into Debezium records (see the module docstring).

    Keeps what Debezium's records need and dosql's events spread over several
    messages: each table's columns and key (from the schema events, which come
    before a table's first row) and the counters of each open transaction."""

    def __init__(
        self,
        name: str,
        db: str,
        *,
        changes_only: bool = False,
        tombstones: bool = False,
        schemas: bool = False,
    ) -> None:
        self.name = name
        self.db = db
        self.changes_only = changes_only
        self.tombstones = tombstones
        self.schemas = schemas
        self.tables: dict[str, _Table] = {}
        self.open: dict[str, _Tx] = {}  # transaction id -> counters

    # ------------------------------------------------------------------ session interface

    def row(
        self, shard: str, ch: protocol.Change, op: str, pos: str, snapshot: str = "false"
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        table = self.tables.get(ch.table.lower())
        transaction = None
        if snapshot == "false":
            tx_id = ch.gtid or f"{shard}:{ch.txid}"
            tx = self.open.get(tx_id)
            if tx is None:
                tx = self.open[tx_id] = _Tx(ts_ms=ch.commit_ts // 1000)
                if not self.changes_only:
                    out.append(self._tx_record("BEGIN", tx_id, tx, pos))
            tx.total += 1
            collection = f"{self.db}.{ch.table}"
            tx.per_table[collection] = tx.per_table.get(collection, 0) + 1
            transaction = {
                "id": tx_id,
                "total_order": tx.total,
                "data_collection_order": tx.per_table[collection],
            }
        value = {
            "before": events.json_image(ch.before, []),
            "after": events.json_image(ch.after, []),
            "source": {
                "version": VERSION,
                "connector": CONNECTOR,
                "name": self.name,
                "ts_ms": ch.commit_ts // 1000,
                "snapshot": snapshot,
                "db": self.db,
                "table": ch.table,
                "shard": shard,
                "lsn": ch.lsn,  # a snapshot row's: the LSN its shard's snapshot read saw
                "txid": ch.txid if snapshot == "false" else None,
                "gtid": ch.gtid,
            },
            "op": op,
            "ts_ms": events.now_ms(),
            "transaction": transaction,
        }
        key = self._key(table, ch.key)
        topic = f"{self.name}.{self.db}.{ch.table}"
        key_part = self._wrap(self._key_schema(ch.table, table), key) if key is not None else None
        out.append(
            {
                "topic": topic,
                "key": key_part,
                "value": self._wrap(self._value_schema(ch.table, table), value),
                "position": pos,
            }
        )
        if op == "d" and self.tombstones and key is not None:
            out.append({"topic": topic, "key": key_part, "value": None, "position": pos})
        return out

    def schema(
        self, shard: str, table: str, schema: protocol.TableSchema, pos: str, **source: Any
    ) -> list[dict[str, Any]]:
        """No record: remember the columns and key for the table's row records."""
        cols = [(c.name, connect_type(c.decltype)) for c in schema.columns]
        self.tables[table.lower()] = _Table(cols, list(schema.primary_key))
        return []

    def commit(
        self,
        shard: str,
        txid: int,
        commit_ts: int,
        count: int,
        pos: str,
        *,
        gtid: str | None = None,
        final: bool = True,
        **_: Any,
    ) -> list[dict[str, Any]]:
        """A distributed transaction ends with its ``final`` marker (one END for all of
        its shards); a local one with its only marker."""
        if not final:
            return []
        tx_id = gtid or f"{shard}:{txid}"
        tx = self.open.pop(tx_id, None)
        if tx is None or self.changes_only:
            return []
        return [self._tx_record("END", tx_id, tx, pos)]

    def heartbeat(self, pos: str) -> list[dict[str, Any]]:
        if self.changes_only:
            return []
        key_schema = _struct(
            "io.debezium.connector.common.ServerNameKey",
            [_field("serverName", "string", False)],
            False,
        )
        value_schema = _struct(
            "io.debezium.connector.common.Heartbeat", [_field("ts_ms", "int64", False)], False
        )
        return [
            {
                "topic": f"__debezium-heartbeat.{self.name}",
                "key": self._wrap(key_schema, {"serverName": self.name}),
                "value": self._wrap(value_schema, {"ts_ms": events.now_ms()}),
                "position": pos,
            }
        ]

    # ------------------------------------------------------------------ parts

    def _wrap(self, schema: dict[str, Any], payload: Any) -> Any:
        return {"schema": schema, "payload": payload} if self.schemas else payload

    @staticmethod
    def _key(table: _Table | None, key: list[Any] | None) -> dict[str, Any] | None:
        """The key record; null for a table without a primary key (as Debezium does)."""
        if table is None or not table.primary_key or len(table.primary_key) != len(key or []):
            return None
        return {n: events.json_value(v) for n, v in zip(table.primary_key, key or [], strict=True)}

    def _record_name(self, table: str) -> str:
        return f"{self.name}.{self.db}.{table}"

    def _key_schema(self, name: str, table: _Table | None) -> dict[str, Any]:
        types = dict(table.columns) if table else {}
        fields = [
            _field(k, types.get(k, "string"), False) for k in (table.primary_key if table else [])
        ]
        return _struct(self._record_name(name) + ".Key", fields, False)

    def _value_schema(self, name: str, table: _Table | None) -> dict[str, Any]:
        if not self.schemas:
            return {}
        pk = set(table.primary_key) if table else set()
        row = [_field(c, t, c not in pk) for c, t in (table.columns if table else [])]
        record = self._record_name(name)
        return _struct(
            record + ".Envelope",
            [
                {**_struct(record + ".Value", row, True), "field": "before"},
                {**_struct(record + ".Value", row, True), "field": "after"},
                {**_struct(f"io.debezium.connector.{CONNECTOR}.Source", SOURCE_FIELDS, False),
                 "field": "source"},
                _field("op", "string", False),
                _field("ts_ms", "int64", True),
                {**TRANSACTION_BLOCK, "field": "transaction"},
            ],
            False,
            version=1,
        )  # fmt: skip

    def _tx_record(self, status: str, tx_id: str, tx: _Tx, pos: str) -> dict[str, Any]:
        end = status == "END"
        value = {
            "status": status,
            "id": tx_id,
            "ts_ms": tx.ts_ms,
            "event_count": tx.total if end else None,
            "data_collections": (
                [{"data_collection": c, "event_count": n} for c, n in tx.per_table.items()]
                if end
                else None
            ),
        }
        key_schema = _struct(
            "io.debezium.connector.common.TransactionMetadataKey",
            [_field("id", "string", False)],
            False,
        )
        collection = _struct(
            "event.collection",
            [_field("data_collection", "string", False), _field("event_count", "int64", False)],
            False,
        )
        value_schema = _struct(
            "io.debezium.connector.common.TransactionMetadataValue",
            [
                _field("status", "string", False),
                _field("id", "string", False),
                _field("ts_ms", "int64", False),
                _field("event_count", "int64", True),
                {"type": "array", "items": collection, "optional": True,
                 "field": "data_collections"},
            ],
            False,
        )  # fmt: skip
        return {
            "topic": f"{self.name}.transaction",
            "key": self._wrap(key_schema, {"id": tx_id}),
            "value": self._wrap(value_schema, value),
            "position": pos,
        }
