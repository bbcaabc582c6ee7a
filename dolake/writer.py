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
The mirror is an unpartitioned Iceberg v2 table (``bucket(N, first key
column)`` with ``mirror_buckets = N``, and for mirrors created before that
setting) updated **merge-on-read** (see dolake/mor.py): a flush writes the new
images of the affected keys into one new data file (sorted by key; one per
bucket touched when bucketed) and one position-delete file naming the old rows
of those keys (one per partition of the files it names), in one snapshot.
Manifests are merged as they pile up (``MAINTAINED_PROPERTIES``), so the
manifest list stays short; snapshot expiry is dolake/maintenance.py, compaction
(small files rewritten as one replace snapshot, the key index moved along)
dolake/compaction.py, orphan cleanup dolake/orphans.py. The old rows are found in a key index (key -> data
file, row position, owner shard, commit time) kept in a local SQLite file per table under
``<data dir>/lake/mirror_index/``: derived state, updated after each mirror
commit and rebuilt from the mirror when it does not match the table's current
snapshot. So a flush reads no data file and rewrites none: its cost follows
the batch, not the table. Tables without a primary key are keyed by
``(shard, rowid)`` (``_dosql_rowid``).

Every mirror row also records its owner shard in the hidden column
``_dosql_shard`` and the commit time of its image (UTC microseconds) in
``_dosql_commit_ts``. A row moves from shard A to B under the same primary key
(sharding column != key) as A's delete and B's insert at one commit time, and
the shards stream independently, so the two -- and A's *older* images of the
key -- can arrive in any order and flush. Hence:

- an image from shard X replaces a row owned by Y != X only if its commit
  time is >= the row's (A's older image never takes a moved row back from B);
  an image from the owner always applies (LSN order decides within a shard);
- a delete from X removes the row only if X owns it (A's delete never removes
  B's copy).

After both shards streamed everything, the mirror holds exactly the shards'
rows, whatever the flush order; a reference table streamed by every shard
converges to the same rows. Mirrors written before ``_dosql_commit_ts``
existed get the column on startup; their rows have it NULL, which every image
may replace (the former rule).

Distributed transactions: the ``cut`` a flush passes is chosen by the lake
server (dolake/distributed.py) so that every transaction committed atomically
across shards is in the entries whole or not at all; the change log records its
``_gtid`` and ``_parts`` (added on startup to change logs created without).

Known reference tables (VSchema in the config) feed their mirror from one
shard (the first of the VSchema) only; their change log keeps every shard's rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.io.pyarrow import schema_to_pyarrow
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

from dolake import compaction, maintenance, mor, orphans, watermarks
from dolake.buffer import Entry
from dolake.mor import KeyIndex
from dolake.required import identifier_ids, relax_required
from dolake.schema import (
    OVERFLOW,
    ROWID,
    SCHEMA_ACTION,
    SCHEMA_COLUMNS,
    SCHEMA_PK,
    SCHEMA_RENAMED,
    SCHEMA_SQL,
    SCHEMA_WITHOUT_ROWID,
    SHARD_COL,
    Column,
    NoFit,
    TableLayout,
    converter,
    declared_columns,
    raw_tag,
)
from dosql import protocol
from dosql.errors import NotFoundError

log = logging.getLogger(__name__)

MIRROR_BUCKETS = 16  # the former layout: bucket(16, key); now only with mirror_buckets=16
# Table properties the writer keeps on both tables (set on create, added on startup):
# manifests are merged once this many small ones pile up (data and delete manifests
# alike, dolake/mor.py merge_manifests; the change log's appends by pyiceberg's
# merge-append), so a snapshot's manifest list stays short however many flushes ran.
MANIFEST_MIN_MERGE_COUNT = 8
MAINTAINED_PROPERTIES = {
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": str(MANIFEST_MIN_MERGE_COUNT),
    # old metadata.json files are removed as each commit is made (pyiceberg does it)
    "write.metadata.delete-after-commit.enabled": "true",
}
METADATA_VERSIONS_PROPERTY = "write.metadata.previous-versions-max"
_BUCKETABLE = (LongType, StringType, BinaryType, DecimalType, DateType, TimestampType)
DELETE = object()  # op marker: the key has no row
COMMIT_TS_COL = "_dosql_commit_ts"  # mirror: commit time (UTC microseconds) of the row's image
# change log: the global transaction id and participant shards (comma-separated) of a
# transaction committed atomically across shards (NULL for a local one)
GTID_COL = "_gtid"
PARTS_COL = "_parts"
GTID_COLS = (GTID_COL, PARTS_COL)


@dataclass
class TableFlush:
    """Outcome of flushing one table."""

    table: str
    changelog_rows: int = 0
    mirror_upserts: int = 0
    mirror_deletes: int = 0
    files_rewritten: int = 0
    files_written: int = 0
    delete_files_written: int = 0
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
    delete_files: int = 0  # position-delete files written since this process started


# (table, tables done, tables in all): called as a maintenance run reaches each table
Progress = Callable[[str, int, int], None]


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
        index_dir: str | Path | None = None,
        mirror_buckets: int = 0,
        metadata_versions_max: int = 100,
    ) -> None:
        self.catalog = catalog
        self.maintained = {
            **MAINTAINED_PROPERTIES,
            METADATA_VERSIONS_PROPERTY: str(metadata_versions_max),
        }
        # 0: new mirrors are unpartitioned, so a flush writes one data file and one
        # position-delete file (not one of each per bucket touched); N: bucket(N, key)
        self.mirror_buckets = mirror_buckets
        self.namespace = namespace
        self.row_group_size = row_group_size
        # reference table name -> the one shard whose changes feed its mirror
        self.reference_tables = reference_tables or {}
        self.tables: dict[str, LakeTable] = {}
        # derived state: the mirrors' key -> (file, position) indexes (see dolake/mor.py)
        self._tmp_index: tempfile.TemporaryDirectory | None = None
        if index_dir is None:
            self._tmp_index = tempfile.TemporaryDirectory(prefix="dolake-index-")
            index_dir = self._tmp_index.name
        self.index_dir = Path(index_dir)
        self.indexes: dict[str, KeyIndex] = {}
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
            mirror = _with_properties(
                self.catalog, _with_commit_ts(self.catalog, mirror), self.maintained
            )
            changelog = _with_properties(
                self.catalog, _with_gtid(self.catalog, changelog), self.maintained
            )
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

    def save_committed(self, marks: dict[str, int], safe_ts: dict[str, int] | None = None) -> None:
        watermarks.save_committed(self.catalog, self.namespace, marks, safe_ts)

    def safe_ts(self) -> dict[str, int]:
        return watermarks.load_safe_ts(self.catalog, self.namespace)

    def incarnations(self) -> dict[str, str]:
        return watermarks.load_incarnations(self.catalog, self.namespace)

    def save_incarnation(self, shard: str, incarnation: str) -> None:
        watermarks.save_incarnation(self.catalog, self.namespace, shard, incarnation)

    def ping(self) -> None:
        self.catalog.list_tables(self.namespace)

    # ------------------------------------------------------------------ maintenance

    def expire(
        self,
        policy: maintenance.Retention,
        *,
        now_ms: int | None = None,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Expire the snapshots of every lake table outside ``policy`` and delete the
        files only they referenced (dolake/maintenance.py). Call it with no flush
        in flight (the server holds its flush lock). The current snapshots, which
        carry the watermarks, are always kept."""
        out: dict[str, Any] = {}
        for i, (name, lt) in enumerate(sorted(self.tables.items())):
            if progress is not None:
                progress(name, i, len(self.tables))
            res: dict[str, Any] = {}
            for side, table in (("changelog", lt.changelog), ("mirror", lt.mirror)):
                if table is None:
                    continue
                res[side] = maintenance.expire_table(
                    table, policy, now_ms=now_ms, dry_run=dry_run, mark=side == "mirror"
                )
            out[name] = res
        return out

    def compact(
        self,
        policy: compaction.Policy,
        *,
        table: str | None = None,
        now_ms: int | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Compact the small files of every lake table (or ``table``): change log,
        then mirror, each one ``replace`` snapshot (dolake/compaction.py), the
        mirror's key index moved to the new files right after its commit. Call it
        with no flush in flight (the server holds its flush lock)."""
        out: dict[str, Any] = {}
        names = sorted(self.tables) if table is None else [table.lower()]
        for name in names:
            lt = self.tables.get(name)
            if lt is None:
                raise NotFoundError(
                    f"the lake has no table {name!r}; tables: {', '.join(sorted(self.tables))}",
                    code="TABLE_NOT_FOUND",
                )
            res: dict[str, Any] = {}
            for side in ("changelog", "mirror"):
                if getattr(lt, side) is None:
                    continue
                try:  # one table's failure does not stop the others' compaction
                    if side == "mirror":
                        res[side] = self._compact_mirror(lt, policy, now_ms, dry_run)
                    else:
                        res[side] = compaction.compact_table(
                            lt.changelog, policy, now_ms=now_ms, dry_run=dry_run
                        )
                except Exception as exc:
                    log.exception("compaction failed", extra={"table": name, "side": side})
                    res[side] = {"error": f"{type(exc).__name__}: {exc}", "snapshot_id": None}
            out[name] = res
        return out

    def _compact_mirror(
        self, lt: LakeTable, policy: compaction.Policy, now_ms: int | None, dry_run: bool
    ) -> dict[str, Any]:
        layout = lt.layout
        table = lt.mirror
        assert table is not None
        on_commit = None
        if not dry_run and table.current_snapshot() is not None:
            index = self._index_of(lt)  # matches the snapshot being compacted

            def on_commit(snapshot_id: int, added: list, removed: list[str]) -> None:
                rows = []
                for data_file, part in added:
                    keys, shards, stamps = self._keys_of(layout, part)
                    rows.append(
                        (data_file, list(zip(keys, range(len(keys)), shards, stamps, strict=True)))
                    )
                index.apply(snapshot_id, (), rows, removed_files=removed)

        if layout.rowid_keyed:
            sort_col = ROWID
        else:
            sort_col = layout.primary_key[0] if layout.primary_key else None
        return compaction.compact_table(
            table, policy, now_ms=now_ms, dry_run=dry_run, sort_by=sort_col, on_commit=on_commit
        )

    def clean_orphans(
        self, older_than_ms: int, *, dry_run: bool = False, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Delete the files in every lake table's directory that no snapshot or
        metadata version references, once older than ``older_than_ms``
        (dolake/orphans.py). Call it with no flush in flight (the flush lock)."""
        out: dict[str, Any] = {}
        for i, (name, lt) in enumerate(sorted(self.tables.items())):
            if progress is not None:
                progress(name, i, len(self.tables))
            out[name] = {
                # the catalog's current metadata, not this writer's copy: a file another
                # engine committed must count as referenced
                side: orphans.clean_table(
                    self.catalog.load_table(table.name()), older_than_ms, dry_run=dry_run
                )
                for side, table in (("changelog", lt.changelog), ("mirror", lt.mirror))
                if table is not None
            }
        return out

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per table and side: data files, delete files, snapshots, oldest snapshot."""
        return {
            name: {
                "mirror": maintenance.table_stats(lt.mirror),
                "changelog": maintenance.table_stats(lt.changelog),
            }
            for name, lt in self.tables.items()
        }

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
            with mor.Transaction(lt.changelog) as tx:
                tx.append(df, snapshot_properties=_props(marks_cl))
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
        user = [NestedField(next(ids), c.name, c.type, required=c.required) for c in layout.columns]
        hidden = [
            NestedField(next(ids), SHARD_COL, StringType(), required=True),
            NestedField(next(ids), COMMIT_TS_COL, LongType(), required=False),
        ]
        if layout.rowid_keyed:
            hidden.append(NestedField(next(ids), ROWID, LongType(), required=True))
        overflow = NestedField(next(ids), OVERFLOW, StringType(), required=False)
        mirror_schema = Schema(
            *user, *hidden, overflow, identifier_field_ids=identifier_ids(layout, [*user, *hidden])
        )
        key_field = next(
            (f for f in (*user, *hidden) if f.name == (layout.primary_key or [ROWID])[0]), None
        )
        spec = PartitionSpec()
        if (
            self.mirror_buckets > 0
            and key_field is not None
            and isinstance(key_field.field_type, _BUCKETABLE)
        ):
            spec = PartitionSpec(
                PartitionField(
                    source_id=key_field.field_id,
                    field_id=1000,
                    transform=BucketTransform(self.mirror_buckets),
                    name=f"{key_field.name}_bucket",
                )
            )
        props = {
            "write.parquet.row-group-limit": str(self.row_group_size),
            **self.maintained,
            **_layout_properties(layout),
        }
        ids = itertools.count(1)
        cl_fields = [NestedField(next(ids), c.name, c.type, required=False) for c in layout.columns]
        if layout.rowid_keyed:
            cl_fields.append(NestedField(next(ids), ROWID, LongType(), required=False))
        cl_fields += [
            NestedField(next(ids), "_op", StringType(), required=True),
            NestedField(next(ids), "_lsn", LongType(), required=True),
            NestedField(next(ids), "_shard", StringType(), required=True),
            NestedField(next(ids), "_txid", LongType(), required=True),
        ]
        ts_id = next(ids)
        cl_fields.append(NestedField(ts_id, "_commit_ts", TimestamptzType(), required=True))
        cl_fields += [
            NestedField(next(ids), name, StringType(), required=False) for name in GTID_COLS
        ]
        cl_fields.append(NestedField(next(ids), OVERFLOW, StringType(), required=False))
        cl_spec = PartitionSpec(
            PartitionField(
                source_id=ts_id, field_id=1000, transform=DayTransform(), name="_commit_ts_day"
            )
        )
        ns = self.namespace
        # Change log first: a mirror without its change log never exists, so
        # _load_existing (which keys on the mirror) sees complete pairs only.
        lt.changelog = _with_gtid(
            self.catalog,
            _create_or_load(
                self.catalog, (ns, layout.name + "__changelog"), Schema(*cl_fields), cl_spec, props
            ),
        )
        mirror = _create_or_load(self.catalog, (ns, layout.name), mirror_schema, spec, props)
        lt.mirror = _with_commit_ts(self.catalog, mirror)

    # ------------------------------------------------------------------ change log

    def _changelog_frame(self, lt: LakeTable, entries: list[Entry]) -> pa.Table:
        layout = lt.layout
        assert lt.changelog is not None
        changes = [e.change for e in entries]
        images = [
            None if ch.op == "schema" else ch.before if ch.op == "delete" else ch.after
            for ch in changes
        ]
        columns, overflow = layout.typed_columns(images)
        for i, ch in enumerate(changes):
            if ch.op == "schema" and ch.schema is not None:
                # what kind of schema event this row is (readers replaying the log need it)
                overflow[i] = _schema_event(ch.schema)
        if layout.rowid_keyed:
            columns[ROWID] = [_rowid(ch) for ch in changes]
        columns["_op"] = [ch.op for ch in changes]
        columns["_lsn"] = [ch.lsn for ch in changes]
        columns["_shard"] = [e.shard for e in entries]
        columns["_txid"] = [ch.txid for ch in changes]
        columns[GTID_COL] = [ch.gtid for ch in changes]
        columns[PARTS_COL] = [",".join(ch.parts) if ch.parts else None for ch in changes]
        columns["_commit_ts"] = [ch.commit_ts for ch in changes]
        columns[OVERFLOW] = overflow
        lt.changelog = relax_required(self.catalog, lt.changelog, columns, len(changes))
        schema = schema_to_pyarrow(lt.changelog.schema())
        # commit times (UTC microseconds) as one array: no datetime object per row
        stamps = pa.array([ch.commit_ts for ch in changes], pa.int64())
        columns["_commit_ts"] = stamps.cast(schema.field("_commit_ts").type)
        return _frame(schema, columns, len(changes))

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
        key_of = self._key_function(layout)
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
                state[key_of(ch, ch.before)] = (DELETE, ch.commit_ts)
                continue
            new = key_of(ch, ch.after)
            if ch.op == "update" and ch.before is not None:
                old = key_of(ch, ch.before)
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
    def _fold(
        existing: tuple[Any, str | None, int | None] | None, key_ops: list
    ) -> tuple[Any, str, int] | None:
        """Apply one key's ops to its current mirror row ``(row, owner, commit ts)``.

        An image from shard X makes X the owner, but replaces a row owned by
        another shard only if it is not older (by commit time): when a row
        moved from A to B, A's older image arriving after B's never takes
        the row back. A delete from shard A removes the row only if A owns
        it: A's delete never removes B's copy, whichever arrives first.
        """
        state: tuple[Any, str | None, int | None] | None = existing
        for ts, shard, image in key_ops:
            if image is DELETE:
                if state is None or state[1] in (shard, None):
                    state = None
            elif state is None or state[1] in (shard, None) or state[2] is None or ts >= state[2]:
                state = (image, shard, ts)
        return state  # type: ignore[return-value]

    @classmethod
    def _key_function(cls, layout: TableLayout) -> Callable[[protocol.Change, Any], tuple]:
        """``(change, image) -> _norm_key(layout, layout.key_of(change, image))``,
        with a shortcut for the common key, one INTEGER column: a flush derives
        a key from every image it gets."""

        def general(ch: protocol.Change, image: Any) -> tuple:
            return cls._norm_key(layout, layout.key_of(ch, image))

        pk = layout.primary_key
        col = layout.column(pk[0]) if len(pk) == 1 else None
        if col is None or not isinstance(col.type, LongType):
            return general
        name = pk[0]

        def single_long(ch: protocol.Change, image: Any) -> tuple:
            v = image.get(name) if image is not None else None
            if type(v) is int and -(2**63) <= v < 2**63:
                return (v,)  # what key_of and _norm_key give such a value
            return general(ch, image)

        return single_long

    @staticmethod
    def _norm_key(layout: TableLayout, raw: tuple) -> tuple:
        """A key in the lake's typed domain, comparable with rows read back."""
        if len(raw) == 1 and type(raw[0]) is int and -(2**63) <= raw[0] < 2**63:
            col = layout.column(layout.primary_key[0]) if layout.primary_key else None
            if col is not None and isinstance(col.type, LongType):
                return raw  # the common case, already in the lake's domain
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

    def _index_of(self, lt: LakeTable) -> KeyIndex:
        """The key index of ``lt``'s mirror, matching its current snapshot
        (rebuilt from the mirror when it does not: O(table), once)."""
        table = lt.mirror
        assert table is not None
        name = lt.layout.name
        index = self.indexes.get(name)
        if index is None:
            index = self.indexes[name] = KeyIndex(self.index_dir / f"{name}.sqlite")
        snap = table.current_snapshot()
        current = snap.snapshot_id if snap is not None else 0
        if index.snapshot_id != current and not self._catch_up(lt, index):
            layout = lt.layout
            index.rebuild(table, lambda tbl, f: self._file_keys(layout, tbl, f))
        return index

    def _catch_up(self, lt: LakeTable, index: KeyIndex) -> bool:
        """Move the index over a compaction it missed (a crash between the replace
        commit and the index update): the index is at the compaction's parent, so
        only the rewritten rows moved -- read the new files' keys, no rebuild."""
        table = lt.mirror
        assert table is not None
        snap = table.current_snapshot()
        if (
            snap is None
            or index.snapshot_id is None
            or snap.parent_snapshot_id != index.snapshot_id
        ):
            return False
        moved = compaction.added_by(table, snap)
        if moved is None:
            return False
        added_files, removed = moved
        rows = []
        for data_file in added_files:
            keys, shards, stamps = self._file_keys(lt.layout, table, data_file)
            rows.append((data_file, list(zip(keys, range(len(keys)), shards, stamps, strict=True))))
        index.apply(snap.snapshot_id, (), rows, removed_files=removed)
        log.info(
            "mirror key index caught up with a compaction",
            extra={"table": table.name(), "files": len(added_files), "snapshot": snap.snapshot_id},
        )
        return True

    def _apply_mirror(
        self, lt: LakeTable, entries: list[Entry], marks: dict[str, int], result: TableFlush
    ) -> None:
        """Merge-on-read: new images go to new data files, the old rows of
        affected keys get position deletes; one snapshot (see dolake/mor.py)."""
        layout = lt.layout
        table = lt.mirror
        assert table is not None
        ops, dropped = self._ops(lt, entries)
        if not ops and not dropped:
            return
        index = self._index_of(lt)
        canon = {key: mor.canon(key) for key in ops}
        found = index.lookup(canon.values())
        # old rows to delete: canon key -> (file id, pos)
        doomed: dict[str, tuple[int, int]] = {}
        if dropped:
            for k, (f, p, _s, _ts) in index.owned_by(dropped).items():
                doomed[k] = (f, p)
        images: list[Any] = []
        owners: list[str] = []
        times: list[int] = []
        rowids: list[Any] = []
        for key, key_ops in ops.items():
            ck = canon[key]
            hit = found.get(ck)
            before = None
            if hit is not None and hit[2] not in dropped:
                # the old image is never needed, only its owner and commit time
                before = (DELETE, hit[2], hit[3])
            state = self._fold(before, key_ops)
            if state is not None and before is not None and state[0] is DELETE:
                continue  # untouched (a delete from a non-owner)
            if hit is not None:
                doomed[ck] = (hit[0], hit[1])
            if state is None:
                result.mirror_deletes += before is not None
                continue
            image, owner, ts = state
            images.append(image)
            owners.append(owner)
            times.append(ts)
            if layout.rowid_keyed:
                rowids.append(key[1])
            result.mirror_upserts += 1
        # (nothing to add or delete still commits: the snapshot carries the watermark)
        files = index.files(f for f, _p in doomed.values())
        groups: dict[tuple[int, tuple], list[tuple[str, int]]] = {}
        for f, p in doomed.values():
            path, spec_id, part = files[f]
            groups.setdefault((spec_id, part), []).append((path, p))
        added: list[tuple[Any, list[tuple[str, int, Any]]]] = []
        columns: dict[str, Any] = {}
        if images:
            columns, overflow = layout.typed_columns(images)
            columns.update({SHARD_COL: owners, COMMIT_TS_COL: times, OVERFLOW: overflow})
            if layout.rowid_keyed:
                columns[ROWID] = rowids
            table = lt.mirror = relax_required(self.catalog, table, columns, len(images))
        arrow_schema = schema_to_pyarrow(table.schema())
        with mor.Transaction(table) as tx:
            delta = mor.RowDelta(tx, table.io, _props(marks))
            if images:
                df = _frame(arrow_schema, columns, len(images))
                sort_col = ROWID if layout.rowid_keyed else layout.primary_key[0]
                try:
                    df = df.sort_by([(sort_col, "ascending")])
                except pa.ArrowNotImplementedError:
                    pass
                meta = tx.table_metadata
                for data_file, rows in mor.write_data_files(meta, table.io, df, delta.commit_uuid):
                    data_file.spec_id = meta.default_spec_id
                    delta.append_data_file(data_file)
                    result.files_written += 1
                    result.bytes_written += data_file.file_size_in_bytes
                    keys, shards, stamps = self._keys_of(layout, rows)
                    positions = range(len(keys))
                    added.append(
                        (data_file, list(zip(keys, positions, shards, stamps, strict=True)))
                    )
            for n, ((spec_id, part), rows) in enumerate(groups.items()):
                delete_file = mor.write_position_deletes(
                    table, spec_id, part, rows, delta.commit_uuid, n
                )
                delta.add_delete_file(delete_file)
                result.delete_files_written += 1
                result.bytes_written += delete_file.file_size_in_bytes
            delta.commit()
        snap = table.current_snapshot()
        result.mirror_snapshot = snap.snapshot_id
        _fault("before_index_update")
        index.apply(snap.snapshot_id, doomed.keys(), added)
        lt.delete_files += result.delete_files_written

    def _file_keys(self, layout: TableLayout, table: Table, data_file: Any):
        """Canonical keys, owners and commit times of a data file's rows, by position."""
        cols = [ROWID] if layout.rowid_keyed else list(layout.primary_key)
        data = mor.read_columns(table, data_file, [*cols, SHARD_COL, COMMIT_TS_COL, OVERFLOW])
        return self._keys_of(layout, data)

    def _keys_of(self, layout: TableLayout, data: pa.Table):
        """Canonical keys, owners and commit times of mirror rows, in order."""
        cols = [ROWID] if layout.rowid_keyed else list(layout.primary_key)
        shards = data[SHARD_COL].to_pylist()
        stamps = data[COMMIT_TS_COL].to_pylist()
        if (
            len(cols) == 1
            and not layout.rowid_keyed
            and pa.types.is_integer(data[cols[0]].type)
            and data[cols[0]].null_count == 0
            and data[OVERFLOW].null_count == len(data)
        ):  # fast path: an integer key is its own canonical form
            return data[cols[0]].to_pylist(), shards, stamps
        return [mor.canon(k) for k in self._row_keys(layout, data)], shards, stamps


def _create_or_load(
    catalog: Catalog, ident: tuple[str, str], schema: Schema, spec: PartitionSpec, props: dict
) -> Table:
    try:
        return catalog.load_table(ident)
    except NoSuchTableError:
        return catalog.create_table(ident, schema, partition_spec=spec, properties=props)


def _with_commit_ts(catalog: Catalog, mirror: Table) -> Table:
    """``mirror``, given the ``_dosql_commit_ts`` column if an older writer
    created it without (its rows keep NULL there: see the module docstring)."""
    if any(f.name == COMMIT_TS_COL for f in mirror.schema().fields):
        return mirror
    with mirror.update_schema() as us:
        us.add_column(COMMIT_TS_COL, LongType())
    log.info("mirror given %s", COMMIT_TS_COL, extra={"table": mirror.name()})
    return catalog.load_table(mirror.name())


def _with_gtid(catalog: Catalog, changelog: Table) -> Table:
    """``changelog``, given the ``_gtid``/``_parts`` columns if an older writer created
    it without (its rows keep NULL there: transactions of one shard, as they were)."""
    existing = {f.name for f in changelog.schema().fields}
    missing = [name for name in GTID_COLS if name not in existing]
    if not missing:
        return changelog
    with changelog.update_schema() as us:
        for name in missing:
            us.add_column(name, StringType())
    log.info("change log given %s", ", ".join(missing), extra={"table": changelog.name()})
    return catalog.load_table(changelog.name())


def _with_properties(catalog: Catalog, table: Table, wanted: dict[str, str]) -> Table:
    """``table`` with the writer's maintenance properties (``wanted``), set on
    tables created before them (or with other values)."""
    props = table.properties
    missing = {k: v for k, v in wanted.items() if props.get(k) != v}
    if not missing:
        return table
    with table.transaction() as tx:
        tx.set_properties(missing)
    log.info("table properties set", extra={"table": table.name(), "properties": missing})
    return catalog.load_table(table.name())


def _layout_properties(layout: TableLayout) -> dict[str, str]:
    return {
        "dosql.primary_key": json.dumps(layout.primary_key),
        "dosql.columns": json.dumps(
            [[c.name, c.decltype, c.dropped, c.notnull] for c in layout.columns],
            separators=(",", ":"),
        ),
    }


def _layout_from_properties(name: str, table: Table) -> TableLayout:
    props = table.properties
    layout = TableLayout(name, primary_key=json.loads(props.get("dosql.primary_key", "[]")))
    decl = declared_columns(props)
    for f in table.schema().fields:
        if f.name.startswith("_dosql_"):
            continue
        d, dropped, notnull = decl.get(f.name, ("", False, f.required))
        t = f.field_type
        layout.columns.append(
            Column(f.name, d, t, converter(t), dropped, notnull=notnull, required=f.required)
        )
    return layout


def _merge(old: dict[str, int], cut: dict[str, int]) -> dict[str, int]:
    merged = dict(old)
    for shard, lsn in cut.items():
        merged[shard] = max(merged.get(shard, 0), lsn)
    return merged


_props = watermarks.as_summary


def _frame(schema: pa.Schema, columns: dict[str, Any], rows: int) -> pa.Table:
    """A table of ``schema`` from column values, a column not given being NULL
    (what ``pa.Table.from_pylist`` builds from the same rows)."""
    return pa.Table.from_pydict(
        {f.name: columns.get(f.name, [None] * rows) for f in schema}, schema=schema
    )


def _schema_event(schema: protocol.TableSchema) -> str:
    """The overflow JSON of a change log row holding a schema event."""
    event = {SCHEMA_ACTION: schema.action}
    if schema.sql:
        event[SCHEMA_SQL] = schema.sql
    if schema.renamed_from:
        event[SCHEMA_RENAMED] = schema.renamed_from
    if schema.action in ("create", "alter") and schema.columns:
        event[SCHEMA_COLUMNS] = [[c.name, c.decltype, c.notnull, c.pk] for c in schema.columns]
        event[SCHEMA_PK] = list(schema.primary_key)
        if schema.without_rowid:
            event[SCHEMA_WITHOUT_ROWID] = True
    return json.dumps(event, sort_keys=True)


def _rowid(ch: protocol.Change) -> int | None:
    return ch.key[0] if ch.key else None


def _snapshot_time(table: Table) -> float | None:
    snap = table.current_snapshot()
    return snap.timestamp_ms / 1000 if snap else None
