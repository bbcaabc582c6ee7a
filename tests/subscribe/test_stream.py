"""Subscribers against a real cluster: exact replay, resume, history from the lake, snapshot."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import threading
import time

import pytest

import dosql
from dolake.flush_cli import flush
from dolake.subscribe import position

from .helpers import ADMIN, apply, collect, expected, heads, rows_of, shard_changes

TABLES = {"accounts", "countries", "settings"}
KEYS = {"accounts": ["id"], "countries": ["code"], "settings": ["k"], "notes": ["id"]}
REFERENCE = {"countries": "shard-0"}
DDL = [
    "CREATE TABLE accounts (id INTEGER PRIMARY KEY, name TEXT, balance REAL, avatar BLOB, "
    "note TEXT)",
    "CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT)",
    "CREATE TABLE settings (k TEXT PRIMARY KEY, v TEXT)",
]


def run_workload(env, seed: int, n: int, ids: range) -> None:
    rnd = random.Random(seed)
    con = env.connect(autocommit=True)
    cur = con.cursor()
    live: set[int] = set()
    for _ in range(n):
        r = rnd.random()
        if r < 0.45 or not live:
            i = rnd.choice([x for x in ids if x not in live] or [None])
            if i is None:
                continue
            cur.execute(
                "INSERT INTO accounts VALUES (?, ?, ?, ?, ?)",
                (
                    i,
                    rnd.choice(["ann", "bé", "", None]),
                    rnd.choice([1.5, -2.25, 0.0, None, "not a number"]),
                    rnd.choice([None, b"", bytes(rnd.randrange(256) for _ in range(8))]),
                    rnd.choice([None, "x", 5]),
                ),
            )
            live.add(i)
        elif r < 0.75:
            i = rnd.choice(sorted(live))
            cur.execute(
                "UPDATE accounts SET balance = ?, avatar = ? WHERE id = ?",
                (rnd.uniform(-100, 100), bytes([rnd.randrange(256)]), i),
            )
        elif r < 0.85:
            i = rnd.choice(sorted(live))
            cur.execute("DELETE FROM accounts WHERE id = ?", (i,))
            live.discard(i)
        else:  # a multi-statement transaction across shards (and one rolled back)
            tx = env.connect(autocommit=False)
            c = tx.cursor()
            a, b = rnd.sample(sorted(live), 2) if len(live) > 1 else (min(live), min(live))
            c.execute("UPDATE accounts SET name = 'tx' WHERE id = ?", (a,))
            c.execute("UPDATE accounts SET name = 'tx2' WHERE id = ?", (b,))
            if rnd.random() < 0.25:
                tx.rollback()
            else:
                tx.commit()
            tx.close()
    code = f"c{seed}"
    cur.execute("INSERT INTO countries VALUES (?, ?)", (code, "Country"))
    cur.execute("UPDATE countries SET name = 'Renamed' WHERE code = ?", (code,))
    cur.execute("INSERT INTO settings VALUES (?, ?)", (f"k{seed}", "v"))
    cur.execute("UPDATE settings SET v = 'w' WHERE k = ?", (f"k{seed}",))
    con.close()


@pytest.fixture(scope="module")
def workload(env):
    start = {s: cur for s, (cur, _) in heads(env.cluster).items()}
    con = env.connect()
    for ddl in DDL:
        con.cursor().execute(ddl)
    con.close()
    run_workload(env, 1, 120, range(1, 40))
    h = heads(env.cluster)
    assert all(oldest == 1 for _, oldest in h.values()), "the lake released too early"
    changes = shard_changes(env.cluster, {s: lsn + 1 for s, lsn in start.items()})
    return {
        "start": position.encode(start),
        "target": {s: cur for s, (cur, _) in h.items()},
        "expected": expected(changes, TABLES, REFERENCE),
        "changes": changes,
    }


def router_rows(env, table: str) -> list[tuple]:
    con = env.connect()
    cur = con.cursor()
    cur.execute(f"SELECT * FROM {table}")
    rows = sorted(map(tuple, cur.fetchall()), key=repr)
    con.close()
    return rows


def replica(events: list[dict]) -> sqlite3.Connection:
    con = sqlite3.connect(":memory:")
    for ddl in DDL:
        con.execute(ddl)
    apply(con, events, KEYS)
    return con


def check_exact(env, events: list[dict], want: list[tuple]) -> None:
    got = rows_of(events)
    assert len(got) == len(want)
    assert sorted(got, key=lambda r: (r[0], r[1])) == sorted(want, key=lambda r: (r[0], r[1]))
    for shard in {r[0] for r in got}:  # per shard, strictly increasing LSNs
        lsns = [r[1] for r in got if r[0] == shard]
        assert lsns == sorted(set(lsns))
    con = replica(events)
    for table in TABLES:
        mine = sorted(map(tuple, con.execute(f"SELECT * FROM {table}").fetchall()), key=repr)
        assert mine == router_rows(env, table), table


def check_transactions(events: list[dict]) -> None:
    """A commit marker follows the last event of every transaction, per shard."""
    open_tx: dict[str, tuple[int, int]] = {}
    markers = 0
    for e in events:
        if e.get("type") == "commit":
            shard = e["shard"]
            assert open_tx.get(shard, (None, 0))[0] == e["txid"]
            assert open_tx[shard][1] == e["events"]
            del open_tx[shard]
            markers += 1
        elif "op" in e or e.get("type") == "schema" and e["source"]["lsn"]:
            shard, txid = e["source"]["shard"], e["source"]["txid"]
            if shard in open_tx:
                assert open_tx[shard][0] == txid, "a transaction's events are not contiguous"
            n = open_tx.get(shard, (txid, 0))[1]
            open_tx[shard] = (txid, n + 1)
    assert not open_tx and markers > 0


def test_earliest_is_exact_and_reproduces_tables(env, workload):
    events = collect(env.sub.url, workload["target"], tables=sorted(TABLES), start="earliest")
    check_exact(env, events, workload["expected"])
    check_transactions(events)
    schemas = [e for e in events if e.get("type") == "schema"]
    assert {e["table"] for e in schemas} == TABLES
    assert all(e["encoding"]["binary"] == "base64" for e in schemas)
    blob = next(e for e in events if e.get("binary") and e["after"])
    # the helper decoded the listed base64 values back to bytes
    assert all(isinstance(blob["after"][c], bytes) for c in blob["binary"]["after"])


def test_resume_from_random_points(env, workload):
    rnd = random.Random(7)
    pos = workload["start"]  # just before the workload (other tests wrote before)
    events: list[dict] = []
    rounds = 0
    while True:
        rounds += 1
        stop_after = rnd.randrange(1, 40)
        done = False
        with dosql.subscribe(
            env.sub.url, tables=sorted(TABLES), start=pos, token=ADMIN, heartbeats=True, timeout=30
        ) as sub:
            for n, event in enumerate(sub):
                if event.get("type") != "heartbeat":
                    events.append(event)
                if event.get("type") == "heartbeat" and _reached(sub.position, workload):
                    done = True
                    break
                if n >= stop_after:
                    break
            pos = sub.position or pos
        if done:
            break
        assert rounds < 500
    assert rounds > 3
    got = rows_of(events)
    assert len(got) == len(set((r[0], r[1]) for r in got)), "duplicates after resume"
    check_exact(env, events, workload["expected"])


def _reached(pos, workload) -> bool:
    vector = position.decode(pos) if pos else {}
    return all(vector.get(s, 0) >= lsn for s, lsn in workload["target"].items())


def test_filters_and_heartbeat_on_idle_table(env, workload):
    # only deletes of accounts with chosen keys
    keys = sorted({r[4]["id"] if r[4] else r[3]["id"] for r in workload["expected"] if r[2] == "d"})
    assert keys
    events = collect(
        env.sub.url,
        workload["target"],
        tables=["accounts"],
        start="earliest",
        ops=["d"],
        keys=keys[:2],
    )
    rows = [e for e in events if "op" in e]
    assert rows and all(e["op"] == "d" and e["key"][0] in keys[:2] for e in rows)
    want = [r for r in workload["expected"] if r[2] == "d" and r[3]["id"] in keys[:2]]
    assert len(rows) == len(want)
    # heartbeats move the position although nothing of "settings" changes
    h = heads(env.cluster)
    with dosql.subscribe(
        env.sub.url, tables=["settings"], token=ADMIN, heartbeats=True, timeout=10
    ) as sub:
        con = env.connect()
        con.cursor().execute("UPDATE accounts SET note = 'hb' WHERE id = ?", (keys[0],))
        con.close()
        for event in sub:
            assert event["type"] == "heartbeat"
            vector = position.decode(event["position"])
            if sum(vector.values()) > sum(c for c, _ in h.values()):
                break


def test_snapshot_then_changes_without_gap_or_duplicate(env, workload):
    stop = threading.Event()

    def writer() -> None:
        rnd = random.Random(3)
        con = env.connect()
        cur = con.cursor()
        i = 1000
        while not stop.is_set():
            i += 1
            cur.execute("INSERT INTO accounts (id, name) VALUES (?, 'snap')", (i,))
            if rnd.random() < 0.5:
                cur.execute("UPDATE accounts SET balance = ? WHERE id = ?", (rnd.random(), i))
            if rnd.random() < 0.3:
                cur.execute("DELETE FROM accounts WHERE id = ?", (i - 1,))
        con.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        time.sleep(0.3)
        events: list[dict] = []
        with dosql.subscribe(
            env.sub.url,
            tables=["accounts"],
            snapshot=True,
            token=ADMIN,
            heartbeats=True,
            timeout=30,
        ) as sub:
            for event in sub:
                if event.get("type") != "heartbeat":
                    events.append(event)
                if (
                    not stop.is_set()
                    and sum(1 for e in events if e.get("op") in ("c", "u", "d")) > 30
                ):
                    stop.set()
                    t.join()
                    target = {s: c for s, (c, _) in heads(env.cluster).items()}
                if (
                    stop.is_set()
                    and event.get("type") == "heartbeat"
                    and _reached(sub.position, {"target": target})
                ):
                    break
    finally:
        stop.set()
        t.join()
    snap = [e for e in events if e.get("op") == "r"]
    assert snap and all(e["source"]["snapshot"] for e in snap)
    seam = {e["source"]["shard"]: e["source"]["lsn"] for e in snap}
    changes = [e for e in events if e.get("op") in ("c", "u", "d")]
    # exactly the shard's accounts changes after the snapshot LSN, each once
    log = shard_changes(env.cluster)
    want = [
        (s, ch.lsn)
        for s, chs in log.items()
        for ch in chs
        if ch.table == "accounts" and ch.op != "schema" and ch.lsn > seam.get(s, 0)
    ]
    assert sorted((e["source"]["shard"], e["source"]["lsn"]) for e in changes) == sorted(want)
    con = sqlite3.connect(":memory:")
    con.execute(DDL[0])
    apply(con, events, KEYS)
    mine = sorted(map(tuple, con.execute("SELECT * FROM accounts").fetchall()), key=repr)
    assert mine == router_rows(env, "accounts")


def test_history_from_lake_then_live(env, workload):
    """After the lake committed and the shards purged their logs, "earliest" and an old
    timestamp are served from the lake's change-log tables, then live, seamlessly."""
    before = heads(env.cluster)
    old = shard_changes(env.cluster)  # everything so far (other tests wrote too)
    flush(env.cluster.lake_url, wait=True, token=ADMIN)
    deadline = time.monotonic() + 30
    while True:
        h = heads(env.cluster)
        if all(oldest > 1 for _, oldest in h.values()):
            break
        assert time.monotonic() < deadline, f"shards did not release: {h}"
        time.sleep(0.1)
    # more changes after the release: these come from the shards' logs
    mid_ts = dt.datetime.now(dt.UTC)
    time.sleep(0.01)
    run_workload(env, 2, 40, range(40, 60))
    h2 = heads(env.cluster)
    live = shard_changes(env.cluster, {s: oldest for s, (_, oldest) in h.items()})
    live_want = expected(live, TABLES, REFERENCE)
    target = {s: c for s, (c, _) in h2.items()}
    assert all(h[s][1] <= before[s][0] + 1 for s in h)

    events = collect(env.sub.url, target, tables=sorted(TABLES), start="earliest")
    got = rows_of(events)
    want = expected(old, TABLES, REFERENCE) + live_want
    # the lake gives back every change exactly (values and the rebuilt before images)
    assert sorted(got, key=lambda r: (r[0], r[1])) == sorted(want, key=lambda r: (r[0], r[1]))
    check_transactions(events)
    con = replica(events)
    for table in TABLES:
        mine = sorted(map(tuple, con.execute(f"SELECT * FROM {table}").fetchall()), key=repr)
        assert mine == router_rows(env, table), table

    # a timestamp before the release point but after some history: lake, then live
    ts_of = sorted(ch.commit_ts for chs in workload["changes"].values() for ch in chs)
    first_ts = ts_of[len(ts_of) // 2]  # the middle of the workload (from the lake)
    since = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=first_ts)
    events = collect(env.sub.url, target, tables=sorted(TABLES), start=since)
    got = rows_of(events)
    commit_ts = {(s, ch.lsn): ch.commit_ts for s, chs in old.items() for ch in chs}
    for s, chs in live.items():
        for ch in chs:
            commit_ts[(s, ch.lsn)] = ch.commit_ts
    want_since = [r for r in want if commit_ts[(r[0], r[1])] >= first_ts]
    assert sorted(got, key=lambda r: (r[0], r[1])) == sorted(want_since, key=lambda r: (r[0], r[1]))
    assert len(want_since) < len(want)
    # a timestamp after the release: only what is newer
    events = collect(env.sub.url, target, tables=sorted(TABLES), start=mid_ts)
    assert sorted(rows_of(events), key=lambda r: (r[0], r[1])) == sorted(
        live_want, key=lambda r: (r[0], r[1])
    )
