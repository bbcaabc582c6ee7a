"""Shared helpers for router tests: a quickstart-like VSchema and cluster configs."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import vschema as V
from dosql.cluster import to_toml

RANGES = [
    {"shard": "shard-0", "min": "2024-01-01", "max": "2025-01-01"},
    {"shard": "shard-1", "min": "2025-01-01", "max": "2026-01-01"},
    {"shard": "shard-2", "min": "2026-01-01", "max": "2027-01-01"},
    {"shard": "shard-3", "min": "2027-01-01", "max": "2028-01-01"},
]


def quickstart_vschema(n_shards: int = 4, default_table: str = "shard_by_primary_key") -> Any:
    shards = [V.shard(f"shard-{i}") for i in range(n_shards)]
    tables = {
        "users": V.sharded_table("tenant_id", V.hash_vindex()),
        "orders": V.sharded_table("tenant_id", V.hash_vindex()),
        "sessions": V.sharded_table("tenant_id", V.consistent_hash_vindex()),
        "countries": V.reference_table(),
        "system_config": V.unsharded_table(f"shard-{n_shards - 1}"),
    }
    if n_shards == 4:
        tables["events"] = V.sharded_table("event_date", V.range_vindex(RANGES))
    return V.create_vschema(tables, shards, default_shard="shard-0", default_table=default_table)


def write_config(
    path: Path, vs: Any, *, tokens: list[dict[str, str]] | None = None, extra: dict | None = None
) -> Path:
    data: dict[str, Any] = {"log_level": "warn", "vschema": vs.to_dict()}
    if tokens:
        data["auth"] = {"tokens": tokens}
    data.update(extra or {})
    path.write_text(to_toml(data), encoding="utf-8")
    return path


def shard_rows(cluster: Any, shard_id: str, sql: str) -> list[tuple]:
    """Read a shard's database file directly (read-only)."""
    db = cluster.data_dir / "shards" / f"{shard_id}.db"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise
    finally:
        con.close()
