"""The mirror stays exact when a row moves between shards under the same key
while one shard streams behind the other.

A move (UPDATE of the sharding column) is a delete on the old shard and an
insert on the new one at the same commit time. When the new shard's insert
is flushed first, the old shard's *older* image of the key and then its
delete arrive in later flushes: the older image must not take the row over
(the writer compares the images' commit times, ``_dosql_commit_ts``), so the
old shard's delete finds a row it does not own and leaves it.
"""

from __future__ import annotations

import shutil

import msgspec
import pytest

from dolake import readers
from dolake.buffer import Entry
from dolake.catalog import open_catalog
from dolake.history import to_sqlite
from dolake.writer import COMMIT_TS_COL, Writer
from dosql import config as config_mod
from dosql import protocol
from tests.lake.feed import COLS as BENCH_COLS
from tests.lake.feed import Feed
from tests.timetravel.test_history import SLOW_FLUSH, feed
from tests.timetravel.workload import LAKE_CONFIG, Workload

from .helpers import CDC, US, Lake, col, create, dele, ins

COLS = [col("id", "INTEGER", 1), col("v", "TEXT")]
COLUMNS = ("id", "name", "n", "score")  # of the workload's users table


def at(change: protocol.Change, ts: int) -> protocol.Change:
    """``change`` with commit time ``US + ts``."""
    return msgspec.structs.replace(change, commit_ts=US + ts)


def mirror(lake: Lake, hidden: bool = False) -> dict[int, dict]:
    rows = readers.scan(lake.catalog(), "users", hidden=hidden).to_pylist()
    return {r["id"]: r for r in rows}


@pytest.mark.parametrize("rebuild_index", [False, True], ids=["index", "rebuilt-index"])
def test_older_image_from_old_shard_does_not_take_over(tmp_path, rebuild_index):
    # K=7 lives on shard-1 (ts 10) and moves to shard-0 at ts 50; K=8 stays on shard-1.
    s0 = [
        create(1, "users", COLS),
        at(ins(2, "users", {"id": 7, "v": "moved"}), 50),
    ]
    s1 = [
        create(1, "users", COLS),
        at(ins(2, "users", {"id": 7, "v": "old"}), 10),
        at(ins(3, "users", {"id": 8, "v": "stays"}), 11),
        at(dele(4, "users", {"id": 7, "v": "old"}), 50),
    ]
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        c0, c1 = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        c0.send_ok(s0)
        c1.send_ok(s1[:1])
        lake.flush()  # shard-0's insert first: K owned by shard-0
        assert mirror(lake)[7]["v"] == "moved"
        c1.send_ok(s1[1:3])
        lake.flush()  # shard-1's older image of K (ts 10) must not replace ts 50
        rows = mirror(lake, hidden=True)
        assert (rows[7]["v"], rows[7]["_dosql_shard"]) == ("moved", "shard-0")
        assert rows[7]["_dosql_commit_ts"] == US + 50
        assert rows[8]["_dosql_commit_ts"] == US + 11
        c0.close()
        c1.close()
        if rebuild_index:  # the index rebuilt from the mirror must know the commit times
            lake.stop()
            shutil.rmtree(tmp_path / "lake" / "mirror_index", ignore_errors=True)
            lake.start()
        c1 = CDC(lake, "shard-1")
        c1.send_ok(s1[3:])
        lake.flush()  # shard-1's delete (ts 50): shard-1 does not own K, K stays
        c1.close()
        rows = mirror(lake)
        assert rows == {7: {"id": 7, "v": "moved"}, 8: {"id": 8, "v": "stays"}}
    finally:
        lake.stop()


def test_newer_image_from_other_shard_takes_over(tmp_path):
    """The reverse order still works: the old shard's image and delete first."""
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        c0, c1 = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        c1.send_ok([create(1, "users", COLS), at(ins(2, "users", {"id": 7, "v": "old"}), 10)])
        c0.send_ok([create(1, "users", COLS)])
        lake.flush()
        c0.send_ok([at(ins(2, "users", {"id": 7, "v": "moved"}), 50)])
        lake.flush()  # newer image from shard-0 replaces shard-1's row
        assert mirror(lake, hidden=True)[7]["_dosql_shard"] == "shard-0"
        c1.send_ok([at(dele(3, "users", {"id": 7, "v": "old"}), 50)])
        lake.flush()
        assert mirror(lake) == {7: {"id": 7, "v": "moved"}}
        c0.send_ok([at(dele(3, "users", {"id": 7, "v": "moved"}), 60)])
        lake.flush()  # the owner's delete removes it
        assert mirror(lake) == {}
        c0.close()
        c1.close()
    finally:
        lake.stop()


@pytest.mark.parametrize("seed", [23, 5])
def test_mirror_equals_shards_with_lagging_shard(tmp_path, seed):
    """The random two-shard workload (moves included), streamed in flushes at
    random per-shard cuts: after everything is flushed, the mirror holds
    exactly the shards' rows, and the readers hide the bookkeeping columns."""
    lake = Lake(tmp_path, env=SLOW_FLUSH, config=LAKE_CONFIG).start()
    try:
        w = Workload(seed)
        for _ in range(250):
            w.step()
        feed(lake, w, 7, seed=seed)
        cat = lake.catalog()
        names = readers.scan(cat, "users").column_names  # overflow kept only when set
        assert names[:4] == ["id", "name", "n", "score"]
        assert names[4:] in ([], ["_dosql_overflow"])
        rows = readers.scan(cat, "users", hidden=True).to_pylist()
        got = [tuple(to_sqlite(readers.raw_value(r, c)) for c in COLUMNS) for r in rows]
        truth = w.replay()["users"]
        missing = sorted({r[0] for r in truth} - {r[0] for r in got})
        assert not missing, f"moved rows missing from the mirror: {missing}"
        assert sorted(got, key=repr) == sorted(truth, key=repr)
    finally:
        lake.stop()


def test_mirror_without_commit_ts_column_is_migrated(tmp_path):
    """A mirror created before ``_dosql_commit_ts`` existed gets the column when
    a writer opens it, and flushes keep it exact (rows without a commit time
    may be replaced by any image)."""
    cfg = config_mod.default()
    writer = Writer(open_catalog(cfg.lake, tmp_path), index_dir=tmp_path / "idx")
    feed = Feed()
    schema = protocol.TableSchema(action="create", columns=BENCH_COLS, primary_key=["id"])
    first = [feed.change("schema", schema=schema)]
    first += [feed.change("insert", key=[k], after=feed.row(k)) for k in range(5)]
    writer.flush_table("t", first, {"shard-0": feed.lsn})
    table = writer.tables["t"].mirror
    with table.update_schema() as us:  # what an older writer created
        us.delete_column(COMMIT_TS_COL)
    assert COMMIT_TS_COL not in readers.scan(writer.catalog, "t", hidden=True).column_names

    fresh = Writer(open_catalog(cfg.lake, tmp_path), index_dir=tmp_path / "idx2")
    lt = fresh.tables["t"]
    assert COMMIT_TS_COL in [f.name for f in lt.mirror.schema().fields]
    moved = {**feed.row(2), "name": "moved"}
    entry = Entry(
        "shard-1", protocol.Change(1, 1, US + 10_000, "t", "insert", [2], after=moved), 64
    )
    fresh.flush_table("t", [entry], {"shard-1": 1})
    rows = {r["id"]: r for r in readers.scan(fresh.catalog, "t", hidden=True).to_pylist()}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    assert (rows[2]["name"], rows[2]["_dosql_shard"]) == ("moved", "shard-1")
    assert rows[2][COMMIT_TS_COL] == US + 10_000
    assert rows[0][COMMIT_TS_COL] is None  # written without it
