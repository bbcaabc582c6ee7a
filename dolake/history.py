"""A lake table as it was at a point in time, snapshot or LSN -- exact to the commit.

The lake writer keeps, per source table ``T`` (see :mod:`dolake.writer`), the
mirror ``NS.T`` (rows, with the owner shard in ``_dosql_shard``), whose
snapshot summaries say which changes each snapshot includes
(``dosql.watermark.<shard>``: every change of that shard with ``lsn <=``
watermark), and the change log ``NS.T__changelog`` (every change, with
``_op``/``_lsn``/``_shard``/``_commit_ts``).

**As of a timestamp T** (UTC microseconds): take the latest mirror snapshot S
whose included changes all committed at or before T (from the change log:
per shard, the newest ``_commit_ts`` among its changes with ``lsn <=`` the
snapshot's watermark), then apply the change log rows with ``lsn >`` S's
watermark of their shard and ``_commit_ts <= T``, as one flush of the
writer would (per shard and key the last change by LSN, the shards' net
changes in commit order; :meth:`_State.apply_batch` says why). When no
snapshot is early enough the start is the empty table: the change log holds every change since
the table was created in the lake (its ``create`` event and the rows it had
then), so replaying it from the beginning is exact.

Applying a change follows the writer's key rules: the key is the primary key
(raw SQLite value, from the overflow column when the typed column could not
hold it), or ``(shard, rowid)`` for tables without one; an image from shard X
makes X the row's owner; a delete from X removes the row only if X owns it
(a row that moved to another shard under the same key survives); a ``drop``
schema event of X removes the rows X owns. Reference tables feed the mirror
from one shard (the VSchema's first); pass it as ``reference_shard`` so the
change log is read from the same one.

Rows that moved between shards under the same key are the exception: a
mirror snapshot folds each shard's log up to that shard's own watermark, in
arrival order, so with one shard lagging it can hold a moved row's state in
the wrong order. Keys changed by more than one shard are therefore rebuilt
from their whole change log history in commit order, each commit time's
changes folded per shard as one flush would (:func:`_cross_shard_keys`,
:func:`_recompute`); every other key comes from the mirror base plus the
delta.

**As of a snapshot**: exactly that mirror snapshot (by id, or
``branch@sequence-number``). **As of LSN n of shard X**: the rows of X after
every change of X with ``lsn <= n`` (replayed from X's change log, so it is
exact for every table kind, including reference tables).

Every form returns the *current* lake schema's user columns (a column added
later is NULL in older rows; a column dropped from the source stays, as the
lake never forgets columns), without the lake's bookkeeping columns unless
``hidden=True``. :func:`rows_as_of` gives the same as SQLite values.

Errors: a point before the table's first change, or an unknown snapshot ->
NotFoundError ``SNAPSHOT_NOT_FOUND`` (the message gives the available range);
a point the lake has not committed yet -> CDCError ``LAKE_BEHIND`` (how far).
"""

from __future__ import annotations

import bisect
import datetime as dt
import decimal
import itertools
import json
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import (
    And,
    BooleanExpression,
    EqualTo,
    GreaterThan,
    In,
    LessThanOrEqual,
    Or,
)
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot, ancestors_of
from pyiceberg.types import LongType, StringType

from dolake import watermarks
from dolake.maintenance import EXPIRED_THROUGH
from dolake.schema import HIDDEN_PREFIX, OVERFLOW, ROWID, SHARD_COL, raw_untag
from dosql.errors import CDCError, NotFoundError
from dosql.timetravel.points import (
    LsnPoint,
    Point,
    SnapshotPoint,
    TimestampPoint,
    format_micros,
)

CHANGELOG_SUFFIX = "__changelog"
# How a change log row of ``_op = 'schema'`` says the event was a DROP TABLE:
# its ``_dosql_overflow`` holds ``{"_dosql_schema": "drop"}``. The lake writer
# must write it (dolake/writer.py does not yet); a schema row without it is
# taken as create/alter, which keeps the rows.
SCHEMA_ACTION_KEY = "_dosql_schema"
# The shard that feeds a reference table's mirror, if the writer records it in
# the mirror's table properties (else the caller passes ``reference_shard``).
REFERENCE_SHARD_PROPERTY = "dosql.reference_shard"


@dataclass
class Coverage:
    """What the lake holds of one table.

    ``first_commit_ts``/``last_commit_ts``: commit times (UTC microseconds) of
    the table's oldest and newest change in the lake (None: no change yet).
    ``committed_through_ts``: every change of the table committed at or before
    it, on every shard that has changed the table, is in the lake (the
    smallest per-shard newest commit time). ``watermarks``: per shard, every
    change of the shard with ``lsn <=`` it is in the lake for this table (the
    table's change log watermark, or the namespace's global committed
    watermark when that is further). ``committed_at``: wall-clock time (UTC
    microseconds) of the table's latest change log commit.
    """

    first_commit_ts: int | None
    committed_through_ts: int | None
    last_commit_ts: int | None
    watermarks: dict[str, int] = field(default_factory=dict)
    committed_at: int | None = None

    def missing(self, required: Mapping[str, int]) -> dict[str, tuple[int, int]]:
        """Shards whose required LSN the lake has not committed: ``{shard: (have, need)}``."""
        return {
            s: (self.watermarks.get(s, 0), lsn)
            for s, lsn in required.items()
            if self.watermarks.get(s, 0) < lsn
        }


@dataclass
class _Log:
    """The change log's (shard, lsn, commit_ts) per shard, in LSN order."""

    lsns: dict[str, list[int]] = field(default_factory=dict)
    prefix_max_ts: dict[str, list[int]] = field(default_factory=dict)
    first_ts: int | None = None
    last_ts: int | None = None

    def max_ts_through(self, marks: Mapping[str, int]) -> int | None:
        """Newest commit time among the changes a snapshot with ``marks`` includes."""
        best: int | None = None
        for shard, lsns in self.lsns.items():
            i = bisect.bisect_right(lsns, marks.get(shard, 0))
            if i:
                ts = self.prefix_max_ts[shard][i - 1]
                best = ts if best is None else max(best, ts)
        return best


# --------------------------------------------------------------------------- loading


def load_tables(catalog: Catalog, namespace: str, table: str) -> tuple[Table, Table]:
    """A table's mirror and change log; TABLE_NOT_FOUND if the lake has no history of it."""
    try:
        mirror = catalog.load_table((namespace, table))
        changelog = catalog.load_table((namespace, table + CHANGELOG_SUFFIX))
    except NoSuchTableError:
        raise NotFoundError(
            f"table {table!r} has no history in the lake (namespace {namespace!r}): "
            "the lake creates it when its first change arrives",
            code="TABLE_NOT_FOUND",
        ) from None
    return mirror, changelog


def _micros_column(column: pa.ChunkedArray) -> list[int]:
    return column.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()


def _log_index(changelog: Table) -> _Log:
    log = _Log()
    if changelog.current_snapshot() is None:
        return log
    data = changelog.scan(selected_fields=("_shard", "_lsn", "_commit_ts")).to_arrow()
    shards = data["_shard"].to_pylist()
    lsns = data["_lsn"].to_pylist()
    stamps = _micros_column(data["_commit_ts"])
    per: dict[str, list[tuple[int, int]]] = {}
    for shard, lsn, ts in zip(shards, lsns, stamps, strict=True):
        per.setdefault(shard, []).append((lsn, ts))
    for shard, items in per.items():
        items.sort()
        log.lsns[shard] = [lsn for lsn, _ in items]
        running, out = None, []
        for _, ts in items:
            running = ts if running is None else max(running, ts)
            out.append(running)
        log.prefix_max_ts[shard] = out
    if stamps:
        log.first_ts, log.last_ts = min(stamps), max(stamps)
    return log


def _cross_shard_keys(changelog: Table, pk: list[str], only_shard: str | None) -> set[tuple]:
    """Keys that more than one shard has changed (rows that moved between shards).

    The mirror cannot be trusted as a base for them: a snapshot includes each
    shard's log up to that shard's own watermark, so shard X's newer image
    of a moved row and shard Y's older changes of it are folded in arrival
    order, not commit order. Their state is recomputed from the change log.
    Tables keyed by ``(shard, rowid)`` have none.
    """
    if not pk or only_shard is not None or changelog.current_snapshot() is None:
        return set()
    fields = (*pk, "_shard", "_op", OVERFLOW)
    data = changelog.scan(selected_fields=fields).to_arrow()
    probe = _State(pk)
    seen: dict[tuple, str] = {}
    cross: set[tuple] = set()
    for row in data.to_pylist():
        if row["_op"] == "schema":
            continue
        key = probe.key(row, row["_shard"])
        first = seen.setdefault(key, row["_shard"])
        if first != row["_shard"]:
            cross.add(key)
    return cross


def _recompute(
    changelog: Table, pk: list[str], keys: set[tuple], point: int
) -> dict[tuple, tuple[dict[str, Any], str | None]]:
    """The state of ``keys`` at ``point`` from their whole history, in commit
    order (with every shard's drop events)."""
    flt: BooleanExpression = LessThanOrEqual("_commit_ts", point)
    field = changelog.schema().find_field(pk[0])
    values = {k[0] for k in keys}
    if isinstance(field.field_type, LongType | StringType) and all(
        isinstance(v, int | str) and not isinstance(v, bool) for v in values
    ):
        flt = And(flt, Or(In(pk[0], values), EqualTo("_op", "schema")))
    sub = _State(pk)
    changes = _read_changes(
        changelog,
        flt,
        lambda r: r["_op"] == "schema" or sub.key(r, r["_shard"]) in keys,
    )
    changes.sort(key=lambda r: (r["_commit_us"], r["_shard"], r["_lsn"]))
    # One commit time at a time, folded per shard (apply_batch), not change by change: the
    # changes of one distributed transaction share its commit time on every shard, and their
    # order across shards is not in the log. A row that leaves shard X and comes back within
    # one transaction is, on X, a delete then an insert, and on Y an insert then a delete;
    # applied change by change in shard order, Y's insert takes the row over and Y's delete
    # removes it. Per shard net changes (X: the new image, Y: a delete from a non-owner) keep it.
    for _ts, same_commit in itertools.groupby(changes, key=lambda r: r["_commit_us"]):
        sub.apply_batch(list(same_commit))
    return sub.rows


def _marks(snapshot: Snapshot | None) -> dict[str, int]:
    if snapshot is None or snapshot.summary is None:
        return {}
    props = snapshot.summary.additional_properties
    p = watermarks.PREFIX
    return {k[len(p) :]: int(v) for k, v in props.items() if k.startswith(p)}


def _chain(table: Table, branch: str = "main") -> list[Snapshot]:
    """The snapshots of ``branch``, oldest first."""
    ref = table.metadata.refs.get(branch)
    if ref is None:
        return []
    head = table.metadata.snapshot_by_id(ref.snapshot_id)
    return list(reversed(list(ancestors_of(head, table.metadata))))


def _user_columns(mirror: Table) -> list[str]:
    return [f.name for f in mirror.schema().fields if not f.name.startswith(HIDDEN_PREFIX)]


def _primary_key(mirror: Table) -> list[str]:
    return list(json.loads(mirror.properties.get("dosql.primary_key", "[]")))


# --------------------------------------------------------------------------- coverage


def lake_coverage(catalog: Catalog, namespace: str, table: str) -> Coverage:
    """What range of the table's history the lake can answer (see :class:`Coverage`)."""
    committed = _namespace_marks(catalog, namespace)  # before the tables: see _coverage
    _, changelog = load_tables(catalog, namespace, table)
    return _coverage(committed, changelog, _log_index(changelog))


def _coverage(committed: Mapping[str, int], changelog: Table, log: _Log) -> Coverage:
    """``committed`` (the namespace's global marks) must be read *before* the
    tables were loaded: it only says what the tables held when it was written,
    and a newer value could claim changes the loaded table versions lack."""
    marks = dict(watermarks.of_table(changelog))
    for shard, lsn in committed.items():
        marks[shard] = max(marks.get(shard, 0), lsn)
    through = None
    if log.prefix_max_ts:
        through = min(v[-1] for v in log.prefix_max_ts.values())
    snap = changelog.current_snapshot()
    return Coverage(
        first_commit_ts=log.first_ts,
        committed_through_ts=through,
        last_commit_ts=log.last_ts,
        watermarks=marks,
        committed_at=snap.timestamp_ms * 1000 if snap else None,
    )


def _range_text(cov: Coverage) -> str:
    if cov.first_commit_ts is None:
        return "the lake has no change of this table yet"
    return (
        f"available: from {format_micros(cov.first_commit_ts)} "
        f"(the table's first change in the lake) to now; the newest change in the lake "
        f"committed at {format_micros(cov.last_commit_ts or cov.first_commit_ts)}"
    )


def _now_us() -> int:
    return time.time_ns() // 1000


# --------------------------------------------------------------------------- state


class _State:
    """Rows by key, each with its owner shard: the writer's key rules."""

    def __init__(self, pk: list[str]) -> None:
        self.pk = pk
        self.rows: dict[tuple, tuple[dict[str, Any], str | None]] = {}

    def key(self, row: dict[str, Any], shard: str | None) -> tuple:
        if not self.pk:
            return (shard, row.get(ROWID))
        return tuple(_hashable(raw_value(row, k)) for k in self.pk)

    def load_mirror(self, rows: Iterable[dict[str, Any]]) -> None:
        for row in rows:
            owner = row.get(SHARD_COL)
            self.rows[self.key(row, owner)] = (row, owner)

    def apply(self, row: dict[str, Any]) -> None:
        op, shard = row["_op"], row["_shard"]
        if op == "schema":
            if _schema_action(row) == "drop":
                self.rows = {k: v for k, v in self.rows.items() if v[1] != shard}
            return
        key = self.key(row, shard)
        if op == "delete":
            current = self.rows.get(key)
            if current is not None and current[1] in (shard, None):
                del self.rows[key]
            return
        self.rows[key] = (row, shard)

    def apply_batch(self, rows: list[dict[str, Any]]) -> None:
        """Apply changes the way one flush of the writer does: per shard, only
        each key's last state (LSN order) counts, and the shards' net changes
        are applied in commit order.

        Applying change by change instead would be wrong on top of a mirror
        snapshot: the snapshot includes each shard's log up to its own
        watermark, so it may already hold shard X's newer image of a key
        while shard Y's older changes of that key (it moved from Y to X) are
        still to apply; Y's intermediate image would take the row over. Y's
        net change (a delete, from a non-owner) leaves X's row, as it must.
        A ``drop`` of shard Y keeps only Y's changes after it.
        """
        per_shard: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            per_shard.setdefault(row["_shard"], []).append(row)
        ops: list[dict[str, Any]] = []
        for changes in per_shard.values():
            changes.sort(key=lambda r: r["_lsn"])
            last: dict[tuple, dict[str, Any]] = {}
            for row in changes:
                if row["_op"] == "schema":
                    if _schema_action(row) == "drop":
                        last = {("drop",): row}
                    continue
                last[self.key(row, row["_shard"])] = row
            ops.extend(last.values())
        ops.sort(key=lambda r: (r["_commit_us"], r["_shard"], r["_lsn"]))
        for row in ops:
            self.apply(row)


def _hashable(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)  # SQLite: 1.0 = 1 as keys of an INTEGER/NUMERIC column
    return v


def _schema_action(row: dict[str, Any]) -> str | None:
    overflow = row.get(OVERFLOW)
    if not overflow:
        return None
    try:
        return json.loads(overflow).get(SCHEMA_ACTION_KEY)
    except (ValueError, AttributeError):
        return None


def raw_value(row: Mapping[str, Any], column: str) -> Any:
    """The typed value of ``column``, or the raw SQLite value kept in the overflow."""
    v = row.get(column)
    if v is not None or not row.get(OVERFLOW):
        return v
    try:
        tag = json.loads(row[OVERFLOW]).get(column)
    except (ValueError, AttributeError):
        return None
    return raw_untag(tag) if isinstance(tag, dict) else None


def _read_changes(changelog: Table, row_filter: BooleanExpression, keep) -> list[dict[str, Any]]:
    if changelog.current_snapshot() is None:
        return []
    data = changelog.scan(row_filter=row_filter).to_arrow()
    stamps = _micros_column(data["_commit_ts"])
    rows = []
    for row, ts in zip(data.to_pylist(), stamps, strict=True):
        row["_commit_us"] = ts
        if keep(row):
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- as of


def table_as_of(
    catalog: Catalog,
    namespace: str,
    table: str,
    point: Point,
    *,
    reference_shard: str | None = None,
    required: Mapping[str, int] | None = None,
    now_us: int | None = None,
    hidden: bool = False,
) -> pa.Table:
    """The table's rows as of ``point`` (see the module docstring).

    ``required`` (timestamp points): per shard, an LSN the lake must have
    committed for the answer to be complete -- the router passes each
    shard's current LSN read after the point; if the lake is short of one it
    raises LAKE_BEHIND (the router then asks for a flush and retries).
    Without it, only a point in the future (after ``now_us``) is refused.
    For an LSN point, ``point.shard`` must name the shard.
    """
    committed = _namespace_marks(catalog, namespace)
    # mirror before change log: the writer commits the change log first, so the
    # loaded change log holds at least every change the loaded mirror does
    mirror, changelog = load_tables(catalog, namespace, table)
    if isinstance(point, SnapshotPoint):
        state_rows = _snapshot_rows(mirror, point)
        return _to_arrow(mirror, state_rows, hidden)
    log = _log_index(changelog)
    cov = _coverage(committed, changelog, log)
    reference_shard = reference_shard or mirror.properties.get(REFERENCE_SHARD_PROPERTY)
    state = _State(_primary_key(mirror))
    if isinstance(point, LsnPoint):
        _lsn_state(table, changelog, log, cov, point, state)
    elif isinstance(point, TimestampPoint):
        _timestamp_state(
            table,
            mirror,
            changelog,
            log,
            cov,
            point.micros,
            state,
            reference_shard,
            required,
            _now_us() if now_us is None else now_us,
        )
    else:  # pragma: no cover - typing guard
        raise TypeError(f"not a time-travel point: {point!r}")
    return _to_arrow(mirror, [(r, o) for r, o in state.rows.values()], hidden)


def rows_as_of(
    catalog: Catalog, namespace: str, table: str, point: Point, **kwargs: Any
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """:func:`table_as_of` as SQLite values: ``(column names, rows)``.

    This is what the router loads into its in-memory SQLite. Values the lake
    keeps typed go back to SQLite storage classes (booleans 0/1, dates and
    timestamps as ISO text, decimals as INTEGER/REAL as NUMERIC affinity would
    store them), and values that did not fit their column's lake type come
    back exactly from the overflow column.
    """
    data = table_as_of(catalog, namespace, table, point, hidden=True, **kwargs)
    names = [n for n in data.column_names if not n.startswith(HIDDEN_PREFIX)]
    has_overflow = OVERFLOW in data.column_names
    out = []
    for row in data.to_pylist():
        if has_overflow and row.get(OVERFLOW):
            out.append(tuple(to_sqlite(raw_value(row, n)) for n in names))
        else:
            out.append(tuple(to_sqlite(row[n]) for n in names))
    return names, out


def to_sqlite(v: Any) -> Any:
    """A lake value as the SQLite value it came from."""
    if v is None or isinstance(v, int | float | str | bytes) and not isinstance(v, bool):
        return v
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, decimal.Decimal):
        return int(v) if v == v.to_integral_value() and abs(v) < 2**63 else float(v)
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    if isinstance(v, bytearray | memoryview):
        return bytes(v)
    return str(v)


def _to_arrow(
    mirror: Table, rows: list[tuple[dict[str, Any], str | None]], hidden: bool
) -> pa.Table:
    schema = schema_to_pyarrow(mirror.schema(), include_field_ids=False)
    keep = [f for f in schema if hidden or not f.name.startswith(HIDDEN_PREFIX)]
    out_schema = pa.schema(keep)
    records = []
    for row, owner in rows:
        rec = {f.name: row.get(f.name) for f in keep}
        if hidden and SHARD_COL in rec:
            rec[SHARD_COL] = owner
        records.append(rec)
    return pa.Table.from_pylist(records, schema=out_schema)


def _snapshot_rows(mirror: Table, point: SnapshotPoint) -> list[tuple[dict[str, Any], str | None]]:
    snap = _find_snapshot(mirror, point)
    rows = mirror.scan(snapshot_id=snap.snapshot_id).to_arrow().to_pylist()
    return [(r, r.get(SHARD_COL)) for r in rows]


def _find_snapshot(mirror: Table, point: SnapshotPoint) -> Snapshot:
    name = mirror.name()[-1]
    chain = _chain(mirror)
    hint = f"SELECT * FROM dosql_history('{name}') lists them"
    if point.snapshot_id is not None:
        snap = mirror.metadata.snapshot_by_id(point.snapshot_id)
        if snap is None:
            ids = ", ".join(str(s.snapshot_id) for s in chain[-5:]) or "none"
            if EXPIRED_THROUGH in mirror.properties:
                hint += " (older snapshots were expired: lake.snapshot_retention_ms)"
            raise NotFoundError(
                f"table {name} has no lake snapshot {point.snapshot_id} (newest: {ids}); {hint}",
                code="SNAPSHOT_NOT_FOUND",
            )
        return snap
    branch = point.branch or "main"
    if branch not in mirror.metadata.refs:
        raise NotFoundError(
            f"table {name} has no branch {branch!r} (branches: "
            f"{', '.join(sorted(mirror.metadata.refs)) or 'none'}); {hint}",
            code="SNAPSHOT_NOT_FOUND",
        )
    chain = _chain(mirror, branch)
    for snap in chain:
        if snap.sequence_number == point.sequence:
            return snap
    seqs = f"{chain[0].sequence_number}..{chain[-1].sequence_number}" if chain else "none"
    if chain and point.sequence < chain[0].sequence_number and EXPIRED_THROUGH in mirror.properties:
        raise NotFoundError(
            f"table {name} snapshot {branch}@{point.sequence} was expired by the lake's "
            f"retention window (lake.snapshot_retention_ms); sequence numbers kept: {seqs}; "
            f"{hint}",
            code="SNAPSHOT_EXPIRED",
            details={"sequence_numbers": [chain[0].sequence_number, chain[-1].sequence_number]},
        )
    raise NotFoundError(
        f"table {name} has no snapshot with sequence number {point.sequence} on branch "
        f"{branch!r} (sequence numbers there: {seqs}); {hint}",
        code="SNAPSHOT_NOT_FOUND",
    )


def _before_history(table: str, what: str, cov: Coverage) -> NotFoundError:
    return NotFoundError(
        f"table {table} has no history at {what}: {_range_text(cov)}",
        code="SNAPSHOT_NOT_FOUND",
        details={"first_commit_ts": cov.first_commit_ts, "last_commit_ts": cov.last_commit_ts},
    )


def available_from(mirror: Table, log: _Log | None = None) -> int | None:
    """After snapshot expiry (dolake/maintenance.py): the earliest point (UTC
    microseconds) time travel answers -- the commit time of the newest change
    in the oldest snapshot kept, from which every later point has a snapshot
    to start from. None when no snapshot of the table was ever expired."""
    if EXPIRED_THROUGH not in mirror.properties:
        return None
    chain = _chain(mirror)
    if not chain:
        return None
    newest = log.max_ts_through(_marks(chain[0])) if log is not None else None
    return newest if newest is not None else chain[0].timestamp_ms * 1000


def _expired(table: str, what: str, available: int, cov: Coverage) -> NotFoundError:
    return NotFoundError(
        f"table {table} has no history at {what} any more: the lake expired the snapshots "
        f"before {format_micros(available)} (lake.snapshot_retention_ms); available: from "
        f"{format_micros(available)} to now (newest change committed at "
        f"{format_micros(cov.last_commit_ts or available)}). Ask for a later point, or raise "
        "lake.snapshot_retention_ms / lake.min_snapshots_to_keep to keep more history",
        code="SNAPSHOT_EXPIRED",
        details={"available_from": available, "last_commit_ts": cov.last_commit_ts},
    )


def _timestamp_state(
    table: str,
    mirror: Table,
    changelog: Table,
    log: _Log,
    cov: Coverage,
    point: int,
    state: _State,
    reference_shard: str | None,
    required: Mapping[str, int] | None,
    now: int,
) -> None:
    if cov.first_commit_ts is None or point < cov.first_commit_ts:
        raise _before_history(table, format_micros(point), cov)
    available = available_from(mirror, log)
    if available is not None and point < available:
        raise _expired(table, format_micros(point), available, cov)
    if point > now:
        ahead = (point - now) // 1000
        raise CDCError(
            f"{format_micros(point)} is in the future ({ahead} ms from now): the lake cannot "
            f"answer for it yet; {_range_text(cov)}",
            code="LAKE_BEHIND",
            details={"behind_ms": ahead},
        )
    if required:
        missing = cov.missing(required)
        if missing:
            behind = max(0, point - (cov.committed_through_ts or point)) // 1000
            shards = ", ".join(
                f"{s} has LSN {have}, needs {need}" for s, (have, need) in missing.items()
            )
            raise CDCError(
                f"the lake is about {behind} ms behind {format_micros(point)} for table {table} "
                f"({shards}); flush the lake writer and retry",
                code="LAKE_BEHIND",
                details={"behind_ms": behind, "missing": {s: list(v) for s, v in missing.items()}},
            )
    base: Snapshot | None = None
    for snap in _chain(mirror):
        newest = log.max_ts_through(_marks(snap))
        if newest is None or newest <= point:
            base = snap
        else:
            break
    marks = _marks(base)
    if base is not None:
        state.load_mirror(mirror.scan(snapshot_id=base.snapshot_id).to_arrow().to_pylist())
    low = min((marks.get(s, 0) for s in log.lsns), default=0)
    flt: BooleanExpression = LessThanOrEqual("_commit_ts", point)
    if low > 0:
        flt = And(flt, GreaterThan("_lsn", low))

    def keep(row: dict[str, Any]) -> bool:
        shard = row["_shard"]
        if reference_shard is not None and shard != reference_shard:
            return False
        return row["_lsn"] > marks.get(shard, 0) and row["_commit_us"] <= point

    state.apply_batch(_read_changes(changelog, flt, keep))
    cross = _cross_shard_keys(changelog, state.pk, reference_shard)
    if cross:
        fixed = _recompute(changelog, state.pk, cross, point)
        for key in cross:
            state.rows.pop(key, None)
        state.rows.update(fixed)


def _lsn_state(
    table: str, changelog: Table, log: _Log, cov: Coverage, point: LsnPoint, state: _State
) -> None:
    from dosql.errors import ValidationError

    shard = point.shard
    if not shard:
        raise ValidationError(
            "FOR SYSTEM_TIME AS OF LSN needs the one shard the statement reads "
            "(an LSN is a position in one shard's log); use AS OF TIMESTAMP for the whole table",
            code="INVALID_INPUT",
        )
    lsns = log.lsns.get(shard)
    if not lsns or point.lsn < lsns[0]:
        first = f"its first change there is LSN {lsns[0]}" if lsns else "no change there yet"
        raise NotFoundError(
            f"table {table} has no history on {shard} at LSN {point.lsn} ({first}); "
            f"{_range_text(cov)}",
            code="SNAPSHOT_NOT_FOUND",
        )
    have = cov.watermarks.get(shard, 0)
    if point.lsn > have:
        raise CDCError(
            f"the lake has committed {shard} through LSN {have}, {point.lsn - have} LSNs short "
            f"of {point.lsn}; flush the lake writer and retry",
            code="LAKE_BEHIND",
            details={"have": have, "need": point.lsn},
        )
    flt = LessThanOrEqual("_lsn", point.lsn)
    changes = _read_changes(changelog, flt, lambda r: r["_shard"] == shard)
    changes.sort(key=lambda r: r["_lsn"])
    for row in changes:
        state.apply(row)


# --------------------------------------------------------------------------- listing


HISTORY_SCHEMA = pa.schema(
    [
        ("snapshot_id", pa.int64()),
        ("sequence_number", pa.int64()),
        ("committed_at", pa.timestamp("us", tz="UTC")),
        ("changes_through", pa.timestamp("us", tz="UTC")),
        ("operation", pa.string()),
        ("watermarks", pa.string()),
        ("row_count", pa.int64()),
    ]
)


def history(catalog: Catalog, namespace: str, table: str) -> pa.Table:
    """The table's mirror snapshots on ``main``, oldest first.

    ``committed_at`` is when the lake committed the snapshot (wall clock);
    ``changes_through`` the commit time of the newest change it includes (the
    point in time it represents); ``watermarks`` JSON ``{shard: lsn}``;
    ``row_count`` the mirror's rows at that snapshot. Any ``snapshot_id`` or
    ``'main@<sequence_number>'`` works with ``AS OF SNAPSHOT``.
    """
    mirror, changelog = load_tables(catalog, namespace, table)
    log = _log_index(changelog)
    rows = []
    for snap in _chain(mirror):
        marks = _marks(snap)
        summary = snap.summary
        total = _live_records(summary.additional_properties) if summary else None
        newest = log.max_ts_through(marks)
        rows.append(
            {
                "snapshot_id": snap.snapshot_id,
                "sequence_number": snap.sequence_number,
                "committed_at": dt.datetime.fromtimestamp(snap.timestamp_ms / 1000, dt.UTC),
                "changes_through": None
                if newest is None
                else dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=newest),
                "operation": str(summary.operation.value) if summary else None,
                "watermarks": json.dumps(marks, sort_keys=True),
                "row_count": int(total) if total is not None else None,
            }
        )
    return pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)


def _live_records(props: Mapping[str, str]) -> int | None:
    """Rows of a snapshot: data file records minus position deletes (merge-on-read
    commits add delete files, so ``total-records`` alone over-counts). Unknown
    (None) when equality deletes are present: they cannot be counted from the summary."""
    total = props.get("total-records")
    if total is None or int(props.get("total-equality-deletes", 0) or 0):
        return None
    return int(total) - int(props.get("total-position-deletes", 0) or 0)


def history_rows(
    catalog: Catalog, namespace: str, table: str
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """:func:`history` as SQLite values (timestamps as ISO text in UTC), for
    ``SELECT * FROM dosql_history('t')`` through the router."""
    data = history(catalog, namespace, table)
    return data.column_names, [
        tuple(to_sqlite(v) for v in row.values()) for row in data.to_pylist()
    ]


# --------------------------------------------------------------------------- waiting


def wait_covered(
    catalog: Catalog,
    namespace: str,
    table: str,
    required: Mapping[str, int],
    flush: Callable[[], Any],
    *,
    timeout_s: float = 10.0,
    poll_s: float = 0.05,
    pending_since_us: int | None = None,
) -> Coverage:
    """Make sure the lake has committed ``required`` (per shard, an LSN) for
    ``table``: ask ``flush`` (e.g. a Flush request with wait to the lake
    writer) and re-check until ``timeout_s``; then LAKE_BEHIND saying how far.

    The router reads each shard's current LSN (``LsnInfo``) *after* the
    requested point has passed; every change committed at or before the
    point then has an LSN at or below it, so once the lake covers these
    LSNs the answer is complete. ``pending_since_us``: commit time of the
    oldest change waited for (the lag LAKE_BEHIND reports), when known.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if _exists(catalog, namespace, table):
            cov = lake_coverage(catalog, namespace, table)
        else:  # no change of the table yet: covered once the namespace marks are
            cov = Coverage(None, None, None, _namespace_marks(catalog, namespace))
        missing = cov.missing(required)
        if not missing:
            return cov
        if time.monotonic() >= deadline:
            raise _behind_error(table, cov, missing, pending_since_us)
        flush()
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))


def _exists(catalog: Catalog, namespace: str, table: str) -> bool:
    try:
        catalog.load_table((namespace, table + CHANGELOG_SUFFIX))
    except NoSuchTableError:
        return False
    return True


def _namespace_marks(catalog: Catalog, namespace: str) -> dict[str, int]:
    try:
        return watermarks.load_committed(catalog, namespace)
    except Exception:  # a catalog without namespace properties: table marks only
        return {}


def _behind_error(
    table: str,
    cov: Coverage,
    missing: Mapping[str, tuple[int, int]],
    pending_since_us: int | None = None,
) -> CDCError:
    now = _now_us()
    since = pending_since_us or cov.committed_at
    behind = max(0, now - since) // 1000 if since else None
    shards = ", ".join(
        f"{s} committed through LSN {have} of {need}" for s, (have, need) in missing.items()
    )
    lag = f"about {behind} ms behind" if behind is not None else "behind"
    return CDCError(
        f"the lake is {lag} for table {table} ({shards}); it did not catch up in time: "
        "check the lake writer (dolake /status) and retry",
        code="LAKE_BEHIND",
        details={"behind_ms": behind, "missing": {s: list(v) for s, v in missing.items()}},
    )


__all__ = [
    "Coverage",
    "history",
    "history_rows",
    "wait_covered",
    "lake_coverage",
    "raw_value",
    "rows_as_of",
    "table_as_of",
    "to_sqlite",
]
