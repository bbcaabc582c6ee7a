"""scatter_aggregate: GROUP BY and ORDER BY … LIMIT over rows spread on 4 shards.

Baseline: the same queries on one plain SQLite database holding all rows.
"""

from __future__ import annotations

import sqlite3
import time

import dosql
from bench import cluster
from bench.harness import Context, Figure, Report, repeat

DDL = "CREATE TABLE bench_kv (id INTEGER PRIMARY KEY, k INTEGER, v INTEGER)"
QUERIES = {
    "group_by": "SELECT k, count(*), sum(v) FROM bench_kv GROUP BY k",
    "order_limit": "SELECT id, v FROM bench_kv ORDER BY v DESC, id LIMIT 100",
}


def _rows(total: int):
    for start in range(0, total, 10_000):
        yield [
            (i, i % 100, (i * 7919) % 1_000_003) for i in range(start, min(total, start + 10_000))
        ]


def _time(conn, sql: str) -> float:
    cur = conn.cursor()
    t0 = time.perf_counter()
    cur.execute(sql)
    cur.fetchall()
    return (time.perf_counter() - t0) * 1000


def run(ctx: Context) -> Report:
    total = 100_000 if ctx.quick else 1_000_000
    report = Report("scatter_aggregate", params={"rows": total, "shards": 4})
    base_db = sqlite3.connect(ctx.workdir / "scatter-baseline.db")
    base_db.execute("DROP TABLE IF EXISTS bench_kv")
    base_db.execute(DDL)
    for rows in _rows(total):
        base_db.executemany("INSERT INTO bench_kv VALUES (?, ?, ?)", rows)
    base_db.commit()
    with cluster.start(ctx.workdir / "scatter_aggregate") as c:
        conn = dosql.connect(c.url)
        conn.cursor().execute(DDL)
        conn.commit()
        cur = conn.cursor()
        for rows in _rows(total):
            cur.executemany("INSERT INTO bench_kv VALUES (?, ?, ?)", rows)
            conn.commit()
        for name, sql in QUERIES.items():
            report.figures.append(
                Figure(name, "ms", repeat(ctx.runs, lambda s=sql: _time(conn, s)))
            )
            report.baselines.append(
                Figure(f"sqlite_{name}", "ms", repeat(ctx.runs, lambda s=sql: _time(base_db, s)))
            )
            report.ratios.append((f"{name}_over_sqlite", name, f"sqlite_{name}"))
        conn.close()
    base_db.close()
    report.goals = {"group_by_over_sqlite": "<= 1.0x", "order_limit_over_sqlite": "<= 1.0x"}
    return report
