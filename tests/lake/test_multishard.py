"""Two shards, rows moving between them, a reference table, random flushes and
lake crashes: the lake converges to exactly the shards' state."""

from __future__ import annotations

import random

import pytest

from dolake import readers
from dosql import protocol

from .helpers import CDC, US, Lake, col

ACCT = [col("id", "INTEGER", 1), col("region", "TEXT"), col("n", "INTEGER")]
REF = [col("code", "TEXT", 1), col("label", "TEXT")]


class Source:
    def __init__(self, shard: str):
        self.shard = shard
        self.log: list[protocol.Change] = []
        self.sent = 0  # index into log of the next change to send
        self.acct: dict[int, dict] = {}
        self.ref: dict[str, dict] = {}

    def add(self, ts: int, table: str, op: str, before=None, after=None, key=None, schema=None):
        lsn = len(self.log) + 1
        self.log.append(
            protocol.Change(
                lsn, lsn, ts, table, op, key=key, before=before, after=after, schema=schema
            )
        )


class Model:
    def __init__(self, rnd: random.Random):
        self.rnd = rnd
        self.ts = US
        self.src = [Source("shard-0"), Source("shard-1")]
        self.next_id = 1
        for s in self.src:
            s.add(
                self.tick(),
                "acct",
                "schema",
                schema=protocol.TableSchema("create", columns=ACCT, primary_key=["id"]),
            )
            s.add(
                self.tick(),
                "ref",
                "schema",
                schema=protocol.TableSchema("create", columns=REF, primary_key=["code"]),
            )

    def tick(self) -> int:
        self.ts += 1
        return self.ts

    def step(self) -> None:
        rnd = self.rnd
        op = rnd.random()
        owner = {i: s for s in self.src for i in s.acct}
        if op < 0.3 or not owner:
            s = rnd.choice(self.src)
            row = {"id": self.next_id, "region": s.shard, "n": rnd.randrange(100)}
            self.next_id += 1
            s.acct[row["id"]] = row
            s.add(self.tick(), "acct", "insert", after=row, key=[row["id"]])
        elif op < 0.5:
            i = rnd.choice(sorted(owner))
            s = owner[i]
            new = {**s.acct[i], "n": rnd.randrange(100)}
            s.add(self.tick(), "acct", "update", before=s.acct[i], after=new, key=[i])
            s.acct[i] = new
        elif op < 0.6:
            i = rnd.choice(sorted(owner))
            s = owner[i]
            s.add(self.tick(), "acct", "delete", before=s.acct.pop(i), key=[i])
        elif op < 0.8:  # the row moves to the other shard under the same key
            i = rnd.choice(sorted(owner))
            a = owner[i]
            b = self.src[1 - self.src.index(a)]
            old = a.acct.pop(i)
            new = {**old, "region": b.shard}
            b.acct[i] = new
            steps = [
                lambda: a.add(self.tick(), "acct", "delete", before=old, key=[i]),
                lambda: b.add(self.tick(), "acct", "insert", after=new, key=[i]),
            ]
            if rnd.random() < 0.5:
                steps.reverse()
            for f in steps:
                f()
        else:  # reference table: the same change on every shard, in the same order
            code = rnd.choice("abcdef")
            label = rnd.choice(["x", "y", "z"])
            delete = rnd.random() < 0.3
            for s in self.src:
                if code in s.ref and delete:
                    s.add(self.tick(), "ref", "delete", before=s.ref.pop(code), key=[code])
                elif code in s.ref:
                    new = {"code": code, "label": label}
                    s.add(self.tick(), "ref", "update", before=s.ref[code], after=new, key=[code])
                    s.ref[code] = new
                else:
                    s.ref[code] = {"code": code, "label": label}
                    s.add(self.tick(), "ref", "insert", after=s.ref[code], key=[code])
            assert self.src[0].ref == self.src[1].ref


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_shards_converge_exactly(tmp_path, seed):
    rnd = random.Random(seed)
    lake = Lake(tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "600000"}).start()
    model = Model(rnd)
    clients: dict[str, CDC] = {}

    def connect_all() -> None:
        for s in model.src:
            c = CDC(lake, s.shard)
            clients[s.shard] = c
            s.sent = c.welcome  # resume from the lake's committed watermark

    try:
        connect_all()
        for _round in range(12):
            for _ in range(rnd.randrange(10, 40)):
                model.step()
            for s in model.src:  # send a random prefix of what is pending
                upto = rnd.randrange(s.sent, len(s.log) + 1)
                while s.sent < upto:
                    n = min(rnd.randrange(1, 15), upto - s.sent)
                    clients[s.shard].send_ok(s.log[s.sent : s.sent + n])
                    s.sent += n
            if rnd.random() < 0.6:
                lake.flush()
            if rnd.random() < 0.25:
                lake.kill()
                lake.start()
                connect_all()
        for s in model.src:
            if s.sent < len(s.log):
                clients[s.shard].send_ok(s.log[s.sent :])
        lake.flush()
        cat = lake.catalog()
        acct = sorted(readers.scan(cat, "acct").to_pylist(), key=lambda r: r["id"])
        want = sorted((r for s in model.src for r in s.acct.values()), key=lambda r: r["id"])
        assert acct == want
        ref = sorted(readers.scan(cat, "ref").to_pylist(), key=lambda r: r["code"])
        assert ref == sorted(model.src[0].ref.values(), key=lambda r: r["code"])
        for table in ("acct", "ref"):
            rows = readers.scan(cat, table + "__changelog").select(["_shard", "_lsn"]).to_pylist()
            for s in model.src:
                mine = sorted(r["_lsn"] for r in rows if r["_shard"] == s.shard)
                assert mine == [c.lsn for c in s.log if c.table == table]
        for c in clients.values():
            c.close()
    finally:
        lake.kill()
