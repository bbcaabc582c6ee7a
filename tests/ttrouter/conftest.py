"""One real cluster (lake writer, two shards, router) and a recorded workload.

The workload runs through the DB-API driver; each step records the wall
clock before its first statement and after its commit, so a point in time
between two steps has exactly one right answer: the replay of the steps
before it on a plain SQLite database.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dosql
from dosql.cluster import LocalCluster

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "dosql.toml"
USERS_DDL = "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, n INTEGER)"
SETTINGS_DDL = "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT)"
COUNTRIES_DDL = "CREATE TABLE countries (code TEXT PRIMARY KEY, name TEXT)"


def fmt(micros: int, tz: dt.timezone = dt.UTC) -> str:
    """UTC microseconds as a timestamp literal (in ``tz``, with its zone unless UTC)."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=micros)
    if tz is dt.UTC:
        return moment.strftime("%Y-%m-%d %H:%M:%S.%f")
    return moment.astimezone(tz).isoformat(sep=" ")


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class Step:
    statements: list[tuple[str, tuple[Any, ...]]]
    before: int = 0  # wall clock (UTC µs) before the first statement
    after: int = 0  # after the commit returned
    single_row: bool = False  # one row by primary key: one shard, one commit
    key: int | None = None


@dataclass
class Workload:
    steps: list[Step] = field(default_factory=list)
    synced_after: list[int] = field(default_factory=list)  # step indices followed by sync_lake

    def replay(self, upto: int, table: str = "users") -> list[tuple]:
        """Rows of ``table`` after steps ``0..upto-1`` on a plain SQLite database."""
        db = sqlite3.connect(":memory:")
        db.execute(USERS_DDL)
        db.execute(SETTINGS_DDL)
        for step in self.steps[:upto]:
            for sql, params in step.statements:
                db.execute(sql, params)
        return sorted(db.execute(f"SELECT * FROM {table}").fetchall())

    def upto_point(self, micros: int) -> int:
        """How many steps committed at or before ``micros`` (the point must not
        fall inside a step's window)."""
        count = 0
        for step in self.steps:
            if step.after <= micros:
                count += 1
            else:
                assert step.before > micros, "point inside a step's commit window"
                break
        return count


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data_dir = tmp_path_factory.mktemp("ttrouter")
    # (no background compaction: the tests list the snapshots their flushes made)
    env = {
        "DOLAKE_FLUSH_INTERVAL_MS": "600000",
        "CDC_BATCH_TIMEOUT_MS": "50",
        "DOLAKE_COMPACTION_INTERVAL_MS": "0",
    }
    with LocalCluster(CONFIG, data_dir, lake=True, env=env) as running:
        yield running


@pytest.fixture(scope="session")
def conn(cluster: LocalCluster) -> Iterator[Any]:
    c = dosql.connect(cluster.url, timeout=30, autocommit=True)
    yield c
    c.close()


def _random_steps(rng: random.Random, live: set[int], next_id: list[int], count: int) -> list[Step]:
    steps = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.35 or len(live) < 3:
            i = next_id[0]
            next_id[0] += 1
            live.add(i)
            st = ("INSERT INTO users VALUES (?, ?, ?)", (i, f"user{i}", rng.randrange(100)))
            steps.append(Step([st], single_row=True, key=i))
        elif roll < 0.6:
            i = rng.choice(sorted(live))
            st = (
                "UPDATE users SET name = ?, n = n + ? WHERE id = ?",
                (f"renamed{rng.randrange(1000)}", rng.randrange(1, 9), i),
            )
            steps.append(Step([st], single_row=True, key=i))
        elif roll < 0.75:
            i = rng.choice(sorted(live))
            live.discard(i)
            steps.append(Step([("DELETE FROM users WHERE id = ?", (i,))], single_row=True, key=i))
        elif roll < 0.9:  # a transaction over several rows (and shards)
            stmts: list[tuple[str, tuple[Any, ...]]] = []
            for _ in range(rng.randrange(2, 5)):
                i = next_id[0]
                next_id[0] += 1
                live.add(i)
                stmts.append(("INSERT INTO users VALUES (?, ?, ?)", (i, f"batch{i}", i % 7)))
            victim = rng.choice(sorted(live))
            stmts.append(("UPDATE users SET n = -1 WHERE id = ?", (victim,)))
            steps.append(Step(stmts))
        else:  # a statement over every shard
            cut = rng.randrange(20, 80)
            steps.append(Step([("UPDATE users SET n = n * 2 WHERE n < ?", (cut,))]))
    return steps


@pytest.fixture(scope="session")
def workload(cluster: LocalCluster) -> Workload:
    """Create the tables, then run random steps with a few lake flushes between them."""
    setup = dosql.connect(cluster.url, timeout=30, autocommit=True)
    cur = setup.cursor()
    for ddl in (USERS_DDL, SETTINGS_DDL, COUNTRIES_DDL):
        cur.execute(ddl)
    cur.execute("INSERT INTO countries VALUES ('fr', 'France'), ('jp', 'Japan')")
    setup.close()
    rng = random.Random(7)
    live: set[int] = set()
    next_id = [1]
    wl = Workload()
    c = dosql.connect(cluster.url, timeout=30, autocommit=False)
    cur = c.cursor()
    for phase in range(4):
        steps = _random_steps(rng, live, next_id, 9)
        if phase == 1:  # the unsharded table changes too
            steps.insert(
                3, Step([("INSERT INTO settings VALUES (?, ?)", ("mode", "a"))], single_row=True)
            )
            steps.insert(
                6,
                Step(
                    [("UPDATE settings SET value = ? WHERE key = ?", ("b", "mode"))],
                    single_row=True,
                ),
            )
        for step in steps:
            time.sleep(0.004)
            step.before = now_us()
            for sql, params in step.statements:
                cur.execute(sql, params)
            c.commit()
            step.after = now_us()
            wl.steps.append(step)
        if phase < 3:
            cluster.sync_lake()  # a lake snapshot between phases
            wl.synced_after.append(len(wl.steps))
    c.close()
    return wl
