"""A LocalCluster for benchmarks: N shards, a generated config, lake optional."""

from __future__ import annotations

from pathlib import Path

CONFIG = """\
log_level = "warn"

[lake]
flush_interval_ms = {flush_interval_ms}
event_threshold = {event_threshold}

[cdc]
batch_size = {cdc_batch_size}
batch_timeout_ms = 50

[vschema]
default_shard = "shard-0"
default_table = "shard_by_primary_key"
shard_count = {shards}

[vschema.tables.bench_kv]
kind = "sharded"
column = "id"
vindex = "hash"
column_type = "INTEGER"
"""


def start(
    workdir: Path,
    *,
    shards: int = 4,
    lake: bool = False,
    flush_interval_ms: int = 1000,
    event_threshold: int = 10000,
    cdc_batch_size: int = 1000,
    env: dict[str, str] | None = None,
):
    """Start and return a LocalCluster (a context manager) for a benchmark.

    ``env``: extra environment for its processes (settings such as
    ``DOSQL_ATOMIC_COMMIT``, see dosql/config.py).
    """
    from dosql.cluster import LocalCluster

    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "bench.toml"
    config.write_text(
        CONFIG.format(
            shards=shards,
            flush_interval_ms=flush_interval_ms,
            event_threshold=event_threshold,
            cdc_batch_size=cdc_batch_size,
        )
    )
    return LocalCluster(config, workdir / "data", lake=lake, env=env)
