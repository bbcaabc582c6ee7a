"""The internal wire format: typed msgpack messages over WebSockets.

One module defines every message exchanged between driver, router, shards
and lake writer, so all parties agree by construction. Messages are msgspec
Structs in tagged unions: decoding validates shape and types, and anything
malformed raises :class:`ValidationError` (``INVALID_MESSAGE``) instead of
reaching handler code. SQLite values travel as themselves (NULL, 64-bit int,
float, text, bytes), so images and parameters are bit-exact.

Conversation shapes:

- SQL session (driver→router, router→shard): each request has an ``id``; the
  reply is one :class:`Ok`, one :class:`Error`, or a stream of
  :class:`Result` chunks with the same id, the last one with ``done=True``
  (columns and decltypes ride on the first chunk only).
- CDC (shard→lake): :class:`CDCHello` → :class:`CDCWelcome` (committed
  watermark), then :class:`ChangeBatch` frames answered by :class:`BatchAck`
  or :class:`BatchNack`; the lake sends :class:`Committed` whenever a commit
  moves the shard's watermark.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from dosql import logs
from dosql.errors import DoSQLError, ValidationError, from_wire

# msgspec cannot type a union of str and bytes, so values are Any on the wire
# and checked by check_params() where they enter SQL.
Value = Any
Params = list[Value] | dict[str, Value] | None
_SCALARS = (type(None), int, float, str, bytes)


class Message(msgspec.Struct, tag_field="t", omit_defaults=True):
    pass


# --------------------------------------------------------------------------- SQL session


class Execute(Message, tag="exec"):
    id: int
    sql: str
    params: Params = None
    timeout_ms: int | None = None
    trace_id: str | None = None


class ExecuteMany(Message, tag="execmany"):
    id: int
    sql: str
    seq_params: list[Params]
    timeout_ms: int | None = None
    trace_id: str | None = None


class Begin(Message, tag="begin"):
    id: int
    mode: Literal["deferred", "immediate"] = "deferred"
    trace_id: str | None = None


class Commit(Message, tag="commit"):
    """Commit the session transaction; ``gtid`` is the router's id for it (one-phase commit).

    With a ``gtid`` the shard records it with the commit (``_dosql_tx`` and the
    outcome table), so ``TxStatus`` can later say the transaction committed,
    and refuses if the gtid was fenced (see ``TxStatus``).
    """

    id: int
    trace_id: str | None = None
    gtid: str | None = None


# --------------------------------------------------------------------------- two-phase commit
# dosql/shard/prepared.py holds the shard side, dosql/router/twophase.py the router side.


class Prepare(Message, tag="prepare"):
    """Phase 1: make the session transaction durable without committing it.

    Ok(info={"read_only": True}) when the transaction changed nothing there (it
    is then ended: the shard is no participant), else Ok(info={"last_commit_ts"}).
    A prepared transaction outlives its session (and a shard restart) and keeps
    the shard's write lock until ``CommitPrepared`` / ``AbortPrepared``.
    ``candidates``: every shard the transaction touched, in decision order.
    """

    id: int
    gtid: str
    candidates: list[str]
    trace_id: str | None = None


class CommitPrepared(Message, tag="commit_prepared"):
    """Phase 2: commit prepared ``gtid`` at ``commit_ts`` (idempotent: Ok if it had committed)."""

    id: int
    gtid: str
    commit_ts: int
    parts: list[str]
    trace_id: str | None = None


class AbortPrepared(Message, tag="abort_prepared"):
    """Roll prepared ``gtid`` back and fence it (idempotent; an error if it had committed)."""

    id: int
    gtid: str
    trace_id: str | None = None


class TxStatus(Message, tag="tx_status"):
    """What this shard knows of ``gtid``: Ok(info={"state": committed|prepared|aborted|unknown}).

    ``fence=True`` makes an unknown gtid aborted here for good (a later Prepare
    or one-phase Commit of it is refused), so the answer cannot change.
    """

    id: int
    gtid: str
    fence: bool = False


class ListPrepared(Message, tag="list_prepared"):
    """The shard's prepared transactions: Ok(info={"prepared": [{gtid, candidates, ...}]})."""

    id: int


class Rollback(Message, tag="rollback"):
    id: int
    trace_id: str | None = None


class Ping(Message, tag="ping"):
    id: int


class ReadChanges(Message, tag="read_changes"):
    """Read the shard's change log from ``from_lsn`` (inclusive), in LSN order."""

    id: int
    from_lsn: int
    limit: int = 1000
    table: str | None = None


class LsnInfo(Message, tag="lsn_info"):
    """Ask for the shard's current LSN and the lowest LSN it still retains.

    With ``table`` (and ``through_us``, a commit time in UTC microseconds;
    None: now) the reply also holds ``table_lsn``, the newest LSN of a
    retained (not yet released) change of that table committed by then (0:
    none -- the lake has every such change), and ``pending_since_us``, the
    commit time of the oldest of them: what time travel must wait for.
    """

    id: int
    table: str | None = None
    through_us: int | None = None


class Result(Message, tag="result"):
    id: int
    rows: list[list[Value]]
    done: bool = True
    columns: list[str] | None = None
    decltypes: list[str | None] | None = None
    rowcount: int = -1
    lastrowid: int | None = None


class Ok(Message, tag="ok"):
    id: int
    info: dict[str, Any] = {}


class Error(Message, tag="error"):
    id: int | None
    code: str
    message: str
    category: str = "general"
    type: str = "DoSQLError"
    details: dict[str, Any] = {}
    trace_id: str | None = None  # the failed request's, for the server's logs

    def to_exception(self) -> DoSQLError:
        exc = from_wire(
            {
                "code": self.code,
                "message": self.message,
                "type": self.type,
                "details": self.details,
            }
        )
        exc.trace_id = self.trace_id
        return exc

    @classmethod
    def from_exception(cls, request_id: int | None, exc: DoSQLError) -> Error:
        w = exc.to_wire()
        return cls(
            id=request_id,
            code=w["code"],
            message=w["message"],
            category=w["category"],
            type=w["type"],
            details=_plain(w["details"]),
            trace_id=exc.trace_id or logs.trace_id.get(),
        )


# --------------------------------------------------------------------------- change capture


class ColumnInfo(msgspec.Struct, array_like=True):
    name: str
    decltype: str
    notnull: bool
    pk: int  # position in the primary key (1-based), 0 if not part of it


class TableSchema(msgspec.Struct, omit_defaults=True):
    """A table's definition as carried by schema events."""

    action: Literal["create", "alter", "drop", "index"]
    sql: str | None = None
    columns: list[ColumnInfo] = []
    primary_key: list[str] = []  # empty: the rowid is the key
    without_rowid: bool = False
    indexes: list[str] = []
    renamed_from: str | None = None


class Change(msgspec.Struct, array_like=True, omit_defaults=False):
    """One committed row change (or schema event) from a shard's change log.

    ``key`` is the primary key values in key order (``[rowid]`` for tables
    without an explicit primary key). ``before``/``after`` are full row images
    keyed by column name (``None`` where not applicable). ``commit_ts`` is UTC
    microseconds since the epoch. ``gtid`` and ``parts`` are set on every change
    of a transaction committed atomically across shards: its global transaction
    id and the sorted ids of the shards it wrote to (the same on each of them,
    as is ``commit_ts``); None for a transaction of one shard.
    """

    lsn: int
    txid: int
    commit_ts: int
    table: str
    op: Literal["insert", "update", "delete", "schema"]
    key: list[Value] | None = None
    before: dict[str, Value] | None = None
    after: dict[str, Value] | None = None
    schema: TableSchema | None = None
    gtid: str | None = None
    parts: list[str] | None = None


class Changes(Message, tag="changes"):
    id: int
    changes: list[Change]
    current_lsn: int
    oldest_lsn: int


class CDCHello(Message, tag="cdc_hello"):
    shard: str
    current_lsn: int = 0
    oldest_lsn: int = 0
    token: str | None = None
    # The shard database's incarnation id (dosql/shard/identity.py); "" from a peer
    # that predates identities (then the lake cannot tell a recreated database).
    incarnation: str = ""


class CDCWelcome(Message, tag="cdc_welcome"):
    committed_lsn: int


class ChangeBatch(Message, tag="cdc_batch"):
    shard: str
    first_lsn: int
    last_lsn: int
    changes: list[Change]


class BatchAck(Message, tag="cdc_ack"):
    last_lsn: int


class BatchNack(Message, tag="cdc_nack"):
    reason: Literal["buffer_full", "lsn_gap", "invalid", "unknown_source"]
    retry_after_ms: int = 0
    expected_lsn: int | None = None
    message: str = ""


class Committed(Message, tag="cdc_committed"):
    shard: str
    lsn: int


class Flush(Message, tag="flush"):
    id: int
    table: str | None = None
    wait: bool = True


class Expire(Message, tag="expire"):
    """Ask the lake writer to expire snapshots outside its retention window now
    (admin scope); ``dry_run``: only report what would be removed."""

    id: int
    dry_run: bool = False


class Compact(Message, tag="compact"):
    """Ask the lake writer to compact small files now (admin scope): one table's or
    every table's; ``dry_run``: only report what would be rewritten."""

    id: int
    table: str | None = None
    dry_run: bool = False


class CleanOrphans(Message, tag="clean_orphans"):
    """Ask the lake writer to delete files no snapshot references (admin scope) once
    older than ``older_than_ms`` (None: ``lake.orphan_min_age_ms``); ``dry_run``: only
    list them."""

    id: int
    dry_run: bool = False
    older_than_ms: int | None = None


META_VERSION_KEY = "~version"


class MetaGet(Message, tag="meta_get"):
    """Read cluster metadata keys starting with ``prefix`` (admin scope)."""

    id: int
    prefix: str = ""


class MetaSet(Message, tag="meta_set"):
    """Write one cluster metadata key in the shard's internal table (admin scope).

    ``value`` None deletes the key. Used by the router to persist tables added
    under the VSchema's ``default_table`` policy, and by sequences. Every
    MetaSet also increments the key :data:`META_VERSION_KEY` in the same
    transaction: routers poll it to notice what another router changed.
    """

    id: int
    key: str
    value: str | None


class ReleaseChanges(Message, tag="release_changes"):
    """Tell a shard the lake has committed through ``lsn``; it may purge up to there."""

    id: int
    lsn: int


class ReserveIds(Message, tag="reserve_ids"):
    """Reserve ids ``[start, stop)`` of sequence ``name`` (admin scope; Ok(info={start, stop})).

    ``count`` ids, none below ``floor``. Served from the shard's sequence
    sidecar database (``<db>.seq``), never from the client-visible database, so
    a reservation neither waits for nor disturbs any open transaction there.
    """

    id: int
    name: str
    count: int
    floor: int = 1


AnyMessage = (
    Execute
    | ExecuteMany
    | Begin
    | Commit
    | Rollback
    | Ping
    | ReadChanges
    | LsnInfo
    | Result
    | Ok
    | Error
    | Changes
    | CDCHello
    | CDCWelcome
    | ChangeBatch
    | BatchAck
    | BatchNack
    | Committed
    | Flush
    | Expire
    | Compact
    | CleanOrphans
    | MetaGet
    | MetaSet
    | ReleaseChanges
    | ReserveIds
    | Prepare
    | CommitPrepared
    | AbortPrepared
    | TxStatus
    | ListPrepared
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)


def encode(message: Message) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes | str) -> AnyMessage:
    """Decode one frame; malformed input raises ValidationError(INVALID_MESSAGE)."""
    if isinstance(data, str):
        raise ValidationError(
            "text frame received: this endpoint speaks msgpack in binary frames",
            code="INVALID_MESSAGE",
        )
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ValidationError(f"malformed message: {exc}", code="INVALID_MESSAGE") from None
    except RecursionError:  # arrays or maps nested thousands deep
        raise ValidationError(
            "malformed message: nested too deeply (parameters are flat SQLite values)",
            code="INVALID_MESSAGE",
        ) from None


def check_params(params: Params) -> None:
    """Parameters must be SQLite scalars (NULL, int, float, text, bytes); raise otherwise."""
    values = params.values() if isinstance(params, dict) else (params or ())
    for value in values:
        if not isinstance(value, _SCALARS):
            raise ValidationError(
                f"parameter of type {type(value).__name__} is not a SQLite value: "
                "use None, int, float, str or bytes",
                code="INVALID_PARAMETERS",
            )
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise ValidationError(
                f"integer parameter {value} does not fit in 64 bits", code="INVALID_PARAMETERS"
            )


def request_id_of(data: bytes) -> int | None:
    """Best-effort id of a frame that failed to decode, so its error can be correlated."""
    try:
        raw = msgspec.msgpack.decode(data)
    except Exception:
        return None
    if isinstance(raw, dict) and isinstance(raw.get("id"), int):
        return raw["id"]
    return None


def _plain(value: Any) -> Any:
    """Details must survive msgpack: keep plain data, stringify the rest."""
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)
