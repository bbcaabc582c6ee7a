"""Orphan files: files in a lake table's directory that nothing references.

Why: a crash between writing files and committing them (a flush's data and
delete files, a compaction's rewritten files, their manifests; see the crash
points in dolake/writer.py and dolake/compaction.py) or between an expiry's
commit and its deletions (dolake/maintenance.py) leaves files that no snapshot
will ever read. They cost storage only, and Iceberg's answer is the same as
here: list the table's directory, subtract what the metadata references,
delete the rest once old enough.

Referenced = every file any kept snapshot references (manifest lists,
manifests, live data and delete files: :func:`maintenance.referenced_files`),
the current ``metadata.json`` and those in its metadata log, and statistics
files. A file is deleted only when it is unreferenced **and** older than the
safety window (``lake.orphan_min_age_ms``, default 1 hour): the lake writer
runs this under its flush lock, so none of its own commits is in flight, but
another writer on the same tables (a Spark job rewriting files) may have
written files it has not committed yet; its files are younger than the window
as long as its commits take less than that.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyiceberg.table import Table

from dolake import maintenance, mor

log = logging.getLogger(__name__)


def referenced(table: Table) -> set[str]:
    """Filesystem paths (:func:`mor.fs_path`) of every file ``table``'s metadata references."""
    files = maintenance.referenced_files(table, table.metadata.snapshots)
    files.add(table.metadata_location)
    files.update(entry.metadata_file for entry in table.metadata.metadata_log)
    files.update(s.statistics_path for s in table.metadata.statistics)
    files.update(s.statistics_path for s in table.metadata.partition_statistics)
    return {mor.fs_path(f) for f in files}


def find(table: Table, older_than_ms: int, now: float | None = None) -> list[tuple[str, float]]:
    """``(path, mtime)`` of the orphans of ``table`` older than ``older_than_ms``."""
    now = time.time() if now is None else now
    keep = referenced(table)
    cutoff = now - older_than_ms / 1000
    return sorted(
        (path, mtime)
        for path, mtime in mor.list_files(table.io, table.location())
        if path not in keep and mtime < cutoff
    )


def clean_table(table: Table, older_than_ms: int, *, dry_run: bool = False) -> dict[str, Any]:
    """Delete (``dry_run``: only list) ``table``'s orphans older than ``older_than_ms``."""
    found = find(table, older_than_ms)
    out: dict[str, Any] = {
        "dry_run": dry_run,
        "orphans": len(found),
        "files_deleted": 0,
        "paths": [p for p, _ in found[:100]],  # the reply stays small
    }
    if dry_run:
        return out
    for path, _ in found:
        try:
            mor.delete_fs_path(table.io, table.location(), path)
        except FileNotFoundError:
            continue
        except OSError as exc:  # try again next run
            log.warning("could not delete orphan file", extra={"path": path, "reason": str(exc)})
            continue
        out["files_deleted"] += 1
    if found:
        log.info("orphan files deleted", extra={"table": table.name(), **out})
    return out
