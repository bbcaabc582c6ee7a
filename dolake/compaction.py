"""Compaction: rewrite a table's small files into files of a target size, as one
Iceberg ``replace`` snapshot, inside the running lake writer.

Why: every flush adds one data file and one position-delete file to a mirror
and one data file to its change log; readers open every live file and apply
every delete file, so without this a lake read gets slower with every flush
(issue 13: 4,951 files after 150 s of small writes, 844x one file's read).

Per partition of a table's current snapshot (the whole table when
unpartitioned; a change log's ``day(_commit_ts)`` partitions), the *small*
data files (smaller than ``target_file_size``, added at least ``min_age_ms``
ago) are a candidate group, oldest first, at most ``max_files`` of them and
about two target files' worth of bytes (a run holds its input in memory). A
partition is compacted when it has ``min_files`` such files, or that many
position-delete files (which are then merged into one). Then, in one snapshot (operation ``replace``):

- the live rows of the group's files (their position deletes applied, read
  by pyiceberg's own scan: exactly what readers see) are written as new data
  files of about ``target_file_size`` (a mirror's sorted by key again);
- the group's files are removed, and so is every position-delete file of the
  partition; the delete rows that still name a live data file outside the
  group are written again as one delete file. Position deletes name exact
  (older) files, so the new file's newer sequence number hides exactly the
  rows the old ones did;
- the summary carries the current snapshot's ``dosql.watermark.*`` over (a
  restarted writer reads the watermarks from the current snapshot: see
  dolake/watermarks.py) and marks the snapshot ``dosql.compaction``.

Readers see the same rows before and after (a replace changes files, not
rows); older snapshots keep their files until expiry removes them, so time
travel to a point before the compaction is unchanged. The caller runs it with
no flush in flight (the server's flush lock) and, for a mirror, moves the key
index to the new files in ``on_commit`` (dolake/writer.py); a crash between
the commit and that update is repaired from the replace snapshot alone on the
next use of the index (:func:`added_by`), no O(table) rebuild.

Crash points (``DOSQL_CRASH_AT``, dosql/faults.py): ``lake.compact.before_write``,
``lake.compact.after_write`` (files written, nothing committed: orphans, see
dolake/orphans.py), ``lake.compact.after_commit`` (before the key index moves).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from pyiceberg.manifest import DataFile, DataFileContent
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation, Snapshot

from dolake import mor, watermarks
from dosql.faults import crash_point

log = logging.getLogger(__name__)

COMPACTION_MARK = "dosql.compaction"  # summary property of the replace snapshots written here
DURATION_MARK = "dosql.compaction.duration-ms"  # and how long the rewrite took


def last_compaction(table: Table) -> tuple[int, float | None] | None:
    """``(commit time ms, duration ms)`` of the newest compaction snapshot kept."""
    for snap in sorted(table.metadata.snapshots, key=lambda s: -s.timestamp_ms):
        props = snap.summary.additional_properties if snap.summary else {}
        if props.get(COMPACTION_MARK) == "true":
            duration = props.get(DURATION_MARK)
            return snap.timestamp_ms, float(duration) if duration else None
    return None


@dataclass(frozen=True)
class Policy:
    """The ``[lake]`` settings (operations guide names: ``minFilesThreshold``,
    ``targetFileSizeBytes``, ``maxFilesPerCompaction``, ``minPartitionAgeMs``)."""

    min_files: int = 10
    target_file_size: int = 32 * 1024 * 1024
    max_files: int = 50
    min_age_ms: int = 0


@dataclass
class Group:
    """One partition's files to compact."""

    spec_id: int
    partition: tuple
    data_files: list[DataFile]  # small data files to rewrite, oldest first
    delete_files: list[DataFile]  # every position-delete file of the partition
    live_paths: set[str] = field(default_factory=set)  # every live data file of it

    def describe(self) -> dict[str, Any]:
        return {
            "partition": list(self.partition),
            "data_files": len(self.data_files),
            "delete_files": len(self.delete_files),
            "bytes": sum(f.file_size_in_bytes for f in self.data_files),
        }


# Rewritten data files and the rows each holds, in file order; the removed data files' paths.
OnCommit = Callable[[int, list[tuple[DataFile, pa.Table]], list[str]], None]


def plan(table: Table, policy: Policy, now_ms: int) -> list[Group]:
    """The partitions of ``table``'s current snapshot that ``policy`` compacts."""
    snap = table.current_snapshot()
    if snap is None:
        return []
    meta = table.metadata
    Entries = list[tuple[int, DataFile, int]]  # (data sequence number, file, added at ms)
    parts: dict[tuple[int, tuple], tuple[Entries, Entries]] = {}
    for m in snap.manifests(table.io):
        for e in m.fetch_manifest_entry(table.io, discard_deleted=True):
            f = e.data_file
            f.spec_id = m.partition_spec_id
            key = (m.partition_spec_id, tuple(mor.partition_values(f.partition)))
            data, deletes = parts.setdefault(key, ([], []))
            added = meta.snapshot_by_id(e.snapshot_id) if e.snapshot_id else None
            added_ms = added.timestamp_ms if added is not None else 0  # expired: old
            side = data if f.content == DataFileContent.DATA else deletes
            side.append((e.sequence_number or 0, f, added_ms))
    groups: list[Group] = []
    for (spec_id, partition), (data, deletes) in sorted(parts.items(), key=lambda kv: repr(kv[0])):
        small = [
            (seq, f)
            for seq, f, added_ms in data
            if f.file_size_in_bytes < policy.target_file_size
            and now_ms - added_ms >= policy.min_age_ms
        ]
        old_deletes = [f for _, f, added_ms in deletes if now_ms - added_ms >= policy.min_age_ms]
        if len(small) < policy.min_files and len(old_deletes) < policy.min_files:
            continue
        small.sort(key=lambda sf: (sf[0], sf[1].file_path))
        chosen: list[DataFile] = []
        total = 0
        for _, f in small:  # a run reads its input into memory: about 2 target files at most
            if len(chosen) >= policy.max_files or (chosen and total >= 2 * policy.target_file_size):
                break
            chosen.append(f)
            total += f.file_size_in_bytes
        # every delete file of the partition: rows naming a rewritten file must go
        all_deletes = [f for _, f, _ in deletes]
        live = {f.file_path for _, f, _ in data}
        groups.append(Group(spec_id, partition, chosen, all_deletes, live))
    return groups


def compact_table(
    table: Table,
    policy: Policy,
    *,
    now_ms: int | None = None,
    dry_run: bool = False,
    sort_by: str | None = None,
    on_commit: OnCommit | None = None,
) -> dict[str, Any]:
    """Compact ``table`` (see the module docstring); returns what was (or, with
    ``dry_run``, would be) rewritten. ``sort_by``: the column new data files are
    sorted by (a mirror's key)."""
    start = time.perf_counter()
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    groups = plan(table, policy, now_ms)
    out: dict[str, Any] = {
        "dry_run": dry_run,
        "partitions": [g.describe() for g in groups],
        "data_files_rewritten": 0,
        "delete_files_rewritten": 0,
        "data_files_written": 0,
        "delete_files_written": 0,
        "bytes_written": 0,
        "snapshot_id": None,
    }
    if not groups or dry_run:
        out["data_files_to_rewrite"] = sum(len(g.data_files) for g in groups)
        out["delete_files_to_rewrite"] = sum(len(g.delete_files) for g in groups)
        out["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
        return out
    parent = table.current_snapshot()
    assert parent is not None
    props = {**watermarks.as_summary(watermarks.of_table(table)), COMPACTION_MARK: "true"}
    crash_point("lake.compact.before_write")
    added: list[tuple[DataFile, pa.Table]] = []
    removed: list[str] = []
    with mor.Transaction(table) as tx:
        delta = mor.RowDelta(tx, table.io, props, operation=Operation.REPLACE)
        meta = tx.table_metadata
        for n, g in enumerate(groups):
            rewritten = {f.file_path for f in g.data_files}
            if g.data_files:
                rows = mor.read_live_rows(table, g.data_files, g.delete_files)
                if sort_by is not None and rows.num_rows:
                    try:
                        rows = rows.sort_by([(sort_by, "ascending")])
                    except (pa.ArrowNotImplementedError, KeyError):
                        pass
                if rows.num_rows:
                    # the target is in Parquet bytes; pyiceberg bin-packs Arrow bytes
                    parquet = sum(f.file_size_in_bytes for f in g.data_files)
                    ratio = max(rows.nbytes, 1) / max(parquet, 1)
                    target = max(1, int(policy.target_file_size * max(ratio, 1.0)))
                    for data_file, part in mor.write_data_files(
                        meta, table.io, rows, delta.commit_uuid, target_bytes=target
                    ):
                        data_file.spec_id = meta.default_spec_id
                        delta.append_data_file(data_file)
                        added.append((data_file, part))
                        out["bytes_written"] += data_file.file_size_in_bytes
                for f in g.data_files:
                    delta.remove_file(f)
                    removed.append(f.file_path)
            kept: list[tuple[str, int]] = []
            for d in g.delete_files:
                for path, positions in mor.read_position_deletes(table, d).items():
                    if path in g.live_paths and path not in rewritten:
                        kept.extend((path, p) for p in positions)
                delta.remove_file(d)
            if kept:
                delete_file = mor.write_position_deletes(
                    table, g.spec_id, g.partition, sorted(set(kept)), delta.commit_uuid, n
                )
                delta.add_delete_file(delete_file)
                out["delete_files_written"] += 1
                out["bytes_written"] += delete_file.file_size_in_bytes
            out["data_files_rewritten"] += len(g.data_files)
            out["delete_files_rewritten"] += len(g.delete_files)
        out["data_files_written"] = len(added)
        # what /status shows as the last compaction's duration (the commit is quick)
        props[DURATION_MARK] = str(round((time.perf_counter() - start) * 1000, 1))
        crash_point("lake.compact.after_write")
        delta.commit()
    snap = table.current_snapshot()
    assert snap is not None
    out["snapshot_id"] = snap.snapshot_id
    crash_point("lake.compact.after_commit")
    if on_commit is not None:
        on_commit(snap.snapshot_id, added, removed)
    out["duration_ms"] = round((time.perf_counter() - start) * 1000, 1)
    out["file_sizes"] = [f.file_size_in_bytes for f, _ in added]
    log.info(
        "table compacted",
        extra={
            "table": table.name(),
            **{k: v for k, v in out.items() if k not in ("partitions", "file_sizes")},
        },
    )
    return out


def added_by(table: Table, snapshot: Snapshot) -> tuple[list[DataFile], list[str]] | None:
    """If ``snapshot`` is a compaction's replace snapshot: the data files it added
    and the paths of the data files it removed (what the key index must learn to
    move from its parent to it); else None."""
    summary = snapshot.summary
    if (
        summary is None
        or summary.operation != Operation.REPLACE
        or summary.additional_properties.get(COMPACTION_MARK) != "true"
    ):
        return None
    added: list[DataFile] = []
    removed: list[str] = []
    for m in snapshot.manifests(table.io):
        if m.added_snapshot_id != snapshot.snapshot_id:
            continue
        for e in m.fetch_manifest_entry(table.io, discard_deleted=False):
            if e.snapshot_id != snapshot.snapshot_id or e.data_file.content != DataFileContent.DATA:
                continue
            if e.status.name == "ADDED":
                e.data_file.spec_id = m.partition_spec_id
                added.append(e.data_file)
            elif e.status.name == "DELETED":
                removed.append(e.data_file.file_path)
    return added, removed
