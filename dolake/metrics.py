"""Prometheus metrics of the lake writer (names from the operations guide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.buffer_bytes = Gauge(
            "dolake_buffer_size_bytes", "CDC bytes buffered, not yet committed", registry=r
        )
        self.buffer_events = Gauge(
            "dolake_buffer_event_count", "CDC events buffered, not yet committed", registry=r
        )
        self.flush_duration = Histogram(
            "dolake_flush_duration_ms",
            "Duration of one flush (all tables) in milliseconds",
            buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
            registry=r,
        )
        self.parquet_file_size = Histogram(
            "dolake_parquet_file_size",
            "Size of the Parquet data files written, in bytes",
            buckets=(1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9),
            registry=r,
        )
        self.connected = Gauge(
            "dolake_connected_sources", "Shards connected on the CDC port", registry=r
        )
        self.snapshot_lag = Gauge(
            "dolake_snapshot_lag_ms", "Milliseconds since the last Iceberg commit", registry=r
        )
        self.source_lag_lsn = Gauge(
            "dolake_source_lag_lsn",
            "Received minus committed LSN, per source shard",
            ["shard"],
            registry=r,
        )
        self.source_lag_ms = Gauge(
            "dolake_source_lag_ms",
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
            "dolake_expire_duration_ms",
            "Duration of one snapshot expiry run (all tables) in milliseconds",
            buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
            registry=r,
        )
        self.table_avg_file_size = Gauge(
            "dolake_table_avg_file_size_bytes",
            "Average size of the live data and delete files, per table "
            "(the sizes written: dolake_parquet_file_size)",
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
            "dolake_table_last_compaction_duration_ms",
            "Duration of the newest compaction kept, in milliseconds, per table",
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
            "dolake_compaction_duration_ms",
            "Duration of one table's compaction in milliseconds",
            buckets=(10, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000),
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
