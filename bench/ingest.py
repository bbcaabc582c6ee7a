"""ingest: 200,000 rows by executemany in batches of 1,000, router vs sqlite3."""

from __future__ import annotations

import sqlite3
import time

import dosql
from bench import cluster
from bench.harness import Context, Figure, Report

DDL = "CREATE TABLE bench_kv (id INTEGER PRIMARY KEY, name TEXT, v REAL)"
INSERT = "INSERT INTO bench_kv VALUES (?, ?, ?)"


def _batches(total: int, batch: int, offset: int):
    for start in range(0, total, batch):
        yield [(offset + i, f"name-{i:07d}", i * 0.5) for i in range(start, start + batch)]


def _timed_ingest(conn, total: int, batch: int, offset: int) -> float:
    cur = conn.cursor()
    t0 = time.perf_counter()
    for rows in _batches(total, batch, offset):
        cur.executemany(INSERT, rows)
        conn.commit()
    return total / (time.perf_counter() - t0)


def run(ctx: Context) -> Report:
    total = 20_000 if ctx.quick else 200_000
    batch = 1000
    report = Report("ingest", params={"rows": total, "batch": batch, "shards": 4})
    ours: list[float] = []
    with cluster.start(ctx.workdir / "ingest") as c:
        conn = dosql.connect(c.url)
        conn.cursor().execute(DDL)
        conn.commit()
        for run_no in range(ctx.runs):
            ours.append(_timed_ingest(conn, total, batch, offset=run_no * total))
        conn.close()
    base: list[float] = []
    for run_no in range(ctx.runs):
        db = sqlite3.connect(ctx.workdir / f"ingest-baseline-{run_no}.db")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(DDL)
        base.append(_timed_ingest(db, total, batch, offset=0))
        db.close()
    report.figures.append(Figure("rows_per_s", "rows/s", ours, True))
    report.baselines.append(Figure("sqlite_rows_per_s", "rows/s", base, True))
    report.ratios.append(("router_over_sqlite", "rows_per_s", "sqlite_rows_per_s"))
    report.goals = {"rows_per_s": ">= 50000 rows/s"}
    return report
