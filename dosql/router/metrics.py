"""Router metrics (Prometheus), named as in the operations guide.

``dosql_query_duration_ms`` (histogram by plan kind), ``dosql_queries_total``
(by kind), ``shard_query_scatter_ratio`` (share of reads sent to more than one
shard), ``shard_latency_p99_ms`` (per shard, last 1000 requests),
``dosql_errors_total{code}``, ``dosql_active_transactions{state}`` (client
transactions open, aborted awaiting ROLLBACK, or with an unknown commit outcome),
``dosql_connection_count``, ``shard_health_score`` (share of shards last seen
healthy) and the plan cache counters (``dosql_plan_cache_parses_total`` counts
statements actually parsed: a repeated statement is parsed once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

BUCKETS_MS = (0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.query_duration = Histogram(
            "dosql_query_duration_ms",
            "Statement time through the router (ms)",
            ["kind"],
            buckets=BUCKETS_MS,
            registry=r,
        )
        self.queries = Counter("dosql_queries", "Statements by plan kind", ["kind"], registry=r)
        self.errors = Counter("dosql_errors", "Errors returned to clients", ["code"], registry=r)
        self.slow_queries = Counter(
            "dosql_slow_queries", "Requests slower than router.slow_query_ms", registry=r
        )
        self.scatter_ratio = Gauge(
            "shard_query_scatter_ratio", "Share of reads sent to more than one shard", registry=r
        )
        self.shard_p99 = Gauge(
            "shard_latency_p99_ms", "p99 shard request latency (last 1000)", ["shard"], registry=r
        )
        # Labelled by state; each label is computed when scraped from the live sessions
        # (and whatever else registers a source), so it can never drift from the truth.
        self.active_tx = Gauge(
            "dosql_active_transactions",
            "Client transactions by state (open, aborted, outcome_unknown, ...)",
            ["state"],
            registry=r,
        )
        self.tx_sources: list[Callable[[], Mapping[str, int]]] = []
        self.connections = Gauge("dosql_connection_count", "Client connections", registry=r)
        self.health = Gauge("shard_health_score", "Share of shards last seen healthy", registry=r)
        self.plan_parses = Counter(
            "dosql_plan_cache_parses", "Statements parsed and planned", registry=r
        )
        self.plan_hits = Counter("dosql_plan_cache_hits", "Plan cache hits", registry=r)
        self.reads = 0
        self.scatter_reads = 0

    def observe_read(self, n_shards: int) -> None:
        self.reads += 1
        if n_shards > 1:
            self.scatter_reads += 1
        self.scatter_ratio.set(self.scatter_reads / self.reads)

    def watch(self, pools: Mapping[str, Any]) -> None:
        """Shard latency and health gauges are computed when scraped, not per request."""
        for shard, pool in pools.items():
            self.shard_p99.labels(shard).set_function(pool.p99)
        self.health.set_function(
            lambda: sum(1 for p in pools.values() if p.healthy is not False) / max(1, len(pools))
        )

    def watch_transactions(
        self, source: Callable[[], Mapping[str, int]], states: Iterable[str]
    ) -> None:
        """Count ``dosql_active_transactions{state}`` from ``source`` at scrape time.

        Several sources add up (client sessions here; prepared / in-doubt transactions
        of the commit coordinator can register theirs with their own states).
        """
        self.tx_sources.append(source)
        for state in states:
            self.active_tx.labels(state).set_function(
                lambda state=state: sum(src().get(state, 0) for src in self.tx_sources)
            )
