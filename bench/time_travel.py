"""time_travel: ``… FOR SYSTEM_TIME AS OF TIMESTAMP`` vs the same query on current data.

Both go through driver and router. The historical query reads the lake (the
latest mirror snapshot before the point plus the change log up to it) and
runs router-side; the current query reads the shards.
"""

from __future__ import annotations

import datetime as dt
import time

import dosql
from bench import cluster
from bench.harness import Context, Figure, Report, repeat

QUERY = "SELECT count(*), sum(v) FROM bench_kv"


def _time(cur, sql: str, params: tuple = ()) -> float:
    t0 = time.perf_counter()
    cur.execute(sql, params)
    cur.fetchall()
    return (time.perf_counter() - t0) * 1000


def run(ctx: Context) -> Report:
    rows = 2_000 if ctx.quick else 20_000
    report = Report("time_travel", params={"rows": rows, "shards": 4, "query": QUERY})
    with cluster.start(ctx.workdir / "time_travel", lake=True, flush_interval_ms=600_000) as c:
        conn = dosql.connect(c.url, timeout=120)
        cur = conn.cursor()
        cur.execute("CREATE TABLE bench_kv (id INTEGER PRIMARY KEY, name TEXT, v REAL)")
        cur.executemany(
            "INSERT INTO bench_kv VALUES (?, ?, ?)", [(i, f"n{i}", i * 0.5) for i in range(rows)]
        )
        conn.commit()
        c.sync_lake(timeout=300)
        point = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        cur.executemany(
            "UPDATE bench_kv SET v = v + 1 WHERE id = ?", [(i,) for i in range(0, rows, 10)]
        )
        conn.commit()
        c.sync_lake(timeout=300)
        historical = f"{QUERY} FOR SYSTEM_TIME AS OF TIMESTAMP ?"
        # same answer as a check that we time what we mean: the past differs from now
        cur.execute(historical, (point,))
        past = cur.fetchall()
        cur.execute(QUERY)
        now = cur.fetchall()
        if past == now:
            raise AssertionError("time travel returned current data: the benchmark is invalid")
        report.figures.append(
            Figure(
                "as_of_timestamp_ms",
                "ms",
                repeat(ctx.runs, lambda: _time(cur, historical, (point,))),
            )
        )
        report.baselines.append(
            Figure("current_ms", "ms", repeat(ctx.runs, lambda: _time(cur, QUERY)))
        )
        conn.close()
    report.ratios.append(("as_of_over_current", "as_of_timestamp_ms", "current_ms"))
    return report
