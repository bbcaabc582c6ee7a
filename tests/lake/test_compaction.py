"""Lake lifecycle (issue 13): compaction and orphan-file cleanup in the running lake writer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from dolake import readers
from dosql import exitcodes

from .helpers import CDC, US, Lake
from .test_cdc import SLOW_FLUSH, Workload, changelog_lsns, mirror, send_all
from .test_lifecycle import _as_of, _referenced, _warehouse_files

COMPACT_ENV = {
    **SLOW_FLUSH,
    "DOLAKE_EXPIRE_INTERVAL_MS": "0",
    "DOLAKE_COMPACTION_INTERVAL_MS": "0",  # only on request unless a test says otherwise
    "DOLAKE_MIN_FILES_THRESHOLD": "4",
}


def _cli(
    lake: Lake, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dolake", *args, "--url", lake.url],
        capture_output=True,
        text=True,
        timeout=120,
        check=check,
        env={**os.environ, **(env or {})},
    )


def _json(out: subprocess.CompletedProcess) -> dict:
    return json.loads(out.stdout)


def _live_files(cat, table: str) -> tuple[int, int]:
    t = readers.load(cat, table)
    s = t.current_snapshot().summary
    return int(s["total-data-files"]), int(s["total-delete-files"])


def _duck_ids(cat, table: str = "items") -> list:
    return sorted(r["id"] for r in readers.duckdb_scan(cat, table).to_pylist())


def _check_exact(cat, w: Workload) -> None:
    """Mirror == the model in pyiceberg and DuckDB; change log holds every LSN once."""
    expected = w.expected()
    assert mirror(cat) == expected
    duck = sorted(readers.duckdb_scan(cat, "items").to_pylist(), key=lambda r: r["id"])
    assert [r["id"] for r in duck] == [r["id"] for r in expected]
    py = readers.scan(cat, "items", hidden=True).to_pylist()
    assert sorted(duck, key=lambda r: r["id"]) == sorted(py, key=lambda r: r["id"])
    assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    duck_lsns = sorted(r["_lsn"] for r in readers.duckdb_scan(cat, "items__changelog").to_pylist())
    assert duck_lsns == list(range(1, w.lsn + 1))


def _small_flushes(lake: Lake, cdc: CDC, w: Workload, n: int, states: list | None = None) -> None:
    for _ in range(n):
        send_all(cdc, w.step(8))
        assert lake.flush()["tables"]["items"]["error"] is None
        if states is not None:
            states.append((w.lsn, w.expected()))


def test_compaction_rewrites_small_files_exactly_and_keeps_time_travel(tmp_path):
    """After many small flushes `dolake compact --dry-run` changes nothing, `dolake
    compact` replaces the small files of both tables by few (one replace snapshot
    each, watermarks carried over); pyiceberg and DuckDB read exactly the model,
    the change log every LSN once, time travel to points before the compaction is
    exact, the next flushes (key index moved, not rebuilt) stay exact, and
    /status + /metrics show the compaction."""
    lake = Lake(tmp_path, env=COMPACT_ENV).start()
    try:
        w = Workload(51)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(200))
        lake.flush()
        states: list = []
        _small_flushes(lake, cdc, w, 12, states)
        cat = lake.catalog()
        before_m, before_cl = _live_files(cat, "items"), _live_files(cat, "items__changelog")
        assert before_m[0] >= 13 and before_m[1] >= 12 and before_cl[0] >= 13
        snaps_before = len(readers.load(cat, "items").snapshots())
        files_before = _warehouse_files(lake)

        dry = _json(_cli(lake, "compact", "--dry-run"))
        m = dry["tables"]["items"]["mirror"]
        assert dry["dry_run"] and m["data_files_to_rewrite"] == before_m[0], dry
        assert m["snapshot_id"] is None
        assert _warehouse_files(lake) == files_before
        assert len(lake.catalog().load_table(("default", "items")).snapshots()) == snaps_before

        out = _cli(lake, "compact", env={"DOLAKE_PROGRESS": "1"})
        info = _json(out)
        assert "items: rewrote" in out.stderr
        assert f"compact [{'#' * 24}] 1/1 tables" in out.stderr, out.stderr
        m, cl = info["tables"]["items"]["mirror"], info["tables"]["items"]["changelog"]
        assert m["data_files_rewritten"] == before_m[0] and m["data_files_written"] == 1, m
        assert m["delete_files_rewritten"] == before_m[1]
        assert cl["data_files_rewritten"] == before_cl[0] and cl["data_files_written"] == 1
        cat = lake.catalog()
        mir = readers.load(cat, "items")
        assert _live_files(cat, "items") == (1, 0)
        assert _live_files(cat, "items__changelog") == (1, 0)
        snap = mir.current_snapshot()
        assert snap.summary.operation.value == "replace"
        assert snap.summary["dosql.watermark.shard-0"] == str(w.lsn)
        clsnap = cat.load_table(("default", "items__changelog")).current_snapshot()
        assert clsnap.summary.operation.value == "replace"
        assert clsnap.summary["dosql.watermark.shard-0"] == str(w.lsn)
        _check_exact(cat, w)
        for lsn, expected in states:  # time travel to before the compaction: unchanged
            assert _as_of(cat, US + lsn) == expected
        # the key index moved with the files: further flushes exact, no rebuild
        _small_flushes(lake, cdc, w, 2)
        cat = lake.catalog()
        _check_exact(cat, w)
        assert "mirror key index rebuilt" not in (tmp_path / "lake.log").read_text()
        # nothing to do below the threshold
        again = _json(_cli(lake, "compact", "--table", "items"))
        assert again["tables"]["items"]["mirror"]["snapshot_id"] is None

        status = json.loads(lake.http("/status")[1])
        t = status["tables"]["items"]
        assert t["data_files"] == 3 and t["delete_files"] == 2, t
        assert t["last_compaction_ms"] == snap.timestamp_ms
        assert t["last_compaction_duration_ms"] > 0
        assert t["avg_file_size_bytes"] > 0
        assert status["maintenance"]["min_files_threshold"] == 4
        assert status["maintenance"]["last_compaction"]["tables"]["items"]
        metrics = lake.http("/metrics")[1].decode()
        assert 'dolake_table_avg_file_size_bytes{table="items"}' in metrics
        assert 'dolake_table_last_compaction_timestamp_seconds{table="items__changelog"}' in metrics
        assert "dolake_compactions_total 2.0" in metrics
        unknown = _cli(lake, "compact", "--table", "nope", check=False)
        assert unknown.returncode != 0 and "TABLE_NOT_FOUND" in unknown.stderr

        # a restart finds the watermarks in the replace snapshots: nothing twice
        cdc.close()
        lake.stop()
        lake.start()
        cdc = CDC(lake, "shard-0")
        assert cdc.welcome == w.lsn
        send_all(cdc, w.changes[-20:] + w.step(10))
        lake.flush()
        _check_exact(lake.catalog(), w)
    finally:
        lake.stop()


def test_background_compaction_while_writing_loses_nothing(tmp_path):
    """A bounded soak: automatic compaction (compaction_interval_ms) and expiry
    running while a writer keeps sending and the lake keeps flushing, with
    on-request compactions racing them: no change lost or doubled (pyiceberg and
    DuckDB), live files and snapshots stay bounded however many flushes ran."""
    env = {
        **COMPACT_ENV,
        "DOLAKE_COMPACTION_INTERVAL_MS": "150",
        "DOLAKE_FLUSH_INTERVAL_MS": "60",
        "DOLAKE_EXPIRE_INTERVAL_MS": "500",
        "DOLAKE_SNAPSHOT_RETENTION_MS": "500",
        "DOLAKE_MIN_SNAPSHOTS_TO_KEEP": "2",
    }
    lake = Lake(tmp_path, env=env).start()
    try:
        w = Workload(52)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(100))
        lake.flush()
        counts: list[int] = []
        snaps: list[int] = []
        deadline = time.time() + 12
        stop = threading.Event()

        def ask_compaction() -> None:  # on-request compactions racing the automatic ones
            while not stop.is_set():
                _cli(lake, "compact", check=False)
                time.sleep(0.3)

        racer = threading.Thread(target=ask_compaction, daemon=True)
        racer.start()
        try:
            while time.time() < deadline:
                send_all(cdc, w.step(6))
                time.sleep(0.05)
                status = json.loads(lake.http("/status")[1])
                if "items" in status["tables"]:
                    t = status["tables"]["items"]
                    counts.append(t["data_files"])
                    snaps.append(t["snapshots"])
        finally:
            stop.set()
            racer.join(30)
        lake.flush()
        cat = lake.catalog()
        _check_exact(cat, w)
        mir = readers.load(cat, "items")
        metrics = lake.http("/metrics")[1].decode()
        (done,) = [ln for ln in metrics.splitlines() if ln.startswith("dolake_compactions_total")]
        assert float(done.split()[-1]) >= 3, done
        assert max(counts[len(counts) // 2 :]) <= 4 + 3, counts  # threshold + a few flushes
        # snapshots: bounded by the retention window, far below the number ever made
        made = mir.current_snapshot().sequence_number
        assert 2 * max(snaps[len(snaps) // 2 :]) <= made, (snaps, made)
        assert status["maintenance"]["last_expiry"], status["maintenance"]
        # every file the lake's metadata references is there; read once the writer is
        # stopped, or its background expiry may remove snapshots between the two reads
        lake.stop()
        assert _referenced(readers.load(lake.catalog(), "items")) <= _warehouse_files(lake)
    finally:
        lake.stop()


def _unreferenced(lake: Lake) -> set[str]:
    """Files in the warehouse that neither table's metadata references."""
    cat = lake.catalog()
    refs: set[str] = set()
    for ident in cat.list_tables("default"):
        t = cat.load_table(ident)
        refs |= _referenced(t)
        metas = [t.metadata_location, *(e.metadata_file for e in t.metadata.metadata_log)]
        refs |= {m.removeprefix("file://") for m in metas}
    return _warehouse_files(lake) - refs


@pytest.mark.parametrize(
    "point",
    ["lake.compact.before_write", "lake.compact.after_write", "lake.compact.after_commit"],
)
def test_kill_during_compaction_then_restart_is_exact_and_orphans_cleaned(tmp_path, point):
    """kill -9 at each step of the mirror's compaction (the change log's, first,
    committed): after the restart the lake is exact (mirror == model, change log
    == every LSN once), the stream resumes exactly (after the commit: the key index
    is caught up from the replace snapshot, not rebuilt), a later compaction works,
    and `dolake clean-orphans` deletes exactly the files the crash left
    unreferenced (`--dry-run` first, deleting nothing; the default 1 h window
    protects them all)."""
    lake = Lake(tmp_path, env=COMPACT_ENV).start()
    try:
        w = Workload(53)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(100))
        lake.flush()
        _small_flushes(lake, cdc, w, 6)
        cdc.close()
        lake.stop()
        lake.start(env={"DOSQL_CRASH_AT": point + ":2"})  # the 2nd hit: the mirror's
        with pytest.raises(subprocess.CalledProcessError):
            _cli(lake, "compact")
        lake.proc.wait(10)
        assert lake.proc.returncode == -9
        lake.start()
        cat = lake.catalog()
        mir = readers.load(cat, "items")
        cl = cat.load_table(("default", "items__changelog"))
        assert cl.current_snapshot().summary.operation.value == "replace"
        replaced = mir.current_snapshot().summary.operation.value == "replace"
        assert replaced == (point == "lake.compact.after_commit")
        _check_exact(cat, w)
        cdc = CDC(lake, "shard-0")
        assert cdc.welcome == w.lsn
        send_all(cdc, w.changes[-10:] + w.step(8))
        lake.flush()
        _check_exact(lake.catalog(), w)
        log_text = (tmp_path / "lake.log").read_text()
        assert ("mirror key index caught up with a compaction" in log_text) == replaced

        leftovers = _unreferenced(lake)
        if point == "lake.compact.after_write":
            assert any(p.endswith(".parquet") for p in leftovers), leftovers
        before = _warehouse_files(lake)
        dry_run = _cli(
            lake, "clean-orphans", "--dry-run", "--older-than", "0s", env={"DOLAKE_PROGRESS": "1"}
        )
        assert "clean-orphans [" in dry_run.stderr and "1/1 tables" in dry_run.stderr
        dry = _json(dry_run)
        found = sum(s["orphans"] for t in dry["tables"].values() for s in t.values())
        assert dry["dry_run"] and found == len(leftovers)
        assert _warehouse_files(lake) == before
        young = _cli(lake, "clean-orphans")
        assert all(
            s["files_deleted"] == 0 for t in _json(young)["tables"].values() for s in t.values()
        )
        out = _json(_cli(lake, "clean-orphans", "--older-than", "0ms"))
        deleted = sum(s["files_deleted"] for t in out["tables"].values() for s in t.values())
        assert deleted == found
        assert _warehouse_files(lake) == before - leftovers
        assert not _unreferenced(lake)
        cat = lake.catalog()
        _check_exact(cat, w)
        for snap in readers.load(cat, "items").snapshots():  # every kept snapshot reads
            rows = readers.scan(cat, "items", snapshot_id=snap.snapshot_id).to_pylist()
            assert len({r["id"] for r in rows}) == len(rows)
        # compaction works after the restart, the stream stays exact
        _small_flushes(lake, cdc, w, 4)
        info = _json(_cli(lake, "compact"))
        assert info["tables"]["items"]["mirror"]["snapshot_id"] is not None
        _small_flushes(lake, cdc, w, 2)
        _check_exact(lake.catalog(), w)
        assert "mirror key index rebuilt" not in (tmp_path / "lake.log").read_text()
    finally:
        lake.stop()


DAY_US = 86_400_000_000


class Notes:
    """A table without a primary key (keyed by shard + rowid) on shard-1, its
    changes spread over several days (several change-log day partitions)."""

    def __init__(self) -> None:
        self.lsn = 0
        self.day = 0
        self.next_rowid = 1
        self.rows: dict[int, dict] = {}
        self.changes = [self._ch("schema", schema=_notes_schema())]

    def _ch(self, op: str, **kw):
        from dosql import protocol

        self.lsn += 1
        ts = US + self.day * DAY_US + self.lsn
        return protocol.Change(self.lsn, self.lsn, ts, "notes", op, **kw)

    def step(self, flush_no: int) -> list:
        out = []
        for _ in range(4):
            rowid, self.next_rowid = self.next_rowid, self.next_rowid + 1
            row = {"body": f"note {rowid}", "n": rowid * flush_no}
            out.append(self._ch("insert", key=[rowid], after=row))
            self.rows[rowid] = row
        victim = min(self.rows)
        out.append(self._ch("delete", key=[victim], before=self.rows.pop(victim)))
        target = max(self.rows)
        new = {**self.rows[target], "n": -flush_no}
        out.append(self._ch("update", key=[target], before=self.rows[target], after=new))
        self.rows[target] = new
        self.changes += out
        return out

    def expected(self) -> list[tuple]:
        return sorted(("shard-1", k, r["body"], r["n"]) for k, r in self.rows.items())


def _notes_schema():
    from dosql import protocol

    from .helpers import col

    return protocol.TableSchema(
        action="create", columns=[col("body", "TEXT"), col("n", "INTEGER")], primary_key=[]
    )


def _notes(cat) -> list[tuple]:
    rows = readers.scan(cat, "notes", hidden=True).to_pylist()
    return sorted((r["_dosql_shard"], r["_dosql_rowid"], r["body"], r["n"]) for r in rows)


def test_bucketed_mirror_rowid_table_day_partitions_then_expiry_and_orphans(tmp_path):
    """A bucket(4) mirror is compacted per bucket, a change log per day partition, a
    table without a primary key like any other; both tables read exactly (pyiceberg
    and DuckDB) after compaction and after the expiry that then deletes the small
    files; orphan cleanup agrees with expiry on what is referenced (finds nothing)."""
    env = {
        **COMPACT_ENV,
        "DOLAKE_MIRROR_BUCKETS": "4",
        "DOLAKE_SNAPSHOT_RETENTION_MS": "500",
        "DOLAKE_MIN_SNAPSHOTS_TO_KEEP": "1",
    }
    lake = Lake(tmp_path, env=env).start()
    try:
        w, notes = Workload(54), Notes()
        w.start()
        a, b = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        send_all(a, list(w.changes) + w.step(150))
        b.send_ok(list(notes.changes))
        lake.flush()
        for i in range(12):
            notes.day = i // 4  # 3 days, 4 flushes each
            send_all(a, w.step(12))
            b.send_ok(notes.step(i + 1))
            lake.flush()
        cat = lake.catalog()
        assert _notes(cat) == notes.expected()
        days_before = _live_files(cat, "notes__changelog")[0]
        info = _json(_cli(lake, "compact"))
        items_m = info["tables"]["items"]["mirror"]
        assert len(items_m["partitions"]) == 4 and items_m["data_files_written"] == 4, items_m
        notes_cl = info["tables"]["notes"]["changelog"]
        assert len(notes_cl["partitions"]) == 3 and notes_cl["data_files_written"] == 3, notes_cl
        cat = lake.catalog()
        assert _live_files(cat, "items")[0] == 4
        assert _live_files(cat, "notes__changelog")[0] == 3 < days_before
        _check_exact(cat, w)
        assert _notes(cat) == notes.expected()
        duck = readers.duckdb_scan(cat, "notes").to_pylist()
        assert sorted((r["_dosql_shard"], r["_dosql_rowid"], r["body"], r["n"]) for r in duck) == (
            notes.expected()
        )
        notes_lsns = changelog_lsns(cat, "notes")["shard-1"]
        assert notes_lsns == list(range(1, notes.lsn + 1))
        # the flushes after a compaction go on exactly (key index moved for both tables)
        send_all(a, w.step(12))
        b.send_ok(notes.step(99))
        lake.flush()
        time.sleep(0.7)
        before = _warehouse_files(lake)
        expired = _json(_cli(lake, "expire"))
        assert expired["tables"]["items"]["mirror"]["files_deleted"] > 0
        assert len(_warehouse_files(lake)) < len(before)
        cat = lake.catalog()
        _check_exact(cat, w)
        assert _notes(cat) == notes.expected()
        # unreferenced: only change-log manifests pyiceberg's merge-append merged away
        left = _unreferenced(lake)
        assert all("__changelog/metadata/" in p and p.endswith(".avro") for p in left), left
        info = _json(_cli(lake, "clean-orphans", "--older-than", "0s"))
        deleted = sum(s["files_deleted"] for t in info["tables"].values() for s in t.values())
        assert deleted == len(left)
        assert not _unreferenced(lake)
        _check_exact(lake.catalog(), w)
        assert "mirror key index rebuilt" not in (tmp_path / "lake.log").read_text()
    finally:
        lake.stop()


def test_compact_and_clean_orphans_need_an_admin_token(tmp_path):
    """The admin surface's auth: a read token is refused (PERMISSION_DENIED), an
    admin token is served; a bad --older-than is a typed error."""
    config = '[auth]\ntokens = [{token = "adm", scope = "admin"}, {token = "ro", scope = "read"}]\n'
    lake = Lake(tmp_path, env=COMPACT_ENV, config=config).start()
    try:
        for cmd in (["compact", "--dry-run"], ["clean-orphans", "--dry-run"]):
            refused = _cli(lake, *cmd, "--token", "ro", check=False)
            # a request the lake writer refused: exit status 1, as for a refused statement
            assert refused.returncode == exitcodes.SQL_ERROR, refused
            assert "PERMISSION_DENIED" in refused.stderr, refused
            done = _cli(lake, *cmd, "--token", "adm")
            assert _json(done)["dry_run"] is True
        bad = _cli(lake, "clean-orphans", "--older-than", "soon", "--token", "adm", check=False)
        assert bad.returncode == exitcodes.SQL_ERROR and "INVALID_INPUT" in bad.stderr, bad
        code, body = lake.http("/maintenance")
        info = json.loads(body)
        assert code == 200 and info["min_files_threshold"] == 4
        assert info["orphan_min_age_ms"] == 3_600_000 and "last_compaction" in info
    finally:
        lake.stop()
