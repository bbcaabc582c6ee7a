"""lake_soak: steady small writes for minutes with the lake's maintenance on.

Ours: a 4-shard cluster with its lake writer (1-second flush interval,
background compaction every 5 s, expiry every 15 s with a 60-second retention
window), a 5,000-row table, and one client committing small transactions
(one to three UPDATEs at random keys each) at about 40 a second through the
router -- the shape of issue 13's report (4,951 files and 152 snapshots after
150 s without maintenance). Every ``sample_s`` the mirror's live data files,
delete files and snapshots are read from ``/status``, and a full read of the
mirror is timed with pyiceberg and with DuckDB (``iceberg_scan``).
Baseline: the same rows, written by pyarrow into one Parquet file in the same
run, read back with ``pq.read_table`` (what a freshly written table costs).
Freshness (commit on a shard -> committed in Iceberg) is polled as in
cdc_throughput, p50/p99 per fifth of the run, compactions included.
"""

from __future__ import annotations

import json
import random
import threading
import time
import urllib.request

import pyarrow.parquet as pq

import dosql
from bench import cluster
from bench.cdc_throughput import DDL, POLL_S, Poller
from bench.harness import Context, Figure, Report, percentile
from dolake import readers

ROWS = 5_000
TX_PER_S = 40
FLUSH_INTERVAL_MS = 1000
MAINTENANCE_ENV = {
    "DOLAKE_COMPACTION_INTERVAL_MS": "5000",
    "DOLAKE_EXPIRE_INTERVAL_MS": "15000",
    "DOLAKE_SNAPSHOT_RETENTION_MS": "60000",
    "DOLAKE_MIN_SNAPSHOTS_TO_KEEP": "10",
}


def _writes(url: str, stop: threading.Event, counter: list[int]) -> None:
    """Small transactions at about TX_PER_S a second until ``stop``."""
    conn = dosql.connect(url)
    cur = conn.cursor()
    rnd = random.Random(13)
    period = 1 / TX_PER_S
    next_at = time.perf_counter()
    while not stop.is_set():
        for _ in range(rnd.randint(1, 3)):
            k = rnd.randrange(ROWS)
            cur.execute("UPDATE bench_kv SET v = v + 1, name = ? WHERE id = ?", (f"u{k}", k))
        conn.commit()
        counter[0] += 1
        next_at += period
        time.sleep(max(0.0, next_at - time.perf_counter()))
    conn.close()


def _status(lake_url: str) -> dict:
    with urllib.request.urlopen(lake_url.replace("ws://", "http://") + "/status", timeout=10) as r:
        return json.loads(r.read())


def _timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000, out


def run(ctx: Context) -> Report:
    seconds, sample_s = (30.0, 5.0) if ctx.quick else (300.0, 20.0)
    report = Report(
        "lake_soak",
        params={
            "seconds": seconds,
            "rows": ROWS,
            "tx_per_s": TX_PER_S,
            "flush_interval_ms": FLUSH_INTERVAL_MS,
            **{k.removeprefix("DOLAKE_").lower(): int(v) for k, v in MAINTENANCE_ENV.items()},
        },
    )
    workdir = ctx.workdir / "lake_soak"
    samples: list[dict] = []
    with cluster.start(
        workdir, lake=True, flush_interval_ms=FLUSH_INTERVAL_MS, env=MAINTENANCE_ENV
    ) as c:
        conn = dosql.connect(c.url)
        cur = conn.cursor()
        cur.execute(DDL)
        conn.commit()
        for lo in range(0, ROWS, 500):
            rows = [(i, f"name-{i}", i * 0.5) for i in range(lo, min(ROWS, lo + 500))]
            cur.executemany("INSERT INTO bench_kv VALUES (?, ?, ?)", rows)
            conn.commit()
        conn.close()
        c.sync_lake()
        catalog = readers.open_catalog(c.cluster_config)
        con = readers.duckdb_connect()
        poller = Poller(c.shard_urls, c.lake_url)
        poller.poll()
        poller.thread.start()
        stop, counter = threading.Event(), [0]
        writer = threading.Thread(target=_writes, args=(c.url, stop, counter), daemon=True)
        t_start = time.perf_counter()
        writer.start()
        one_file = workdir / "one-file.parquet"
        while time.perf_counter() - t_start < seconds:
            time.sleep(sample_s)
            status = _status(c.lake_url)["tables"].get("bench_kv", {})
            py_ms, data = _timed(lambda: readers.scan(catalog, "bench_kv"))
            duck_ms, _ = _timed(lambda: readers.duckdb_scan(catalog, "bench_kv", con=con))
            pq.write_table(data, one_file)  # type: ignore[arg-type]
            base_ms, _ = _timed(lambda: pq.read_table(one_file))
            samples.append(
                {
                    "t_s": round(time.perf_counter() - t_start, 1),
                    "rows": data.num_rows,  # type: ignore[attr-defined]
                    "data_files": status.get("data_files"),
                    "delete_files": status.get("delete_files"),
                    "snapshots": status.get("snapshots"),
                    "changelog_files": status.get("changelog", {}).get("data_files"),
                    "pyiceberg_ms": round(py_ms, 1),
                    "duckdb_ms": round(duck_ms, 1),
                    "one_file_ms": round(base_ms, 2),
                }
            )
            print(f"  {samples[-1]}", flush=True)
        stop.set()
        writer.join(30)
        t_end = time.perf_counter()
        deadline = time.perf_counter() + 60
        while not poller.caught_up() and time.perf_counter() < deadline:
            time.sleep(POLL_S)
        poller.close()
        final = _status(c.lake_url)
    window = (t_end - t_start) / 5
    p50s, p99s = [], []
    for i in range(5):
        fresh = poller.freshness(t_start + i * window, t_start + (i + 1) * window)
        p50s.append(percentile(fresh, 50))
        p99s.append(percentile(fresh, 99))
    report.figures += [
        Figure("read_ms_pyiceberg", "ms", [s["pyiceberg_ms"] for s in samples]),
        Figure("read_ms_duckdb", "ms", [s["duckdb_ms"] for s in samples]),
        Figure("mirror_data_files", "files", [float(s["data_files"] or 0) for s in samples]),
        Figure("mirror_delete_files", "files", [float(s["delete_files"] or 0) for s in samples]),
        Figure("mirror_snapshots", "snapshots", [float(s["snapshots"] or 0) for s in samples]),
        Figure("freshness_p50", "ms", p50s),
        Figure("freshness_p99", "ms", p99s),
    ]
    report.baselines.append(Figure("read_ms_one_file", "ms", [s["one_file_ms"] for s in samples]))
    report.ratios += [
        ("pyiceberg_over_one_file", "read_ms_pyiceberg", "read_ms_one_file"),
        ("duckdb_over_one_file", "read_ms_duckdb", "read_ms_one_file"),
    ]
    report.goals = {
        "pyiceberg_over_one_file": "<= 2x at any point",
        "mirror_data_files": "bounded (not growing with the run's length)",
        "freshness_p99": f"<= {FLUSH_INTERVAL_MS + 2000} ms (flush interval + 2 s)",
    }
    worst = max(s["pyiceberg_ms"] / max(s["one_file_ms"], 1e-3) for s in samples)
    report.notes += [
        f"{counter[0]} transactions in {t_end - t_start:.0f} s; worst pyiceberg/one-file "
        f"ratio over the samples {worst:.1f}x",
        "samples (t, files, snapshots, read ms): "
        + "; ".join(
            f"{s['t_s']}s {s['data_files']}+{s['delete_files']} files "
            f"{s['snapshots']} snaps py {s['pyiceberg_ms']} duck {s['duckdb_ms']} "
            f"one {s['one_file_ms']}"
            for s in samples
        ),
        f"last compaction: {json.dumps(final.get('maintenance', {}).get('last_compaction', {}).get('duration_ms'))} ms",
    ]
    return report
