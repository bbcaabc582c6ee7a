"""The lake writer process fed by a test CDC client over WebSocket."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import random

import pytest
from websockets.sync.client import connect

from dolake import readers
from dosql import protocol

from .helpers import CDC, US, Lake, col, create, dele, ins, upd

# flushes only on request, and no background compaction (tests count files and snapshots)
SLOW_FLUSH = {
    "DOLAKE_FLUSH_INTERVAL_MS": "600000",
    "DOLAKE_EVENT_THRESHOLD": "1000000",
    "DOLAKE_COMPACTION_INTERVAL_MS": "0",
}

ITEM_COLS = [
    col("id", "INTEGER", 1),
    col("name", "TEXT"),
    col("price", "DECIMAL(10,2)"),
    col("ok", "BOOLEAN"),
    col("day", "DATE"),
    col("at", "TIMESTAMP"),
    col("data", "BLOB"),
    col("score", "REAL"),
]


def item(i: int, rnd: random.Random) -> dict:
    return {
        "id": i,
        "name": rnd.choice(["a", "bé", "", "x" * 50, None]),
        "price": rnd.choice([None, "12.50", 3, "0.01"]),
        "ok": rnd.choice([0, 1, None]),
        "day": rnd.choice([None, "2024-02-29", "1999-12-31"]),
        "at": rnd.choice([None, "2024-01-02 03:04:05", "2024-01-02 03:04:05.123456"]),
        "data": rnd.choice([None, b"", b"\x00\xff" * 3]),
        "score": rnd.choice([None, 1.5, -0.0, 1e300]),
    }


def typed(row: dict) -> dict:
    """What the mirror holds for an item written as ``row``."""
    out = dict(row)
    if row["price"] is not None:
        out["price"] = decimal.Decimal(str(row["price"])).quantize(decimal.Decimal("0.01"))
    if row["ok"] is not None:
        out["ok"] = bool(row["ok"])
    if row["day"] is not None:
        out["day"] = dt.date.fromisoformat(row["day"])
    if row["at"] is not None:
        out["at"] = dt.datetime.fromisoformat(row["at"])
    return out


class Workload:
    """Random changes to table items (one shard) with an exact model of the result."""

    def __init__(self, seed: int, shard: str = "shard-0"):
        self.rnd = random.Random(seed)
        self.shard = shard
        self.lsn = 0
        self.rows: dict[int, dict] = {}
        self.changes: list[protocol.Change] = []

    def next(self) -> int:
        self.lsn += 1
        return self.lsn

    def start(self) -> None:
        self.changes.append(create(self.next(), "items", ITEM_COLS))

    def step(self, n: int) -> list[protocol.Change]:
        out = []
        for _ in range(n):
            op = self.rnd.random()
            if not self.rows or op < 0.45:
                i = self.rnd.randrange(1, 400)
                row = item(i, self.rnd)
                if i in self.rows:  # upsert: INSERT OR REPLACE = delete + insert
                    out.append(dele(self.next(), "items", self.rows[i]))
                out.append(ins(self.next(), "items", row))
                self.rows[i] = row
            elif op < 0.75:
                i = self.rnd.choice(sorted(self.rows))
                row = {**item(i, self.rnd), "id": i}
                out.append(upd(self.next(), "items", self.rows[i], row))
                self.rows[i] = row
            elif op < 0.85:  # key move: delete old key + insert new key (how shards log it)
                i = self.rnd.choice(sorted(self.rows))
                j = self.rnd.randrange(400, 800)
                if j in self.rows:
                    continue
                row = {**self.rows.pop(i), "id": j}
                out.append(dele(self.next(), "items", {**row, "id": i}))
                out.append(ins(self.next(), "items", row))
                self.rows[j] = row
            else:
                i = self.rnd.choice(sorted(self.rows))
                out.append(dele(self.next(), "items", self.rows.pop(i)))
        self.changes += out
        return out

    def expected(self) -> list[dict]:
        return sorted((typed(r) for r in self.rows.values()), key=lambda r: r["id"])


def mirror(cat, table: str = "items", snapshot_id: int | None = None) -> list[dict]:
    rows = readers.scan(cat, table, snapshot_id=snapshot_id).to_pylist()
    return sorted(rows, key=lambda r: (r["id"] is None, r["id"]))


def changelog_lsns(cat, table: str = "items") -> dict[str, list[int]]:
    data = readers.scan(cat, table + "__changelog").select(["_shard", "_lsn"]).to_pylist()
    out: dict[str, list[int]] = {}
    for r in data:
        out.setdefault(r["_shard"], []).append(r["_lsn"])
    return {k: sorted(v) for k, v in out.items()}


def send_all(cdc: CDC, changes: list[protocol.Change], size: int = 37) -> None:
    for i in range(0, len(changes), size):
        cdc.send_ok(changes[i : i + size])


@pytest.fixture
def lake(tmp_path):
    lk = Lake(tmp_path, env=SLOW_FLUSH).start()
    yield lk
    lk.stop()


def test_mixed_workload_mirror_changelog_duckdb_time_travel(lake):
    w = Workload(1)
    w.start()
    cdc = CDC(lake, "shard-0")
    assert cdc.welcome == 0
    send_all(cdc, list(w.changes) + w.step(300))
    first = lake.flush()
    assert first["watermarks"] == {"shard-0": w.lsn}
    cat = lake.catalog()
    assert mirror(cat) == w.expected()
    early_expected, early_snapshot = w.expected(), first["tables"]["items"]["mirror_snapshot"]
    send_all(cdc, w.step(300))
    info = lake.flush()
    assert info["tables"]["items"]["error"] is None
    cat = lake.catalog()
    assert mirror(cat) == w.expected()
    # change log: exactly one row per change, LSNs contiguous
    assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    # DuckDB reads the same rows as pyiceberg, for both tables
    con = readers.duckdb_connect()
    for table in ("items", "items__changelog"):
        via_duck = readers.duckdb_scan(cat, table, con=con).to_pylist()
        via_py = readers.scan(cat, table, hidden=True).to_pylist()
        key = (lambda r: r["id"]) if table == "items" else (lambda r: r["_lsn"])
        assert sorted(via_duck, key=key) == sorted(via_py, key=key)
    # time travel: the earlier snapshot shows the earlier state
    assert mirror(cat, snapshot_id=early_snapshot) == early_expected
    assert early_expected != w.expected()
    # the snapshot summaries carry the watermark
    snap = readers.load(cat, "items").current_snapshot()
    assert snap.summary.additional_properties["dosql.watermark.shard-0"] == str(w.lsn)
    # Committed announcements reached the client
    cdc.recv_committed(w.lsn)
    cdc.close()


def test_resend_is_skipped_and_restart_welcomes_with_watermark(lake):
    w = Workload(2)
    w.start()
    cdc = CDC(lake, "shard-0")
    send_all(cdc, list(w.changes) + w.step(100))
    lake.flush()
    # resend everything: acknowledged, nothing duplicated
    send_all(cdc, w.changes)
    lake.flush()
    cat = lake.catalog()
    assert mirror(cat) == w.expected()
    assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    cdc.close()
    lake.stop()
    lake.start()
    cdc = CDC(lake, "shard-0")
    assert cdc.welcome == w.lsn
    send_all(cdc, w.changes[-5:] + w.step(50))
    lake.flush()
    cat = lake.catalog()
    assert mirror(cat) == w.expected()
    assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    cdc.close()


@pytest.mark.parametrize("point", ["after_changelog_commit", "after_mirror_commit"])
def test_kill_between_commits_is_exactly_once(tmp_path, point):
    """kill -9 after the change log commit (mirror behind) or after both
    (global watermark not yet saved); restart, resend from the welcome."""
    lake = Lake(tmp_path, env=SLOW_FLUSH).start()
    try:
        w = Workload(3)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(120))
        lake.flush()
        send_all(cdc, w.step(120))
        lake.kill()  # (a clean stop would commit the buffer)
        lake.start(env={"DOLAKE_FAULT": point})
        cdc = CDC(lake, "shard-0")
        before_crash = cdc.welcome
        send_all(cdc, [c for c in w.changes if c.lsn > before_crash])
        with pytest.raises(Exception):  # noqa: B017 - the process dies mid-request
            lake.flush()
        lake.proc.wait(10)
        assert lake.proc.returncode == -9
        lake.start()
        cdc = CDC(lake, "shard-0")
        assert cdc.welcome == before_crash  # the global watermark did not move
        cat = lake.catalog()
        if point == "after_changelog_commit":  # change log ahead of the mirror
            assert changelog_lsns(cat)["shard-0"][-1] == w.lsn
            assert mirror(cat) != w.expected()
        send_all(cdc, [c for c in w.changes if c.lsn > cdc.welcome] + w.step(40))
        lake.flush()
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
        cdc.close()
    finally:
        lake.kill()


def test_kill_during_flush_then_continue(tmp_path):
    lake = Lake(tmp_path, env={**SLOW_FLUSH, "DOLAKE_PARQUET_ROW_GROUP_SIZE": "7"}).start()
    rnd = random.Random(5)
    try:
        w = Workload(4)
        w.start()
        for _round in range(3):
            cdc = CDC(lake, "shard-0")
            send_all(cdc, [c for c in w.changes if c.lsn > cdc.welcome] + w.step(150))
            ws = connect(lake.url + "/", open_timeout=10, legacy=True)
            ws.send(protocol.encode(protocol.Flush(id=1)))
            import time

            time.sleep(rnd.uniform(0.0, 0.3))
            lake.kill()
            ws.close()
            lake.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, [c for c in w.changes if c.lsn > cdc.welcome])
        lake.flush()
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
        cdc.close()
    finally:
        lake.kill()


def test_connection_dropped_mid_batch(lake):
    w = Workload(6)
    w.start()
    cdc = CDC(lake, "shard-0")
    send_all(cdc, list(w.changes) + w.step(50))
    batch = w.step(60)
    frame = protocol.encode(
        protocol.ChangeBatch(
            shard="shard-0", first_lsn=batch[0].lsn, last_lsn=batch[-1].lsn, changes=batch
        )
    )
    # half a frame, then the TCP connection goes away
    cdc.ws.socket.sendall(b"\x82\x7f" + len(frame).to_bytes(8, "big") + frame[: len(frame) // 2])
    cdc.ws.socket.close()
    cdc = CDC(lake, "shard-0")
    assert cdc.welcome == 0  # nothing committed yet
    send_all(cdc, w.changes)  # the streamer resends from the welcome watermark
    lake.flush()
    cat = lake.catalog()
    assert mirror(cat) == w.expected()
    assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
    cdc.close()


def test_backpressure_buffer_full(tmp_path):
    lake = Lake(
        tmp_path,
        env={"DOLAKE_MAX_BUFFER_SIZE": "4096", "DOLAKE_FLUSH_INTERVAL_MS": "600000"},
    ).start()
    try:
        w = Workload(7)
        w.start()
        cdc = CDC(lake, "shard-0")
        nacks = 0
        changes = list(w.changes) + w.step(400)
        i = 0
        while i < len(changes):
            chunk = changes[i : i + 20]
            reply = cdc.send(chunk)
            if isinstance(reply, protocol.BatchNack):
                assert reply.reason == "buffer_full" and reply.retry_after_ms > 0
                nacks += 1
                import time

                time.sleep(reply.retry_after_ms / 1000)
                continue
            assert isinstance(reply, protocol.BatchAck)
            i += 20
        assert nacks > 0
        lake.flush()
        cat = lake.catalog()
        assert mirror(cat) == w.expected()
        assert changelog_lsns(cat) == {"shard-0": list(range(1, w.lsn + 1))}
        status, body = lake.http("/metrics")
        # initialised at 0 from startup: not 0 means counted
        assert b'dolake_batch_nacks_total{reason="buffer_full"} ' in body
        assert b'dolake_batch_nacks_total{reason="buffer_full"} 0.0' not in body
        cdc.close()
    finally:
        lake.stop()


def test_add_column_mid_stream(lake):
    cdc = CDC(lake, "shard-0")
    cols = [col("id", "INTEGER", 1), col("v", "TEXT")]
    cdc.send_ok([create(1, "t", cols), ins(2, "t", {"id": 1, "v": "a"})])
    lake.flush()
    cdc.send_ok(
        [
            ins(3, "t", {"id": 2, "v": "b"}),
            create(4, "t", [*cols, col("n", "INTEGER")], action="alter"),
            ins(5, "t", {"id": 3, "v": "c", "n": 7}),
            upd(6, "t", {"id": 2, "v": "b", "n": None}, {"id": 2, "v": "b", "n": 8}),
        ]
    )
    lake.flush()
    cat = lake.catalog()
    assert mirror(cat, "t") == [
        {"id": 1, "v": "a", "n": None},
        {"id": 2, "v": "b", "n": 8},
        {"id": 3, "v": "c", "n": 7},
    ]
    cl = readers.scan(cat, "t__changelog").to_pylist()
    assert [(r["_lsn"], r["_op"], r["n"]) for r in sorted(cl, key=lambda r: r["_lsn"])] == [
        (1, "schema", None),
        (2, "insert", None),
        (3, "insert", None),
        (4, "schema", None),
        (5, "insert", 7),
        (6, "update", 8),
    ]
    cdc.close()


def test_values_that_do_not_fit_go_to_overflow(lake):
    cdc = CDC(lake, "shard-0")
    cols = [
        col("id", "INTEGER", 1),
        col("n", "INTEGER"),
        col("d", "DATE"),
        col("p", "DECIMAL(4,2)"),
    ]
    cdc.send_ok(
        [
            create(1, "odd", cols),
            ins(2, "odd", {"id": 1, "n": "abc", "d": 20240101, "p": "123.456"}),
            ins(3, "odd", {"id": "k", "n": 2.5, "d": "2024-01-01", "p": 1}),
            ins(4, "odd", {"id": 2, "n": b"\x01", "d": None, "p": None}),
        ]
    )
    lake.flush()
    cat = lake.catalog()
    rows = readers.scan(cat, "odd", hidden=True).to_pylist()
    raw = sorted(
        ({c: readers.raw_value(r, c) for c in ("id", "n", "d", "p")} for r in rows),
        key=lambda r: str(r["id"]),
    )
    assert raw == [
        {"id": 1, "n": "abc", "d": 20240101, "p": "123.456"},
        {"id": 2, "n": b"\x01", "d": None, "p": None},
        {"id": "k", "n": 2.5, "d": dt.date(2024, 1, 1), "p": decimal.Decimal("1.00")},
    ]
    bad = next(r for r in rows if r["id"] == 1)
    assert bad["n"] is None and json.loads(bad["_dosql_overflow"])["n"] == {"t": "text", "v": "abc"}
    # a key that does not fit its type still identifies its row: delete it
    cdc.send_ok([dele(5, "odd", {"id": "k", "n": 2.5, "d": "2024-01-01", "p": 1})])
    lake.flush()
    ids = sorted(
        str(readers.raw_value(r, "id")) for r in readers.scan(cat, "odd", hidden=True).to_pylist()
    )
    assert ids == ["1", "2"]
    cdc.close()


def test_reference_table_from_two_shards_and_rowid_tables(lake):
    a, b = CDC(lake, "shard-0"), CDC(lake, "shard-1")
    cols = [col("code", "TEXT", 1), col("label", "TEXT")]
    for c in (a, b):
        c.send_ok(
            [
                create(1, "countries", cols),
                ins(2, "countries", {"code": "fr", "label": "France"}),
                ins(3, "countries", {"code": "de", "label": "Germany"}),
                upd(
                    4,
                    "countries",
                    {"code": "fr", "label": "France"},
                    {"code": "fr", "label": "République"},
                ),
                create(5, "notes", [col("body", "TEXT")], pk=[]),
                ins(6, "notes", {"body": "same rowid"}, key=[1]),
            ]
        )
    b.send_ok([dele(7, "countries", {"code": "de", "label": "Germany"})])
    lake.flush()
    a.send_ok([dele(7, "countries", {"code": "de", "label": "Germany"})])
    lake.flush()
    cat = lake.catalog()
    assert mirror_by(cat, "countries", "code") == [{"code": "fr", "label": "République"}]
    notes = readers.scan(cat, "notes", hidden=True).to_pylist()
    assert sorted((n["_dosql_shard"], n["_dosql_rowid"], n["body"]) for n in notes) == [
        ("shard-0", 1, "same rowid"),
        ("shard-1", 1, "same rowid"),
    ]
    assert changelog_lsns(cat, "countries") == {
        "shard-0": [1, 2, 3, 4, 7],
        "shard-1": [1, 2, 3, 4, 7],
    }
    a.close()
    b.close()


def mirror_by(cat, table: str, key: str) -> list[dict]:
    return sorted(readers.scan(cat, table).to_pylist(), key=lambda r: r[key])


def test_bad_input_is_refused_and_nothing_committed(lake):
    ws = connect(lake.url + "/cdc", open_timeout=10, legacy=True)

    def ask(frame) -> object:
        ws.send(frame)
        return protocol.decode(ws.recv(timeout=10))

    garbage = ask(b"\xc1\x00garbage")
    assert isinstance(garbage, protocol.Error) and garbage.code == "INVALID_MESSAGE"
    text = ask("hello")
    assert isinstance(text, protocol.Error) and text.code == "INVALID_MESSAGE"
    early = protocol.ChangeBatch(
        shard="shard-0",
        first_lsn=1,
        last_lsn=1,
        changes=[create(1, "x", [col("id", "INTEGER", 1)])],
    )
    nack = ask(protocol.encode(early))
    assert isinstance(nack, protocol.BatchNack) and nack.reason == "unknown_source"
    welcome = ask(protocol.encode(protocol.CDCHello(shard="shard-0")))
    assert isinstance(welcome, protocol.CDCWelcome) and welcome.committed_lsn == 0
    other = protocol.ChangeBatch(shard="shard-9", first_lsn=1, last_lsn=1, changes=early.changes)
    nack = ask(protocol.encode(other))
    assert isinstance(nack, protocol.BatchNack) and nack.reason == "unknown_source"
    gap = protocol.ChangeBatch(
        shard="shard-0", first_lsn=5, last_lsn=5, changes=[ins(5, "x", {"id": 1})]
    )
    nack = ask(protocol.encode(gap))
    assert isinstance(nack, protocol.BatchNack) and nack.reason == "lsn_gap"
    assert nack.expected_lsn == 1
    holes = protocol.ChangeBatch(
        shard="shard-0", first_lsn=1, last_lsn=3, changes=[early.changes[0], ins(3, "x", {"id": 1})]
    )
    nack = ask(protocol.encode(holes))
    assert isinstance(nack, protocol.BatchNack) and nack.reason == "invalid"
    no_image = protocol.Change(1, 1, US, "x", "insert", key=[1])
    nack = ask(
        protocol.encode(
            protocol.ChangeBatch(shard="shard-0", first_lsn=1, last_lsn=1, changes=[no_image])
        )
    )
    assert isinstance(nack, protocol.BatchNack) and nack.reason == "invalid"
    wrong = ask(protocol.encode(protocol.Flush(id=3)))
    assert isinstance(wrong, protocol.Error)
    info = lake.flush()
    assert info["tables"] == {}
    assert (
        readers.open_catalog(lake.config_path, data_dir=lake.data_dir).list_tables("default") == []
    )
    # still serving: health, and a good batch on the same connection
    assert lake.http("/health")[0] == 200
    assert lake.http("/health/deep")[0] == 200
    ok = ask(protocol.encode(early))
    assert isinstance(ok, protocol.BatchAck)
    status = json.loads(lake.http("/status")[1])
    assert status["sources"]["shard-0"]["received_lsn"] == 1
    _, metrics = lake.http("/metrics")
    # initialised at 0 from startup: not 0 means counted
    assert b'dolake_cdc_errors_total{code="INVALID_MESSAGE"} ' in metrics
    assert b'dolake_cdc_errors_total{code="INVALID_MESSAGE"} 0.0' not in metrics
    ws.close()


@pytest.mark.parametrize("same_flush", [True, False])
@pytest.mark.parametrize("delete_first", [True, False])
def test_row_moving_between_shards_under_same_key(lake, same_flush, delete_first):
    """Sharding column != primary key: a move is a delete on A and an insert on B."""
    a, b = CDC(lake, "shard-0"), CDC(lake, "shard-1")
    cols = [col("id", "INTEGER", 1), col("region", "TEXT")]
    a.send_ok([create(1, "acct", cols), ins(2, "acct", {"id": 7, "region": "eu"})])
    b.send_ok([create(1, "acct", cols)])
    lake.flush()
    moves = [
        (a, [dele(3, "acct", {"id": 7, "region": "eu"})]),
        (b, [ins(2, "acct", {"id": 7, "region": "us"})]),
    ]
    if not delete_first:
        moves.reverse()
    for client, changes in moves:
        client.send_ok(changes)
        if not same_flush:
            lake.flush()
    lake.flush()
    cat = lake.catalog()
    assert mirror(cat, "acct") == [{"id": 7, "region": "us"}]
    a.close()
    b.close()


def test_flush_cli_and_tokens(tmp_path):
    config = '[auth]\ntokens = [{token = "adm", scope = "admin"}, {token = "ro", scope = "read"}]\n'
    lake = Lake(tmp_path, env=SLOW_FLUSH, config=config).start()
    try:
        with pytest.raises(Exception, match="401"):
            CDC(lake, "shard-0")
        ws = connect(
            lake.url + "/cdc", additional_headers={"Authorization": "Bearer adm"}, legacy=True
        )
        ws.send(protocol.encode(protocol.CDCHello(shard="shard-0")))
        assert isinstance(protocol.decode(ws.recv(timeout=10)), protocol.CDCWelcome)
        batch = [create(1, "t", [col("id", "INTEGER", 1)]), ins(2, "t", {"id": 1})]
        ws.send(
            protocol.encode(
                protocol.ChangeBatch(shard="shard-0", first_lsn=1, last_lsn=2, changes=batch)
            )
        )
        assert isinstance(protocol.decode(ws.recv(timeout=10)), protocol.BatchAck)
        import subprocess
        import sys

        def cli(token: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dolake",
                    "flush",
                    "--url",
                    lake.url,
                    "--wait",
                    "--token",
                    token,
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )

        refused = cli("ro")
        assert refused.returncode == 1 and "PERMISSION_DENIED" in refused.stderr
        done = cli("adm")
        assert done.returncode == 0, done.stderr
        info = json.loads(done.stdout)
        assert info["watermarks"] == {"shard-0": 2}
        assert info["tables"]["t"]["mirror_snapshot"] is not None
        assert readers.scan(lake.catalog(), "t").to_pylist() == [{"id": 1}]
        ws.close()
    finally:
        lake.stop()


def test_drop_table_removes_the_dropping_shards_rows(lake):
    a, b = CDC(lake, "shard-0"), CDC(lake, "shard-1")
    cols = [col("id", "INTEGER", 1), col("v", "TEXT")]
    a.send_ok([create(1, "d", cols), ins(2, "d", {"id": 1, "v": "a"})])
    b.send_ok([create(1, "d", cols), ins(2, "d", {"id": 2, "v": "b"})])
    lake.flush()
    drop = protocol.TableSchema(action="drop")
    a.send_ok([protocol.Change(3, 3, US + 3, "d", "schema", schema=drop)])
    lake.flush()
    cat = lake.catalog()
    assert mirror(cat, "d") == [{"id": 2, "v": "b"}]
    b.send_ok(
        [
            protocol.Change(3, 3, US + 3, "d", "schema", schema=drop),
            create(4, "d", [*cols, col("w", "REAL")]),
            ins(5, "d", {"id": 3, "v": "c", "w": 0.5}),
        ]
    )
    lake.flush()
    assert mirror(cat, "d") == [{"id": 3, "v": "c", "w": 0.5}]
    cl = readers.scan(cat, "d__changelog", hidden=True).to_pylist()
    assert len(cl) == 8
    events = sorted(
        (r["_shard"], r["_lsn"], json.loads(r["_dosql_overflow"])["_dosql_schema"])
        for r in cl
        if r["_op"] == "schema"
    )
    assert events == [
        ("shard-0", 1, "create"),
        ("shard-0", 3, "drop"),
        ("shard-1", 1, "create"),
        ("shard-1", 3, "drop"),
        ("shard-1", 4, "create"),
    ]
    a.close()
    b.close()


def test_failed_flush_keeps_changes_and_reports(lake):
    cdc = CDC(lake, "shard-0")
    cols = [col("id", "INTEGER", 1), col("v", "TEXT")]
    cdc.send_ok([create(1, "f", cols), ins(2, "f", {"id": 1, "v": "a"})])
    lake.flush()
    day = 86_400_000_000
    later = [
        protocol.Change(3, 3, US + 2 * day, "f", "insert", key=[2], after={"id": 2, "v": "b"}),
        protocol.Change(4, 4, US + 2 * day, "f", "delete", key=[1], before={"id": 1, "v": "a"}),
    ]
    cdc.send_ok(later)
    # a file where the change log's new day partition directory must go: writes fail
    blocker = lake.data_dir / "lake/warehouse/default/f__changelog/data/_commit_ts_day=2023-11-16"
    blocker.write_text("in the way")
    info = lake.flush()
    assert info["errors"]["f"] and info["watermarks"] == {"shard-0": 2}
    status = json.loads(lake.http("/status")[1])
    assert status["status"] == "degraded" and status["errors"]["f"]
    assert status["buffers"]["tables"]["f"]["events"] == 2
    assert b"dolake_flush_errors_total 1.0" in lake.http("/metrics")[1]
    assert lake.http("/health")[0] == 200
    blocker.unlink()
    info = lake.flush()
    assert not info.get("errors") and info["watermarks"] == {"shard-0": 4}
    cat = lake.catalog()
    assert mirror(cat, "f") == [{"id": 2, "v": "b"}]
    assert changelog_lsns(cat, "f") == {"shard-0": [1, 2, 3, 4]}
    cdc.close()


def test_bad_config_fails_at_start_naming_the_setting(tmp_path):
    import subprocess
    import sys

    (tmp_path / "bad.toml").write_text("[lake]\nflush_interval_ms = 'soon'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "dolake", "serve", "--config", str(tmp_path / "bad.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3 and "lake.flush_interval_ms" in proc.stderr


def test_event_threshold_triggers_a_flush(tmp_path):
    lake = Lake(
        tmp_path, env={"DOLAKE_FLUSH_INTERVAL_MS": "600000", "DOLAKE_EVENT_THRESHOLD": "50"}
    ).start()
    try:
        w = Workload(8)
        w.start()
        cdc = CDC(lake, "shard-0")
        send_all(cdc, list(w.changes) + w.step(60))
        cdc.recv_committed(50)  # committed without any flush request
        assert json.loads(lake.http("/status")[1])["last_flush"]["tables"]["items"]
        cdc.close()
    finally:
        lake.stop()


def test_sigterm_commits_the_buffer(lake):
    w = Workload(9)
    w.start()
    cdc = CDC(lake, "shard-0")
    send_all(cdc, list(w.changes) + w.step(40))
    lake.stop()
    assert lake.proc.returncode == 0
    lake.start()
    assert CDC(lake, "shard-0").welcome == w.lsn
    assert mirror(lake.catalog()) == w.expected()
