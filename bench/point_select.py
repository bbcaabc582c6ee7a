"""point_select: ``SELECT … WHERE id = ?`` through the driver.

Ours: one client, and 8 concurrent client processes, through router and shard.
Baselines: the same query on plain sqlite3 in-process, and the transport floor
(the same frames over the same hops with no SQL, see transport.py).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import sqlite3
import time

import dosql
from bench import cluster
from bench.harness import Context, Figure, Report, percentile
from bench.transport import SQL, TransportFloor

ROWS = 10_000


def _load(conn, rows: int) -> None:
    cur = conn.cursor()
    cur.execute("CREATE TABLE bench_kv (id INTEGER PRIMARY KEY, name TEXT, v REAL)")
    cur.executemany(
        "INSERT INTO bench_kv VALUES (?, ?, ?)",
        [(i, f"name-{i:06d}", i * 0.25) for i in range(rows)],
    )
    conn.commit()


def _latencies(execute, n: int) -> list[float]:
    rng = random.Random(7)
    out = []
    for _ in range(n):
        key = rng.randrange(ROWS)
        t0 = time.perf_counter()
        execute(key)
        out.append((time.perf_counter() - t0) * 1000)
    return out


def _client_process(url: str, seconds: float, queue) -> None:
    conn = dosql.connect(url, autocommit=True)
    cur = conn.cursor()
    count = 0
    deadline = time.perf_counter() + seconds
    rng = random.Random()
    lat: list[float] = []
    while time.perf_counter() < deadline:
        t0 = time.perf_counter()
        cur.execute(SQL, (rng.randrange(ROWS),))
        cur.fetchall()
        lat.append((time.perf_counter() - t0) * 1000)
        count += 1
    conn.close()
    queue.put((count, lat))


def _concurrent(url: str, clients: int, seconds: float) -> tuple[float, list[float]]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_client_process, args=(url, seconds, queue)) for _ in range(clients)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    total = sum(c for c, _ in results)
    lat = [x for _, lat in results for x in lat]
    return total / seconds, lat


def run(ctx: Context) -> Report:
    n = 500 if ctx.quick else 3000
    seconds = 2.0 if ctx.quick else 5.0
    report = Report("point_select", params={"rows": ROWS, "queries_per_run": n, "shards": 4})
    with cluster.start(ctx.workdir / "point_select") as c:
        conn = dosql.connect(c.url, autocommit=True)
        _load(conn, ROWS)
        cur = conn.cursor()

        def ours(key: int) -> None:
            cur.execute(SQL, (key,))
            cur.fetchall()

        runs = [_latencies(ours, n) for _ in range(ctx.runs + 1)][1:]
        report.figures += [
            Figure("p50_1_client", "ms", [percentile(r, 50) for r in runs]),
            Figure("p99_1_client", "ms", [percentile(r, 99) for r in runs]),
            Figure("qps_1_client", "q/s", [len(r) / (sum(r) / 1000) for r in runs], True),
        ]
        conc = [_concurrent(c.url, 8, seconds) for _ in range(ctx.runs)]
        report.figures += [
            Figure("qps_8_clients", "q/s", [q for q, _ in conc], True),
            Figure("p50_8_clients", "ms", [percentile(lat, 50) for _, lat in conc]),
            Figure("p99_8_clients", "ms", [percentile(lat, 99) for _, lat in conc]),
        ]
        conn.close()

    base = sqlite3.connect(":memory:")
    _load(base, ROWS)
    bcur = base.cursor()

    def plain(key: int) -> None:
        bcur.execute(SQL, (key,))
        bcur.fetchall()

    plain_runs = [_latencies(plain, n) for _ in range(ctx.runs)]
    floor = TransportFloor()
    try:
        floor.round_trips(200)
        floor_runs = [floor.round_trips(n) for _ in range(ctx.runs)]
    finally:
        floor.close()
    report.baselines += [
        Figure("sqlite_p50", "ms", [percentile(r, 50) for r in plain_runs]),
        Figure("transport_floor_p50", "ms", [percentile(r, 50) for r in floor_runs]),
        Figure("transport_floor_p99", "ms", [percentile(r, 99) for r in floor_runs]),
    ]
    report.ratios += [
        ("router_over_transport_floor_p50", "p50_1_client", "transport_floor_p50"),
        ("router_over_sqlite_p50", "p50_1_client", "sqlite_p50"),
    ]
    report.goals = {
        "p50_1_client": "<= 0.6 ms",
        "qps_1_client": ">= 3000 q/s",
        "router_over_transport_floor_p50": "<= 2x",
    }
    return report
