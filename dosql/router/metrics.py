"""Router metrics (Prometheus), in base units; every name is in ``docs/metrics.md``.

``dosql_query_duration_seconds`` (histogram by plan kind), ``dosql_queries_total``
(by kind), ``dosql_shard_request_duration_seconds`` (histogram per shard),
``shard_query_scatter_ratio`` (share of reads sent to more than one shard),
``dosql_errors_total{code}``, ``dosql_active_transactions{state}`` (client
transactions open, aborted awaiting ROLLBACK, or with an unknown commit outcome),
``dosql_connections``, ``shard_health_score`` (share of shards last seen
healthy) and the plan cache counters (``dosql_plan_cache_parses_total`` counts
statements actually parsed: a repeated statement is parsed once).

The operations guide's alerts use ``dosql_query_duration_ms``,
``dosql_connection_count`` and ``shard_latency_p99_ms``: the first two are
aliases of the conventional series (:mod:`dosql.prom`), the last a gauge of the
p99 over each shard's last 1000 requests, kept only because the guide's alert
reads it (quantile over the histogram instead).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dosql.errors import CODES
from dosql.prom import MS_PER_SECOND, REQUEST_BUCKETS, Alias, init_labels, ms_alias

# What ``dosql_queries_total{kind}`` counts: the plan kinds of the router's operators
# (dosql.router.engine) and the requests answered without a plan.
QUERY_KINDS = ("read", "write", "insert", "ddl", "explain", "noop", "tx", "tx_status", "ping")


class RouterMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.query_duration = Histogram(
            "dosql_query_duration_seconds",
            "Statement time through the router, by plan kind",
            ["kind"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        ms_alias(
            r,
            self.query_duration,
            "dosql_query_duration_ms",
            "Operations guide name of dosql_query_duration_seconds, in milliseconds",
        )
        self.queries = Counter("dosql_queries", "Statements by plan kind", ["kind"], registry=r)
        self.errors = Counter("dosql_errors", "Errors returned to clients", ["code"], registry=r)
        self.slow_queries = Counter(
            "dosql_slow_queries", "Requests slower than router.slow_query_ms", registry=r
        )
        self.scatter_ratio = Gauge(
            "shard_query_scatter_ratio", "Share of reads sent to more than one shard", registry=r
        )
        self.shard_duration = Histogram(
            "dosql_shard_request_duration_seconds",
            "Time of one request from the router to a shard, per shard",
            ["shard"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.shard_p99 = Gauge(
            "shard_latency_p99_ms",
            "Operations guide alert gauge: p99 of each shard's last 1000 requests, in ms "
            "(prefer histogram_quantile over dosql_shard_request_duration_seconds)",
            ["shard"],
            registry=r,
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
        self.connections = Gauge("dosql_connections", "Client connections", registry=r)
        Alias(
            r,
            self.connections,
            "dosql_connection_count",
            documentation="Operations guide name of dosql_connections",
        )
        self.health = Gauge("shard_health_score", "Share of shards last seen healthy", registry=r)
        self.plan_parses = Counter(
            "dosql_plan_cache_parses", "Statements parsed and planned", registry=r
        )
        self.plan_hits = Counter("dosql_plan_cache_hits", "Plan cache hits", registry=r)
        init_labels(self.queries, QUERY_KINDS)
        init_labels(self.errors, CODES)
        self.reads = 0
        self.scatter_reads = 0

    def observe_read(self, n_shards: int) -> None:
        self.reads += 1
        if n_shards > 1:
            self.scatter_reads += 1
        self.scatter_ratio.set(self.scatter_reads / self.reads)

    def watch(self, pools: Mapping[str, Any]) -> None:
        """Shard latency and health gauges are computed when scraped, not per request;
        each pool reports its request times into the per-shard histogram."""
        for shard, pool in pools.items():
            pool.on_latency = self.shard_duration.labels(shard).observe
            self.shard_p99.labels(shard).set_function(lambda p=pool: p.p99() * MS_PER_SECOND)
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
