"""Lake lifecycle (issue 13): few files per flush, bounded manifests."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from dolake import history, readers
from dolake.writer import MANIFEST_MIN_MERGE_COUNT
from dosql.errors import NotFoundError
from dosql.timetravel.points import TimestampPoint

from .helpers import CDC, US, Lake
from .test_cdc import SLOW_FLUSH, Workload, changelog_lsns, mirror, send_all


def _manifests(table) -> tuple[int, int]:
    """(data manifests, delete manifests) of the table's current snapshot."""
    mans = table.current_snapshot().manifests(table.io)
    deletes = sum(1 for m in mans if m.content.name == "DELETES")
    return len(mans) - deletes, deletes


def _duck_rows(cat, table: str = "items") -> list[dict]:
    rows = readers.duckdb_scan(cat, table).to_pylist()
    return sorted((r for r in rows), key=lambda r: r["id"])


def test_small_flushes_write_one_data_and_one_delete_file_and_manifests_stay_bounded(tmp_path):
    """Small batches (10 changes, keys all over the key space): each flush of the
    mirror writes one data file and at most one position-delete file (not one per
    bucket), each change-log flush one file; after many flushes the manifest lists
    stay bounded (merged), and pyiceberg and DuckDB read exactly the model."""
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        w = Workload(5)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(300))
        lake.flush()
        flushes = 3 * MANIFEST_MIN_MERGE_COUNT + 2
        manifest_counts = []
        for _ in range(flushes):
            send_all(cdc, w.step(10))
            t = lake.flush()["tables"]["items"]
            assert t["error"] is None
            assert t["files_written"] == 1, t
            assert t["delete_files_written"] <= 1, t
            cat = lake.catalog()
            mir = readers.load(cat, "items")
            cl = cat.load_table(("default", "items__changelog"))
            assert int(cl.current_snapshot().summary["added-data-files"]) == 1
            manifest_counts.append((_manifests(mir), _manifests(cl)))
        for (m_data, m_del), (c_data, c_del) in manifest_counts:
            assert m_data <= MANIFEST_MIN_MERGE_COUNT and m_del <= MANIFEST_MIN_MERGE_COUNT
            assert c_data <= MANIFEST_MIN_MERGE_COUNT and c_del == 0
        cat = lake.catalog()
        summary = readers.load(cat, "items").current_snapshot().summary
        assert int(summary["total-data-files"]) <= flushes + 1
        assert int(summary["total-delete-files"]) <= flushes
        expected = w.expected()
        assert mirror(cat) == expected
        assert len(_duck_rows(cat)) == len(expected)
        assert [r["id"] for r in _duck_rows(cat)] == [r["id"] for r in expected]
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
        # time travel to every older snapshot still reads that snapshot's rows once each
        mir = readers.load(cat, "items")
        for snap in mir.snapshots()[-12:]:
            rows = readers.scan(cat, "items", snapshot_id=snap.snapshot_id).to_pylist()
            assert len({r["id"] for r in rows}) == len(rows)
    finally:
        lake.stop()


def test_manifest_merge_keeps_sequence_numbers(tmp_path):
    """A merged manifest keeps each file's data sequence number: a position delete
    must not start hiding rows of data files written after it (or stop hiding the
    older ones) once its entry has been rewritten as EXISTING."""
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        w = Workload(9)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(50))
        lake.flush()
        for _ in range(2 * MANIFEST_MIN_MERGE_COUNT):
            send_all(cdc, w.step(6))
            lake.flush()
        mir = readers.load(lake.catalog(), "items")
        seqs = {}
        for m in mir.current_snapshot().manifests(mir.io):
            for e in m.fetch_manifest_entry(mir.io):
                seqs[e.data_file.file_path] = (e.sequence_number, e.snapshot_id)
        by_snap = {s.snapshot_id: s.sequence_number for s in mir.snapshots()}
        assert len(seqs) > MANIFEST_MIN_MERGE_COUNT
        for path, (seq, snap_id) in seqs.items():
            assert seq == by_snap[snap_id], path
        assert mirror(lake.catalog()) == w.expected()
    finally:
        lake.stop()


# ---------------------------------------------------------------- snapshot expiry

EXPIRY_ENV = {
    **SLOW_FLUSH,
    "DOLAKE_EXPIRE_INTERVAL_MS": "0",  # only on request
    "DOLAKE_SNAPSHOT_RETENTION_MS": "3000",
    "DOLAKE_MIN_SNAPSHOTS_TO_KEEP": "2",
    "DOLAKE_METADATA_VERSIONS_MAX": "5",
}


def _warehouse_files(lake: Lake) -> set[str]:
    root = lake.data_dir / "lake" / "warehouse"
    return {str(p) for p in root.rglob("*") if p.is_file()}


def _referenced(table) -> set[str]:
    """Every file any snapshot of ``table`` references (local paths)."""
    out = set()
    for snap in table.snapshots():
        out.add(snap.manifest_list)
        for m in snap.manifests(table.io):
            out.add(m.manifest_path)
            out.update(e.data_file.file_path for e in m.fetch_manifest_entry(table.io))
    return {p.removeprefix("file://") for p in out}


def _expire_cli(lake: Lake, *args: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "dolake", "expire", "--url", lake.url, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(out.stdout)


def _as_of(cat, micros: int) -> list[dict]:
    data = history.table_as_of(cat, "default", "items", TimestampPoint(micros))
    return sorted(data.to_pylist(), key=lambda r: r["id"])


def _flushes(lake: Lake, cdc: CDC, w: Workload, n: int, states: list) -> None:
    for _ in range(n):
        send_all(cdc, w.step(8))
        assert lake.flush()["tables"]["items"]["error"] is None
        states.append((w.lsn, w.expected()))


def test_expire_keeps_window_deletes_only_expired_files_and_recovery_still_exact(tmp_path):
    """Snapshots older than the retention window are expired on request (`dolake
    expire`, after a `--dry-run` that changes nothing); the files only they referenced
    are deleted, every file a kept snapshot needs stays; old metadata.json files are
    capped; time travel inside the window is exact, before it SNAPSHOT_EXPIRED names the
    range; after a kill -9 and a full resend the watermarks (current snapshot) still
    skip every change already in: nothing lost, nothing twice."""
    lake = Lake(tmp_path, env=EXPIRY_ENV).start()
    try:
        w = Workload(21)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes))
        states: list[tuple[int, list[dict]]] = []
        _flushes(lake, cdc, w, 10, states)
        time.sleep(3.5)  # the first 10 flushes fall out of the window
        _flushes(lake, cdc, w, 3, states)
        cat = lake.catalog()
        before_snaps = len(readers.load(cat, "items").snapshots())
        assert before_snaps >= 13
        files_before = _warehouse_files(lake)

        dry = _expire_cli(lake, "--dry-run")
        side = dry["tables"]["items"]["mirror"]
        assert dry["dry_run"] and side["snapshots_expired"] == before_snaps - 4, dry
        assert side["files_to_delete"] > 0 and side["files_deleted"] == 0
        assert _warehouse_files(lake) == files_before
        assert len(lake.catalog().load_table(("default", "items")).snapshots()) == before_snaps

        info = _expire_cli(lake)
        m = info["tables"]["items"]["mirror"]
        assert m["snapshots_expired"] == before_snaps - 4 and m["files_deleted"] > 0, info
        cat = lake.catalog()
        mir = readers.load(cat, "items")
        cl = cat.load_table(("default", "items__changelog"))
        assert len(mir.snapshots()) == 4  # 3 in the window + the one current at its start
        left = _warehouse_files(lake)
        gone = files_before - left
        assert len(gone) >= m["files_deleted"]
        # nothing a kept snapshot references was deleted; what was deleted is unreferenced
        referenced = _referenced(mir) | _referenced(cl)
        assert referenced <= left
        assert not (gone & referenced)
        for snap in mir.snapshots():  # every kept snapshot still reads (files all there)
            rows = readers.scan(cat, "items", snapshot_id=snap.snapshot_id).to_pylist()
            assert len({r["id"] for r in rows}) == len(rows)
        assert mirror(cat) == w.expected()
        assert sorted(r["id"] for r in readers.duckdb_scan(cat, "items").to_pylist()) == [
            r["id"] for r in w.expected()
        ]
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
        metas = [p for p in left if p.endswith(".metadata.json")]
        assert len(metas) <= 2 * (5 + 1), len(metas)

        # time travel: exact from the snapshot current at the window's start on
        for lsn, expected in states[9:]:
            assert _as_of(cat, US + lsn) == expected
        with pytest.raises(NotFoundError) as err:
            _as_of(cat, US + states[8][0])
        assert err.value.code == "SNAPSHOT_EXPIRED"
        assert (
            "available: from" in err.value.message and "snapshot_retention_ms" in err.value.message
        )
        assert err.value.details["available_from"] == US + states[9][0]

        # after the expiry: a flush killed after both table commits, before the global
        # watermark moved; the shard resends from that watermark and the per-table
        # watermarks (current snapshot summaries) skip what is already in
        lake.kill()
        lake.start(env={"DOLAKE_FAULT": "after_mirror_commit"})
        cdc = CDC(lake, "shard-0")
        before_crash = cdc.welcome
        send_all(cdc, [c for c in w.changes if c.lsn > before_crash] + w.step(8))
        with pytest.raises(Exception):  # noqa: B017 - the process dies mid-request
            lake.flush()
        lake.proc.wait(10)
        assert lake.proc.returncode == -9
        lake.start()
        cdc = CDC(lake, "shard-0")
        assert cdc.welcome == before_crash
        send_all(cdc, [c for c in w.changes if c.lsn > cdc.welcome])
        lake.flush()
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    finally:
        lake.stop()


def test_background_expiry_status_and_metrics(tmp_path):
    """With expire_interval_ms set the lake writer expires on its own; /status,
    /maintenance and /metrics show per table data files, delete files, snapshots and
    the oldest snapshot's time, matching the Iceberg metadata."""
    env = {
        **EXPIRY_ENV,
        "DOLAKE_EXPIRE_INTERVAL_MS": "300",
        "DOLAKE_SNAPSHOT_RETENTION_MS": "500",
        "DOLAKE_MIN_SNAPSHOTS_TO_KEEP": "1",
    }
    lake = Lake(tmp_path, env=env).start()
    try:
        w = Workload(33)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes))
        _flushes(lake, cdc, w, 8, [])
        deadline = time.time() + 20
        while True:
            status = json.loads(lake.http("/status")[1])
            t = status["tables"]["items"]
            if t["snapshots"] <= 2 and status["maintenance"]["last_expiry"]:
                break
            assert time.time() < deadline, t
            time.sleep(0.2)
        cat = lake.catalog()
        mir = readers.load(cat, "items")
        summary = mir.current_snapshot().summary
        assert t["data_files"] == int(summary["total-data-files"]) > 0
        assert t["delete_files"] == int(summary["total-delete-files"]) > 0
        assert t["snapshots"] == len(mir.snapshots())
        assert t["oldest_snapshot_ms"] == min(s.timestamp_ms for s in mir.snapshots())
        assert status["maintenance"]["snapshot_retention_ms"] == 500
        code, body = lake.http("/maintenance")
        assert code == 200 and json.loads(body)["last_expiry"]["tables"]["items"]
        metrics = lake.http("/metrics")[1].decode()
        assert f'dolake_table_data_files{{table="items"}} {float(t["data_files"])}' in metrics
        assert f'dolake_table_delete_files{{table="items"}} {float(t["delete_files"])}' in metrics
        assert 'dolake_table_snapshots{table="items__changelog"}' in metrics
        assert "dolake_table_oldest_snapshot_timestamp_seconds" in metrics
        expired = [ln for ln in metrics.splitlines() if ln.startswith("dolake_expired_snapshots")]
        assert expired and float(expired[0].split()[-1]) >= 6
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    finally:
        lake.stop()


def test_kill_after_expire_commit_before_file_deletion(tmp_path):
    """kill -9 between an expiry's metadata commit and the deletion of its files:
    the lake reads exactly after restart (the left-over files are unreferenced), the
    next expiry finishes the rest, the stream goes on exactly."""
    lake = Lake(tmp_path, env={**EXPIRY_ENV, "DOLAKE_SNAPSHOT_RETENTION_MS": "500"}).start()
    try:
        w = Workload(44)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes))
        _flushes(lake, cdc, w, 6, [])
        time.sleep(0.7)
        lake.kill()
        lake.start(env={"DOLAKE_FAULT": "after_expire_commit"})
        with pytest.raises(subprocess.CalledProcessError):
            _expire_cli(lake)
        lake.proc.wait(10)
        assert lake.proc.returncode == -9
        lake.start()
        cat = lake.catalog()
        mir = readers.load(cat, "items")
        cl = cat.load_table(("default", "items__changelog"))
        # the change log's expiry committed (min 2 kept), the crash came before its
        # files were deleted and before the mirror's expiry
        assert len(cl.snapshots()) == 2 and len(mir.snapshots()) == 6
        assert _referenced(mir) | _referenced(cl) <= _warehouse_files(lake)
        assert mirror(cat) == w.expected()
        again = _expire_cli(lake)["tables"]["items"]
        assert again["changelog"]["snapshots_expired"] == 0
        assert again["mirror"]["snapshots_expired"] == 4
        cat = lake.catalog()
        assert _referenced(readers.load(cat, "items")) <= _warehouse_files(lake)
        cdc = CDC(lake, "shard-0")
        send_all(cdc, [c for c in w.changes if c.lsn > cdc.welcome])
        _flushes(lake, cdc, w, 2, [])
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    finally:
        lake.stop()
