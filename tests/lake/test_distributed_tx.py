"""A transaction committed atomically across shards is never half in a lake snapshot.

Synthetic shard streams (a real lake writer process, CDC spoken by the test as
the shards' streamers do) where one participant's part of a distributed
transaction arrives long before the other's: a flush in between holds the early
part back (and what follows it on its shard), the next flush after the late part
commits both together, across lake restarts too; the change log records the
transaction's ``_gtid``/``_parts``. Read back with pyiceberg.
"""

from __future__ import annotations

from dolake import distributed, readers
from dolake.buffer import Entry
from dolake.catalog import open_catalog
from dolake.writer import Writer
from dosql import config as config_mod
from dosql import protocol

from .helpers import CDC, US, Lake, col, create

COLS = [col("id", "INTEGER", 1), col("v", "TEXT")]
G = "g-0001"
PARTS = ["shard-0", "shard-1"]
G_TS = US + 500


def _ins(lsn: int, i: int, *, ts: int | None = None, txid: int | None = None, gtid=None):
    return protocol.Change(
        lsn,
        txid or lsn,
        ts or US + lsn,
        "t",
        "insert",
        key=[i],
        after={"id": i, "v": f"v{i}"},
        gtid=gtid,
        parts=PARTS if gtid else None,
    )


def _del(lsn: int, i: int, *, ts: int, txid: int, gtid: str):
    return protocol.Change(
        lsn,
        txid,
        ts,
        "t",
        "delete",
        key=[i],
        before={"id": i, "v": f"v{i}"},
        gtid=gtid,
        parts=PARTS,
    )


def _ids(cat, snapshot_id: int | None = None) -> set[int]:
    table = readers.load(cat, "t")
    scan = table.scan(snapshot_id=snapshot_id) if snapshot_id else table.scan()
    return {r["id"] for r in scan.to_arrow().select(["id"]).to_pylist()}


def _every_snapshot_all_or_none(cat, ids: set[int]) -> None:
    """No mirror snapshot holds some of ``ids`` without the others."""
    table = readers.load(cat, "t")
    for snap in table.snapshots():
        have = _ids(cat, snap.snapshot_id) & ids
        assert have in (set(), ids), (snap.snapshot_id, have)


def _mirror_rows(cat) -> list[dict]:
    return readers.load(cat, "t").scan().to_arrow().to_pylist()  # with the owner shard


def _gtid_rows(cat) -> list[dict]:
    rows = readers.scan(cat, "t__changelog").to_pylist()
    return [r for r in rows if r["_gtid"] is not None]


def test_flush_holds_a_part_back_until_its_sibling_arrives(tmp_path):
    lake = Lake(tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "600000"}).start()
    try:
        s0, s1 = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        s0.send_ok([create(1, "t", COLS), _ins(2, 1)])
        s1.send_ok([create(1, "t", COLS), _ins(2, 2)])
        # shard-0's part of G (two changes, one transaction), then a local transaction
        s0.send_ok([_ins(3, 10, ts=G_TS, txid=3, gtid=G), _ins(4, 12, ts=G_TS, txid=3, gtid=G)])
        s0.send_ok([_ins(5, 13, ts=G_TS + 1)])
        info = lake.flush()
        cat = lake.catalog()
        assert _ids(cat) == {1, 2}  # neither G nor what follows it on shard-0
        assert _gtid_rows(cat) == []
        assert info["watermarks"] == {"shard-0": 2, "shard-1": 2}
        status = lake.http("/status")[1].decode()
        assert G in status  # listed as held back

        # shard-1 writes more first (a later local transaction is not held back)...
        s1.send_ok([_ins(3, 14, ts=US + 10)])
        lake.flush()
        assert _ids(lake.catalog()) == {1, 2, 14}
        # ...then its part of G arrives: the next flush has both parts
        s1.send_ok([_ins(4, 11, ts=G_TS, txid=9, gtid=G)])
        info = lake.flush()
        cat = lake.catalog()
        assert _ids(cat) == {1, 2, 10, 11, 12, 13, 14}
        assert info["watermarks"] == {"shard-0": 5, "shard-1": 4}
        _every_snapshot_all_or_none(cat, {10, 11, 12})
        rows = _gtid_rows(cat)
        assert sorted((r["_shard"], r["_lsn"]) for r in rows) == [
            ("shard-0", 3),
            ("shard-0", 4),
            ("shard-1", 4),
        ]
        assert {r["_gtid"] for r in rows} == {G} and {r["_parts"] for r in rows} == {
            "shard-0,shard-1"
        }
        # one change log snapshot took all of G: its rows share a data file commit
        log = readers.load(cat, "t__changelog")
        for snap in log.snapshots():
            got = [
                r
                for r in log.scan(snapshot_id=snap.snapshot_id).to_arrow().to_pylist()
                if r["_gtid"] == G
            ]
            assert len(got) in (0, 3), (snap.snapshot_id, got)
        s0.close()
        s1.close()
    finally:
        lake.kill()


def test_held_part_survives_a_lake_restart_exactly_once(tmp_path):
    lake = Lake(tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "600000"}).start()
    try:
        s0, s1 = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        log0 = [create(1, "t", COLS), _ins(2, 1), _ins(3, 10, ts=G_TS, txid=3, gtid=G)]
        log1 = [create(1, "t", COLS), _ins(2, 2), _ins(3, 11, ts=G_TS, txid=7, gtid=G)]
        s0.send_ok(log0)
        s1.send_ok(log1[:2])
        lake.flush()
        lake.kill()  # shard-0's part of G was only buffered: lost with the process
        lake.start()
        s0, s1 = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        assert (s0.welcome, s1.welcome) == (2, 2)
        s0.send_ok(log0[s0.welcome :])  # the streamer resends from the committed mark
        lake.flush()
        assert _ids(lake.catalog()) == {1, 2}
        s1.send_ok(log1[s1.welcome :])
        lake.flush()
        cat = lake.catalog()
        assert _ids(cat) == {1, 2, 10, 11}
        _every_snapshot_all_or_none(cat, {10, 11})
        rows = readers.scan(cat, "t__changelog").select(["_shard", "_lsn"]).to_pylist()
        for shard in PARTS:
            assert sorted(r["_lsn"] for r in rows if r["_shard"] == shard) == [1, 2, 3]
        s0.close()
        s1.close()
    finally:
        lake.kill()


def test_moved_row_in_one_distributed_transaction(tmp_path):
    """Row 5 moves shard-0 -> shard-1 in G: delete and insert at one commit time."""
    lake = Lake(tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "600000"}).start()
    try:
        s0, s1 = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        s0.send_ok([create(1, "t", COLS), _ins(2, 5)])
        s1.send_ok([create(1, "t", COLS)])
        lake.flush()
        s1.send_ok([_ins(2, 5, ts=G_TS, txid=4, gtid=G)])  # the insert arrives first
        lake.flush()
        cat = lake.catalog()
        assert [r["_dosql_shard"] for r in _mirror_rows(cat)] == ["shard-0"]
        s0.send_ok([_del(3, 5, ts=G_TS, txid=3, gtid=G)])
        lake.flush()
        rows = _mirror_rows(lake.catalog())
        assert [(r["id"], r["_dosql_shard"]) for r in rows] == [(5, "shard-1")]
        s0.close()
        s1.close()
    finally:
        lake.kill()


def _tx(gtid: str, parts: tuple[str, ...], ts: int, **first: int) -> distributed.DistributedTx:
    return distributed.DistributedTx(
        gtid, parts, ts, {k.replace("_", "-"): v for k, v in first.items()}
    )


def test_plan_cut_cascades_along_each_shard():
    """G1 waits for shard-1; on shard-0 G2 follows G1, so G2 is held on shard-2 too."""
    g1 = _tx("g1", ("shard-0", "shard-1"), 100, shard_0=5)
    g2 = _tx("g2", ("shard-0", "shard-2"), 101, shard_0=7, shard_2=3)
    g3 = _tx("g3", ("shard-1", "shard-2"), 90, shard_2=2)  # shard-1's part long committed
    received = {"shard-0": 9, "shard-1": 4, "shard-2": 6}
    cut = distributed.plan_cut(
        received, {t.gtid: t for t in (g1, g2, g3)}, committed_parts={}, safe_ts={"shard-1": 95}
    )
    assert cut.lsn == {"shard-0": 4, "shard-1": 4, "shard-2": 2}
    assert set(cut.held) == {"g1", "g2"} and cut.awaited == {"shard-1"}
    # once shard-1's part of g1 is known to be in the lake nothing is held
    cut = distributed.plan_cut(
        received,
        {t.gtid: t for t in (g1, g2, g3)},
        committed_parts={"g1": {"shard-1"}},
        safe_ts={"shard-1": 95},
    )
    assert cut.lsn == received and not cut.held


def test_changelog_without_gtid_columns_gets_them(tmp_path):
    cat = open_catalog(config_mod.default().lake, tmp_path)
    w = Writer(cat, index_dir=tmp_path / "i")
    schema = protocol.TableSchema("create", columns=COLS, primary_key=["id"])
    entries = [
        Entry("shard-0", protocol.Change(1, 1, US + 1, "t", "schema", schema=schema), 64),
        Entry("shard-0", _ins(2, 1), 64),
    ]
    w.flush_table("t", entries, {"shard-0": 2})
    log = cat.load_table(("default", "t__changelog"))
    with log.update_schema() as us:  # as a writer before distributed transactions made it
        us.delete_column("_gtid")
        us.delete_column("_parts")
    w2 = Writer(cat, index_dir=tmp_path / "i")
    names = {f.name for f in cat.load_table(("default", "t__changelog")).schema().fields}
    assert {"_gtid", "_parts"} <= names
    w2.flush_table("t", [Entry("shard-0", _ins(3, 3, ts=G_TS, gtid=G), 64)], {"shard-0": 3})
    rows = cat.load_table(("default", "t__changelog")).scan().to_arrow().to_pylist()
    assert sorted((r["_lsn"], r["_gtid"]) for r in rows) == [(1, None), (2, None), (3, G)]


def test_shard_reads_fill_gtid_and_never_split_a_distributed_part(tmp_path):
    """The change log read by the streamer: gtid/parts from ``_dosql_tx``; a batch
    limit inside a distributed transaction's part reads on to its end, one inside a
    local transaction does not."""
    import sqlite3

    import msgspec

    from dosql.shard.capture import ensure_internal_tables
    from dosql.shard.changelog import read_changes

    conn = sqlite3.connect(tmp_path / "shard.db", isolation_level=None)
    ensure_internal_tables(conn)
    key = msgspec.msgpack.encode([1])
    conn.execute("INSERT INTO _dosql_tx VALUES (1, 10, NULL, NULL)")
    conn.execute("INSERT INTO _dosql_tx VALUES (2, 20, 'g-7', 'shard-0,shard-1')")
    conn.execute("INSERT INTO _dosql_tx VALUES (3, 30, NULL, NULL)")
    for txid, n in ((1, 3), (2, 4), (3, 3)):
        for _ in range(n):
            conn.execute(
                "INSERT INTO _dosql_changes(txid, tbl, op, key) VALUES (?, 't', 'delete', ?)",
                (txid, key),
            )
    # local transaction 1 (LSNs 1-3) is cut at the limit
    assert [c.lsn for c in read_changes(conn, 1, 2, whole_distributed=True)] == [1, 2]
    # distributed transaction 2 (LSNs 4-7) is read whole
    got = read_changes(conn, 3, 2, whole_distributed=True)
    assert [c.lsn for c in got] == [3, 4, 5, 6, 7]
    assert [(c.gtid, c.parts) for c in got[1:]] == [("g-7", ["shard-0", "shard-1"])] * 4
    assert got[0].gtid is None and got[0].parts is None
    assert [c.lsn for c in read_changes(conn, 5, 1, whole_distributed=True)] == [5, 6, 7]
    # without the flag the limit is exact (ReadChanges, `dosql changes`)
    assert [c.lsn for c in read_changes(conn, 3, 2)] == [3, 4]


def test_full_buffer_still_takes_the_awaited_part(tmp_path):
    """Held-back parts fill the buffer: the shard they wait for is still admitted
    (refusing it with buffer_full would keep them held for good)."""
    env = {"DOLAKE_FLUSH_INTERVAL_MS": "600000", "DOLAKE_MAX_BUFFER_SIZE": "2048"}
    lake = Lake(tmp_path, env=env).start()
    try:
        s0, s1 = CDC(lake, "shard-0"), CDC(lake, "shard-1")
        s0.send_ok([create(1, "t", COLS)])
        s1.send_ok([create(1, "t", COLS)])
        lake.flush()
        big = [_ins(2 + n, 200 + n, ts=G_TS, txid=2, gtid=G) for n in range(40)]
        s0.send_ok(big)
        lake.flush()  # holds G back: the buffer stays full
        reply = s0.send([_ins(42, 300, ts=G_TS + 1)])
        assert isinstance(reply, protocol.BatchNack) and reply.reason == "buffer_full"
        reply = s1.send([_ins(2, 400, ts=G_TS, txid=5, gtid=G)])
        assert isinstance(reply, protocol.BatchAck), reply
        lake.flush()
        assert len(_ids(lake.catalog())) == 41
        s0.close()
        s1.close()
    finally:
        lake.kill()
