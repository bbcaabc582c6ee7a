"""cdc_throughput: sustained writes through the router, committed into Iceberg.

Ours: writer processes send ``executemany`` batches (3 inserts of new keys
for every update of an existing key, 500 rows a batch, one commit each)
through the router of a 4-shard cluster whose shards stream to the lake
writer, for 30 s (5 s with --quick). A poller asks every shard for its
current LSN and the lake for its committed watermarks (``/status``) every
``POLL_S``; from the two timelines:

- committed changes/s: the first 1/5, 2/5, ... 5/5 of all changes written,
  divided by the time from the start until the lake had committed them (the
  five samples; the last is the whole run including the lake's catch-up);
- freshness: for each LSN a shard was seen to reach, the time until the lake's
  committed watermark of that shard reached it (commit on the shard ->
  visible in Iceberg), p50/p99 per fifth. Resolution: one poll period.

Baseline: pyarrow building and writing the same kind of rows straight to
Parquet (``pa.Table.from_pylist`` + ``pq.write_table`` in 10,000-row files),
rows/s: the format's own speed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
import urllib.request
from bisect import bisect_left, bisect_right

import pyarrow as pa
import pyarrow.parquet as pq
from websockets.sync.client import connect

import dosql
from bench import cluster
from bench.harness import Context, Figure, Report, percentile
from dosql import protocol

DDL = "CREATE TABLE bench_kv (id INTEGER PRIMARY KEY, name TEXT, v REAL)"
INSERT = "INSERT INTO bench_kv VALUES (?, ?, ?)"
UPDATE = "UPDATE bench_kv SET v = v + 1, name = ? WHERE id = ?"
BATCH = 500
WRITERS = 1  # concurrent cross-shard batches contend for the shards' write locks
POLL_S = 0.05
FLUSH_INTERVAL_MS = 1000


def _writer(url: str, start_at: float, seconds: float, base: int, queue) -> None:
    """From ``start_at`` (wall clock), insert new keys and update earlier ones
    for ``seconds``; report the count."""
    conn = dosql.connect(url, autocommit=True)  # each executemany commits on its own
    cur = conn.cursor()
    next_id, changes, n = base, 0, 0
    time.sleep(max(0.0, start_at - time.time()))
    deadline = start_at + seconds
    while time.time() < deadline:
        n += 1
        if n % 4 == 0 and next_id - base > BATCH:
            lo = base + (n * 7919) % (next_id - base - BATCH)
            _retry(cur, UPDATE, [(f"u{n}", lo + i) for i in range(BATCH)])
        else:
            rows = [(next_id + i, f"name-{next_id + i}", (next_id + i) * 0.5) for i in range(BATCH)]
            _retry(cur, INSERT, rows)
            next_id += BATCH
        changes += BATCH
    conn.close()
    queue.put(changes)


def _retry(cur, sql: str, rows: list[tuple]) -> None:
    """executemany, retried while a shard is busy with the other writer's batch."""
    for attempt in range(50):
        try:
            cur.executemany(sql, rows)
            return
        except dosql.OperationalError as exc:
            if "DATABASE_LOCKED" not in str(exc) or attempt == 49:
                raise
            time.sleep(0.005 * (attempt + 1))


class Poller:
    """Timelines of each shard's current LSN and of the lake's committed LSNs."""

    def __init__(self, shard_urls: dict[str, str], lake_url: str) -> None:
        self.conns = {s: connect(u, open_timeout=10) for s, u in shard_urls.items()}
        self.status_url = lake_url.replace("ws://", "http://") + "/status"
        self.shard_tl: dict[str, list[tuple[float, int]]] = {s: [] for s in shard_urls}
        self.lake_tl: dict[str, list[tuple[float, int]]] = {s: [] for s in shard_urls}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _shard_lsn(self, shard: str) -> int:
        ws = self.conns[shard]
        ws.send(protocol.encode(protocol.LsnInfo(id=1)))
        reply = protocol.decode(ws.recv(timeout=10))
        assert isinstance(reply, protocol.Ok), reply
        return int(reply.info["current_lsn"])

    def committed(self) -> dict[str, int]:
        with urllib.request.urlopen(self.status_url, timeout=10) as r:
            sources = json.loads(r.read())["sources"]
        return {s: int(v.get("committed_lsn") or 0) for s, v in sources.items()}

    def poll(self) -> None:
        for shard in self.conns:
            t, lsn = time.perf_counter(), self._shard_lsn(shard)
            tl = self.shard_tl[shard]
            if not tl or tl[-1][1] != lsn:
                tl.append((t, lsn))
        t, marks = time.perf_counter(), self.committed()
        for shard in self.conns:
            self.lake_tl[shard].append((t, marks.get(shard, 0)))

    def _run(self) -> None:
        while not self.stop.is_set():
            self.poll()
            self.stop.wait(POLL_S)

    def caught_up(self) -> bool:
        return all(
            self.lake_tl[s]
            and self.shard_tl[s]
            and self.lake_tl[s][-1][1] >= self.shard_tl[s][-1][1]
            for s in self.conns
        )

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for ws in self.conns.values():
            ws.close()

    # -------------------------------------------------------------- analysis

    def committed_at(self, t: float) -> int:
        """Total changes (over shards) the lake had committed at time ``t``."""
        total = 0
        for tl in self.lake_tl.values():
            i = bisect_right([x for x, _ in tl], t) - 1
            total += tl[i][1] if i >= 0 else 0
        return total

    def first_time_committed(self, total: float) -> float | None:
        """When the lake's committed LSNs, summed over shards, first reached ``total``."""
        series = zip(*self.lake_tl.values(), strict=True)
        for polls in series:
            if sum(lsn for _t, lsn in polls) >= total:
                return polls[0][0]
        return None

    def freshness(self, t0: float, t1: float) -> list[float]:
        """ms from each LSN first seen on a shard in [t0, t1) to its lake commit."""
        out = []
        for shard, tl in self.shard_tl.items():
            lake = self.lake_tl[shard]
            times = [t for t, _ in lake]
            for t, lsn in tl:
                if not t0 <= t < t1:
                    continue
                i = bisect_left(times, t)
                while i < len(lake) and lake[i][1] < lsn:
                    i += 1
                if i < len(lake):
                    out.append((lake[i][0] - t) * 1000)
        return out


def _pyarrow_rows_per_s(workdir, rows: int) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for start in range(0, rows, 10_000):
        data = [
            {"id": i, "name": f"name-{i}", "v": i * 0.5}
            for i in range(start, min(rows, start + 10_000))
        ]
        pq.write_table(pa.Table.from_pylist(data), workdir / f"part-{start}.parquet")
    return rows / (time.perf_counter() - t0)


def run(ctx: Context) -> Report:
    seconds = 5.0 if ctx.quick else 30.0
    parts = ctx.runs
    report = Report(
        "cdc_throughput",
        params={
            "seconds": seconds,
            "writers": WRITERS,
            "batch": BATCH,
            "shards": 4,
            "flush_interval_ms": FLUSH_INTERVAL_MS,
            "poll_ms": int(POLL_S * 1000),
        },
    )
    with cluster.start(
        ctx.workdir / "cdc_throughput", lake=True, flush_interval_ms=FLUSH_INTERVAL_MS
    ) as c:
        conn = dosql.connect(c.url)
        conn.cursor().execute(DDL)
        conn.commit()
        conn.close()
        c.sync_lake()  # the CREATE TABLE events are in: the lake starts level
        poller = Poller(c.shard_urls, c.lake_url)
        poller.poll()
        start_total = poller.committed_at(time.perf_counter())
        poller.thread.start()
        start_at = time.time() + 3.0  # the writers start together, once connected
        t_start = time.perf_counter() + 3.0
        mpc = mp.get_context("spawn")
        queue = mpc.Queue()
        procs = [
            mpc.Process(target=_writer, args=(c.url, start_at, seconds, (k + 1) * 10**9, queue))
            for k in range(WRITERS)
        ]
        for p in procs:
            p.start()
        written = sum(queue.get(timeout=seconds + 120) for _ in procs)
        t_end = time.perf_counter()
        for p in procs:
            p.join()
        deadline = time.perf_counter() + 120
        while not poller.caught_up() and time.perf_counter() < deadline:
            time.sleep(POLL_S)
        t_drained = time.perf_counter()
        time.sleep(2 * POLL_S)
        poller.close()
    window = (t_end - t_start) / parts
    total = poller.committed_at(t_drained) - start_total
    rates, p50s, p99s = [], [], []
    for i in range(parts):
        # throughput: the first (i+1)/parts of all changes, over the time the lake
        # took to commit them (flushes are lumpy: a short window may hold no commit)
        goal = start_total + total * (i + 1) / parts
        done = poller.first_time_committed(goal) or t_drained
        rates.append((goal - start_total) / max(1e-9, done - t_start))
        a, b = t_start + i * window, t_start + (i + 1) * window
        fresh = poller.freshness(a, b)
        p50s.append(percentile(fresh, 50))
        p99s.append(percentile(fresh, 99))
    report.figures += [
        Figure("committed_changes_per_s", "chg/s", rates, True),
        Figure("freshness_p50", "ms", p50s),
        Figure("freshness_p99", "ms", p99s),
    ]
    base = [_pyarrow_rows_per_s(ctx.workdir / f"cdc-pyarrow-{i}", 100_000) for i in range(ctx.runs)]
    report.baselines.append(Figure("pyarrow_rows_per_s", "rows/s", base, True))
    report.ratios.append(
        ("committed_over_pyarrow", "committed_changes_per_s", "pyarrow_rows_per_s")
    )
    report.goals = {
        "committed_changes_per_s": ">= 20000 chg/s",
        "freshness_p99": f"<= {FLUSH_INTERVAL_MS + 2000} ms (flush interval + 2 s)",
    }
    report.notes.append(
        f"writers sent {written} changes in {t_end - t_start:.1f} s "
        f"({written / (t_end - t_start):.0f}/s through the router); the lake committed "
        f"{total} by {t_drained - t_start:.1f} s ({total / (t_drained - t_start):.0f}/s "
        f"including the catch-up); samples are {parts} consecutive windows of {window:.1f} s"
    )
    return report
