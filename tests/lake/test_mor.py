"""Merge-on-read mirror: position deletes, the key index, crashes around it."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from dolake import mor, readers
from dolake.catalog import open_catalog
from dolake.writer import Writer
from dosql import config as config_mod
from dosql import protocol
from tests.lake.feed import COLS, Feed

from .helpers import CDC, Lake, col, create, dele, ins, upd
from .test_cdc import SLOW_FLUSH, Workload, changelog_lsns, mirror, send_all


def _files(table) -> tuple[list[str], list[str]]:
    """(data file paths, position-delete file paths) of the current snapshot."""
    data, deletes = set(), set()
    for task in table.scan().plan_files():
        data.add(task.file.file_path)
        deletes.update(d.file_path for d in task.delete_files)
    return sorted(data), sorted(deletes)


def _duck_equals_pyiceberg(cat, table: str = "items") -> None:
    via_duck = readers.duckdb_scan(cat, table).to_pylist()
    via_py = readers.scan(cat, table, hidden=True).to_pylist()
    assert sorted(via_duck, key=lambda r: r["id"]) == sorted(via_py, key=lambda r: r["id"])


def test_many_flushes_updates_deletes_key_moves_read_exactly(tmp_path):
    """A small key space hammered over many flushes: every key reads once with
    its latest image (pyiceberg and DuckDB), old data files are never
    rewritten (only deleted by position), time travel shows each old state."""
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        w = Workload(11)
        w.start()
        cdc = CDC(lake, "shard-0")
        history: list[tuple[int, list[dict]]] = []
        seen_data: set[str] = set()
        for round_no in range(8):
            pending = list(w.changes) if round_no == 0 else []  # the CREATE
            send_all(cdc, pending + w.step(80))
            info = lake.flush()
            assert info["tables"]["items"]["error"] is None
            cat = lake.catalog()
            assert mirror(cat) == w.expected()
            table = readers.load(cat, "items")
            data, deletes = _files(table)
            # merge-on-read: data files of earlier flushes are still live (never rewritten)
            assert seen_data <= set(data) | _removed_entirely(table, seen_data)
            seen_data |= set(data)
            if round_no > 0:
                assert deletes, "updates/deletes of existing keys must write position deletes"
            history.append((info["tables"]["items"]["mirror_snapshot"], w.expected()))
        _duck_equals_pyiceberg(cat)
        for snapshot_id, expected in history:
            assert mirror(cat, snapshot_id=snapshot_id) == expected
        summary = readers.load(cat, "items").current_snapshot().summary
        assert int(summary["total-position-deletes"]) > 0
        assert summary.additional_properties["dosql.watermark.shard-0"] == str(w.lsn)
        cdc.close()
    finally:
        lake.kill()


def _removed_entirely(table, paths: set[str]) -> set[str]:
    """Data files no longer in the scan plan: possible only if every row was deleted."""
    live = {t.file.file_path for t in table.scan().plan_files()}
    return {p for p in paths if p not in live}


def test_one_key_updated_in_every_flush_reads_once(tmp_path):
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        cols = [col("id", "INTEGER", 1), col("v", "TEXT")]
        cdc = CDC(lake, "shard-0")
        lsn = 1
        send_all(cdc, [create(1, "kv", cols), ins(2, "kv", {"id": 7, "v": "v0"})])
        lsn = 2
        lake.flush()
        prev = {"id": 7, "v": "v0"}
        for i in range(1, 13):
            lsn += 1
            cur = {"id": 7, "v": f"v{i}"}
            send_all(cdc, [upd(lsn, "kv", prev, cur)])
            prev = cur
            lake.flush()
        cat = lake.catalog()
        assert readers.scan(cat, "kv").to_pylist() == [{"id": 7, "v": "v12"}]
        duck = readers.duckdb_scan(cat, "kv").to_pylist()
        assert [(r["id"], r["v"]) for r in duck] == [(7, "v12")]
        # delete it, re-insert it, delete again: gone
        send_all(cdc, [dele(lsn + 1, "kv", prev), ins(lsn + 2, "kv", {"id": 7, "v": "again"})])
        lake.flush()
        assert readers.scan(lake.catalog(), "kv").to_pylist() == [{"id": 7, "v": "again"}]
        send_all(cdc, [dele(lsn + 3, "kv", {"id": 7, "v": "again"})])
        lake.flush()
        cat = lake.catalog()
        assert readers.scan(cat, "kv").to_pylist() == []
        assert readers.duckdb_scan(cat, "kv").num_rows == 0
        cdc.close()
    finally:
        lake.kill()


@pytest.mark.parametrize("how", ["kill_before_index_update", "index_deleted", "index_corrupt"])
def test_index_lost_or_stale_is_rebuilt_and_exact(tmp_path, how):
    """kill -9 after the mirror commit but before the key index records it
    (index names an older snapshot), or the index file gone / garbage: the
    writer rebuilds it from the mirror and stays exact."""
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    index_dir = tmp_path / "lake" / "mirror_index"
    try:
        w = Workload(5)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(150))
        lake.flush()
        assert (index_dir / "items.sqlite").exists()
        if how == "kill_before_index_update":
            lake.kill()
            lake.start(env={"DOLAKE_FAULT": "before_index_update"})
            cdc = CDC(lake, "shard-0")
            send_all(cdc, [c for c in w.changes if c.lsn > cdc.welcome] + w.step(150))
            with pytest.raises(Exception):  # noqa: B017 - the process dies mid-request
                lake.flush()
            lake.proc.wait(10)
            assert lake.proc.returncode == -9
        else:
            lake.kill()
            if how == "index_deleted":
                shutil.rmtree(index_dir)
            else:
                for p in index_dir.glob("items.sqlite*"):
                    p.write_bytes(b"not a database" * 100)
        lake.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, [c for c in w.changes if c.lsn > cdc.welcome] + w.step(150))
        lake.flush()
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
        _duck_equals_pyiceberg(cat)
        cdc.close()
    finally:
        lake.kill()


def test_incremental_index_equals_rebuilt_index(tmp_path: Path):
    """In process: after random flushes, the index kept up to date flush by
    flush holds exactly what a rebuild from the mirror finds."""
    cfg = config_mod.default()
    writer = Writer(open_catalog(cfg.lake, tmp_path), index_dir=tmp_path / "idx")
    feed = Feed()
    schema = protocol.TableSchema(action="create", columns=COLS, primary_key=["id"])
    writer.flush_table("t", [feed.change("schema", schema=schema)], {"shard-0": feed.lsn})
    rnd = random.Random(3)
    model: dict[int, dict] = {}
    for _ in range(6):
        entries = []
        for k in rnd.sample(range(300), 120):
            if k in model and rnd.random() < 0.3:
                entries.append(feed.change("delete", key=[k], before=model.pop(k)))
            elif k in model:
                new = {**model[k], "amount": model[k]["amount"] + 1}
                entries.append(feed.change("update", key=[k], before=model[k], after=new))
                model[k] = new
            else:
                model[k] = feed.row(k)
                entries.append(feed.change("insert", key=[k], after=model[k]))
        res = writer.flush_table("t", entries, {"shard-0": feed.lsn})
        assert res.files_rewritten == 0
    lt = writer.tables["t"]
    kept = writer._index_of(lt)
    keys = {mor.canon((k,)) for k in model}
    incremental = kept.lookup(keys)
    assert set(incremental) == keys and kept.count() == len(model)
    fresh = Writer(open_catalog(cfg.lake, tmp_path), index_dir=tmp_path / "idx2")
    rebuilt = fresh._index_of(fresh.tables["t"])
    assert rebuilt.count() == len(model)

    def located(index):
        found = index.lookup(keys)
        paths = index.files(f for f, _p, _s, _ts in found.values())
        return {k: (paths[f][0], p, s, ts) for k, (f, p, s, ts) in found.items()}

    assert located(kept) == located(rebuilt)
    got = {r["id"]: r for r in readers.scan(writer.catalog, "t").to_pylist()}
    assert got == model
