"""Reading the lake as of a point, against the real lake writer.

A two-shard workload with known commit times (random inserts, updates,
deletes, key moves between shards, values that overflow their lake type, a
table without a primary key) is streamed to ``python -m dolake serve`` over
/cdc in several flushes whose per-shard cuts differ, so lake snapshots cover
the shards up to different times. For many points the reconstruction must
equal a replay of the workload on per-shard SQLite databases.
"""

from __future__ import annotations

import datetime as dt
import json
import random

import pytest

from dolake import history
from dosql.errors import CDCError, NotFoundError, ValidationError
from dosql.timetravel.points import LsnPoint, SnapshotPoint, TimestampPoint
from tests.lake.helpers import CDC, Lake

from .workload import LAKE_CONFIG, SHARDS, Workload

# no background compaction either: the tests compare the snapshot chain with the flushes
SLOW_FLUSH = {
    "DOLAKE_FLUSH_INTERVAL_MS": "600000",
    "DOLAKE_EVENT_THRESHOLD": "1000000",
    "DOLAKE_COMPACTION_INTERVAL_MS": "0",
}
NS = "default"
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Fed:
    def __init__(self, lake: Lake, workload: Workload, flushes: list[dict]):
        self.lake = lake
        self.w = workload
        self.flushes = flushes
        self.cat = lake.catalog()


def feed(lake: Lake, w: Workload, rounds: int, seed: int) -> list[dict]:
    """Stream each shard's log in chunks, flushing after each round at random
    per-shard cuts (the last round sends everything)."""
    rnd = random.Random(seed)
    cdcs = {s: CDC(lake, s) for s in SHARDS}
    sent = {s: 0 for s in SHARDS}
    infos = []
    try:
        for k in range(rounds):
            for s in SHARDS:
                changes = w.streams[s].changes
                cut = len(changes) if k == rounds - 1 else rnd.randrange(sent[s], len(changes) + 1)
                for i in range(sent[s], cut, 40):
                    cdcs[s].send_ok(changes[i : min(cut, i + 40)])
                sent[s] = cut
            infos.append(lake.flush())
    finally:
        for c in cdcs.values():
            c.close()
    return infos


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    lake = Lake(tmp_path_factory.mktemp("tt"), env=SLOW_FLUSH, config=LAKE_CONFIG).start()
    try:
        w = Workload(11)
        for _ in range(350):
            w.step()
        infos = feed(lake, w, 6, seed=3)
        yield Fed(lake, w, infos)
    finally:
        lake.stop()


def users_at(fed: Fed, point) -> list[tuple]:
    _, rows = history.rows_as_of(fed.cat, NS, "users", point)
    return sorted(rows, key=repr)


def ref_at(fed: Fed, point) -> list[tuple]:
    kw = {"reference_shard": SHARDS[0]} if isinstance(point, TimestampPoint) else {}
    return sorted(history.rows_as_of(fed.cat, NS, "ref", point, **kw)[1], key=repr)


def events_at(fed: Fed, point) -> list[tuple]:
    data = history.table_as_of(fed.cat, NS, "events", point, hidden=True)
    assert [n for n in data.column_names if not n.startswith("_dosql_")] == ["kind", "v"]
    rows = [(r["_dosql_shard"], r["_dosql_rowid"], r["kind"], r["v"]) for r in data.to_pylist()]
    return sorted(rows, key=repr)


def test_as_of_timestamp_equals_replay_at_many_points(fed):
    w = fed.w
    stamps = sorted(set(w.commit_times))
    first, last = stamps[0], stamps[-1]
    # exactly on commit timestamps, just before/after them, between snapshots, after the last
    points = set(stamps[::7]) | {t - 1 for t in stamps[1::15]} | {t + 1 for t in stamps[2::15]}
    points |= {(a + b) // 2 for a, b in zip(stamps[3::11], stamps[4::11], strict=False)}
    points |= {first, last, last + 1, last + 10**9}
    for info in fed.flushes:  # the changes each snapshot includes end at these instants
        for s, lsn in info["watermarks"].items():
            ch = fed.w.streams[s].changes
            if 0 < lsn <= len(ch):
                points |= {ch[lsn - 1].commit_ts, ch[lsn - 1].commit_ts + 1}
    assert len(points) > 80
    for t in sorted(points):
        expected = w.replay(until_ts=t)
        assert users_at(fed, TimestampPoint(t)) == expected["users"], t
        assert events_at(fed, TimestampPoint(t)) == expected["events"], t
        assert ref_at(fed, TimestampPoint(t)) == expected["ref"], t
    # the workload is not trivial: the table changed a lot and moved rows between shards
    sizes = {len(w.replay(until_ts=t)["users"]) for t in stamps[::20]}
    assert len(sizes) > 5


def test_lagging_shard_and_moved_rows(tmp_path):
    """One shard far behind the other across flushes while rows move between
    them: snapshots fold a moved row's changes out of commit order, and the
    answer must still be exact."""
    lake = Lake(tmp_path, env=SLOW_FLUSH, config=LAKE_CONFIG).start()
    try:
        w = Workload(23)
        for _ in range(250):
            w.step()
        fed = Fed(lake, w, feed(lake, w, 7, seed=23))
        lags = [abs(f["watermarks"]["shard-0"] - f["watermarks"]["shard-1"]) for f in fed.flushes]
        assert max(lags) > 100
        stamps = sorted(set(w.commit_times))
        for t in sorted(set(stamps[::15]) | {t + 1 for t in stamps[-25:]}):
            expected = w.replay(until_ts=t)
            assert users_at(fed, TimestampPoint(t)) == expected["users"], t
            assert ref_at(fed, TimestampPoint(t)) == expected["ref"], t
    finally:
        lake.stop()


def test_typed_result_has_user_columns_only(fed):
    t = fed.w.commit_times[-1]
    data = history.table_as_of(fed.cat, NS, "users", TimestampPoint(t))
    assert data.column_names == ["id", "name", "n", "score"]
    assert str(data.schema.field("id").type) == "int64"
    # a text value in the INTEGER column is NULL in the typed column, exact in rows_as_of
    typed = {r["id"]: r["n"] for r in data.to_pylist()}
    raw = {r[0]: r[2] for r in users_at(fed, TimestampPoint(t))}
    texts = [i for i, v in raw.items() if v == "not-a-number"]
    assert texts and all(typed[i] is None for i in texts)


def test_snapshot_by_id_and_branch_sequence(fed):
    listing = history.history(fed.cat, NS, "users").to_pylist()
    mirror_ids = []
    for f in fed.flushes:
        snap = f["tables"].get("users", {}).get("mirror_snapshot")
        if snap is not None and snap not in mirror_ids:
            mirror_ids.append(snap)
    assert [r["snapshot_id"] for r in listing] == mirror_ids and len(mirror_ids) >= 4
    seqs = [r["sequence_number"] for r in listing]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for row in listing:
        marks = json.loads(row["watermarks"])
        assert marks in [f["watermarks"] for f in fed.flushes]
        expected = fed.w.replay(lsns=marks)
        by_id = users_at(fed, SnapshotPoint(snapshot_id=row["snapshot_id"]))
        assert by_id == expected["users"]
        by_seq = users_at(fed, SnapshotPoint(branch="main", sequence=row["sequence_number"]))
        assert by_seq == by_id
        assert row["row_count"] == len(expected["users"])
        assert row["operation"] in ("append", "overwrite")
        assert row["committed_at"] is not None and row["changes_through"] is not None
        newest = max(
            c.commit_ts
            for s, lsn in marks.items()
            for c in fed.w.streams[s].changes[:lsn]
            if c.table == "users"
        )
        assert (row["changes_through"] - EPOCH) // dt.timedelta(microseconds=1) == newest
        # AS OF the instant a snapshot represents equals the snapshot itself
        at = users_at(fed, TimestampPoint(newest))
        assert at == fed.w.replay(until_ts=newest)["users"]


def test_history_rows_are_sqlite_values(fed):
    cols, rows = history.history_rows(fed.cat, NS, "events")
    assert cols == [
        "snapshot_id",
        "sequence_number",
        "committed_at",
        "changes_through",
        "operation",
        "watermarks",
        "row_count",
    ]
    snaps = {f["tables"].get("events", {}).get("mirror_snapshot") for f in fed.flushes} - {None}
    assert {r[0] for r in rows} == snaps
    for row in rows:
        assert isinstance(row[0], int) and isinstance(row[2], str) and row[2].endswith("+00:00")
        snap = history.table_as_of(fed.cat, NS, "events", SnapshotPoint(snapshot_id=row[0]))
        assert snap.num_rows == row[6]


def test_as_of_lsn_is_that_shards_rows(fed):
    for shard in SHARDS:
        n = len(fed.w.streams[shard].changes)
        for lsn in sorted({3, 4, n // 3, n // 2, n - 1, n} | set(range(5, n, 17))):
            expected = fed.w.replay(lsns={shard: lsn})
            assert users_at(fed, LsnPoint(lsn, shard)) == expected["users"], (shard, lsn)
            assert events_at(fed, LsnPoint(lsn, shard)) == expected["events"], (shard, lsn)
            assert ref_at(fed, LsnPoint(lsn, shard)) == expected["ref"], (shard, lsn)


def test_coverage(fed):
    cov = history.lake_coverage(fed.cat, NS, "users")
    w = fed.w
    assert cov.first_commit_ts == min(s.changes[0].commit_ts for s in w.streams.values())
    assert cov.watermarks == {s: len(w.streams[s].changes) for s in SHARDS}
    users_ts = {
        s: [c.commit_ts for c in w.streams[s].changes if c.table == "users"] for s in SHARDS
    }
    assert cov.last_commit_ts == max(max(v) for v in users_ts.values())
    assert cov.committed_through_ts == min(max(v) for v in users_ts.values())
    assert cov.missing({"shard-0": cov.watermarks["shard-0"]}) == {}
    assert cov.missing({"shard-1": cov.watermarks["shard-1"] + 3}) == {
        "shard-1": (cov.watermarks["shard-1"], cov.watermarks["shard-1"] + 3)
    }


def test_errors(fed):
    cov = history.lake_coverage(fed.cat, NS, "users")
    last = fed.w.commit_times[-1]
    with pytest.raises(NotFoundError) as info:
        history.table_as_of(fed.cat, NS, "users", TimestampPoint(cov.first_commit_ts - 1))
    assert info.value.code == "SNAPSHOT_NOT_FOUND" and "available: from" in info.value.message
    # the first change itself is answerable (an empty table just created)
    assert users_at(fed, TimestampPoint(cov.first_commit_ts)) == []
    with pytest.raises(CDCError) as info:
        history.table_as_of(fed.cat, NS, "users", TimestampPoint(last + 10), now_us=last)
    assert info.value.code == "LAKE_BEHIND" and "future" in info.value.message
    with pytest.raises(CDCError) as info:
        history.table_as_of(fed.cat, NS, "users", TimestampPoint(last), required={"shard-0": 10**6})
    assert info.value.code == "LAKE_BEHIND" and "ms behind" in info.value.message
    assert info.value.details["missing"]["shard-0"][1] == 10**6
    for point in (
        SnapshotPoint(snapshot_id=42),
        SnapshotPoint(branch="main", sequence=10**6),
        SnapshotPoint(branch="nope", sequence=1),
    ):
        with pytest.raises(NotFoundError) as info:
            history.table_as_of(fed.cat, NS, "users", point)
        assert info.value.code == "SNAPSHOT_NOT_FOUND" and "dosql_history" in info.value.message
    with pytest.raises(ValidationError):
        history.table_as_of(fed.cat, NS, "users", LsnPoint(5))
    with pytest.raises(NotFoundError) as info:
        history.table_as_of(fed.cat, NS, "users", LsnPoint(0, "shard-0"))
    assert info.value.code == "SNAPSHOT_NOT_FOUND"
    with pytest.raises(NotFoundError) as info:
        history.table_as_of(fed.cat, NS, "users", LsnPoint(5, "shard-9"))
    assert info.value.code == "SNAPSHOT_NOT_FOUND"
    n = len(fed.w.streams["shard-0"].changes)
    with pytest.raises(CDCError) as info:
        history.table_as_of(fed.cat, NS, "users", LsnPoint(n + 5, "shard-0"))
    assert info.value.code == "LAKE_BEHIND" and "5 LSNs short" in info.value.message
    with pytest.raises(NotFoundError) as info:
        history.table_as_of(fed.cat, NS, "nosuch", TimestampPoint(last))
    assert info.value.code == "TABLE_NOT_FOUND"


def test_lake_behind_until_flushed(tmp_path):
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        w = Workload(5)
        for _ in range(60):
            w.step()
        feed(lake, w, 1, seed=1)
        cat = lake.catalog()
        done = {s: len(w.streams[s].changes) for s in SHARDS}
        point = TimestampPoint(w.commit_times[-1])
        ok = history.rows_as_of(cat, NS, "users", point, required=done)[1]
        assert sorted(ok, key=repr) == w.replay(until_ts=point.micros)["users"]
        w.clock += 1000  # the next changes commit strictly after ``point``
        for _ in range(40):
            w.step()
        # the new changes reach the lake's buffer but are not committed yet
        cdcs = [CDC(lake, s) for s in SHARDS]
        for cdc in cdcs:
            cdc.send_ok(w.streams[cdc.shard].changes[done[cdc.shard] :])
        later = TimestampPoint(w.commit_times[-1])
        need = {s: len(w.streams[s].changes) for s in SHARDS}
        with pytest.raises(CDCError) as info:
            history.table_as_of(cat, NS, "users", later, required=need)
        assert info.value.code == "LAKE_BEHIND"
        assert set(info.value.details["missing"]) == {s for s in SHARDS if need[s] > done[s]}
        # without the shards' positions the lake answers from what it has: the old state
        stale = history.rows_as_of(cat, NS, "users", later)[1]
        assert sorted(stale, key=repr) == w.replay(until_ts=point.micros)["users"]
        with pytest.raises(CDCError) as info:  # a flush that never comes: bounded wait
            history.wait_covered(cat, NS, "users", need, lambda: None, timeout_s=0.3)
        assert info.value.code == "LAKE_BEHIND" and "ms behind" in info.value.message
        flushes = []
        cov = history.wait_covered(
            cat, NS, "users", need, lambda: flushes.append(lake.flush()), timeout_s=30
        )
        assert len(flushes) == 1 and not cov.missing(need)
        for cdc in cdcs:
            cdc.close()
        got = history.rows_as_of(lake.catalog(), NS, "users", later, required=need)[1]
        assert sorted(got, key=repr) == w.replay(until_ts=later.micros)["users"]
    finally:
        lake.stop()
