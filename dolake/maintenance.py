"""Lake maintenance: snapshot expiry with a retention window, and the files only
expired snapshots referenced.

Retention (per Iceberg table, mirror and change log alike): a snapshot is kept
when it is

- younger than ``lake.snapshot_retention_ms``, or
- among the ``lake.min_snapshots_to_keep`` newest, or
- the newest snapshot older than the window (the one current at its start: a
  ``FOR SYSTEM_TIME AS OF`` point anywhere inside the window then has a mirror
  snapshot to start from, so time travel stays exact there), or
- the head of a branch or a tag -- always the table's current snapshot, whose
  summary carries the per-shard watermarks a restarted writer resumes from
  (dolake/watermarks.py), so expiry never removes what recovery needs.

Every other snapshot is expired in one metadata commit (pyiceberg's
``ExpireSnapshots``), which also records in the mirror's properties
(``dosql.expired_through_ms``) that history before the retained snapshots is
gone: dolake/history.py then refuses time travel to earlier points with
``SNAPSHOT_EXPIRED`` naming the available range. Only *after* that commit are the
files deleted that expired snapshots referenced and no retained snapshot does
(manifest lists, manifests, data and position-delete files). A crash in between
leaves unreferenced files behind (orphans, harmless to readers), never a
retained snapshot without its files. Old ``metadata.json`` files go as each
commit is made: the writer sets ``write.metadata.delete-after-commit.enabled``
and ``write.metadata.previous-versions-max`` on its tables.

Expiry runs in the lake writer under its flush lock (no commit in flight, so
no file an uncommitted snapshot is about to reference can be deleted).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.table.update.snapshot import ExpireSnapshots

log = logging.getLogger(__name__)

EXPIRED_THROUGH = "dosql.expired_through_ms"  # mirror property: newest expired snapshot time


@dataclass(frozen=True)
class Retention:
    retention_ms: int
    min_snapshots: int


def _fault(point: str) -> None:
    if os.environ.get("DOLAKE_FAULT") == point:
        log.error("fault injection: SIGKILL", extra={"point": point})
        os.kill(os.getpid(), signal.SIGKILL)


def to_expire(table: Table, policy: Retention, now_ms: int) -> list[Snapshot]:
    """The snapshots ``policy`` expires at ``now_ms``, oldest first."""
    snaps = sorted(table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number))
    if not snaps:
        return []
    keep = {ref.snapshot_id for ref in table.metadata.refs.values()}
    keep.update(s.snapshot_id for s in snaps[-max(1, policy.min_snapshots) :])
    cutoff = now_ms - policy.retention_ms
    older = [s for s in snaps if s.timestamp_ms < cutoff]
    keep.update(s.snapshot_id for s in snaps if s.timestamp_ms >= cutoff)
    if older:
        keep.add(older[-1].snapshot_id)
    return [s for s in snaps if s.snapshot_id not in keep]


def referenced_files(
    table: Table, snapshots: Iterable[Snapshot], cache: dict[str, list[str]] | None = None
) -> set[str]:
    """Every file the snapshots reference: manifest lists, manifests, live entries
    (``cache``: manifest path -> its live entries' paths, shared between calls)."""
    cache = {} if cache is None else cache
    out: set[str] = set()
    for snap in snapshots:
        out.add(snap.manifest_list)
        for m in snap.manifests(table.io):
            out.add(m.manifest_path)
            paths = cache.get(m.manifest_path)
            if paths is None:
                entries = m.fetch_manifest_entry(table.io, discard_deleted=True)
                paths = cache[m.manifest_path] = [e.data_file.file_path for e in entries]
            out.update(paths)
    return out


def expire_table(
    table: Table,
    policy: Retention,
    *,
    now_ms: int | None = None,
    dry_run: bool = False,
    mark: bool = False,
) -> dict[str, Any]:
    """Expire ``table``'s snapshots outside ``policy``; delete the files only
    they referenced. ``mark``: record :data:`EXPIRED_THROUGH` (the mirror).
    Returns what was (or, with ``dry_run``, would be) removed."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    doomed_snaps = to_expire(table, policy, now_ms)
    doomed_ids = {s.snapshot_id for s in doomed_snaps}
    retained = [s for s in table.metadata.snapshots if s.snapshot_id not in doomed_ids]
    out: dict[str, Any] = {
        "snapshots_before": len(table.metadata.snapshots),
        "snapshots_expired": len(doomed_snaps),
        "files_deleted": 0,
        "bytes_deleted": 0,
        "dry_run": dry_run,
    }
    if not doomed_snaps:
        out["oldest_snapshot_ms"] = min((s.timestamp_ms for s in retained), default=None)
        return out
    cache: dict[str, list[str]] = {}
    doomed = referenced_files(table, doomed_snaps, cache) - referenced_files(table, retained, cache)
    out["files_to_delete"] = len(doomed)
    out["oldest_snapshot_ms"] = min(s.timestamp_ms for s in retained)
    if dry_run:
        out["files_deleted"] = 0
        return out
    with table.transaction() as tx:
        ExpireSnapshots(tx).by_ids([s.snapshot_id for s in doomed_snaps]).commit()
        if mark:
            newest = max(s.timestamp_ms for s in doomed_snaps)
            tx.set_properties({EXPIRED_THROUGH: str(newest)})
    _fault("after_expire_commit")
    deleted = size = 0
    for path in sorted(doomed):
        try:
            inp = table.io.new_input(path)
            n = len(inp)
            table.io.delete(path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # an orphan left behind is harmless; say so and go on
            log.warning("could not delete expired file", extra={"path": path, "reason": str(exc)})
            continue
        deleted += 1
        size += n
    out["files_deleted"] = deleted
    out["bytes_deleted"] = size
    log.info("snapshots expired", extra={"table": table.name(), **out})
    return out


def table_stats(table: Table | None) -> dict[str, Any]:
    """Data files, delete files, average file size, snapshots, the oldest snapshot's
    time and the last compaction of one table (from the table metadata in memory:
    no I/O)."""
    from dolake.compaction import last_compaction

    if table is None:
        return {
            "data_files": 0,
            "delete_files": 0,
            "avg_file_size_bytes": 0,
            "snapshots": 0,
            "oldest_snapshot_ms": None,
            "last_compaction_ms": None,
            "last_compaction_duration_ms": None,
        }
    snap = table.current_snapshot()
    summary = snap.summary.additional_properties if snap and snap.summary else {}
    snaps = table.metadata.snapshots
    data_files = int(summary.get("total-data-files", 0))
    delete_files = int(summary.get("total-delete-files", 0))
    compacted = last_compaction(table)
    return {
        "data_files": data_files,
        "delete_files": delete_files,
        # data and delete files alike (the summary's total-files-size over both)
        "avg_file_size_bytes": int(summary.get("total-files-size", 0))
        // max(1, data_files + delete_files),
        "records": int(summary.get("total-records", 0)),
        "snapshots": len(snaps),
        "oldest_snapshot_ms": min((s.timestamp_ms for s in snaps), default=None),
        "last_compaction_ms": compacted[0] if compacted else None,
        "last_compaction_duration_ms": compacted[1] if compacted else None,
    }
