"""Subscribers and distributed transactions: moved rows, gtids, exact resume positions.

Two real shard processes and a real subscribe server. Rows move between the
shards (a delete on the old shard, an insert on the new one, in either
wall-clock order; swaps whose parts each delete one row and insert another;
multi-row moves bigger than the server's read batch). Atomic multi-shard commit
is the router's job (issue 15), so the test makes each move one distributed
transaction the way two-phase commit records it: it writes the gtid, the
participants and one commit time into ``_dosql_tx`` of both shards, through a
direct connection to their databases. With the router's 2PC in place the same
stream comes from ``UPDATE … SET <sharding column>`` through the router.

A per-key upsert sink applying events in arrival order must end with exactly
the shards' rows; every event of a distributed transaction carries its gtid and
the transaction's events come together, followed by its commit markers; resuming
from any event's position (inside a transaction too) delivers exactly the rest.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import vschema as V
from dosql.cluster import to_toml
from tests.shard.client import ShardClient, ShardProcess

from .helpers import SubscribeServer, collect

SHARDS = ("shard-0", "shard-1")
DDL = "CREATE TABLE users (id INTEGER PRIMARY KEY, tenant INTEGER NOT NULL, name TEXT)"


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs = {s: ShardProcess(root / f"{s}.db", shard_id=s).start() for s in SHARDS}
        self.clients = {s: ShardClient(p.url) for s, p in self.procs.items()}
        self.db = {s: sqlite3.connect(root / f"{s}.db", timeout=30) for s in SHARDS}
        self.dtx: list[dict[str, int]] = []  # per distributed transaction: shard -> txid
        self.gtids: list[str] = []

    def last_txid(self, shard: str) -> int:
        return int(self.db[shard].execute("SELECT max(txid) FROM _dosql_changes").fetchone()[0])

    def run(self, shard: str, statements: list[tuple[str, list]]) -> int:
        """One transaction on ``shard``; its txid."""
        c = self.clients[shard]
        if len(statements) > 1:
            c.execute("BEGIN")
        for sql, params in statements:
            c.execute(sql, params)
        if len(statements) > 1:
            c.execute("COMMIT")
        return self.last_txid(shard)

    def distributed(self, steps: list[tuple[str, list[tuple[str, list]]]]) -> None:
        """Run one transaction per step (shard, statements) and record them as ONE
        distributed transaction (the parts of the two shards)."""
        txids: dict[str, int] = {}
        for shard, statements in steps:
            assert shard not in txids
            txids[shard] = self.run(shard, statements)
        self.dtx.append(txids)

    def seal(self) -> None:
        """Write gtid, participants and one commit time (the latest of the parts, so
        each shard's commit times still never decrease) as 2PC records them."""
        for n, txids in enumerate(self.dtx):
            gtid = f"gtid-{n:04d}"
            self.gtids.append(gtid)
            ts = max(
                self.db[s]
                .execute("SELECT commit_ts FROM _dosql_tx WHERE txid = ?", (t,))
                .fetchone()[0]
                for s, t in txids.items()
            )
            for shard, txid in txids.items():
                with self.db[shard]:
                    self.db[shard].execute(
                        "UPDATE _dosql_tx SET gtid = ?, parts = ?, commit_ts = ? WHERE txid = ?",
                        (gtid, ",".join(sorted(txids)), ts, txid),
                    )
        for shard in SHARDS:  # the invariant the lake and the stream rely on
            stamps = [
                r[0]
                for r in self.db[shard].execute(
                    "SELECT t.commit_ts FROM _dosql_changes c JOIN _dosql_tx t USING (txid) "
                    "ORDER BY c.lsn"
                )
            ]
            assert stamps == sorted(stamps)

    def orphan(self) -> None:
        """A distributed transaction whose sibling part never shows up (its shard's
        follower reaches the end of its log without it): delivered after the wait."""
        txid = self.run("shard-0", [("INSERT INTO users VALUES (?, ?, ?)", [100, 9, "orphan"])])
        with self.db["shard-0"]:
            self.db["shard-0"].execute(
                "UPDATE _dosql_tx SET gtid = 'gtid-orphan', parts = 'shard-0,shard-1' "
                "WHERE txid = ?",
                (txid,),
            )
        self.dtx.append({"shard-0": txid})
        self.gtids.append("gtid-orphan")

    def rows(self) -> dict[int, tuple]:
        out: dict[int, tuple] = {}
        for shard in SHARDS:
            for r in self.db[shard].execute("SELECT id, tenant, name FROM users"):
                assert r[0] not in out
                out[r[0]] = tuple(r)
        return out

    def heads(self) -> dict[str, int]:
        return {
            s: int(self.db[s].execute("SELECT max(lsn) FROM _dosql_changes").fetchone()[0])
            for s in SHARDS
        }

    def config(self) -> Path:
        vs = V.create_vschema(
            {"users": V.sharded_table("tenant", V.hash_vindex())},
            [V.shard(s, address=p.url) for s, p in self.procs.items()],
        )
        path = self.root / "dosql.toml"
        path.write_text(to_toml({"log_level": "info", "vschema": vs.to_dict()}))
        return path

    def stop(self) -> None:
        for c in self.clients.values():
            c.close()
        for db in self.db.values():
            db.close()
        for p in self.procs.values():
            p.kill()


def _workload(cl: Cluster, rnd: random.Random) -> None:
    where: dict[int, str] = {}
    for s in SHARDS:
        cl.run(s, [(DDL, [])])
    for i in range(24):
        s = rnd.choice(SHARDS)
        cl.run(s, [("INSERT INTO users VALUES (?, ?, ?)", [i, 0, f"u{i}"])])
        where[i] = s
    ins = "INSERT INTO users VALUES (?, ?, ?)"
    dele = "DELETE FROM users WHERE id = ?"
    for n in range(40):
        kind = rnd.random()
        if kind < 0.55:  # one row moves; the new shard may commit first
            k = rnd.randrange(24)
            old = where[k]
            new = SHARDS[1 - SHARDS.index(old)]
            steps = [(old, [(dele, [k])]), (new, [(ins, [k, n + 1, f"moved{n}"])])]
            cl.distributed(steps if rnd.random() < 0.5 else steps[::-1])
            where[k] = new
        elif kind < 0.75:  # a swap: each part inserts one row before deleting another
            a = [k for k in where if where[k] == "shard-0"]
            b = [k for k in where if where[k] == "shard-1"]
            if not a or not b:
                continue
            ka, kb = rnd.choice(a), rnd.choice(b)
            cl.distributed(
                [
                    ("shard-0", [(ins, [kb, n + 1, f"swap{n}"]), (dele, [ka])]),
                    ("shard-1", [(ins, [ka, n + 1, f"swap{n}"]), (dele, [kb])]),
                ]
            )
            where[ka], where[kb] = "shard-1", "shard-0"
        elif kind < 0.9:  # several rows of one shard move: parts longer than a read
            old = rnd.choice(SHARDS)
            new = SHARDS[1 - SHARDS.index(old)]
            keys = [k for k in where if where[k] == old][:5]
            if not keys:
                continue
            cl.distributed(
                [
                    (new, [(ins, [k, n + 1, f"bulk{n}"]) for k in keys]),
                    (old, [(dele, [k]) for k in keys]),
                ]
            )
            for k in keys:
                where[k] = new
        else:  # a local update
            k = rnd.randrange(24)
            cl.run(where[k], [("UPDATE users SET name = ? WHERE id = ?", [f"local{n}", k])])
    cl.seal()
    cl.orphan()


def _sink(events: list[dict[str, Any]]) -> dict[int, tuple]:
    rows: dict[int, tuple] = {}
    for e in events:
        if e.get("op") in ("c", "u", "r"):
            a = e["after"]
            rows[e["key"][0]] = (a["id"], a["tenant"], a["name"])
        elif e.get("op") == "d":
            rows.pop(e["key"][0], None)
    return rows


def _row_ids(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(e["source"]["shard"], e["source"]["lsn"]) for e in events if "op" in e]


@pytest.fixture(scope="module")
def stream(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("subscribe-dtx")
    cl = Cluster(root)
    try:
        _workload(cl, random.Random(15))
        server = SubscribeServer(
            cl.config(),
            root / "subscribe.log",
            {
                "DOLAKE_SUBSCRIBE_READ_BATCH": "3",
                "DOLAKE_SUBSCRIBE_HEARTBEAT_S": "0.3",
                "DOLAKE_SUBSCRIBE_DTX_WAIT_S": "0.5",
            },
        )
        try:
            events = collect(server.url, cl.heads(), token=None, tables=["users"], start="earliest")
            yield cl, server, events
        finally:
            server.stop()
    finally:
        cl.stop()


def test_upsert_sink_ends_with_the_shards_rows(stream) -> None:
    cl, _server, events = stream
    assert len(cl.dtx) > 20
    assert _sink(events) == cl.rows()
    # every change exactly once
    ids = _row_ids(events)
    assert len(ids) == len(set(ids))
    # per shard LSN order, except inside one distributed transaction's events
    for shard in SHARDS:
        floor, block, block_max = 0, None, 0
        for e in events:
            if "op" not in e or e["source"]["shard"] != shard:
                continue
            lsn, gtid = e["source"]["lsn"], e["source"]["gtid"]
            if gtid is None or gtid != block:
                floor, block = max(floor, block_max), gtid
            assert lsn > floor, (shard, lsn, gtid)
            block_max = max(block_max, lsn)
            if gtid is None:
                floor = lsn


def test_distributed_events_come_together_with_their_gtid(stream) -> None:
    cl, _server, events = stream
    parts = {g: set(cl.dtx[i]) for i, g in enumerate(cl.gtids)}
    seen: set[str] = set()
    i = 0
    while i < len(events):
        e = events[i]
        gtid = e.get("source", {}).get("gtid") if "op" in e else None
        if gtid is None:
            i += 1
            continue
        assert gtid not in seen, f"{gtid} delivered in two pieces"
        seen.add(gtid)
        j = i
        while j < len(events) and "op" in events[j]:
            assert events[j]["source"]["gtid"] == gtid  # nothing else in between
            j += 1
        markers = []
        while j < len(events) and events[j].get("type") == "commit":
            if events[j]["gtid"] != gtid:
                break
            markers.append(events[j])
            j += 1
        assert {m["shard"] for m in markers} == parts[gtid]
        assert [m["final"] for m in markers] == [False] * (len(markers) - 1) + [True]
        assert sum(m["events"] for m in markers) == j - i - len(markers)
        assert all(m["parts"] == list(SHARDS) for m in markers)
        # a key on both shards: its delete comes before its insert
        got = events[i : j - len(markers)]
        for k in {x["key"][0] for x in got}:
            ops = [x["op"] for x in got if x["key"][0] == k]
            if "d" in ops and "c" in ops:
                assert ops.index("d") < ops.index("c"), (gtid, k, ops)
        i = j
    assert seen == set(cl.gtids)


def test_resume_from_any_position_delivers_exactly_the_rest(stream) -> None:
    cl, server, events = stream
    rows = [i for i, e in enumerate(events) if "op" in e]
    inside = [
        i
        for i in rows
        if events[i]["source"]["gtid"] and i + 1 < len(events) and "op" in events[i + 1]
    ]
    assert inside  # positions in the middle of a distributed transaction
    rnd = random.Random(7)
    picks = sorted(set(rnd.sample(inside, min(6, len(inside))) + rnd.sample(rows, 4)))
    whole = _row_ids(events)
    for i in picks:
        rest = collect(
            server.url,
            cl.heads(),
            token=None,
            tables=["users"],
            start={"position": events[i]["position"]},
        )
        # (across shards local transactions interleave as the followers run: compare sets)
        done, more = _row_ids(events[: i + 1]), _row_ids(rest)
        assert not set(done) & set(more), i  # nothing twice
        assert sorted(done + more) == sorted(whole), i  # nothing missing
        assert _sink(events[: i + 1] + rest) == cl.rows()


def test_lake_replay_carries_gtid_and_parts(tmp_path: Path) -> None:
    """A follower replaying a purged range from the lake gets gtid/parts back, so it
    gathers the part with its siblings as it would from the shard."""
    from dolake.buffer import Entry
    from dolake.catalog import open_catalog
    from dolake.subscribe import history
    from dolake.writer import Writer
    from dosql import config as config_mod
    from dosql import protocol

    catalog = open_catalog(config_mod.default().lake, tmp_path)
    writer = Writer(catalog, index_dir=tmp_path / "index")
    cols = [
        protocol.ColumnInfo("id", "INTEGER", True, 1),
        protocol.ColumnInfo("v", "TEXT", False, 0),
    ]
    schema = protocol.TableSchema("create", columns=cols, primary_key=["id"])
    ts = 1_700_000_000_000_000
    changes = [
        protocol.Change(1, 1, ts, "t", "schema", schema=schema),
        protocol.Change(2, 2, ts + 1, "t", "insert", key=[1], after={"id": 1, "v": "a"}),
        protocol.Change(
            3,
            3,
            ts + 2,
            "t",
            "delete",
            key=[1],
            before={"id": 1, "v": "a"},
            gtid="g",
            parts=list(SHARDS),
        ),
    ]
    writer.flush_table("t", [Entry("shard-0", c, 64) for c in changes], {"shard-0": 3})
    got = history.read(catalog, "default", "shard-0", after=0, upto=3, wanted=None)
    assert [(c.lsn, c.gtid, c.parts) for c in got] == [
        (1, None, None),
        (2, None, None),
        (3, "g", list(SHARDS)),
    ]
    assert "_gtid" not in (got[1].after or {})  # bookkeeping, not a column of the row
