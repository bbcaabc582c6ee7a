"""Python builder API, mirroring the reference guide's ``createVSchema`` example::

    vs = create_vschema(
        {
            "users": sharded_table("tenant_id", hash_vindex(), column_type="INTEGER"),
            "sessions": sharded_table("tenant_id", consistent_hash_vindex()),
            "events": sharded_table("event_date", range_vindex([
                {"shard": "shard-0", "min": "2025-01-01", "max": "2026-01-01"},
                {"shard": "shard-1", "min": "2026-01-01", "max": "2027-01-01"},
            ])),
            "countries": reference_table(),
            "system_config": unsharded_table("shard-0"),
        },
        [shard("shard-0", metadata={"region": "us-west"}), shard("shard-1")],
        default_shard="shard-0",
        settings={"max_parallel_shards": 8, "shard_timeout_ms": 10000, "enable_caching": True},
    )

The result is validated exactly like a loaded TOML file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dosql.errors import ValidationError
from vschema.keyrange import KeyRange
from vschema.model import AutoIncrement, Settings, Shard, Table, VSchema
from vschema.vindexes import (
    DEFAULT_VIRTUAL_NODES,
    VINDEX_TYPES,
    ConsistentHashVindex,
    HashVindex,
    RangeVindex,
    ValueRange,
    Vindex,
)


def create_vschema(
    tables: Mapping[str, Table],
    shards: Iterable[Shard],
    *,
    default_shard: str | None = None,
    default_table: str = "shard_by_primary_key",
    settings: Settings | Mapping[str, Any] | None = None,
) -> VSchema:
    if isinstance(settings, Mapping):
        unknown = set(settings) - set(Settings().to_dict())
        if unknown:
            raise ValidationError(
                f"unknown settings {sorted(unknown)}; known: " + ", ".join(Settings().to_dict()),
                code="INVALID_VSCHEMA",
            )
        settings = Settings(**settings)
    return VSchema(
        tables,
        list(shards),
        default_shard=default_shard,
        default_table=default_table,
        settings=settings,
        source="<builder>",
    )


def sharded_table(
    column: str,
    vindex: Vindex | str,
    column_type: str | None = None,
    *,
    auto_increment: AutoIncrement | None = None,
) -> Table:
    """Rows spread over the shards by ``vindex`` applied to ``column``.

    ``auto_increment=AutoIncrement("id", "users_seq")``: the router assigns the
    INTEGER PRIMARY KEY from that sequence (ids unique across shards).
    """
    if isinstance(vindex, str):
        if vindex not in VINDEX_TYPES or vindex == "range":
            raise ValidationError(
                f"vindex {vindex!r}: pass hash_vindex(), consistent_hash_vindex() or "
                "range_vindex([...])",
                code="INVALID_VSCHEMA",
            )
        vindex = VINDEX_TYPES[vindex]()
    return Table(
        "sharded",
        column=column,
        vindex=vindex,
        column_type=column_type,
        auto_increment=auto_increment,
    )


def reference_table() -> Table:
    """A small table copied to every shard (reads from one, writes to all)."""
    return Table("reference")


def unsharded_table(shard_id: str) -> Table:
    """A table that lives entirely on ``shard_id``."""
    return Table("unsharded", shard=shard_id)


def hash_vindex() -> HashVindex:
    return HashVindex()


def consistent_hash_vindex(virtual_nodes: int = DEFAULT_VIRTUAL_NODES) -> ConsistentHashVindex:
    return ConsistentHashVindex(virtual_nodes)


def range_vindex(ranges: Iterable[Mapping[str, Any] | ValueRange]) -> RangeVindex:
    """``ranges``: ``{"shard": id, "min": lo, "max": hi}`` each, min inclusive, max exclusive."""
    return RangeVindex(tuple(ranges))  # type: ignore[arg-type]


def shard(
    id: str,  # noqa: A002 - mirrors the reference API
    *,
    address: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    key_range: KeyRange | str | None = None,
) -> Shard:
    """A shard; ``key_range`` in Vitess notation (``"-40"``) or a KeyRange."""
    if isinstance(key_range, str):
        key_range = KeyRange.parse(key_range)
    return Shard(id, address=address, metadata=dict(metadata or {}), key_range=key_range)
