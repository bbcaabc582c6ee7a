"""Compaction in process (dolake/compaction.py through dolake.writer.Writer): the
key index it keeps equals a rebuild, across schema changes; the policy's limits."""

from __future__ import annotations

import random
import time
from pathlib import Path

from dolake import compaction, mor, readers
from dolake.catalog import open_catalog
from dolake.writer import Writer
from dosql import config as config_mod
from dosql import protocol

from .feed import COLS, Feed


def _random_flush(writer: Writer, feed: Feed, model: dict, rnd: random.Random, extra=None):
    entries = []
    for k in rnd.sample(range(200), 30):
        if k in model and rnd.random() < 0.3:
            entries.append(feed.change("delete", key=[k], before=model.pop(k)))
        elif k in model:
            new = {**model[k], "amount": model[k]["amount"] + 1, **(extra or {})}
            entries.append(feed.change("update", key=[k], before=model[k], after=new))
            model[k] = new
        else:
            model[k] = {**feed.row(k), **(extra or {})}
            entries.append(feed.change("insert", key=[k], after=model[k]))
    res = writer.flush_table("t", entries, {"shard-0": feed.lsn})
    assert res.error is None


def _located(index, keys):
    found = index.lookup(keys)
    paths = index.files(f for f, _p, _s, _ts in found.values())
    return {k: (paths[f][0], p, s, ts) for k, (f, p, s, ts) in found.items()}


def test_compactions_between_flushes_keep_the_index_equal_to_a_rebuild(tmp_path: Path):
    """Flushes, compactions and an ADD COLUMN interleaved: after each compaction the
    mirror reads the model, the change log every LSN once, and the key index moved
    by the compaction equals one rebuilt from the mirror."""
    cfg = config_mod.default()
    writer = Writer(open_catalog(cfg.lake, tmp_path), index_dir=tmp_path / "idx")
    feed = Feed()
    schema = protocol.TableSchema(action="create", columns=COLS, primary_key=["id"])
    writer.flush_table("t", [feed.change("schema", schema=schema)], {"shard-0": feed.lsn})
    rnd = random.Random(7)
    model: dict[int, dict] = {}
    policy = compaction.Policy(min_files=3, target_file_size=1 << 20, max_files=4)
    compactions = 0
    extra = None
    for rnd_no in range(4):
        for _ in range(4):
            _random_flush(writer, feed, model, rnd, extra)
        if rnd_no == 1:  # ALTER TABLE ADD COLUMN: older files lack it
            cols = [*COLS, protocol.ColumnInfo("note", "TEXT", False, 0)]
            alter = protocol.TableSchema(action="alter", columns=cols, primary_key=["id"])
            writer.flush_table("t", [feed.change("schema", schema=alter)], {"shard-0": feed.lsn})
            for row in model.values():
                row.setdefault("note", None)
            extra = {"note": "n"}
        out = writer.compact(policy)["t"]
        assert "error" not in out["mirror"], out
        if out["mirror"]["snapshot_id"] is not None:
            compactions += 1
            assert out["mirror"]["data_files_rewritten"] <= policy.max_files
        lt = writer.tables["t"]
        got = {r["id"]: r for r in readers.scan(writer.catalog, "t").to_pylist()}
        assert got == {k: {"note": None, **v} if extra else v for k, v in model.items()}
        lsns = sorted(readers.scan(writer.catalog, "t__changelog").to_pydict()["_lsn"])
        assert lsns == list(range(1, feed.lsn + 1))
        kept = writer._index_of(lt)
        keys = {mor.canon((k,)) for k in model}
        fresh = Writer(open_catalog(cfg.lake, tmp_path), index_dir=tmp_path / f"re{rnd_no}")
        rebuilt = fresh._index_of(fresh.tables["t"])
        assert kept.count() == rebuilt.count() == len(model)
        assert _located(kept, keys) == _located(rebuilt, keys)
    assert compactions >= 3


def test_policy_limits(tmp_path: Path):
    """Nothing below min_files; nothing younger than min_age_ms; nothing at or above
    the target size; at most max_files per run, oldest first; dry-run commits nothing."""
    cfg = config_mod.default()
    writer = Writer(open_catalog(cfg.lake, tmp_path), index_dir=tmp_path / "idx")
    feed = Feed()
    schema = protocol.TableSchema(action="create", columns=COLS, primary_key=["id"])
    writer.flush_table("t", [feed.change("schema", schema=schema)], {"shard-0": feed.lsn})
    rnd = random.Random(8)
    model: dict[int, dict] = {}
    for _ in range(6):
        _random_flush(writer, feed, model, rnd)
    mirror = writer.tables["t"].mirror
    now = int(time.time() * 1000)
    assert compaction.plan(mirror, compaction.Policy(min_files=8), now) == []
    assert compaction.plan(mirror, compaction.Policy(min_files=3, min_age_ms=3_600_000), now) == []
    # every data file at the target size: only the position deletes are merged
    (deletes_only,) = compaction.plan(
        mirror, compaction.Policy(min_files=3, target_file_size=100), now
    )
    assert deletes_only.data_files == [] and len(deletes_only.delete_files) == 5
    assert compaction.plan(mirror, compaction.Policy(min_files=6, target_file_size=100), now) == []
    (group,) = compaction.plan(mirror, compaction.Policy(min_files=3, max_files=4), now)
    assert len(group.data_files) == 4 and len(group.live_paths) == 6
    assert len(group.delete_files) == 5
    snaps = len(mirror.snapshots())
    dry = writer.compact(compaction.Policy(min_files=3, max_files=4), dry_run=True)["t"]
    assert dry["mirror"]["data_files_to_rewrite"] == 4 and dry["mirror"]["snapshot_id"] is None
    assert len(writer.tables["t"].mirror.snapshots()) == snaps
    merged = writer.compact(compaction.Policy(min_files=3, target_file_size=100))["t"]["mirror"]
    assert merged["data_files_rewritten"] == 0 and merged["delete_files_rewritten"] == 5
    summary = writer.tables["t"].mirror.current_snapshot().summary
    assert (int(summary["total-data-files"]), int(summary["total-delete-files"])) == (6, 1)
    assert {r["id"]: r for r in readers.scan(writer.catalog, "t").to_pylist()} == model
    out = writer.compact(compaction.Policy(min_files=3, max_files=4))["t"]["mirror"]
    assert out["data_files_rewritten"] == 4 and out["data_files_written"] == 1
    summary = writer.tables["t"].mirror.current_snapshot().summary
    assert int(summary["total-data-files"]) == 3  # 6 - 4 + 1
    assert int(summary["total-delete-files"]) <= 1
    got = {r["id"]: r for r in readers.scan(writer.catalog, "t").to_pylist()}
    assert got == model
