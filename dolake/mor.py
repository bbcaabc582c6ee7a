"""Merge-on-read for the mirror: Iceberg v2 position deletes and a key index.

Why: with copy-on-write, a flush of keys scattered over the whole key space
rewrites nearly every data file of the mirror, so its cost grows with the
table. With merge-on-read a flush writes only

- new data files holding the new images of the affected keys, and
- position-delete files (Parquet ``file_path``, ``pos``; content
  ``POSITION_DELETES`` in a ``DELETES`` manifest) naming the old rows,

in one snapshot (:class:`RowDelta`). Readers (pyiceberg, DuckDB, Spark) apply
the deletes. pyiceberg 0.12 cannot write delete files through its public API
(``Transaction.delete`` falls back to copy-on-write), hence this small
snapshot producer built on its ``_FastAppendFiles``.

Sequence numbers: every file added by a snapshot inherits the snapshot's
sequence number. A position delete applies to data files whose sequence
number is <= its own, restricted here to the exact (older) file paths it
names, so a delete never hides a row written in the same or a later commit.
Delete files are grouped by the partition of the data files they name: the
Iceberg spec (and pyiceberg's ``DeleteFileIndex``) scope a position-delete
file to one partition.

Finding the old rows must not cost O(table): :class:`KeyIndex` keeps
``key -> (data file, row position, owner shard, commit time)`` per mirror
table in a local SQLite file (the commit time of the row's image, from the
mirror's ``_dosql_commit_ts``: the writer compares it when another shard
sends an image of the same key). It is *derived* state: it records the mirror snapshot it
reflects and is updated right after each mirror commit; when it is missing,
unreadable or names another snapshot (a crash between the Iceberg commit and
the index update, or another writer), it is rebuilt from the mirror's current
snapshot -- O(table), once.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import json
import logging
import operator
import sqlite3
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.conversions import to_bytes
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import (
    _get_field_from_arrow_table,
    _read_deletes,
    bin_pack_arrow_table,
    pyarrow_to_schema,
    schema_to_pyarrow,
    write_file,
)
from pyiceberg.manifest import (
    DataFile,
    DataFileContent,
    FileFormat,
    ManifestContent,
    ManifestEntry,
    ManifestEntryStatus,
    ManifestFile,
    ManifestWriterV2,
)
from pyiceberg.partitioning import PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table, WriteTask
from pyiceberg.table import Transaction as _PyIcebergTransaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.snapshots import (
    Operation,
    SnapshotSummaryCollector,
    Summary,
    update_snapshot_summaries,
)
from pyiceberg.table.update.snapshot import _FastAppendFiles
from pyiceberg.typedef import EMPTY_DICT, Record
from pyiceberg.types import LongType, StringType
from pyiceberg.utils.config import Config
from pyiceberg.utils.properties import property_as_int

log = logging.getLogger(__name__)

POS_PATH_ID = 2147483546  # reserved field ids of the position-delete schema
POS_POS_ID = 2147483545
POSITION_DELETE_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string(), False, {b"PARQUET:field_id": str(POS_PATH_ID).encode()}),
        pa.field("pos", pa.int64(), False, {b"PARQUET:field_id": str(POS_POS_ID).encode()}),
    ]
)


# ---------------------------------------------------------------- snapshot producer


class Transaction(_PyIcebergTransaction):
    """pyiceberg's ``Transaction``, deriving ``table_metadata`` once per staged state.

    pyiceberg derives it afresh on every read -- a deep copy of the whole
    table metadata, which grows with every snapshot -- and one commit reads it
    some twenty times: after a few dozen flushes that was most of a small
    flush. The metadata models are frozen, so the readers can share one copy;
    staging an update (a new ``_updates`` tuple) or a commit (a new table
    metadata) derives it again."""

    _memo: tuple[TableMetadata, tuple, TableMetadata] | None = None

    @property
    def table_metadata(self) -> TableMetadata:
        base, updates = self._table.metadata, self._updates
        memo = self._memo
        if memo is None or memo[0] is not base or memo[1] is not updates:
            memo = self._memo = (base, updates, super().table_metadata)
        return memo[2]


class _DeleteManifestWriter(ManifestWriterV2):
    """A v2 manifest of delete files (``content = deletes``)."""

    def content(self) -> ManifestContent:
        return ManifestContent.DELETES

    @property
    def _meta(self) -> dict[str, str]:
        return {**super()._meta, "content": "deletes"}


class RowDelta(_FastAppendFiles):
    """One snapshot adding data files and position-delete files (Iceberg's
    ``RowDelta``): existing manifests are kept as they are (fast append), one
    data manifest and one delete manifest per partition spec are added."""

    def __init__(
        self,
        transaction: Any,
        io: Any,
        snapshot_properties: dict[str, str],
        operation: Operation = Operation.OVERWRITE,
    ) -> None:
        super().__init__(operation, transaction, io, snapshot_properties=snapshot_properties)
        self._added_delete_files: list[DataFile] = []
        self._removed_files: dict[str, DataFile] = {}  # path -> data or delete file

    def add_delete_file(self, delete_file: DataFile) -> RowDelta:
        self._added_delete_files.append(delete_file)
        return self

    def remove_file(self, data_file: DataFile) -> RowDelta:
        """Remove a live data or delete file (a compaction's ``replace``): its
        manifest is rewritten with the entry ``DELETED``, the others ``EXISTING``
        with their snapshot ids and sequence numbers unchanged."""
        self._removed_files[data_file.file_path] = data_file
        return self

    def _existing_manifests(self) -> list[ManifestFile]:
        manifests = super()._existing_manifests()
        if not self._removed_files:
            return manifests
        out: list[ManifestFile] = []
        for m in manifests:
            entries = m.fetch_manifest_entry(io=self._io, discard_deleted=True)
            if not any(e.data_file.file_path in self._removed_files for e in entries):
                out.append(m)
                continue
            writer_cls = (
                _DeleteManifestWriter if m.content == ManifestContent.DELETES else ManifestWriterV2
            )
            writer = writer_cls(
                self.spec(m.partition_spec_id),
                self.schema(),
                self.new_manifest_output(),
                self._snapshot_id,
                self._compression,
            )
            with writer:
                for e in entries:
                    if e.data_file.file_path in self._removed_files:
                        writer.delete(e)
                    else:
                        writer.existing(e)
            out.append(writer.to_manifest_file())
        return out

    def _manifests(self) -> list[ManifestFile]:
        manifests: list[ManifestFile] = []
        if self._added_data_files:
            with self.new_manifest_writer(spec=self._transaction.table_metadata.spec()) as w:
                for data_file in self._added_data_files:
                    w.add(_added(self._snapshot_id, data_file))
            manifests.append(w.to_manifest_file())
        by_spec: dict[int, list[DataFile]] = {}
        for f in self._added_delete_files:
            by_spec.setdefault(f.spec_id, []).append(f)
        meta = self._transaction.table_metadata
        for spec_id, files in by_spec.items():
            dw = _DeleteManifestWriter(
                self.spec(spec_id),
                self.schema(),
                self.new_manifest_output(),
                self._snapshot_id,
                self._compression,
            )
            with dw:
                for f in files:
                    dw.add(_added(self._snapshot_id, f))
            manifests.append(dw.to_manifest_file())
        assert meta.format_version >= 2, "position deletes need an Iceberg v2 table"
        return merge_manifests(self, manifests + self._existing_manifests())

    def _summary(self, snapshot_properties: dict[str, str] = EMPTY_DICT) -> Summary:
        meta = self._transaction.table_metadata
        ssc = SnapshotSummaryCollector()
        schema = meta.schema()
        specs = meta.specs()
        for f in self._added_data_files:  # written with the table's default spec
            ssc.add_file(f, schema=schema, partition_spec=meta.spec())
        for f in self._added_delete_files:
            ssc.add_file(f, schema=schema, partition_spec=specs[f.spec_id])
        for f in self._removed_files.values():
            ssc.remove_file(f, schema=schema, partition_spec=specs[f.spec_id or 0])
        previous = (
            meta.snapshot_by_id(self._parent_snapshot_id)
            if self._parent_snapshot_id is not None
            else None
        )
        # pyiceberg totals up append/overwrite/delete only; a replace counts the same way
        replace = self._operation == Operation.REPLACE
        summary = update_snapshot_summaries(
            summary=Summary(
                operation=Operation.OVERWRITE if replace else self._operation,
                **ssc.build(),
                **snapshot_properties,
            ),
            previous_summary=previous.summary if previous is not None else None,
        )
        if replace:
            summary = Summary(operation=Operation.REPLACE, **summary.additional_properties)
        return summary


def merge_manifests(producer: Any, manifests: list[ManifestFile]) -> list[ManifestFile]:
    """Keep a snapshot's manifest list short: what Iceberg's
    ``commit.manifest-merge.enabled`` does for appends, for data *and* delete
    manifests (pyiceberg's merge-append only merges data manifests).

    Manifests smaller than ``commit.manifest.target-size-bytes`` are grouped by
    (content, partition spec); a group of ``commit.manifest.min-count-to-merge``
    or more is rewritten as one manifest. Its entries keep their status (added
    by this snapshot) or become ``EXISTING`` with their snapshot id and data /
    file sequence numbers unchanged, so a position delete still applies to
    exactly the data files it applied to. A table gains at most that many small
    manifests per content, however many flushes it takes. A manifest this commit
    wrote and merged away is deleted at once (pyiceberg's merge-append leaves
    those behind: orphan cleanup, dolake/orphans.py, removes them)."""
    from pyiceberg.table import TableProperties
    from pyiceberg.utils.properties import property_as_bool

    meta = producer._transaction.table_metadata
    props = meta.properties
    if not property_as_bool(props, TableProperties.MANIFEST_MERGE_ENABLED, False):
        return manifests
    min_count = property_as_int(
        props,
        TableProperties.MANIFEST_MIN_MERGE_COUNT,
        TableProperties.MANIFEST_MIN_MERGE_COUNT_DEFAULT,
    )
    target = property_as_int(
        props,
        TableProperties.MANIFEST_TARGET_SIZE_BYTES,
        TableProperties.MANIFEST_TARGET_SIZE_BYTES_DEFAULT,
    )
    out: list[ManifestFile] = []
    groups: dict[tuple[Any, int], list[ManifestFile]] = {}
    for m in manifests:
        if m.manifest_length >= target:  # type: ignore[operator]
            out.append(m)
        else:
            groups.setdefault((m.content, m.partition_spec_id), []).append(m)
    for (content, spec_id), group in groups.items():
        if len(group) < max(2, min_count or 2):
            out.extend(group)
            continue
        writer_cls = (
            _DeleteManifestWriter if content == ManifestContent.DELETES else ManifestWriterV2
        )
        writer = writer_cls(
            producer.spec(spec_id),
            producer.schema(),
            producer.new_manifest_output(),
            producer._snapshot_id,
            producer._compression,
        )
        with writer:
            for m in group:
                for entry in m.fetch_manifest_entry(io=producer._io, discard_deleted=True):
                    if (
                        entry.status == ManifestEntryStatus.ADDED
                        and entry.snapshot_id == producer._snapshot_id
                    ):
                        writer.add(entry)
                    else:
                        writer.existing(entry)
        out.append(writer.to_manifest_file())
        for m in group:  # written by this commit and merged away: nothing will reference it
            if m.manifest_path in producer._written_manifests:
                producer._io.delete(m.manifest_path)
    return out


def _added(snapshot_id: int, data_file: DataFile) -> ManifestEntry:
    return ManifestEntry.from_args(
        status=ManifestEntryStatus.ADDED,
        snapshot_id=snapshot_id,
        sequence_number=None,
        file_sequence_number=None,
        data_file=data_file,
    )


def write_position_deletes(
    table: Table,
    spec_id: int,
    partition: tuple,
    rows: list[tuple[str, int]],
    commit_uuid: uuid.UUID,
    n: int,
) -> DataFile:
    """Write one position-delete file for data files of one partition.

    ``rows`` are (data file path, row position); the file is sorted by both
    as the spec requires, with path/pos bounds so readers skip data files it
    does not name."""
    rows = sorted(rows)
    data = pa.table(
        [pa.array([p for p, _ in rows], pa.string()), pa.array([i for _, i in rows], pa.int64())],
        schema=POSITION_DELETE_SCHEMA,
    )
    name = f"{commit_uuid}-deletes-{n:05d}.parquet"
    path = table.location_provider().new_data_location(name)
    out = table.io.new_output(path)
    with out.create(overwrite=True) as fo:
        pq.write_table(data, fo, compression="zstd")
    size = len(table.io.new_input(path))
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=path,
        file_format=FileFormat.PARQUET,
        partition=Record(*partition),
        record_count=len(rows),
        file_size_in_bytes=size,
        column_sizes={},
        value_counts={POS_PATH_ID: len(rows), POS_POS_ID: len(rows)},
        null_value_counts={POS_PATH_ID: 0, POS_POS_ID: 0},
        nan_value_counts={},
        lower_bounds={
            POS_PATH_ID: to_bytes(StringType(), rows[0][0]),
            POS_POS_ID: to_bytes(LongType(), min(i for _, i in rows)),
        },
        upper_bounds={
            POS_PATH_ID: to_bytes(StringType(), rows[-1][0]),
            POS_POS_ID: to_bytes(LongType(), max(i for _, i in rows)),
        },
        split_offsets=None,
        equality_ids=None,
        sort_order_id=None,
        key_metadata=None,
    )
    delete_file.spec_id = spec_id  # not a manifest field: set apart, as pyiceberg does
    return delete_file


# ---------------------------------------------------------------- data files


def write_data_files(
    meta: TableMetadata,
    io: FileIO,
    df: pa.Table,
    write_uuid: uuid.UUID,
    target_bytes: int | None = None,
) -> list[tuple[DataFile, pa.Table]]:
    """Write ``df`` as data files of the table's default partition spec; return
    each file with the rows it holds, in file order.

    What pyiceberg's ``_dataframe_to_data_files`` does for a ``pa.Table``,
    minus two costs a mirror flush paid on every commit: it filters the whole
    table once per partition (an Acero plan each, a few ms, up to 16 per
    flush), and it returns only the files, whose rows the key index then read
    back for their positions. Here the rows are grouped by partition with one
    stable sort (the order of ``df`` is kept within a partition) and cut into
    slices, bin-packed into files as pyiceberg does (``target_bytes`` of
    in-memory Arrow data a file, default the table's
    ``write.target-file-size-bytes``)."""
    from pyiceberg.table import DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE, TableProperties

    target = target_bytes or property_as_int(
        meta.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    schema, spec = meta.schema(), meta.spec()
    task_schema = pyarrow_to_schema(
        df.schema,
        name_mapping=schema.name_mapping,
        downcast_ns_timestamp_to_us=Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE)
        or False,
        format_version=meta.format_version,
    )
    tasks: list[WriteTask] = []
    for key, part in _partitions(spec, schema, df):
        for batches in bin_pack_arrow_table(part, target):
            tasks.append(
                WriteTask(
                    write_uuid=write_uuid,
                    task_id=len(tasks),
                    record_batches=batches,
                    partition_key=key,
                    schema=task_schema,
                )
            )
    files = list(write_file(io=io, table_metadata=meta, tasks=iter(tasks)))
    return [(f, pa.Table.from_batches(t.record_batches)) for f, t in zip(files, tasks, strict=True)]


def _partitions(
    spec: PartitionSpec, schema: Schema, df: pa.Table
) -> Iterator[tuple[PartitionKey | None, pa.Table]]:
    """``df``'s rows per partition of ``spec`` (one stable sort, then slices)."""
    if spec.is_unpartitioned():
        yield None, df
        return
    names = [f"_partition_{f.name}" for f in spec.fields]
    keyed = df
    for field, name in zip(spec.fields, names, strict=True):
        source = schema.find_field(field.source_id)
        column = _get_field_from_arrow_table(df, schema.find_column_name(field.source_id))
        keyed = keyed.append_column(
            name, field.transform.pyarrow_transform(source.field_type)(column)
        )
    keyed = keyed.take(pc.sort_indices(keyed, sort_keys=[(n, "ascending") for n in names]))
    values = list(zip(*(keyed[n].to_pylist() for n in names), strict=True))
    data = keyed.drop_columns(names)
    start = 0
    for value, run in itertools.groupby(values):
        rows = sum(1 for _ in run)
        key = PartitionKey(
            field_values=[
                PartitionFieldValue(field=f, value=v)
                for f, v in zip(spec.fields, value, strict=True)
            ],
            partition_spec=spec,
            schema=schema,
        )
        yield key, data.slice(start, rows).combine_chunks()
        start += rows


def read_live_rows(
    table: Table, data_files: list[DataFile], delete_files: list[DataFile]
) -> pa.Table:
    """The rows of ``data_files`` that ``delete_files`` do not delete, in file
    order, projected onto the table's current schema -- what every reader sees
    of those files (pyiceberg's own scan of exactly these files)."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.table import FileScanTask

    schema = table.schema()
    tasks = [FileScanTask(f, delete_files=set(delete_files)) for f in data_files]
    scan = ArrowScan(table.metadata, table.io, schema, AlwaysTrue())
    out = scan.to_table(tasks)
    return out.cast(schema_to_pyarrow(schema))


def read_position_deletes(table: Table, delete_file: DataFile) -> dict[str, list[int]]:
    """``data file path -> deleted positions`` of one position-delete file."""
    return {p: arr.to_pylist() for p, arr in _read_deletes(table.io, delete_file).items()}


def list_files(io: FileIO, location: str) -> Iterator[tuple[str, float]]:
    """Every file under ``location`` (recursively), as ``(path, mtime seconds)``;
    ``path`` in the form :func:`fs_path` gives for a file's location."""
    from pyarrow.fs import FileSelector, FileType
    from pyiceberg.io.pyarrow import PyArrowFileIO

    if not isinstance(io, PyArrowFileIO):
        raise TypeError(f"listing files needs pyiceberg's PyArrowFileIO, not {type(io).__name__}")
    scheme, netloc, path = PyArrowFileIO.parse_location(location)
    fs = io.fs_by_scheme(scheme, netloc)
    base = path.rstrip("/") + "/"  # never a sibling (T__changelog next to T)
    for info in fs.get_file_info(FileSelector(path, recursive=True, allow_not_found=True)):
        if info.type == FileType.File and info.path.startswith(base):
            mtime = info.mtime.timestamp() if info.mtime is not None else 0.0
            yield info.path, mtime


def fs_path(location: str) -> str:
    """A file location (``file:///...``, ``s3://bucket/...``) as its filesystem
    path (what :func:`list_files` yields)."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    return PyArrowFileIO.parse_location(location)[2]


def delete_fs_path(io: FileIO, location: str, path: str) -> None:
    """Delete ``path`` (from :func:`list_files` of ``location``)."""
    from pyiceberg.io.pyarrow import PyArrowFileIO

    assert isinstance(io, PyArrowFileIO)
    scheme, netloc, _ = PyArrowFileIO.parse_location(location)
    io.fs_by_scheme(scheme, netloc).delete_file(path)


# ---------------------------------------------------------------- key index


def canon(key: tuple) -> int | str:
    """A key's canonical form: equal keys (as the writer compares them) give
    equal forms whichever side -- a change or a row read back -- they came
    from. A single integer stays an integer (the common case: a smaller,
    faster index); anything else becomes JSON text."""
    if len(key) == 1 and type(key[0]) is int:
        return key[0]
    return json.dumps([_canon(v) for v in key], separators=(",", ":"))


def _canon(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, bool):
        return ["b", int(v)]
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return ["f", repr(v)]
    if isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return ["x", v.hex()]
    if isinstance(v, decimal.Decimal):
        return ["d", str(v.normalize())]
    if isinstance(v, dt.datetime):
        return ["t", v.isoformat()]
    if isinstance(v, dt.date):
        return ["D", v.isoformat()]
    if isinstance(v, tuple | list):
        return ["(", [_canon(x) for x in v]]
    return ["?", repr(v)]


# Bumped when the index tables change: an index file of another version is
# derived state of an older writer and is dropped and rebuilt.
INDEX_VERSION = 2


class KeyIndex:
    """``key -> (data file, position, owner shard, commit ts)`` for one mirror table.

    One SQLite file per table. ``snapshot_id`` is the mirror snapshot the
    index reflects; callers compare it with the table's current snapshot and
    call :meth:`rebuild` when they differ."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.conn = self._open()
        except sqlite3.DatabaseError as exc:  # garbage on disk: derived state, start over
            log.warning("mirror key index unreadable; rebuilding", extra={"reason": str(exc)})
            self._unlink()
            self.conn = self._open()

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # No journal: each update runs as "snapshot := NULL; changes; snapshot := id",
        # each step synced before the next, so a crash (process or machine) at any
        # point leaves either the right snapshot id over complete rows, or NULL
        # (-> rebuild). Random updates touch up to one page per key; a journal
        # would write each twice.
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA cache_size=-65536")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version != INDEX_VERSION:  # another layout (or a new file): start over
            conn.executescript(
                "DROP TABLE IF EXISTS meta; DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS keys;"
            )
            conn.execute(f"PRAGMA user_version={INDEX_VERSION}")
        conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER);
            CREATE TABLE IF NOT EXISTS files (
                id INTEGER PRIMARY KEY, path TEXT UNIQUE, spec_id INTEGER, part TEXT);
            CREATE TABLE IF NOT EXISTS keys (
                k PRIMARY KEY, file INTEGER, pos INTEGER, shard TEXT, ts INTEGER)
                WITHOUT ROWID;
            """
        )
        return conn

    @property
    def snapshot_id(self) -> int | None:
        try:
            row = self.conn.execute("SELECT v FROM meta WHERE k = 'snapshot'").fetchone()
        except sqlite3.DatabaseError:
            return None
        return row[0] if row else None

    def close(self) -> None:
        self.conn.close()

    def reset(self) -> None:
        """Drop everything (also recovers from a corrupt file)."""
        self.conn.close()
        self._unlink()
        self.conn = self._open()

    def _unlink(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(str(self.path) + suffix).unlink(missing_ok=True)

    # -------------------------------------------------------------- queries

    def lookup(self, keys: Iterable[Any]) -> dict[Any, tuple[int, int, str | None, int | None]]:
        """``canon key -> (file id, pos, shard, commit ts)`` for the keys present
        (commit ts None: a row written before the mirror recorded it)."""
        out: dict[Any, tuple[int, int, str | None, int | None]] = {}
        keys = list(keys)
        for i in range(0, len(keys), 5000):
            chunk = keys[i : i + 5000]
            marks = ",".join("?" * len(chunk))
            for k, f, p, s, ts in self.conn.execute(
                f"SELECT k, file, pos, shard, ts FROM keys WHERE k IN ({marks})", chunk
            ):
                out[k] = (f, p, s, ts)
        return out

    def owned_by(self, shards: Iterable[str]) -> dict[Any, tuple[int, int, str | None, int | None]]:
        shards = list(shards)
        marks = ",".join("?" * len(shards))
        rows = self.conn.execute(
            f"SELECT k, file, pos, shard, ts FROM keys WHERE shard IN ({marks})", shards
        )
        return {k: (f, p, s, ts) for k, f, p, s, ts in rows}

    def files(self, ids: Iterable[int]) -> dict[int, tuple[str, int, tuple]]:
        """``file id -> (path, spec id, partition values)``."""
        ids = sorted(set(ids))
        out: dict[int, tuple[str, int, tuple]] = {}
        for i in range(0, len(ids), 5000):
            chunk = ids[i : i + 5000]
            marks = ",".join("?" * len(chunk))
            for fid, path, spec_id, part in self.conn.execute(
                f"SELECT id, path, spec_id, part FROM files WHERE id IN ({marks})", chunk
            ):
                out[fid] = (path, spec_id, tuple(json.loads(part)))
        return out

    def count(self) -> int:
        return self.conn.execute("SELECT count(*) FROM keys").fetchone()[0]

    # -------------------------------------------------------------- updates

    def apply(
        self,
        snapshot_id: int,
        removed: Iterable[Any],
        added: Iterable[tuple[DataFile, Iterable[tuple[Any, int, str | None, int | None]]]],
        removed_files: Iterable[str] = (),
    ) -> None:
        """After a mirror commit: drop ``removed`` keys and ``removed_files``
        (paths; a compaction re-adds every live key of theirs), add each new data
        file's ``(key, pos, shard, commit ts)`` rows (tuples), record ``snapshot_id``.

        Three synced steps (see :meth:`_open`): the snapshot id is NULL while
        rows change, so an interrupted update is seen as stale, never as current."""
        c = self.conn
        c.execute("INSERT OR REPLACE INTO meta VALUES ('snapshot', NULL)")
        c.execute("BEGIN")
        try:
            c.executemany("DELETE FROM keys WHERE k = ?", ((k,) for k in removed))
            # a compaction's rewritten files: their keys are all re-added below
            c.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in removed_files))
            for data_file, rows in added:
                fid = self._add_file(data_file)
                c.executemany(  # each (key, pos, shard, ts) + (file,): no Python loop per row
                    "INSERT OR REPLACE INTO keys (k, pos, shard, ts, file) VALUES (?, ?, ?, ?, ?)",
                    map(operator.add, rows, itertools.repeat((fid,))),
                )
            c.execute("COMMIT")
        except BaseException:
            try:  # without a journal a rollback is best effort: the NULL id forces a rebuild
                c.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        c.execute("INSERT OR REPLACE INTO meta VALUES ('snapshot', ?)", (snapshot_id,))

    def _add_file(self, data_file: DataFile) -> int:
        part = json.dumps(list(partition_values(data_file.partition)))
        cur = self.conn.execute(
            "INSERT INTO files (path, spec_id, part) VALUES (?, ?, ?)",
            (data_file.file_path, data_file.spec_id or 0, part),
        )
        return cur.lastrowid  # type: ignore[return-value]

    def rebuild(self, table: Table, read_keys) -> None:
        """Rebuild from the table's current snapshot (O(table)).

        ``read_keys(table, data_file) -> (canon keys, owner shards, commit
        times)`` reads a data file's rows, by position."""
        self.reset()
        snap = table.current_snapshot()
        if snap is None:
            self.apply(0, (), ())
            return
        deletes_cache: dict[str, dict[str, pa.ChunkedArray]] = {}
        added = []
        for task in table.scan(snapshot_id=snap.snapshot_id).plan_files():
            path = task.file.file_path
            deleted: set[int] = set()
            for d in task.delete_files:
                if d.file_path not in deletes_cache:
                    deletes_cache[d.file_path] = _read_deletes(table.io, d)
                arr = deletes_cache[d.file_path].get(path)
                if arr is not None:
                    deleted.update(arr.to_pylist())
            keys, shards, stamps = read_keys(table, task.file)
            rows = [
                (k, pos, s, ts)
                for pos, (k, s, ts) in enumerate(zip(keys, shards, stamps, strict=True))
                if pos not in deleted
            ]
            added.append((task.file, rows))
        self.apply(snap.snapshot_id, (), added)
        log.info(
            "mirror key index rebuilt",
            extra={"table": table.name(), "rows": self.count(), "snapshot": snap.snapshot_id},
        )


def partition_values(partition: Record | None) -> Iterator[Any]:
    if partition is None:
        return iter(())
    return iter(partition[i] for i in range(len(partition)))


def read_columns(table: Table, data_file: DataFile, columns: list[str]) -> pa.Table:
    """Some columns of one data file, as written (no deletes applied)."""
    with table.io.new_input(data_file.file_path).open() as f:
        pf = pq.ParquetFile(f)
        present = [c for c in columns if c in pf.schema_arrow.names]
        data = pf.read(columns=present)
    for c in columns:
        if c not in data.column_names:
            data = data.append_column(c, pa.nulls(len(data), pa.string()))
    return data
