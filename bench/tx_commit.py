"""tx_commit: COMMIT of transactions that wrote on 1, 2 and 4 shards, atomic vs best effort.

Each transaction updates one row on each of its shards (``UPDATE … SET v =
v + 1 WHERE id = ?``, the driver's implicit ``BEGIN`` before the first) and
commits. Two 4-shard clusters run side by side, the same in all but one
setting, and the measurements alternate between them (every ``CHUNK``
transactions for latency, in A B B A windows for throughput) so that both see
the same moment of a shared machine:

- ours: ``router.atomic_commit = true`` (the default): a transaction that
  wrote on several shards commits by two-phase commit (dosql/router/
  twophase.py: Prepare on all in parallel, each writing a redo record with
  ``synchronous = FULL``; CommitPrepared on the first, the decision; then on
  the others in parallel);
- baseline: ``DOSQL_ATOMIC_COMMIT=false``: one-phase commits shard after
  shard, not atomic (``TwoPhaseCommit.best_effort``).

A transaction that wrote on one shard commits in one phase either way, so
for 1 shard the ratio should be about 1.0x: it is the control.

Figures, per width (1, 2, 4 shards): the COMMIT's latency (p50/p99) and the
whole transaction's (BEGIN … COMMIT), one client; transactions/s with one
client and with ``CLIENTS`` client threads (their shards at random, always
taken in VSchema order, so they queue on the shards' write locks but never
deadlock); and the shards' own mean service time of ``Prepare`` /
``CommitPrepared`` (atomic) and ``Commit`` (best effort), from their
``dosql_query_duration_seconds`` histograms over each latency run.

Size: ``DOSQL_BENCH_TX_SCALE`` (default 1) multiplies the transactions per
latency run and the seconds per throughput run; ``--runs`` adds runs.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
import urllib.request

import dosql
from bench import cluster
from bench.harness import Context, Figure, Report, percentile

DDL = "CREATE TABLE bench_kv (id INTEGER PRIMARY KEY, name TEXT, v REAL)"
INSERT = "INSERT INTO bench_kv VALUES (?, ?, ?)"
UPDATE = "UPDATE bench_kv SET v = v + 1 WHERE id = ?"
ROWS = 4_000
SHARDS = 4
WIDTHS = (1, 2, 4)  # shards a transaction writes on
CLIENTS = 4
MODES = ("atomic", "best_effort")
CHUNK = 2  # transactions on one cluster before the latency run turns to the other
ENV = {"atomic": {"DOSQL_ATOMIC_COMMIT": "true"}, "best_effort": {"DOSQL_ATOMIC_COMMIT": "false"}}
# shard requests whose service time is reported, and their names in the figures
OPS = {"Prepare": "prepare", "CommitPrepared": "commit_prepared", "Commit": "commit"}
_METRIC = re.compile(r'^dosql_query_duration_seconds_(sum|count)\{op="(\w+)"\} (\S+)$', re.M)


class Client:
    """One connection; transactions over ``width`` shards, a row on each."""

    def __init__(self, url: str, keys: list[list[int]], seed: int) -> None:
        self.conn = dosql.connect(url, timeout=60)  # implicit BEGIN before the first write
        self.cur = self.conn.cursor()
        self.keys = keys  # keys[i]: keys on the i-th shard in VSchema order
        self.rng = random.Random(seed)

    def transaction(self, width: int) -> tuple[float, float]:
        """One transaction: (COMMIT ms, whole transaction ms)."""
        shards = sorted(self.rng.sample(range(len(self.keys)), width))  # one lock order
        keys = [self.rng.choice(self.keys[s]) for s in shards]
        t0 = time.perf_counter()
        for key in keys:
            self.cur.execute(UPDATE, (key,))
        t1 = time.perf_counter()
        self.conn.commit()
        t2 = time.perf_counter()
        return (t2 - t1) * 1000, (t2 - t0) * 1000

    def close(self) -> None:
        self.conn.close()


def _load(url: str) -> None:
    conn = dosql.connect(url, timeout=60)
    cur = conn.cursor()
    cur.execute(DDL)
    conn.commit()
    cur.executemany(INSERT, [(i, f"name-{i:06d}", 0.0) for i in range(ROWS)])
    conn.commit()
    conn.close()


def _keys_by_shard(vschema) -> list[list[int]]:
    by: dict[str, list[int]] = {s.id: [] for s in vschema.shards}
    for key in range(ROWS):
        by[vschema.shard_for("bench_kv", key)].append(key)
    return list(by.values())


def _shard_ops(shard_urls: dict[str, str]) -> dict[str, tuple[float, float]]:
    """op -> (total ms, requests) over the cluster's shards, from their /metrics."""
    out: dict[str, list[float]] = {}
    for url in shard_urls.values():
        http = url.replace("ws://", "http://") + "/metrics"
        with urllib.request.urlopen(http, timeout=10) as r:
            text = r.read().decode()
        for kind, op, value in _METRIC.findall(text):
            acc = out.setdefault(op, [0.0, 0.0])
            acc[0 if kind == "sum" else 1] += float(value) * (1000 if kind == "sum" else 1)
    return {op: (s, n) for op, (s, n) in out.items()}


def _mean_ms(before: dict, after: dict, op: str) -> float:
    s0, n0 = before.get(op, (0.0, 0.0))
    s1, n1 = after.get(op, (0.0, 0.0))
    return (s1 - s0) / (n1 - n0) if n1 > n0 else 0.0


def _latency_round(clients, clusters, width: int, n: int) -> dict[str, tuple]:
    """n transactions one after another on each cluster, alternating every ``CHUNK``
    (so both see the same moment of the machine): mode -> (commit ms list, tx ms
    list, the shards' mean ms per request of each of ``OPS``)."""
    before = {m: _shard_ops(c.shard_urls) for m, c in clusters.items()}
    lats: dict[str, tuple[list[float], list[float]]] = {m: ([], []) for m in MODES}
    for chunk, start in enumerate(range(0, n, CHUNK)):
        for mode in MODES if chunk % 2 == 0 else MODES[::-1]:
            commits, txs = lats[mode]
            for _ in range(min(CHUNK, n - start)):
                c, t = clients[mode][0].transaction(width)
                commits.append(c)
                txs.append(t)
    out = {}
    for mode, c in clusters.items():
        after = _shard_ops(c.shard_urls)
        out[mode] = (*lats[mode], {op: _mean_ms(before[mode], after, op) for op in OPS})
    return out


def _window(clients: list[Client], width: int, seconds: float) -> tuple[int, float, list[float]]:
    """Every client in its own thread for ``seconds``: (transactions, seconds, commit ms)."""
    barrier = threading.Barrier(len(clients) + 1)
    counts = [0] * len(clients)
    lats: list[list[float]] = [[] for _ in clients]
    errors: list[BaseException] = []
    deadline = [0.0]

    def work(i: int) -> None:
        try:
            barrier.wait()
            while time.perf_counter() < deadline[0]:
                c, _ = clients[i].transaction(width)
                lats[i].append(c)
                counts[i] += 1
        except BaseException as exc:  # re-raised below, not swallowed
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return sum(counts), elapsed, [x for lat in lats for x in lat]


def _throughput_round(clients, width: int, seconds: float) -> dict[str, tuple]:
    """``seconds`` of ``CLIENTS`` clients on each cluster, in two windows of half
    that each, A B B A: mode -> (tx/s, commit ms list)."""
    acc: dict[str, list] = {m: [0, 0.0, []] for m in MODES}
    for mode in MODES + MODES[::-1]:
        count, elapsed, lats = _window(clients[mode], width, seconds / 2)
        acc[mode][0] += count
        acc[mode][1] += elapsed
        acc[mode][2] += lats
    return {m: (count / elapsed, lats) for m, (count, elapsed, lats) in acc.items()}


def _label(width: int) -> str:
    return f"{width}_shard" + ("s" if width > 1 else "")


def run(ctx: Context) -> Report:
    scale = float(os.environ.get("DOSQL_BENCH_TX_SCALE", "1"))
    n = max(10, int((20 if ctx.quick else 100) * scale))
    seconds = (0.2 if ctx.quick else 0.8) * scale
    report = Report(
        "tx_commit",
        params={
            "shards": SHARDS,
            "rows": ROWS,
            "tx_per_latency_run": n,
            "seconds_per_throughput_run": seconds,
            "clients": CLIENTS,
        },
    )
    with (
        cluster.start(ctx.workdir / "tx_commit_atomic", env=ENV["atomic"]) as ca,
        cluster.start(ctx.workdir / "tx_commit_best_effort", env=ENV["best_effort"]) as cb,
    ):
        clusters = {"atomic": ca, "best_effort": cb}
        for c in clusters.values():
            _load(c.url)
        keys = _keys_by_shard(ca.vschema)
        clients = {
            m: [Client(c.url, keys, seed=i) for i in range(CLIENTS)] for m, c in clusters.items()
        }
        # A check that we time what we mean: only the atomic cluster prepares.
        for mode, c in clusters.items():
            before = _shard_ops(c.shard_urls)
            for _ in range(5):
                clients[mode][0].transaction(2)
            after = _shard_ops(c.shard_urls)
            prepares = after.get("Prepare", (0, 0))[1] - before.get("Prepare", (0, 0))[1]
            if (mode == "atomic") != bool(prepares):
                raise AssertionError(f"{mode} cluster: {prepares} Prepare requests for 5 commits")
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for width in WIDTHS:
            _measure(ctx, report, clients, clusters, width, n, seconds)
        cpu = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        for cs in clients.values():
            for client in cs:
                client.close()
    report.notes.append(
        f"the bench process (clients) used {cpu:.0%} of a CPU on average; "
        f"{os.cpu_count()} CPUs for it, 2 routers and 8 shards"
    )
    report.goals = {
        "tx_p50_2_shards_atomic_over_best_effort": "far below 2.19x (Vitess' 2PC: +119 %)",
        "commit_p50_1_shard_atomic_over_best_effort": "~1.0x (one phase either way)",
    }
    return report


def _measure(ctx, report, clients, clusters, width, n, seconds) -> None:
    s = _label(width)
    lat: dict[str, list] = {m: [] for m in MODES}
    conc: dict[str, list] = {m: [] for m in MODES}
    _latency_round(clients, clusters, width, max(CHUNK, n // 4))  # warm-up
    for _ in range(ctx.runs):
        sample = _latency_round(clients, clusters, width, n)
        for mode in MODES:
            lat[mode].append(sample[mode])
    for _ in range(ctx.runs):
        sample = _throughput_round(clients, width, seconds)
        for mode in MODES:
            conc[mode].append(sample[mode])
    for mode in MODES:
        runs, cruns = lat[mode], conc[mode]
        figs = [
            Figure(f"{mode}_commit_p50_{s}", "ms", [percentile(c, 50) for c, _, _ in runs]),
            Figure(f"{mode}_commit_p99_{s}", "ms", [percentile(c, 99) for c, _, _ in runs]),
            Figure(f"{mode}_tx_p50_{s}", "ms", [percentile(t, 50) for _, t, _ in runs]),
            Figure(f"{mode}_tx_p99_{s}", "ms", [percentile(t, 99) for _, t, _ in runs]),
            Figure(
                f"{mode}_tps_{s}_1_client",
                "tx/s",
                [len(t) / (sum(t) / 1000) for _, t, _ in runs],
                True,
            ),
            Figure(f"{mode}_tps_{s}_{CLIENTS}_clients", "tx/s", [q for q, _ in cruns], True),
            Figure(
                f"{mode}_commit_p50_{s}_{CLIENTS}_clients",
                "ms",
                [percentile(c, 50) for _, c in cruns],
            ),
            Figure(
                f"{mode}_commit_p99_{s}_{CLIENTS}_clients",
                "ms",
                [percentile(c, 99) for _, c in cruns],
            ),
        ]
        ops = ("Prepare", "CommitPrepared") if mode == "atomic" and width > 1 else ("Commit",)
        figs += [
            Figure(f"{mode}_shard_{OPS[op]}_mean_{s}", "ms", [o[op] for _, _, o in runs])
            for op in ops
        ]
        (report.figures if mode == "atomic" else report.baselines).extend(figs)
    for what in (
        f"commit_p50_{s}",
        f"commit_p99_{s}",
        f"tx_p50_{s}",
        f"tx_p99_{s}",
        f"tps_{s}_1_client",
        f"tps_{s}_{CLIENTS}_clients",
    ):
        report.ratios.append(
            (f"{what}_atomic_over_best_effort", f"atomic_{what}", f"best_effort_{what}")
        )
