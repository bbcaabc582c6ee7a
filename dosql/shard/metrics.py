"""Prometheus metrics of one shard process, in base units (``docs/metrics.md``).

``dosql_wal_segments`` is the size of the SQLite WAL file divided by
``shard.wal_segment_size`` (rounded up): how many segment-sized pieces of
un-checkpointed log the shard is carrying. Gauges that describe files are
computed at scrape time. The operations guide's alerts read
``dosql_query_duration_ms``, ``dosql_wal_segment_count`` and
``dosql_connection_count``: those names are kept as aliases (:mod:`dosql.prom`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dosql.errors import CODES
from dosql.prom import REQUEST_BUCKETS, Alias, init_labels, ms_alias
from dosql.shard.storage import STATES

if TYPE_CHECKING:
    from dosql.shard.executor import Shard

# ``dosql_autocommit_reads_total{path}``: on the event loop, or re-run on a worker thread.
READ_PATHS = ("inline", "thread")
STORAGE_ERROR_KINDS = tuple(s for s in STATES if s != "ok")


class ShardMetrics:
    def __init__(self, shard: Shard, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        labels = {"shard": shard.shard_id}
        self.query_duration = Histogram(
            "dosql_query_duration_seconds",
            "Time to serve one request, by request type",
            ["op"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        ms_alias(
            r,
            self.query_duration,
            "dosql_query_duration_ms",
            "Operations guide name of dosql_query_duration_seconds, in milliseconds",
        )
        self.active_transactions = Gauge(
            "dosql_active_transactions", "Open session transactions", registry=r
        )
        self.active_transactions.set_function(lambda: shard.open_transactions)
        self.prepared_transactions = Gauge(
            "dosql_prepared_transactions",
            "Prepared (two-phase commit) transactions waiting for their decision",
            ["orphaned"],
            registry=r,
        )
        for orphaned in (False, True):
            self.prepared_transactions.labels(str(orphaned).lower()).set_function(
                lambda o=orphaned: sum(
                    1 for e in list(shard.twophase.entries.values()) if e.orphaned is o
                )
            )
        self.connections = Gauge("dosql_connections", "Open WebSocket connections", registry=r)
        self.connections.set_function(lambda: shard.sessions)
        Alias(
            r,
            self.connections,
            "dosql_connection_count",
            documentation="Operations guide name of dosql_connections",
        )
        seg = shard.cfg.wal_segment_size
        self.wal_segments = Gauge(
            "dosql_wal_segments",
            "WAL file size in units of shard.wal_segment_size (rounded up)",
            registry=r,
        )
        self.wal_segments.set_function(lambda: math.ceil(shard.storage_bytes()[1] / seg))
        Alias(
            r,
            self.wal_segments,
            "dosql_wal_segment_count",
            documentation="Operations guide name of dosql_wal_segments",
        )
        self.storage = Gauge(
            "dosql_storage_used_bytes", "Database plus WAL file size in bytes", registry=r
        )
        self.storage.set_function(lambda: sum(shard.storage_bytes()))
        self.errors = Counter("dosql_errors_total", "Error replies by code", ["code"], registry=r)
        self.changes = Counter(
            "dosql_changes_total", "Row changes and schema events captured", registry=r
        )
        self.reads = Counter(
            "dosql_autocommit_reads_total",
            "Autocommit SELECTs by where they ran: inline (event loop, under a step budget) "
            "or thread (over budget or busy, re-run on a worker thread)",
            ["path"],
            registry=r,
        )
        self.lock_wait = Histogram(
            "dosql_write_lock_wait_seconds",
            "Time a writer queued for the shard's write lock",
            buckets=(0,) + REQUEST_BUCKETS,
            registry=r,
        )
        shard.writelock.observe = self.lock_wait.observe
        self.lock_waiters = Gauge(
            "dosql_write_lock_waiters", "Writers queued for the shard's write lock", registry=r
        )
        self.lock_waiters.set_function(lambda: shard.writelock.waiting)
        self.storage_state = Gauge(
            "dosql_storage_state",
            "1 for the storage state /health/deep reports (ok, read_only, full, io_error), "
            "0 for the others",
            ["state"],
            registry=r,
        )
        for name in STATES:
            self.storage_state.labels(name).set_function(
                lambda n=name: 1.0 if shard.storage.state() == n else 0.0
            )
        self.storage_errors = Counter(
            "dosql_storage_errors_total",
            "Storage errors of writes (read_only, full, io_error); the connection is recycled",
            ["kind"],
            registry=r,
        )
        init_labels(self.storage_errors, STORAGE_ERROR_KINDS)
        shard.storage.observe = lambda kind: self.storage_errors.labels(kind).inc()
        self.current_lsn = Gauge("dosql_current_lsn", "Highest committed LSN", registry=r)
        self.current_lsn.set_function(shard.changelog.current_lsn)
        self._last_lsn = shard.changelog.current_lsn()
        self.labels = labels
        init_labels(self.errors, CODES)
        init_labels(self.reads, READ_PATHS)

    def observe_commit(self, lsn: int | None) -> None:
        if lsn is not None and lsn > self._last_lsn:
            self.changes.inc(lsn - self._last_lsn)
            self._last_lsn = lsn
