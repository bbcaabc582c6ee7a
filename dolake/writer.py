"""Flush buffered changes of one source table into its two Iceberg tables.

Exactly-once design
-------------------
The issue asks for *one* Iceberg commit covering the mirror ``NS.T`` and the
change log ``NS.T__changelog``. A pyiceberg transaction spans one table, so a
flush of ``T`` is two commits -- change log first, then mirror -- and each
commit's snapshot summary carries the per-shard watermarks of the changes it
includes (``dosql.watermark.<shard>`` = every change of that shard with
``lsn <= watermark`` that concerns ``T`` is in this table). The two tables
keep *separate* watermarks, and on every flush each side skips the changes
its own watermark already covers. Recovery after ``kill -9`` between the two
commits therefore needs no special code path: the lake writer restarts, reads
both tables' watermarks from their latest snapshot summaries, welcomes the
shard with the *global* committed watermark (which was not advanced, see
below), the shard resends, the change log skips what it has and the mirror
(behind) applies it. Replaying a suffix of changes onto the mirror state at
its watermark gives exactly the state at the newer watermark, so both tables
end exact.

The global committed watermark of a shard (what ``CDCWelcome`` returns and
``Committed`` announces, so the shard may purge its log) is advanced only
after every table holding that shard's changes up to it has committed *both*
sides; it is stored in the namespace properties (``dosql.committed.<shard>``,
one atomic catalog update) after the table commits. A crash before that
update only means the shard resends a little more, which the per-table
watermarks skip. Per table, the watermark is "covered", not "touched": a
flush of ``T`` sets ``T``'s watermark for every shard to the cut LSN even if
that shard had no change of ``T``, which is valid because the stream from a
shard is gap-free (the ingest rejects gaps).

Mirror layout
-------------
The mirror is partitioned by ``bucket(16, first key column)``. A flush reads
only the data files the affected keys can be in (partition pruning on the
bucket plus per-file min/max statistics on the key), rewrites those without
the affected rows, and writes the new images: copy-on-write limited to a few
small files, so its cost follows the size of the batch, not of the table.
Tables without a primary key are keyed by ``(shard, rowid)`` (``_dosql_rowid``).

Every mirror row also records its owner shard in the hidden column
``_dosql_shard``: a delete from shard A removes a row only if A owns it, so a
row that moved from A to B under the same primary key (sharding column !=
key) survives A's delete in whatever order and flush the two arrive, and a
reference table streamed by every shard converges to the same rows. Known
reference tables (VSchema in the config) feed their mirror from one shard
(the first of the VSchema) only; their change log keeps every shard's rows.
"""

from __future__ import annotations

import bisect
import datetime as dt
import itertools
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog
from pyiceberg.conversions import from_bytes
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import AlwaysTrue, BooleanExpression, In
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files, schema_to_pyarrow
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.transforms import BucketTransform, DayTransform
from pyiceberg.types import (
    BinaryType,
    DateType,
    DecimalType,
    LongType,
    NestedField,
    StringType,
    TimestampType,
    TimestamptzType,
)

from dolake import watermarks
from dolake.buffer import Entry
from dolake.schema import (
    OVERFLOW,
    ROWID,
    SCHEMA_ACTION,
    SCHEMA_RENAMED,
    SCHEMA_SQL,
    SHARD_COL,
    Column,
    NoFit,
    TableLayout,
    converter,
    raw_tag,
)
from dosql import protocol

log = logging.getLogger(__name__)

MIRROR_BUCKETS = 16
# Mirror rows are written sorted by key, at most this many per call (so about
# MIRROR_SLICE_ROWS / MIRROR_BUCKETS rows per file): narrow key ranges per file
# keep a flush's copy-on-write to the few small files its keys can be in.
MIRROR_SLICE_ROWS = MIRROR_BUCKETS * 2048
_BUCKETABLE = (LongType, StringType, BinaryType, DecimalType, DateType, TimestampType)
DELETE = object()  # op marker: the key has no row


@dataclass
class TableFlush:
    """Outcome of flushing one table."""

    table: str
    changelog_rows: int = 0
    mirror_upserts: int = 0
    mirror_deletes: int = 0
    files_rewritten: int = 0
    files_written: int = 0
    bytes_written: int = 0
    mirror_snapshot: int | None = None
    changelog_snapshot: int | None = None
    watermarks: dict[str, int] = field(default_factory=dict)
    error: str | None = None


@dataclass
class LakeTable:
    layout: TableLayout
    mirror: Table | None = None
    changelog: Table | None = None
    mirror_wm: dict[str, int] = field(default_factory=dict)
    changelog_wm: dict[str, int] = field(default_factory=dict)
    committed_at: float | None = None


def _fault(point: str) -> None:
    """Crash hook for the kill -9 tests: a crash at an exact point between two
    commits cannot be produced from outside reliably."""
    if os.environ.get("DOLAKE_FAULT") == point:
        log.error("fault injection: SIGKILL", extra={"point": point})
        os.kill(os.getpid(), signal.SIGKILL)


class Writer:
    """All pyiceberg work; every method is blocking (call via trio.to_thread)."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        namespace: str = "default",
        row_group_size: int = 100000,
        reference_tables: dict[str, str] | None = None,
    ) -> None:
        self.catalog = catalog
        self.namespace = namespace
        self.row_group_size = row_group_size
        # reference table name -> the one shard whose changes feed its mirror
        self.reference_tables = reference_tables or {}
        self.tables: dict[str, LakeTable] = {}
        self.catalog.create_namespace_if_not_exists(namespace)
        self._load_existing()

    # ------------------------------------------------------------------ startup

    def _load_existing(self) -> None:
        for ident in self.catalog.list_tables(self.namespace):
            name = ident[-1]
            if name.endswith("__changelog"):
                continue
            try:
                mirror = self.catalog.load_table((self.namespace, name))
                changelog = self.catalog.load_table((self.namespace, name + "__changelog"))
            except NoSuchTableError:
                continue
            layout = _layout_from_properties(name, mirror)
            self.tables[name] = LakeTable(
                layout,
                mirror,
                changelog,
                watermarks.of_table(mirror),
                watermarks.of_table(changelog),
                _snapshot_time(mirror),
            )

    def committed(self) -> dict[str, int]:
        return watermarks.load_committed(self.catalog, self.namespace)

    def save_committed(self, marks: dict[str, int]) -> None:
        watermarks.save_committed(self.catalog, self.namespace, marks)

    def ping(self) -> None:
        self.catalog.list_tables(self.namespace)

    # ------------------------------------------------------------------ flush

    def flush_table(self, name: str, entries: list[Entry], cut: dict[str, int]) -> TableFlush:
        result = TableFlush(name)
        lt = self.tables.get(name) or LakeTable(TableLayout(name))
        self.tables[name] = lt
        self._evolve(lt, entries)
        marks_cl = _merge(lt.changelog_wm, cut)
        marks_m = _merge(lt.mirror_wm, cut)
        cl_entries = [e for e in entries if e.change.lsn > lt.changelog_wm.get(e.shard, 0)]
        if cl_entries:
            assert lt.changelog is not None
            df = self._changelog_frame(lt, cl_entries)
            lt.changelog.append(df, snapshot_properties=_props(marks_cl))
            lt.changelog_wm = marks_cl
            result.changelog_rows = len(cl_entries)
            result.changelog_snapshot = lt.changelog.current_snapshot().snapshot_id
        _fault("after_changelog_commit")
        designated = self.reference_tables.get(name)
        m_entries = [
            e
            for e in entries
            if e.change.lsn > lt.mirror_wm.get(e.shard, 0)
            and (designated is None or e.shard == designated)
        ]
        if m_entries:
            self._apply_mirror(lt, m_entries, marks_m, result)
            lt.mirror_wm = marks_m
        _fault("after_mirror_commit")
        lt.committed_at = time.time()
        result.watermarks = dict(marks_m)
        if lt.mirror and lt.mirror.current_snapshot():
            result.mirror_snapshot = lt.mirror.current_snapshot().snapshot_id
        if lt.changelog and lt.changelog.current_snapshot():
            result.changelog_snapshot = lt.changelog.current_snapshot().snapshot_id
        return result

    # ------------------------------------------------------------------ schema

    def _evolve(self, lt: LakeTable, entries: list[Entry]) -> None:
        layout = lt.layout
        added: list[Column] = []
        for e in entries:
            ch = e.change
            if ch.op == "schema" and ch.schema is not None:
                added += layout.apply(ch.schema)
            elif ch.op != "schema" and not layout.columns:
                added += layout.infer(ch)
        if lt.mirror is None:
            self._create(lt)
            return
        if added:
            for table in (lt.mirror, lt.changelog):
                assert table is not None
                existing = {f.name for f in table.schema().fields}
                with table.transaction() as tx:
                    with tx.update_schema() as us:
                        for col in added:
                            if col.name not in existing:
                                us.add_column(col.name, col.type)
                    tx.set_properties(_layout_properties(layout))
            lt.mirror = self.catalog.load_table((self.namespace, layout.name))
            lt.changelog = self.catalog.load_table((self.namespace, layout.name + "__changelog"))

    def _create(self, lt: LakeTable) -> None:
        layout = lt.layout
        ids = itertools.count(1)
        user = [NestedField(next(ids), c.name, c.type, required=False) for c in layout.columns]
        hidden = [NestedField(next(ids), SHARD_COL, StringType(), required=False)]
        if layout.rowid_keyed:
            hidden.append(NestedField(next(ids), ROWID, LongType(), required=False))
        overflow = NestedField(next(ids), OVERFLOW, StringType(), required=False)
        mirror_schema = Schema(*user, *hidden, overflow)
        key_field = next(
            (f for f in (*user, *hidden) if f.name == (layout.primary_key or [ROWID])[0]), None
        )
        spec = PartitionSpec()
        if key_field is not None and isinstance(key_field.field_type, _BUCKETABLE):
            spec = PartitionSpec(
                PartitionField(
                    source_id=key_field.field_id,
                    field_id=1000,
                    transform=BucketTransform(MIRROR_BUCKETS),
                    name=f"{key_field.name}_bucket",
                )
            )
        props = {
            "write.parquet.row-group-limit": str(self.row_group_size),
            **_layout_properties(layout),
        }
        ids = itertools.count(1)
        cl_fields = [NestedField(next(ids), c.name, c.type, required=False) for c in layout.columns]
        if layout.rowid_keyed:
            cl_fields.append(NestedField(next(ids), ROWID, LongType(), required=False))
        cl_fields += [
            NestedField(next(ids), "_op", StringType(), required=False),
            NestedField(next(ids), "_lsn", LongType(), required=False),
            NestedField(next(ids), "_shard", StringType(), required=False),
            NestedField(next(ids), "_txid", LongType(), required=False),
        ]
        ts_id = next(ids)
        cl_fields.append(NestedField(ts_id, "_commit_ts", TimestamptzType(), required=False))
        cl_fields.append(NestedField(next(ids), OVERFLOW, StringType(), required=False))
        cl_spec = PartitionSpec(
            PartitionField(
                source_id=ts_id, field_id=1000, transform=DayTransform(), name="_commit_ts_day"
            )
        )
        ns = self.namespace
        # Change log first: a mirror without its change log never exists, so
        # _load_existing (which keys on the mirror) sees complete pairs only.
        lt.changelog = _create_or_load(
            self.catalog, (ns, layout.name + "__changelog"), Schema(*cl_fields), cl_spec, props
        )
        lt.mirror = _create_or_load(self.catalog, (ns, layout.name), mirror_schema, spec, props)

    # ------------------------------------------------------------------ change log

    def _changelog_frame(self, lt: LakeTable, entries: list[Entry]) -> pa.Table:
        layout = lt.layout
        assert lt.changelog is not None
        rows = []
        for e in entries:
            ch = e.change
            image = ch.before if ch.op == "delete" else ch.after
            row, overflow = layout.typed_row(image if ch.op != "schema" else None)
            if layout.rowid_keyed:
                row[ROWID] = _rowid(ch)
            row.update(
                _op=ch.op,
                _lsn=ch.lsn,
                _shard=e.shard,
                _txid=ch.txid,
                _commit_ts=_ts(ch.commit_ts),
            )
            if ch.op == "schema" and ch.schema is not None:
                # what kind of schema event this row is (readers replaying the log need it)
                event = {SCHEMA_ACTION: ch.schema.action}
                if ch.schema.sql:
                    event[SCHEMA_SQL] = ch.schema.sql
                if ch.schema.renamed_from:
                    event[SCHEMA_RENAMED] = ch.schema.renamed_from
                overflow = json.dumps(event, sort_keys=True)
            row[OVERFLOW] = overflow
            rows.append(row)
        return pa.Table.from_pylist(rows, schema=schema_to_pyarrow(lt.changelog.schema()))

    # ------------------------------------------------------------------ mirror

    def _ops(self, lt: LakeTable, entries: list[Entry]) -> tuple[dict, bool]:
        """Per key, the net change of each shard, ordered by commit time.

        Within a shard LSN order decides, so only each shard's last state of
        a key matters: ``(commit_ts, shard, image or DELETE)``. Several shards
        touch one key only when a row moves between shards under the same
        primary key (sharding column != key) or a reference table arrives
        from every shard without a VSchema naming one source; those are
        resolved against the row's owner in :meth:`_fold`.
        """
        layout = lt.layout
        per_shard: dict[str, dict[tuple, tuple[Any, int]]] = {}
        dropped: set[str] = set()
        for e in entries:
            ch = e.change
            state = per_shard.setdefault(e.shard, {})
            if ch.op == "schema":
                if ch.schema is not None and ch.schema.action == "drop":
                    # DROP TABLE on this shard: the rows it owns go, with its
                    # earlier changes of this batch; what follows (re-create) stays
                    dropped.add(e.shard)
                    state.clear()
                continue
            if layout.rowid_keyed:
                key = (e.shard, _rowid(ch))
                state[key] = (DELETE if ch.op == "delete" else ch.after or {}, ch.commit_ts)
                continue
            if ch.op == "delete":
                state[self._norm_key(layout, layout.key_of(ch, ch.before))] = (DELETE, ch.commit_ts)
                continue
            new = self._norm_key(layout, layout.key_of(ch, ch.after))
            if ch.op == "update" and ch.before is not None:
                old = self._norm_key(layout, layout.key_of(ch, ch.before))
                if old != new:
                    state[old] = (DELETE, ch.commit_ts)
            state[new] = (ch.after, ch.commit_ts)
        ops: dict[tuple, list[tuple[int, str, Any]]] = {}
        for shard, state in per_shard.items():
            for key, (image, ts) in state.items():
                ops.setdefault(key, []).append((ts, shard, image))
        for key_ops in ops.values():
            key_ops.sort(key=lambda op: (op[0], op[1]))
        return ops, dropped

    @staticmethod
    def _fold(existing: tuple[Any, str | None] | None, key_ops: list) -> tuple[Any, str] | None:
        """Apply one key's ops to its current mirror row ``(row, owner shard)``.

        An image from shard X makes X the owner. A delete from shard A
        removes the row only if A owns it: when a row moved from A to B, A's
        delete never removes B's copy, whichever arrives first.
        """
        state: tuple[Any, str | None] | None = existing
        for _ts, shard, image in key_ops:
            if image is DELETE:
                if state is None or state[1] in (shard, None):
                    state = None
            else:
                state = (image, shard)
        return state  # type: ignore[return-value]

    @staticmethod
    def _norm_key(layout: TableLayout, raw: tuple) -> tuple:
        """A key in the lake's typed domain, comparable with rows read back."""
        out = []
        for name, v in zip(layout.primary_key, raw, strict=False):
            col = layout.column(name)
            if v is None or col is None:
                out.append(v)
                continue
            try:
                out.append(col.convert(v))
            except NoFit:
                out.append(("!", json.dumps(raw_tag(v), sort_keys=True)))
        return tuple(out)

    def _row_keys(self, layout: TableLayout, data: pa.Table) -> list[tuple]:
        if layout.rowid_keyed:
            return list(zip(data[SHARD_COL].to_pylist(), data[ROWID].to_pylist(), strict=True))
        cols = [data[k].to_pylist() for k in layout.primary_key]
        overflow = data[OVERFLOW].to_pylist()
        keys = []
        for i, ov in enumerate(overflow):
            key = [c[i] for c in cols]
            if ov is not None:
                tags = json.loads(ov)
                for j, name in enumerate(layout.primary_key):
                    if key[j] is None and name in tags:
                        key[j] = ("!", json.dumps(tags[name], sort_keys=True))
            keys.append(tuple(key))
        return keys

    def _prune_filter(self, layout: TableLayout, keys: list[tuple]) -> BooleanExpression:
        name = ROWID if layout.rowid_keyed else layout.primary_key[0]
        pos = 1 if layout.rowid_keyed else 0
        values = {k[pos] for k in keys}
        if any(v is None or isinstance(v, tuple) for v in values):
            return AlwaysTrue()
        return In(name, values)

    def _keep_mask(self, layout: TableLayout, data: pa.Table, ops: dict) -> list[bool]:
        """Per row of ``data``: True when its key is not affected by this flush."""
        if not layout.rowid_keyed and len(layout.primary_key) == 1:
            values = [k[0] for k in ops]
            if all(v is not None and not isinstance(v, tuple) for v in values):
                column = data[layout.primary_key[0]]
                try:
                    hit = pc.is_in(column, value_set=pa.array(values, type=column.type))
                    hit = pc.fill_null(hit, False)
                    if data[OVERFLOW].null_count == len(data):  # no overflow keys here
                        return pc.invert(hit).to_pylist()
                except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                    pass
        return [k not in ops for k in self._row_keys(layout, data)]

    def _bounds_check(self, table: Table, layout: TableLayout, keys: list[tuple]):
        """A per-file test: could any affected key lie within the file's min/max
        of the first key column? (pyiceberg stops using statistics for ``In``
        beyond 200 values; this keeps big batches from reading every file of
        every touched bucket.)"""
        name = ROWID if layout.rowid_keyed else layout.primary_key[0]
        pos = 1 if layout.rowid_keyed else 0
        values = {k[pos] for k in keys}
        if any(v is None or isinstance(v, tuple) for v in values):
            return lambda data_file: True
        try:
            ordered = sorted(values)
        except TypeError:
            return lambda data_file: True
        field = table.schema().find_field(name)

        def check(data_file: Any) -> bool:
            lo = (data_file.lower_bounds or {}).get(field.field_id)
            hi = (data_file.upper_bounds or {}).get(field.field_id)
            if lo is None or hi is None:
                return True
            try:
                low = from_bytes(field.field_type, lo)
                high = from_bytes(field.field_type, hi)
                i = bisect.bisect_left(ordered, low)
                return i < len(ordered) and ordered[i] <= high
            except Exception:
                return True

        return check

    def _apply_mirror(
        self, lt: LakeTable, entries: list[Entry], marks: dict[str, int], result: TableFlush
    ) -> None:
        layout = lt.layout
        table = lt.mirror
        assert table is not None
        ops, dropped = self._ops(lt, entries)
        if not ops and not dropped:
            return
        arrow_schema = schema_to_pyarrow(table.schema())
        existing: dict[tuple, tuple[Any, str | None]] = {}
        with (
            table.transaction() as tx,
            tx.update_snapshot(snapshot_properties=_props(marks)).overwrite() as ow,
        ):
            kept: list[pa.Table] = []
            if table.current_snapshot() is not None:
                row_filter = AlwaysTrue() if dropped else self._prune_filter(layout, list(ops))
                in_range = self._bounds_check(table, layout, list(ops))
                for task in table.scan(row_filter=row_filter).plan_files():
                    if not dropped and not in_range(task.file):
                        continue
                    data = ArrowScan(
                        table_metadata=tx.table_metadata,
                        io=table.io,
                        projected_schema=tx.table_metadata.schema(),
                        row_filter=AlwaysTrue(),
                    ).to_table(tasks=[task])
                    mask = self._keep_mask(layout, data, ops)
                    if dropped:
                        owners = data[SHARD_COL].to_pylist()
                        mask = [
                            keep and owner not in dropped
                            for keep, owner in zip(mask, owners, strict=True)
                        ]
                    if not all(mask):
                        hit = data.filter(pc.invert(pa.array(mask)))
                        for k, row in zip(
                            self._row_keys(layout, hit), hit.to_pylist(), strict=True
                        ):
                            if k in ops and row.get(SHARD_COL) not in dropped:
                                existing[k] = (row, row.get(SHARD_COL))
                    if all(mask):
                        continue
                    ow.delete_data_file(task.file)
                    result.files_rewritten += 1
                    if any(mask):
                        kept.append(data.filter(pa.array(mask)).cast(arrow_schema))
            new_rows = []
            for key, key_ops in ops.items():
                before = existing.get(key)
                state = self._fold(before, key_ops)
                if state is None:
                    result.mirror_deletes += before is not None
                    continue
                image, owner = state
                if before is not None and image is before[0]:
                    new_rows.append(image)  # untouched (a delete from a non-owner)
                    continue
                row, overflow = layout.typed_row(image)
                row[SHARD_COL] = owner
                if layout.rowid_keyed:
                    row[ROWID] = key[1]
                row[OVERFLOW] = overflow
                new_rows.append(row)
                result.mirror_upserts += 1
            df = pa.concat_tables([*kept, pa.Table.from_pylist(new_rows, schema=arrow_schema)])
            sort_col = ROWID if layout.rowid_keyed else layout.primary_key[0]
            try:
                df = df.sort_by([(sort_col, "ascending")])
            except pa.ArrowNotImplementedError:
                pass
            counter = itertools.count()
            for offset in range(0, len(df), MIRROR_SLICE_ROWS):
                for data_file in _dataframe_to_data_files(
                    table_metadata=tx.table_metadata,
                    df=df.slice(offset, MIRROR_SLICE_ROWS),
                    io=table.io,
                    write_uuid=ow.commit_uuid,
                    counter=counter,
                ):
                    ow.append_data_file(data_file)
                    result.files_written += 1
                    result.bytes_written += data_file.file_size_in_bytes
        result.mirror_snapshot = table.current_snapshot().snapshot_id


def _create_or_load(
    catalog: Catalog, ident: tuple[str, str], schema: Schema, spec: PartitionSpec, props: dict
) -> Table:
    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        return catalog.create_table(ident, schema, partition_spec=spec, properties=props)


def _layout_properties(layout: TableLayout) -> dict[str, str]:
    return {
        "dosql.primary_key": json.dumps(layout.primary_key),
        "dosql.columns": json.dumps(
            [[c.name, c.decltype, c.dropped] for c in layout.columns], separators=(",", ":")
        ),
    }


def _layout_from_properties(name: str, table: Table) -> TableLayout:
    props = table.properties
    layout = TableLayout(name, primary_key=json.loads(props.get("dosql.primary_key", "[]")))
    decl = {n: (d, dropped) for n, d, dropped in json.loads(props.get("dosql.columns", "[]"))}
    for f in table.schema().fields:
        if f.name.startswith("_dosql_"):
            continue
        d, dropped = decl.get(f.name, ("", False))
        t = f.field_type
        layout.columns.append(Column(f.name, d, t, converter(t), dropped))
    return layout


def _merge(old: dict[str, int], cut: dict[str, int]) -> dict[str, int]:
    merged = dict(old)
    for shard, lsn in cut.items():
        merged[shard] = max(merged.get(shard, 0), lsn)
    return merged


def _props(marks: dict[str, int]) -> dict[str, str]:
    return {f"{watermarks.PREFIX}{s}": str(v) for s, v in sorted(marks.items())}


def _rowid(ch: protocol.Change) -> int | None:
    return ch.key[0] if ch.key else None


def _ts(micros: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)


def _snapshot_time(table: Table) -> float | None:
    snap = table.current_snapshot()
    return snap.timestamp_ms / 1000 if snap else None
