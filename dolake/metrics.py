"""Prometheus metrics of the lake writer, in base units (``docs/metrics.md``).

The operations guide's alerts read ``dolake_buffer_event_count``,
``dolake_flush_duration_ms``, ``dolake_parquet_file_size`` and
``dolake_snapshot_lag_ms``: those names are kept as aliases of the conventional
series (:mod:`dosql.prom`), computed from them when scraped.
"""

from __future__ import annotations

from typing import get_args, get_type_hints

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from dosql import protocol
from dosql.errors import CODES, CDCError, ValidationError
from dosql.prom import JOB_BUCKETS, Alias, init_labels, ms_alias

# ``dolake_batch_nacks_total{reason}``: the reasons a BatchNack can carry.
NACK_REASONS: tuple[str, ...] = get_args(get_type_hints(protocol.BatchNack)["reason"])
# ``dolake_cdc_errors_total{code}``: the CDC port refuses bad input with validation or
# CDC error codes.
CDC_ERROR_CODES = tuple(c for c, cls in CODES.items() if cls in (ValidationError, CDCError))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.buffer_bytes = Gauge(
            "dolake_buffer_size_bytes", "CDC bytes buffered, not yet committed", registry=r
        )
        self.buffer_events = Gauge(
            "dolake_buffer_events", "CDC events buffered, not yet committed", registry=r
        )
        Alias(
            r,
            self.buffer_events,
            "dolake_buffer_event_count",
            documentation="Operations guide name of dolake_buffer_events",
        )
        self.flush_duration = Histogram(
            "dolake_flush_duration_seconds",
            "Duration of one flush (all tables)",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        ms_alias(
            r,
            self.flush_duration,
            "dolake_flush_duration_ms",
            "Operations guide name of dolake_flush_duration_seconds, in milliseconds",
        )
        self.parquet_file_size = Histogram(
            "dolake_parquet_file_size_bytes",
            "Size of the Parquet data files written",
            buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
            registry=r,
        )
        Alias(
            r,
            self.parquet_file_size,
            "dolake_parquet_file_size",
            documentation="Operations guide name of dolake_parquet_file_size_bytes",
        )
        self.connected = Gauge(
            "dolake_connected_sources", "Shards connected on the CDC port", registry=r
        )
        self.snapshot_lag = Gauge(
            "dolake_snapshot_lag_seconds", "Time since the last Iceberg commit", registry=r
        )
        ms_alias(
            r,
            self.snapshot_lag,
            "dolake_snapshot_lag_ms",
            "Operations guide name of dolake_snapshot_lag_seconds, in milliseconds",
        )
        self.source_lag_lsn = Gauge(
            "dolake_source_lag_lsn",
            "Received minus committed LSN, per source shard",
            ["shard"],
            registry=r,
        )
        self.source_lag = Gauge(
            "dolake_source_lag_seconds",
            "Age of the oldest uncommitted change, per source shard",
            ["shard"],
            registry=r,
        )
        self.nacks = Counter(
            "dolake_batch_nacks", "Batches refused, by reason", ["reason"], registry=r
        )
        self.events = Counter("dolake_cdc_events", "CDC events accepted", registry=r)
        self.flush_errors = Counter(
            "dolake_flush_errors", "Table flushes that failed (changes kept)", registry=r
        )
        self.cdc_errors = Counter(
            "dolake_cdc_errors", "Bad CDC input refused with a typed error", ["code"], registry=r
        )
        # per Iceberg table (label table: "T" the mirror, "T__changelog" its change log)
        self.table_data_files = Gauge(
            "dolake_table_data_files", "Live data files, per table", ["table"], registry=r
        )
        self.table_delete_files = Gauge(
            "dolake_table_delete_files",
            "Live position-delete files, per table",
            ["table"],
            registry=r,
        )
        self.table_snapshots = Gauge(
            "dolake_table_snapshots",
            "Snapshots in the table metadata, per table",
            ["table"],
            registry=r,
        )
        self.table_oldest_snapshot = Gauge(
            "dolake_table_oldest_snapshot_timestamp_seconds",
            "Commit time of the oldest snapshot kept (Unix seconds), per table",
            ["table"],
            registry=r,
        )
        self.expired_snapshots = Counter(
            "dolake_expired_snapshots", "Snapshots expired by the retention window", registry=r
        )
        self.expired_files = Counter(
            "dolake_expired_files_deleted",
            "Files deleted because only expired snapshots referenced them",
            registry=r,
        )
        self.expire_duration = Histogram(
            "dolake_expire_duration_seconds",
            "Duration of one snapshot expiry run (all tables)",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.table_avg_file_size = Gauge(
            "dolake_table_avg_file_size_bytes",
            "Average size of the live data and delete files, per table "
            "(the sizes written: dolake_parquet_file_size_bytes)",
            ["table"],
            registry=r,
        )
        self.table_last_compaction = Gauge(
            "dolake_table_last_compaction_timestamp_seconds",
            "Commit time of the newest compaction snapshot kept (Unix seconds; 0: none)",
            ["table"],
            registry=r,
        )
        self.table_last_compaction_duration = Gauge(
            "dolake_table_last_compaction_duration_seconds",
            "Duration of the newest compaction kept, per table",
            ["table"],
            registry=r,
        )
        self.compactions = Counter(
            "dolake_compactions", "Compaction (replace) snapshots committed", registry=r
        )
        self.compaction_files = Counter(
            "dolake_compaction_files_rewritten",
            "Data and delete files replaced by compactions",
            registry=r,
        )
        self.compaction_duration = Histogram(
            "dolake_compaction_duration_seconds",
            "Duration of one table's compaction",
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.orphan_files = Counter(
            "dolake_orphan_files_deleted",
            "Unreferenced files deleted by orphan cleanup",
            registry=r,
        )
        self.maintenance_errors = Counter(
            "dolake_maintenance_errors", "Background maintenance runs that failed", registry=r
        )
        init_labels(self.nacks, NACK_REASONS)
        init_labels(self.cdc_errors, CDC_ERROR_CODES)
