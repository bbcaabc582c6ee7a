"""Atomic multi-shard commit, end to end: shards, router, lake and a subscriber agree.

Real processes on loopback (LocalCluster with its lake writer, the
quickstart-like 4-shard VSchema of tests/router/conftest.py: ``users``
sharded by ``tenant_id``). Rows move shards through the router (``UPDATE
users SET tenant_id = …``: a delete on the old shard and an insert on the new
one, in one two-phase commit), and every downstream view must show each such
transaction whole, at one commit time:

- ``test_moved_rows_agree_everywhere`` (no faults; ~300 rows, every row moved,
  rows hopping over three shards and back in one transaction, swaps, a
  transaction over two tables, lake snapshots in between): the shards' change
  logs (read from their files) carry one gtid, one commit time and the sorted
  participant list on every change of each transaction, on exactly the shards
  it names, and replaying them gives each shard's rows; the Iceberg mirror
  (pyiceberg and DuckDB) equals the shards' rows with their owners and the
  lake's change log equals the shards'; ``FOR SYSTEM_TIME AS OF`` one
  microsecond before and at every commit time, and ``restore-table`` at the
  same points, give exactly the rows of a plain SQLite replay of the
  statements (moved rows neither lost nor doubled); a live subscriber and one
  replaying from the lake, each applying events per key in arrival order, end
  with the shards' rows and saw each distributed transaction delivered
  together.
- ``test_faults_keep_every_view_whole``: client threads run cross-shard
  transfers and moves while shards and the router are SIGKILLed at each step
  of two-phase commit (``DOSQL_CRASH_AT``, dosql/faults.py), with the lake and
  one subscriber running and a lake flush while the victim is down (parts of
  transactions it has not committed are held back). Once everything is back
  and the resolver has decided every prepared transaction, the shards are
  checked against what COMMIT acknowledged (as tests/router/test_atomic_commit.py
  does), and against them the change logs (archived as they grow, since the
  shards purge what the lake committed), the subscriber's per-key state and
  exactly-once delivery, the lake's mirror and change log, every mirror
  snapshot (all rows, all the money) and AS OF at a spread of commit times.

``DOSQL_E2E_DTX_ROUNDS`` repeats the fault schedule (make test: 1) and
``DOSQL_E2E_DTX_THREADS`` sets the client threads (4).
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dosql import protocol
from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError
from dosql.restore import restore_table
from tests.faultkit import (
    SCHEDULE,
    ensure_all_up,
    readable,
    restart_armed,
    settled,
    wait_for,
    wait_until_dead,
)
from tests.router.client import Client

from .dtx_support import (
    LogArchive,
    LoggedChange,
    Sink,
    assert_lake_log_matches,
    check_delivery,
    check_gtids,
    flush_lake,
    fmt,
    lake_change_log,
    lake_mirror,
    lsn_heads,
    mirror_snapshots,
    outcomes,
    purged_through,
    read_change_log,
    replay_logs,
    shard_rows,
    start_cluster,
    state_at,
)

USERS_DDL = (
    "CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, name TEXT, n INTEGER)"
)
USER_COLS = ["id", "tenant_id", "name", "n"]
ORDERS_DDL = "CREATE TABLE orders (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, total REAL)"

# --------------------------------------------------------------------------- 1. no faults


@dataclass
class Step:
    """One committed transaction of the workload, and what it left behind."""

    name: str
    gtid: str | None  # as COMMIT reported it (None in autocommit)
    before: dict[str, int]  # per shard, the last LSN before it
    after: dict[str, int]  # ... and after it
    state: list[tuple]  # the users rows after it, by the plain SQLite replay
    changes: list[LoggedChange] = field(default_factory=list)
    commit_ts: int = 0

    @property
    def users_changes(self) -> int:
        return sum(1 for ch in self.changes if ch.table == "users")


Statement = tuple[str, list[Any]] | tuple[str, list[list[Any]], bool]


class Workload:
    """Runs statements through the router and, alike, on a plain SQLite database."""

    def __init__(self, cluster: LocalCluster, cl: Client) -> None:
        self.cluster = cluster
        self.cl = cl
        self.replay = sqlite3.connect(":memory:", isolation_level=None)
        self.replay.execute(USERS_DDL)
        self.replay.execute(ORDERS_DDL)
        self.steps: list[Step] = []
        # Each step's changes are read right after it, before a lake flush lets the shards
        # purge them: the whole change log, whatever the flushes in between.
        self.logs: dict[str, list[LoggedChange]] = {
            s: read_change_log(cluster, s) for s in cluster.vschema.shard_ids
        }
        self.synced = 0

    def rows(self) -> list[tuple]:
        return sorted(self.replay.execute("SELECT * FROM users").fetchall())

    def owner(self, tenant: int) -> str:
        return self.cluster.vschema.shard_for("users", tenant)

    def tenant_on(self, shard: str, start: int) -> int:
        """A tenant id >= ``start`` whose rows live on ``shard``."""
        return next(t for t in itertools.count(start) if self.owner(t) == shard)

    def row_on(self, shard: str, skip: set[int]) -> tuple:
        return next(r for r in self.rows() if self.owner(r[1]) == shard and r[0] not in skip)

    def run(self, name: str, statements: list[Statement], *, autocommit: bool = False) -> Step:
        time.sleep(0.003)  # distinct commit times, so "just before" a commit is the step before
        before = lsn_heads(self.cluster)
        gtid = None
        if not autocommit:
            self.cl.begin()
        self.replay.execute("BEGIN")
        for st in statements:
            if len(st) == 3:
                self.cl.executemany(st[0], st[1])
                self.replay.executemany(st[0], st[1])
            else:
                self.cl.execute(st[0], st[1])
                self.replay.execute(st[0], st[1])
        if not autocommit:
            gtid = (self.cl.commit().info or {}).get("gtid")
        self.replay.execute("COMMIT")
        step = Step(name, gtid, before, lsn_heads(self.cluster), self.rows())
        for s, chs in self.logs.items():
            chs += read_change_log(self.cluster, s, before[s])
            assert chs[-1].lsn == step.after[s], f"{s}: a change log read raced a commit"
        self.steps.append(step)
        return step

    def sync(self) -> None:
        """A lake snapshot mid-workload (later points then start from it); the mirror
        must hold the shards' rows."""
        self.cluster.sync_lake()
        self.synced += 1
        assert lake_mirror(self.cluster, "users", USER_COLS) == shard_rows(self.cluster, "users")

    def rolled_back(self, statements: list[tuple[str, list[Any]]]) -> None:
        """A transaction rolled back after moving rows leaves no change anywhere."""
        before = lsn_heads(self.cluster)
        self.cl.begin()
        for sql, params in statements:
            self.cl.execute(sql, params)
        self.cl.rollback()
        assert lsn_heads(self.cluster) == before, "a rolled-back transaction reached a change log"


def _workload(w: Workload) -> None:
    ins = "INSERT INTO users VALUES (?, ?, ?, ?)"
    w.run("insert 300", [(ins, [[i, i % 40, f"user{i}", i] for i in range(300)], True)])
    w.run(
        "move every row", [("UPDATE users SET tenant_id = tenant_id + 1000", [])], autocommit=True
    )
    w.sync()
    w.run(
        "move some back, delete, insert",
        [
            ("UPDATE users SET tenant_id = tenant_id - 1000, n = n + 1 WHERE id % 7 = 0", []),
            ("DELETE FROM users WHERE id % 11 = 0", []),
            (ins, [[1000 + k, 2000 + k, f"new{k}", k] for k in range(12)], True),
        ],
    )
    s0, s1, s2, s3 = w.cluster.vschema.shard_ids
    x = w.row_on(s0, set())
    y = w.row_on(s1, {x[0]})
    z = w.row_on(s2, {x[0], y[0]})
    hop1, hop2 = w.tenant_on(s1, 7000), w.tenant_on(s2, 7000)
    w.run(
        "hop, move and delete, delete and reinsert elsewhere, insert and move",
        [
            ("UPDATE users SET tenant_id = ?, name = 'hop1' WHERE id = ?", [hop1, x[0]]),
            ("UPDATE users SET tenant_id = ?, name = 'hop2' WHERE id = ?", [hop2, x[0]]),
            ("UPDATE users SET tenant_id = ?, name = 'home' WHERE id = ?", [x[1], x[0]]),
            ("UPDATE users SET tenant_id = ? WHERE id = ?", [w.tenant_on(s2, 7100), y[0]]),
            ("DELETE FROM users WHERE id = ?", [y[0]]),
            ("DELETE FROM users WHERE id = ?", [z[0]]),
            (ins, [z[0], w.tenant_on(s3, 7200), "reborn", -1]),
            (ins, [5000, w.tenant_on(s0, 7300), "fresh", 0]),
            ("UPDATE users SET tenant_id = ?, n = 1 WHERE id = 5000", [w.tenant_on(s3, 7400)]),
        ],
    )
    w.sync()
    a = w.row_on(s1, set())[1]
    b = w.row_on(s3, set())[1]
    w.run(
        "swap two tenants' shards",
        [
            (
                "UPDATE users SET tenant_id = CASE tenant_id WHEN ? THEN ? ELSE ? END "
                "WHERE tenant_id IN (?, ?)",
                [a, b, a, a, b],
            )
        ],
    )
    q = w.row_on(s1, set())
    w.run(
        "move a user, add orders on other shards",
        [
            ("UPDATE users SET tenant_id = ? WHERE id = ?", [w.tenant_on(s2, 7500), q[0]]),
            (
                "INSERT INTO orders VALUES (1, ?, 9.5), (2, ?, 1.25)",
                [w.tenant_on(s3, 7600), w.tenant_on(s0, 7600)],
            ),
        ],
    )
    w.run("local update", [("UPDATE users SET name = 'local' WHERE tenant_id = ?", [b])])
    w.rolled_back([("UPDATE users SET tenant_id = tenant_id + 1 WHERE id < 50", [])])
    w.run(
        "move half, delete across shards",
        [
            ("UPDATE users SET tenant_id = tenant_id + 3, n = n * 2 WHERE id < 150", []),
            ("DELETE FROM users WHERE id % 13 = 1", []),
        ],
    )


def _check_steps(w: Workload, logs: dict[str, list[LoggedChange]]) -> None:
    """(a) Each step is one transaction in the change logs: one gtid, one commit time,
    sorted parts = the shards it changed; replaying the logs gives each shard's rows."""
    last_ts = 0
    for step in w.steps:
        step.changes = [
            ch for s, chs in logs.items() for ch in chs if step.before[s] < ch.lsn <= step.after[s]
        ]
        assert step.changes, f"{step.name}: no change logged"
        shards = sorted({ch.shard for ch in step.changes})
        stamps = {(ch.gtid, ch.commit_ts, ch.parts) for ch in step.changes}
        assert len(stamps) == 1, f"{step.name}: changes disagree on gtid/commit_ts/parts {stamps}"
        ((gtid, ts, parts),) = stamps
        if step.name == "local update":
            assert len(shards) == 1 and (parts or shards[0]) == shards[0], (shards, parts)
        else:
            assert len(shards) >= 2, f"{step.name}: expected a distributed transaction: {shards}"
            assert parts == ",".join(shards), f"{step.name}: parts {parts}, changes on {shards}"
        if step.gtid is not None:
            assert gtid == step.gtid, (
                f"{step.name}: change log gtid {gtid}, COMMIT said {step.gtid}"
            )
        assert ts is not None and ts > last_ts, f"{step.name}: commit time not after the last"
        step.commit_ts = last_ts = ts
        cut = {s: [ch for ch in chs if ch.lsn <= step.after[s]] for s, chs in logs.items()}
        per_shard = replay_logs(cut, "users")
        for s in logs:
            want = {(r[0],): dict(zip(USER_COLS, r, strict=True)) for r in step.state}
            want = {k: v for k, v in want.items() if w.owner(v["tenant_id"]) == s}
            assert per_shard[s] == want, f"{step.name}: {s}'s change log replays to other rows"
    moves = [s for s in w.steps if s.name == "move every row"][0]
    deletes = {ch.key for ch in moves.changes if ch.op == "delete"}
    inserts = {ch.key for ch in moves.changes if ch.op == "insert"}
    assert deletes == inserts and len(deletes) > 100, "rows did not move shards"


def _diff(what: str, got: list[tuple], want: list[tuple]) -> str:
    return (
        f"{what}: {len(got)} rows, expected {len(want)}; missing "
        f"{sorted(set(want) - set(got))[:8]}, unexpected {sorted(set(got) - set(want))[:8]}"
    )


def _as_of(cl: Client, table: str, point: int) -> list[tuple]:
    return sorted(cl.rows(f"SELECT * FROM {table} FOR SYSTEM_TIME AS OF TIMESTAMP '{fmt(point)}'"))


def test_moved_rows_agree_everywhere(tmp_path: Path) -> None:
    with start_cluster(tmp_path) as cluster, Client(cluster.url) as cl:
        cl.execute(USERS_DDL)
        cl.execute(ORDERS_DDL)
        live = Sink(cluster.lake_url or "", ["users"]).start()
        try:
            w = Workload(cluster, cl)
            _workload(w)
            logs = w.logs
            assert all(chs[0].lsn == 1 for chs in logs.values())
            gtids = check_gtids(logs, outcomes(cluster))
            _check_steps(w, logs)
            truth = shard_rows(cluster, "users")
            assert sorted(row for _s, row in truth.values()) == w.rows()
            assert all(w.owner(row[1]) == s for s, row in truth.values())

            # (e) the live subscriber: per-key state, each transaction delivered together
            live.wait(cluster.shard_lsns())
            want_rows = {
                k: dict(zip(USER_COLS, row, strict=True)) for k, (_s, row) in truth.items()
            }
            assert live.table_rows("users") == want_rows
            delivered = check_delivery(live.events, gtids)
            for step in w.steps:
                if step.name != "local update":
                    assert delivered.get(step.changes[0].gtid) == step.users_changes, step.name
        finally:
            live.close()

        # (b) the Iceberg mirror holds exactly the shards' rows, each with its owner
        cluster.sync_lake()
        assert lake_mirror(cluster, "users", USER_COLS) == truth
        orders = shard_rows(cluster, "orders")
        assert (
            len(orders) == 2
            and lake_mirror(cluster, "orders", ["id", "tenant_id", "total"]) == orders
        )
        tables = {"users", "orders"}
        assert_lake_log_matches(lake_change_log(cluster, tables), logs, tables)

        # (c) + (d) at every commit boundary: just before it and at it
        points = []
        for k, step in enumerate(w.steps):
            points.append((step.commit_ts - 1, w.steps[k - 1].state if k else []))
            points.append((step.commit_ts, step.state))
        for n, (point, want) in enumerate(points):
            got = _as_of(cl, "users", point)
            assert got == want, _diff(f"AS OF {fmt(point)} (point {n})", got, want)
        # (after all AS OF reads: each restore writes a table the lake must take in first)
        for n, (point, want) in enumerate(points):
            result = restore_table(cluster.url, "users", fmt(point), f"users_at_{n}")
            assert result.rows == len(want)
            restored = sorted(cl.rows(f"SELECT * FROM users_at_{n}"))
            assert restored == want, _diff(f"restore-table at {fmt(point)}", restored, want)

        # (e) a subscriber starting now replays the purged history from the lake
        wait_for(
            lambda: purged_through(cluster, w.steps[-1].after),
            30,
            "the shards to purge what the lake committed",
        )
        late = Sink(cluster.lake_url or "", ["users"]).start()
        try:
            late.wait(cluster.shard_lsns())
            assert late.table_rows("users") == want_rows
            replayed = check_delivery(late.events, gtids)
            for step in w.steps:
                if step.name != "local update":
                    assert replayed.get(step.changes[0].gtid) == step.users_changes, step.name
        finally:
            late.close()


# --------------------------------------------------------------------------- 2. faults

ROUNDS = int(os.environ.get("DOSQL_E2E_DTX_ROUNDS", "1"))
THREADS = int(os.environ.get("DOSQL_E2E_DTX_THREADS", "4"))
N_USERS = 32
START = 100
BAL_DDL = (
    "CREATE TABLE users (id INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, name TEXT,"
    " bal INTEGER NOT NULL)"
)
LEDGER_DDL = "CREATE TABLE ledger (id INTEGER PRIMARY KEY, kind TEXT, a INTEGER, b INTEGER)"
BAL_COLS = ["id", "tenant_id", "name", "bal"]
LEDGER_COLS = ["id", "kind", "a", "b"]


@dataclass
class Book:
    """What COMMIT answered, per ledger id (each transaction inserts one ledger row)."""

    ok: dict[int, str] = field(default_factory=dict)  # -> gtid
    failed: dict[int, str | None] = field(default_factory=dict)
    unknown: dict[int, str | None] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    why_failed: Counter[str] = field(default_factory=Counter)
    held_back: int = 0  # distributed transactions the mid-workload lake flushes held back
    next_id: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_id(self) -> int:
        with self.lock:
            self.next_id += 1
            return self.next_id


def _connect(url: str, stop: threading.Event) -> Client | None:
    while not stop.is_set():
        try:
            return Client(url)
        except Exception:  # noqa: BLE001 - refused, or closed during the handshake
            time.sleep(0.1)
    return None


def _decided(cl: Client, gtid: str, stop: threading.Event) -> bool:
    """Wait until ``gtid`` is committed or aborted (an in-doubt one keeps its rows locked
    and may still commit: the thread's idea of where its rows are must wait for it)."""
    while not stop.is_set():
        state = cl.rows("SELECT dosql_transaction_status(?)", [gtid])[0][0]
        if state in ("committed", "aborted"):
            return True
        time.sleep(0.2)
    return False


class Worker:
    """One client thread: transfers and moves over the rows it owns (id % THREADS)."""

    def __init__(self, url: str, tid: int, seed: int, book: Book, stop: threading.Event) -> None:
        self.url, self.book, self.stop = url, book, stop
        self.rng = random.Random(seed)
        self.mine = [i for i in range(N_USERS) if i % THREADS == tid]
        self.tenant: dict[int, int] = {}  # committed tenant of each of my rows, when known
        self.in_doubt: list[str] = []

    def run(self) -> None:
        cl = _connect(self.url, self.stop)
        while cl is not None and not self.stop.is_set():
            try:
                self._settle(cl)
                self._one(cl)
            except Exception:  # noqa: BLE001 - the router or a shard went away mid-request
                try:
                    cl.close()
                except Exception:  # noqa: BLE001
                    pass
                time.sleep(0.05)  # a shard is down: do not spin on it
                cl = _connect(self.url, self.stop)
        if cl is not None:
            cl.close()

    def _settle(self, cl: Client) -> None:
        """Learn where my rows are once nothing of mine is in doubt."""
        while self.in_doubt:
            if not _decided(cl, self.in_doubt[0], self.stop):
                raise TimeoutError("stopped while in doubt")
            self.in_doubt.pop(0)
        if len(self.tenant) < len(self.mine):
            marks = ", ".join("?" for _ in self.mine)
            rows = cl.rows(f"SELECT id, tenant_id FROM users WHERE id IN ({marks})", self.mine)
            self.tenant = {r[0]: r[1] for r in rows}
            if len(self.tenant) != len(self.mine):
                self.book.anomalies.append(f"rows lost or doubled: {sorted(rows)}")
                self.stop.set()

    def _update(self, cl: Client, sql: str, params: list[Any]) -> None:
        res = cl.execute(sql, params)
        if res.rowcount != 1:  # the row is not where the last committed move put it
            self.book.anomalies.append(f"{sql} {params}: rowcount {res.rowcount}")
            raise DoSQLError(f"rowcount {res.rowcount}", code="TEST_ANOMALY")

    def _one(self, cl: Client) -> None:
        a, b = self.rng.sample(self.mine, 2)
        kind = self.rng.choice(["transfer", "move", "move+transfer", "swap"])
        lid = self.book.new_id()
        moved: dict[int, int] = {}
        gtid: str | None = None
        stage = "body"
        try:
            # IMMEDIATE, as the DB-API driver begins: a move reads the row before writing
            begin = cl.call(lambda rid: protocol.Begin(id=rid, mode="immediate"))
            gtid = (begin.info or {}).get("gtid")
            if kind in ("move", "move+transfer"):
                moved[a] = self.rng.randrange(10_000)
            elif kind == "swap" and self.tenant[a] != self.tenant[b]:
                moved = {a: self.tenant[b], b: self.tenant[a]}
            for i, t in moved.items():
                self._update(
                    cl,
                    "UPDATE users SET tenant_id = ?, name = ? WHERE tenant_id = ? AND id = ?",
                    [t, f"{kind}-{lid}", self.tenant[i], i],
                )
            if kind in ("transfer", "move+transfer"):
                ta = moved.get(a, self.tenant[a])
                q = "UPDATE users SET bal = bal + ? WHERE tenant_id = ? AND id = ?"
                self._update(cl, q, [-1, ta, a])
                self._update(cl, q, [1, self.tenant[b], b])
            cl.execute("INSERT INTO ledger VALUES (?, ?, ?, ?)", [lid, kind, a, b])
            stage = "commit"
            info = cl.commit().info or {}
            with self.book.lock:
                self.book.ok[lid] = info.get("gtid") or gtid or ""
            self.tenant.update(moved)
        except DoSQLError as exc:
            if stage == "commit" and exc.code == "COMMIT_OUTCOME_UNKNOWN":
                self._unknown(lid, exc.details.get("gtid") or gtid, moved)
            else:
                with self.book.lock:
                    self.book.failed[lid] = gtid  # before COMMIT, or a COMMIT that rolled back
                    self.book.why_failed[f"{stage}:{exc.code}"] += 1
            cl.rollback()  # may raise: the caller reconnects
        except Exception:
            if stage == "commit":  # the socket died with the COMMIT in flight
                self._unknown(lid, gtid, moved)
            else:
                with self.book.lock:
                    self.book.failed[lid] = gtid
                    self.book.why_failed[f"{stage}:connection"] += 1
            raise

    def _unknown(self, lid: int, gtid: str | None, moved: dict[int, int]) -> None:
        with self.book.lock:
            self.book.unknown[lid] = gtid
        for i in moved:
            self.tenant.pop(i, None)
        if gtid:
            self.in_doubt.append(gtid)
        else:
            self.tenant.clear()


def _crash_round(cluster: LocalCluster, book: Book, target: str, point: str | None) -> None:
    stop = threading.Event()
    workers = [
        Worker(cluster.url or "", t, random.randrange(1 << 30), book, stop) for t in range(THREADS)
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in workers]
    restart_armed(cluster, target, point)
    for t in threads:
        t.start()
    wait_until_dead(cluster, target, point)
    time.sleep(0.3)  # the others notice and fail over what they were doing
    # a lake snapshot with a participant (or the router) down: parts held back, never half
    book.held_back += flush_lake(cluster)
    ensure_all_up(cluster)
    time.sleep(0.7)  # a little work with everything up again
    stop.set()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a client thread hung"


def _check_book(cluster: LocalCluster, book: Book, ledger: dict[tuple, tuple[str, tuple]]) -> None:
    """Acknowledged commits are there, failed ones are not, unknown ones as decided."""
    assert not book.anomalies, book.anomalies
    assert book.ok, "no transaction committed: the workload did not run"
    present = {k[0] for k in ledger}
    lost = set(book.ok) - present
    assert not lost, f"acknowledged commits vanished: {sorted(lost)}"
    ghosts = set(book.failed) & present
    assert not ghosts, f"transactions reported rolled back are there: {sorted(ghosts)}"
    with Client(cluster.url or "") as cl:
        for lid, gtid in book.unknown.items():
            if gtid is None:
                continue
            outcome = cl.rows("SELECT dosql_transaction_status(?)", [gtid])[0][0]
            assert outcome in ("committed", "aborted"), (lid, gtid, outcome)
            assert (lid in present) == (outcome == "committed"), (lid, gtid, outcome)


def _check_snapshots(cluster: LocalCluster) -> int:
    """Every lake snapshot of the users mirror holds whole transactions: all the rows
    once (moves neither lost nor doubled) and all the money (no transfer in part)."""
    snaps = mirror_snapshots(cluster, "users")
    seen_rows = False
    for sid, rows in snaps:
        if not rows and not seen_rows:
            continue  # the table's creation, before its first rows
        seen_rows = True
        ids = sorted(r["id"] for r in rows)
        assert ids == list(range(N_USERS)), f"snapshot {sid}: ids {ids}"
        assert sum(r["bal"] for r in rows) == N_USERS * START, f"snapshot {sid}: half a transfer"
    return len(snaps)


def _check_as_of(cluster: LocalCluster, logs: dict[str, list[LoggedChange]], gtids: dict) -> int:
    """AS OF just before and at the commit time of distributed transactions (a spread of
    them): the shards' change logs replayed to that point, whole."""
    users_gtids = {
        ch.gtid for chs in logs.values() for ch in chs if ch.table == "users" and ch.op != "schema"
    }
    stamps = sorted(ts for g, (ts, parts) in gtids.items() if len(parts) >= 2 and g in users_gtids)
    picks = stamps[:: max(1, len(stamps) // 8)] + stamps[-1:]
    with Client(cluster.url or "") as cl:
        for ts in picks:
            for point in (ts - 1, ts):
                got = _as_of(cl, "users", point)
                want = state_at(logs, "users", BAL_COLS, point)
                assert got == want, _diff(f"AS OF {fmt(point)}", got, want)
                if got:  # (empty just before the first rows went in)
                    assert sum(r[3] for r in got) == N_USERS * START and len(got) == N_USERS
    return len(picks)


def test_faults_keep_every_view_whole(tmp_path: Path) -> None:
    with start_cluster(tmp_path) as cluster:
        archive = LogArchive(cluster).start()
        with Client(cluster.url or "") as cl:
            cl.execute(BAL_DDL)
            cl.execute(LEDGER_DDL)
            cl.executemany(
                "INSERT INTO users VALUES (?, ?, ?, ?)",
                [[i, i, f"user{i}", START] for i in range(N_USERS)],
            )
        sink = Sink(cluster.lake_url or "", ["users", "ledger"]).start()
        try:
            book = Book()
            for _ in range(ROUNDS):
                for target, point in SCHEDULE:
                    _crash_round(cluster, book, target, point)
            ensure_all_up(cluster)
            wait_for(lambda: settled(cluster), 60, "the resolver to decide every prepared one")
            wait_for(lambda: readable(cluster, ["users", "ledger"]), 30, "the router to read")

            users = shard_rows(cluster, "users")  # (asserts: no key on two shards)
            ledger = shard_rows(cluster, "ledger")
            _check_book(cluster, book, ledger)
            assert len(users) == N_USERS, "a moved row was lost"
            assert sum(row[3] for _s, row in users.values()) == N_USERS * START, "half a transfer"
            vs = cluster.vschema
            assert all(vs.shard_for("users", row[1]) == s for s, row in users.values())
            with Client(cluster.url or "") as cl:
                assert sorted(cl.rows("SELECT * FROM users")) == sorted(
                    r for _s, r in users.values()
                )

            # the change logs (whole, as archived): each gtid on all its parts or none
            logs = archive.close()
            assert {s: chs[-1].lsn for s, chs in logs.items()} == lsn_heads(cluster)
            gtids = check_gtids(logs, outcomes(cluster))
            for table, rows in (("users", users), ("ledger", ledger)):
                replayed = replay_logs(logs, table)
                for s in vs.shard_ids:
                    want = {k: list(row) for k, (o, row) in rows.items() if o == s}
                    got = {
                        k: [v[c] for c in (BAL_COLS if table == "users" else LEDGER_COLS)]
                        for k, v in replayed[s].items()
                    }
                    assert got == want, f"{s}: its {table} change log replays to other rows"
            for lid, gtid in book.ok.items():
                assert gtid in gtids, f"acknowledged {gtid} (ledger {lid}) not in any change log"
            for lid, gtid in book.failed.items():
                assert gtid is None or gtid not in gtids, f"failed {gtid} (ledger {lid}) logged"
            distributed = [g for g, (_ts, parts) in gtids.items() if len(parts) >= 2]
            moved = {ch.key for chs in logs.values() for ch in chs if ch.op == "delete"}
            assert len(distributed) > 20 and moved, "the workload ran too few distributed moves"

            # the subscriber: every change once, with its gtid; per-key state = the shards'
            sink.wait(cluster.shard_lsns(), timeout=90)
            for table, rows, cols in (("users", users, BAL_COLS), ("ledger", ledger, LEDGER_COLS)):
                want_rows = {k: dict(zip(cols, row, strict=True)) for k, (_s, row) in rows.items()}
                assert sink.table_rows(table) == want_rows, f"subscriber's {table} differs"
            with sink.lock:
                got = [
                    (e["source"]["shard"], e["source"]["lsn"], e["source"]["gtid"])
                    for e in sink.events
                    if "op" in e
                ]
            want = sorted(
                (ch.shard, ch.lsn, ch.gtid)
                for chs in logs.values()
                for ch in chs
                if ch.op != "schema"
            )
            assert sorted(got) == want, "subscriber: changes missing, doubled or without gtid"
        finally:
            sink.close()

        # the lake: mirror = the shards' rows with their owners; change log = the shards'
        cluster.sync_lake(timeout=120)
        assert lake_mirror(cluster, "users", BAL_COLS) == users
        assert lake_mirror(cluster, "ledger", LEDGER_COLS) == ledger
        assert_lake_log_matches(
            lake_change_log(cluster, ["users", "ledger"]), logs, {"users", "ledger"}
        )
        snapshots = _check_snapshots(cluster)
        # (router.2pc.after_decision: the decider's part is in the lake, the others wait)
        assert book.held_back > 0, "no flush ever held a transaction back: hold-back untested"
        points = _check_as_of(cluster, logs, gtids)
        print(
            f"dtx e2e: ok={len(book.ok)} failed={len(book.failed)} unknown={len(book.unknown)} "
            f"distributed={len(distributed)} subscriber reconnects={len(sink.errors)} "
            f"failures={dict(book.why_failed)} snapshots={snapshots} "
            f"held back={book.held_back} as-of points={points}"
        )
