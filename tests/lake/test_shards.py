"""Real shard processes stream to a real lake writer (``--lake-url``)."""

from __future__ import annotations

import datetime as dt
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from dolake import readers
from dolake.flush_cli import flush_through
from dosql import protocol

from .helpers import ROOT, Lake

pytestmark = pytest.mark.skipif(
    not (ROOT / "dosql" / "shard" / "server.py").exists(), reason="shard server not built yet"
)

CONFIG = """
[cdc]
batch_size = 40
batch_timeout_ms = 200
retry_delay_ms = 20

[lake]
flush_interval_ms = 600000

[vschema]
[[vschema.shards]]
id = "shard-0"
[[vschema.shards]]
id = "shard-1"
[vschema.tables.countries]
kind = "reference"
"""

DDL = [
    "CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT)",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note BLOB, "
    "placed DATE)",
    "CREATE TABLE notes (body TEXT)",
]


class Shard:
    def __init__(self, shard_id: str, data_dir: Path, lake: Lake):
        self.id = shard_id
        self.db = data_dir / f"{shard_id}.db"
        self.data_dir = data_dir
        self.lake = lake
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.req = 0

    def start(self) -> Shard:
        log = open(self.data_dir / f"{self.id}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dosql.shard",
                "--id",
                self.id,
                "--db",
                str(self.db),
                "--config",
                str(self.lake.config_path),
                "--lake-url",
                self.lake.url,
                "--port",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=log,
            cwd=ROOT,
        )
        log.close()
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, (self.data_dir / f"{self.id}.log").read_text()[-2000:]
        port = json.loads(line)["port"]
        self.ws = connect(f"ws://127.0.0.1:{port}/", open_timeout=10, legacy=True, max_size=None)
        return self

    def call(self, msg: protocol.Message) -> protocol.Message:
        assert self.ws is not None
        self.ws.send(protocol.encode(msg))
        while True:
            reply = protocol.decode(self.ws.recv(timeout=30))
            if not isinstance(reply, protocol.Result) or reply.done:
                if isinstance(reply, protocol.Error):
                    raise reply.to_exception()
                return reply

    def sql(self, sql: str, params: list | None = None) -> None:
        self.req += 1
        self.call(protocol.Execute(id=self.req, sql=sql, params=params))

    def rows(self, sql: str) -> list[list]:
        self.req += 1
        assert self.ws is not None
        self.ws.send(protocol.encode(protocol.Execute(id=self.req, sql=sql)))
        out: list[list] = []
        while True:
            reply = protocol.decode(self.ws.recv(timeout=30))
            assert isinstance(reply, protocol.Result), reply
            out += reply.rows
            if reply.done:
                return out

    def current_lsn(self) -> int:
        self.req += 1
        reply = self.call(protocol.LsnInfo(id=self.req))
        assert isinstance(reply, protocol.Ok)
        return reply.info["current_lsn"]

    def kill(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def settle(lake: Lake, shards: list[Shard], timeout: float = 60) -> dict:
    """Flush once the lake has received every committed change."""
    targets = {s.id: s.current_lsn() for s in shards}
    info = flush_through(lake.url, targets, timeout=timeout)
    assert not info.get("errors"), info
    assert all(info["watermarks"][k] >= v for k, v in targets.items())
    return targets


def workload(shards: list[Shard], rnd: random.Random, n: int, altered: bool) -> None:
    for step in range(n):
        sh = rnd.choice(shards)
        parity = shards.index(sh)
        ids = [r[0] for r in sh.rows("SELECT id FROM orders")]
        op = rnd.random()
        row = [
            rnd.choice(["ann", "bob", None, "zoë"]),
            rnd.choice([1.25, 0.0, None, 1e10]),
            rnd.choice([b"\x00\x01", None, b""]),
            rnd.choice(["2024-03-01", None]),
        ]
        extra = ", status" if altered else ""
        marks = ", ?" if altered else ""
        vals = row + ([rnd.choice(["new", None])] if altered else [])
        if op < 0.4 or not ids:
            new_id = rnd.randrange(0, 300) * 2 + parity
            sh.sql(
                f"INSERT OR REPLACE INTO orders (id, customer, amount, note, placed{extra}) "
                f"VALUES (?, ?, ?, ?, ?{marks})",
                [new_id, *vals],
            )
        elif op < 0.6:
            sh.sql(
                "UPDATE orders SET customer = ?, amount = ? WHERE id = ?",
                [row[0], row[1], rnd.choice(ids)],
            )
        elif op < 0.7:  # key change
            sh.sql("UPDATE OR REPLACE orders SET id = id + 1000 WHERE id = ?", [rnd.choice(ids)])
        elif op < 0.8:
            sh.sql("DELETE FROM orders WHERE id = ?", [rnd.choice(ids)])
        elif op < 0.9:  # a multi-statement transaction, sometimes rolled back
            sh.sql("BEGIN")
            sh.sql("INSERT INTO notes (body) VALUES (?)", [f"note {step}"])
            sh.sql("DELETE FROM notes WHERE rowid IN (SELECT rowid FROM notes LIMIT 1)")
            sh.sql("INSERT INTO notes (body) VALUES (?)", [f"more {step}"])
            sh.sql("ROLLBACK" if rnd.random() < 0.3 else "COMMIT")
        else:  # reference table: the same write on every shard
            code = rnd.choice(["fr", "de", "it"])
            name = rnd.choice(["A", "B", None])
            for s in shards:
                s.sql("INSERT OR REPLACE INTO countries VALUES (?, ?)", [code, name])


def expected_orders(shards: list[Shard]) -> list[dict]:
    out = []
    for s in shards:
        cols = [r[1] for r in s.rows("SELECT * FROM pragma_table_info('orders')")]
        for r in s.rows("SELECT * FROM orders"):
            row = dict(zip(cols, r, strict=True))
            if row["placed"] is not None:
                row["placed"] = dt.date.fromisoformat(row["placed"])
            out.append(row)
    return sorted(out, key=lambda r: r["id"])


def check(lake: Lake, shards: list[Shard], targets: dict) -> None:
    cat = lake.catalog()
    got = sorted(readers.scan(cat, "orders").to_pylist(), key=lambda r: r["id"])
    assert got == expected_orders(shards)
    assert len(got) > 20 and {r["id"] % 2 for r in got} == {0, 1}
    ref = sorted(readers.scan(cat, "countries").to_pylist(), key=lambda r: r["code"])
    assert ref and ref == [
        {"code": c, "name": n}
        for c, n in shards[0].rows("SELECT code, name FROM countries ORDER BY code")
    ]
    notes = readers.scan(cat, "notes", hidden=True).to_pylist()
    for s in shards:
        mine = sorted((n["_dosql_rowid"], n["body"]) for n in notes if n["_dosql_shard"] == s.id)
        assert mine == [tuple(r) for r in s.rows("SELECT rowid, body FROM notes ORDER BY rowid")]
    # every change exactly once: per shard, the union of the change logs is 1..current
    lsns: dict[str, list[int]] = {}
    for table in ("orders", "countries", "notes"):
        data = readers.scan(cat, table + "__changelog").select(["_shard", "_lsn"]).to_pylist()
        for r in data:
            lsns.setdefault(r["_shard"], []).append(r["_lsn"])
    for shard_id, last in targets.items():
        assert sorted(lsns[shard_id]) == list(range(1, last + 1))


def test_shards_stream_to_lake_exactly(tmp_path):
    lake = Lake(tmp_path, config=CONFIG).start()
    shards = [Shard("shard-0", tmp_path, lake), Shard("shard-1", tmp_path, lake)]
    rnd = random.Random(21)
    try:
        for s in shards:
            s.start()
            for ddl in DDL:
                s.sql(ddl)
        workload(shards, rnd, 120, altered=False)
        check(lake, shards, settle(lake, shards))
        # schema change mid-stream
        for s in shards:
            s.sql("ALTER TABLE orders ADD COLUMN status TEXT")
        workload(shards, rnd, 80, altered=True)
        # kill -9 a shard right after a burst of writes (while it streams)
        shards[1].kill()
        shards[1].start()
        workload(shards, rnd, 40, altered=True)
        # kill -9 the lake, restart it on a new port, restart the shards to point at it
        lake.kill()
        lake.start()
        for s in shards:
            s.stop()
            s.start()
        workload(shards, rnd, 40, altered=True)
        targets = settle(lake, shards)
        check(lake, shards, targets)
        cat = lake.catalog()
        old_rows = [r for r in readers.scan(cat, "orders").to_pylist() if r["status"] == "new"]
        assert old_rows  # new rows carry the added column; older ones read NULL
    finally:
        for s in shards:
            s.kill()
        lake.kill()


def test_backpressure_with_real_shard(tmp_path):
    config = CONFIG.replace(
        "flush_interval_ms = 600000", "flush_interval_ms = 200\nmax_buffer_size = 2048"
    )
    lake = Lake(tmp_path, config=config).start()
    shard = Shard("shard-0", tmp_path, lake)
    try:
        shard.start()
        shard.sql(DDL[1])
        shard.sql("BEGIN")
        for i in range(400):
            shard.sql(
                "INSERT INTO orders VALUES (?, ?, ?, ?, ?)",
                [i, "x" * 20, i / 3, b"\x01" * 10, None],
            )
        shard.sql("COMMIT")
        deadline = time.time() + 60
        target = shard.current_lsn()
        while (
            json.loads(lake.http("/status")[1])["sources"]
            .get("shard-0", {})
            .get("committed_lsn", 0)
            < target
        ):
            assert time.time() < deadline
            time.sleep(0.1)
        _, metrics = lake.http("/metrics")
        # initialised at 0 from startup: not 0 means counted
        assert b'dolake_batch_nacks_total{reason="buffer_full"} ' in metrics
        assert b'dolake_batch_nacks_total{reason="buffer_full"} 0.0' not in metrics
        cat = lake.catalog()
        assert len(readers.scan(cat, "orders")) == 400
        assert len(readers.scan(cat, "orders__changelog")) == target
    finally:
        shard.kill()
        lake.kill()
