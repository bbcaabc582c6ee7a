"""Time travel over rows that move shards inside one distributed transaction.

A moved row is a delete on its old shard and an insert on its new one with
the SAME commit time and gtid (atomic multi-shard commit). The shards stream
independently, so the lake may get either half first and flush it alone
(these tests drive the Writer directly, without the lake server's hold-back, to
cover every arrival order); ``FOR SYSTEM_TIME AS OF`` (dolake.history, which
the router and ``restore-table`` use) must still give, at every point, exactly
the rows the shards held then: the delete applies before the insert for the
same key at the same commit time, whichever shard comes first in any order.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dolake.buffer import Entry
from dolake.catalog import open_catalog
from dolake.history import rows_as_of
from dolake.writer import Writer
from dosql import config as config_mod
from dosql import protocol
from dosql.timetravel.points import TimestampPoint

US = 1_700_000_000_000_000
COLS = [protocol.ColumnInfo("id", "INTEGER", True, 1), protocol.ColumnInfo("v", "TEXT", False, 0)]
SHARDS = ["shard-1", "shard-2"]


class Shards:
    """Per-shard change logs of table ``t`` and the true rows at every commit time."""

    def __init__(self) -> None:
        self.logs: dict[str, list[protocol.Change]] = {s: [] for s in SHARDS}
        self.txid = 0
        self.rows: dict[int, tuple[str, str]] = {}  # id -> (shard, v)
        self.truth: dict[int, set[tuple[int, str]]] = {}  # commit ts -> rows (id, v)
        schema = protocol.TableSchema("create", columns=COLS, primary_key=["id"])
        for s in SHARDS:
            self._add(s, US, "schema", schema=schema)

    def _add(self, shard: str, ts: int, op: str, gtid: str | None = None, **kw) -> None:
        log = self.logs[shard]
        parts = SHARDS if gtid else None
        log.append(
            protocol.Change(len(log) + 1, self.txid, ts, "t", op, gtid=gtid, parts=parts, **kw)
        )

    def _record(self, ts: int) -> None:
        self.truth[ts] = {(i, v) for i, (_s, v) in self.rows.items()}

    def insert(self, ts: int, i: int, shard: str) -> None:
        self.txid += 1
        v = f"v{i}@{ts}"
        self._add(shard, ts, "insert", key=[i], after={"id": i, "v": v})
        self.rows[i] = (shard, v)
        self._record(ts)

    def move(self, ts: int, i: int, gtid: str, *, delete_first: bool = True) -> None:
        """One distributed transaction: delete on the old shard, insert on the new one."""
        self.txid += 1
        old, v = self.rows[i]
        new = next(s for s in SHARDS if s != old)
        nv = f"v{i}@{ts}"
        steps = [
            lambda: self._add(old, ts, "delete", gtid, key=[i], before={"id": i, "v": v}),
            lambda: self._add(new, ts, "insert", gtid, key=[i], after={"id": i, "v": nv}),
        ]
        for step in steps if delete_first else reversed(steps):
            step()
        self.rows[i] = (new, nv)
        self._record(ts)


def _writer(tmp_path: Path) -> tuple[Writer, object]:
    catalog = open_catalog(config_mod.default().lake, tmp_path)
    return Writer(catalog, index_dir=tmp_path / "index"), catalog


def _stream(writer: Writer, shards: Shards, order: list[tuple[str, int]]) -> None:
    """Flush the shards' logs in ``order``: (shard, how many more changes) per flush."""
    sent = dict.fromkeys(SHARDS, 0)
    for shard, n in order:
        log = shards.logs[shard]
        chunk = log[sent[shard] : sent[shard] + n]
        if not chunk:
            continue
        sent[shard] += len(chunk)
        entries = [Entry(shard, ch, 64) for ch in chunk]
        writer.flush_table("t", entries, {shard: chunk[-1].lsn})
    for shard in SHARDS:  # the rest
        rest = shards.logs[shard][sent[shard] :]
        if rest:
            writer.flush_table("t", [Entry(shard, ch, 64) for ch in rest], {shard: rest[-1].lsn})


def _as_of(catalog, micros: int) -> set[tuple[int, str]]:
    names, rows = rows_as_of(catalog, "default", "t", TimestampPoint(micros), now_us=micros + 1)
    assert names == ["id", "v"]
    return {(r[0], r[1]) for r in rows}


@pytest.mark.parametrize("first", ["delete-shard", "insert-shard"])
def test_moved_row_same_commit_ts_either_arrival_order(tmp_path: Path, first: str) -> None:
    shards = Shards()
    shards.insert(US + 10, 7, "shard-1")
    shards.move(US + 20, 7, "g-1")  # shard-1 deletes, shard-2 inserts, both at US+20
    shards.insert(US + 30, 8, "shard-1")
    writer, catalog = _writer(tmp_path)
    if first == "insert-shard":  # shard-2's insert flushed before shard-1's delete
        order = [("shard-1", 2), ("shard-2", 2), ("shard-1", 1), ("shard-1", 1)]
    else:
        order = [("shard-1", 3), ("shard-2", 2), ("shard-1", 1)]
    _stream(writer, shards, order)
    assert _as_of(catalog, US + 15) == {(7, f"v7@{US + 10}")}
    assert _as_of(catalog, US + 20) == {(7, f"v7@{US + 20}")}
    assert _as_of(catalog, US + 25) == {(7, f"v7@{US + 20}")}
    assert _as_of(catalog, US + 30) == {(7, f"v7@{US + 20}"), (8, f"v8@{US + 30}")}


@pytest.mark.parametrize("seed", [1, 2])
def test_many_moves_every_point_exact(tmp_path: Path, seed: int) -> None:
    """Rows move back and forth in distributed transactions; the shards' logs reach
    the lake in random slices and flushes: every commit point reads back exactly."""
    rnd = random.Random(seed)
    shards = Shards()
    ts = US
    for i in range(6):
        ts += 10
        shards.insert(ts, i, rnd.choice(SHARDS))
    for n in range(18):
        ts += 10
        shards.move(ts, rnd.randrange(6), f"g-{n}", delete_first=rnd.random() < 0.5)
    order = [(rnd.choice(SHARDS), rnd.randrange(1, 5)) for _ in range(12)]
    writer, catalog = _writer(tmp_path)
    _stream(writer, shards, order)
    for point, want in sorted(shards.truth.items()):
        assert _as_of(catalog, point) == want, point
        assert _as_of(catalog, point + 5) == want, point + 5


@pytest.mark.parametrize("order", ["whole", "shard-2 first", "shard-1 first"])
def test_row_leaving_and_coming_back_in_one_transaction(tmp_path: Path, order: str) -> None:
    """Regression (found by tests/e2e/test_distributed_commit_e2e.py): one distributed
    transaction moves row 7 from shard-1 to shard-2 and back (``UPDATE … SET tenant_id``
    twice), and row 8 from shard-2 to shard-1 and back. Each home shard logs a delete then
    an insert, the other one an insert then a delete, all at one commit time. Replayed change
    by change in shard order, shard-2's insert took row 7 over and its delete removed it:
    AS OF that commit time lost the row, although the mirror had it."""
    shards = Shards()
    shards.insert(US + 10, 7, "shard-1")
    shards.insert(US + 11, 8, "shard-2")
    ts, gtid = US + 20, "g-hop"
    shards.txid += 1
    for i, home, away in ((7, "shard-1", "shard-2"), (8, "shard-2", "shard-1")):
        old = {"id": i, "v": shards.rows[i][1]}
        there, back = {"id": i, "v": f"away{i}"}, {"id": i, "v": f"home{i}"}
        shards._add(home, ts, "delete", gtid, key=[i], before=old)
        shards._add(away, ts, "insert", gtid, key=[i], after=there)
        shards._add(away, ts, "delete", gtid, key=[i], before=there)
        shards._add(home, ts, "insert", gtid, key=[i], after=back)
        shards.rows[i] = (home, back["v"])
    shards._record(ts)
    shards.insert(US + 30, 9, "shard-2")
    writer, catalog = _writer(tmp_path)
    flushes = {
        "whole": [],  # everything in one flush per shard
        "shard-2 first": [("shard-2", 2), ("shard-2", 4), ("shard-1", 2), ("shard-1", 4)],
        "shard-1 first": [("shard-1", 2), ("shard-1", 4), ("shard-2", 2), ("shard-2", 4)],
    }[order]
    _stream(writer, shards, flushes)
    before = {(7, f"v7@{US + 10}"), (8, f"v8@{US + 11}")}
    after = {(7, "home7"), (8, "home8")}
    assert _as_of(catalog, US + 15) == before
    assert _as_of(catalog, ts - 1) == before
    assert _as_of(catalog, ts) == after
    assert _as_of(catalog, US + 30) == after | {(9, f"v9@{US + 30}")}
