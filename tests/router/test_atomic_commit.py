"""Jepsen-style: distributed transactions stay atomic while shards and the router are killed.

Client threads run transfers between accounts on different shards, each with
a ledger row on a third; every thread records what COMMIT answered: ok,
failed (the transaction must be gone everywhere), or unknown (looked up by
gtid once the cluster is whole again). Processes are SIGKILLed at each step
of two-phase commit (``DOSQL_CRASH_AT``, dosql/faults.py) and at random
moments. The check compares the end state with what was acknowledged:

- money is conserved (no transaction half-applied on some shards);
- every acknowledged ledger row exists, every failed one does not, and each
  unknown one matches what ``dosql_transaction_status`` says;
- each committed transaction carries the same gtid and commit timestamp on
  every shard it wrote to, and nothing stays prepared.

``DOSQL_JEPSEN_ROUNDS`` repeats the fault schedule (make test: 1).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pytest

from dosql.cluster import LocalCluster
from dosql.errors import DoSQLError
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
from tests.router.conftest import quickstart_vschema, shard_rows, write_config

ACCOUNTS = 24
START = 100
ROUNDS = int(os.environ.get("DOSQL_JEPSEN_ROUNDS", "1"))


@dataclass
class History:
    ok: dict[int, str] = field(default_factory=dict)  # ledger id -> gtid
    failed: set[int] = field(default_factory=set)
    unknown: dict[int, str | None] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)  # why transactions failed
    lock: threading.Lock = field(default_factory=threading.Lock)


def connect(url: str, stop: threading.Event) -> Client | None:
    while not stop.is_set():
        try:
            return Client(url)
        except Exception:  # noqa: BLE001 - refused, or closed during the handshake
            time.sleep(0.1)
    return None


def worker(url: str, seed: int, next_id: list[int], hist: History, stop: threading.Event) -> None:
    rng = random.Random(seed)
    cl = connect(url, stop)
    while cl is not None and not stop.is_set():
        a, b = rng.sample(range(ACCOUNTS), 2)
        with hist.lock:
            next_id[0] += 1
            lid = next_id[0]
        gtid: str | None = None
        stage = "body"
        try:
            gtid = (cl.begin().info or {}).get("gtid")
            cl.execute("UPDATE acct SET bal = bal - 1 WHERE id = ?", [a])
            cl.execute("UPDATE acct SET bal = bal + 1 WHERE id = ?", [b])
            cl.execute("INSERT INTO ledger VALUES (?, ?, ?)", [lid, a, b])
            stage = "commit"
            info = cl.commit().info or {}
            with hist.lock:
                hist.ok[lid] = info.get("gtid") or gtid or ""
        except DoSQLError as exc:
            with hist.lock:
                hist.codes[f"{stage}:{exc.code}"] += 1
                if stage == "commit" and exc.code == "COMMIT_OUTCOME_UNKNOWN":
                    hist.unknown[lid] = exc.details.get("gtid") or gtid
                else:
                    hist.failed.add(lid)  # before COMMIT, or a COMMIT that rolled back
            try:
                cl.rollback()
            except (DoSQLError, OSError, Exception):  # noqa: BLE001 - the router may be gone
                cl.close()
                cl = connect(url, stop)
        except Exception:  # noqa: BLE001 - the connection to the router died mid-request
            with hist.lock:
                if stage == "commit":
                    hist.unknown[lid] = gtid
                else:
                    hist.failed.add(lid)
            try:
                cl.close()
            except Exception:  # noqa: BLE001
                pass
            cl = connect(url, stop)
    if cl is not None:
        cl.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("atomic")
    cfg = write_config(tmp / "dosql.toml", quickstart_vschema())
    with LocalCluster(cfg, tmp / "data", lake=False) as c:
        with Client(c.url) as cl:
            cl.execute("CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER NOT NULL)")
            cl.execute("CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INTEGER, dst INTEGER)")
            cl.executemany("INSERT INTO acct VALUES (?, ?)", [[i, START] for i in range(ACCOUNTS)])
        yield c


def test_transfers_stay_atomic_under_kill_9_at_every_commit_step(cluster: LocalCluster) -> None:
    hist = History()
    next_id = [0]
    for _ in range(ROUNDS):
        for target, point in SCHEDULE:
            stop = threading.Event()
            threads = [
                threading.Thread(
                    target=worker,
                    args=(cluster.url, random.randrange(1 << 30), next_id, hist, stop),
                    daemon=True,
                )
                for _ in range(4)
            ]
            restart_armed(cluster, target, point)
            for t in threads:
                t.start()
            wait_until_dead(cluster, target, point)
            time.sleep(0.3)  # the others notice and fail over what they were doing
            ensure_all_up(cluster)
            time.sleep(0.5)
            stop.set()
            for t in threads:
                t.join(60)
    ensure_all_up(cluster)
    wait_for(lambda: settled(cluster), 30, "the resolver to decide every prepared transaction")
    check(cluster, hist)


def check(cluster: LocalCluster, hist: History) -> None:
    wait_for(
        lambda: readable(cluster, ["acct", "ledger"]), 20, "every shard to answer the router again"
    )
    with Client(cluster.url) as cl:
        ledger = {r[0] for r in cl.rows("SELECT id FROM ledger")}
        balances = cl.rows("SELECT sum(bal), count(*) FROM acct")
        outcomes = {
            lid: cl.rows("SELECT dosql_transaction_status(?)", [gtid])[0][0] if gtid else None
            for lid, gtid in hist.unknown.items()
        }
    assert hist.ok, "no transaction committed: the workload did not run"
    assert balances == [(ACCOUNTS * START, ACCOUNTS)], "a transfer was applied in part"
    lost = set(hist.ok) - ledger
    assert not lost, f"acknowledged commits vanished: {sorted(lost)}"
    ghosts = hist.failed & ledger
    assert not ghosts, f"transactions reported rolled back are there: {sorted(ghosts)}"
    for lid, outcome in outcomes.items():
        if outcome is not None:
            assert outcome in ("committed", "aborted"), (lid, outcome)
            assert (lid in ledger) == (outcome == "committed"), (lid, outcome)
    # Each committed distributed transaction: one gtid, one commit_ts, on every shard.
    by_gtid: dict[str, set[tuple[int, str]]] = {}
    for s in cluster.vschema.shards:
        for gtid, ts, parts in shard_rows(
            cluster, s.id, "SELECT gtid, commit_ts, parts FROM _dosql_outcomes"
        ):
            by_gtid.setdefault(gtid, set()).add((ts, parts or ""))
            if parts:
                assert s.id in parts.split(",")
    for gtid in hist.ok.values():
        if gtid in by_gtid:
            assert len(by_gtid[gtid]) == 1, f"{gtid} committed with different timestamps"
    print(
        f"jepsen: ok={len(hist.ok)} failed={len(hist.failed)} unknown={len(hist.unknown)} "
        f"(resolved: {sum(1 for o in outcomes.values() if o == 'committed')} committed); "
        f"errors: {dict(hist.codes.most_common())}"
    )
