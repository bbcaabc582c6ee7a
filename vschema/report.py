"""Human-readable routing table of a VSchema (``dosql vschema``, ``make run``).

Operators check a VSchema by reading where things go: each table's kind,
column and vindex, each vindex's parameters (range boundaries in full), and
each shard's key range with its inclusive keyspace-id bounds and metadata.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vschema.model import VSchema
from vschema.vindexes import ConsistentHashVindex, RangeVindex, Vindex


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = []
    for row in (header, *rows):
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _vindex_params(vindex: Vindex) -> str:
    if isinstance(vindex, ConsistentHashVindex):
        return f"virtual_nodes={vindex.virtual_nodes}"
    if isinstance(vindex, RangeVindex):
        return f"{len(vindex.ranges)} ranges"
    return "xxhash64 -> key ranges"


def _vindex_label(vs: VSchema, table_name: str) -> str:
    table = vs.table(table_name)
    if table.vindex is None:
        return "-"
    if table.vindex_name:
        return f"{table.vindex_name} ({table.vindex.type_name})"
    return table.vindex.type_name


def _placement(vs: VSchema, table_name: str) -> str:
    table = vs.table(table_name)
    if table.kind == "reference":
        return f"every shard ({len(vs.shard_ids)})"
    if table.kind == "unsharded":
        return str(table.shard)
    if isinstance(table.vindex, RangeVindex):
        shards = sorted({r.shard for r in table.vindex.ranges}, key=vs.shard_ids.index)
        return ", ".join(shards) + " by value range"
    if isinstance(table.vindex, ConsistentHashVindex):
        return f"{len(vs.shard_ids)} shards by hash ring"
    return f"{len(vs.shard_ids)} shards by key range"


def routing_table(vs: VSchema) -> str:
    """The VSchema as a text report: settings, tables, vindexes, shards."""
    s = vs.settings
    lines = [
        f"VSchema {vs.source}",
        f"  default shard: {vs.default_shard}",
        f"  tables not listed: {vs.default_table}",
        f"  settings: max_parallel_shards={s.max_parallel_shards} "
        f"shard_timeout_ms={s.shard_timeout_ms} enable_caching={_value(s.enable_caching)}",
        "",
        f"Tables ({len(vs.tables)})",
    ]
    rows = [
        [
            t.name,
            t.kind,
            t.column or "-",
            t.column_type or "-",
            _vindex_label(vs, t.name),
            _placement(vs, t.name),
        ]
        for t in vs.tables.values()
    ]
    if rows:
        lines += _columns(["TABLE", "KIND", "COLUMN", "COLUMN TYPE", "VINDEX", "SHARDS"], rows)
    else:
        lines.append("  (none)")

    vindexes: list[tuple[str, Vindex]] = list(vs.vindexes.items())
    vindexes += [
        (f"{t.name}.{t.column} (anonymous)", t.vindex)
        for t in vs.tables.values()
        if t.vindex is not None and t.vindex_name is None
    ]
    lines += ["", f"Vindexes ({len(vindexes)})"]
    if vindexes:
        lines += _columns(
            ["NAME", "TYPE", "PARAMS"],
            [[name, v.type_name, _vindex_params(v)] for name, v in vindexes],
        )
        for name, v in vindexes:
            if isinstance(v, RangeVindex):
                lines.append(f"  {name} ranges (min inclusive, max exclusive):")
                lines += [f"      {r}" for r in v.ranges]
    else:
        lines.append("  (none)")

    split = "explicit key ranges" if vs.key_ranges_explicit else "even split"
    lines += ["", f"Shards ({len(vs.shards)}, {split})"]
    lines += _columns(
        ["SHARD", "KEY RANGE", "KEYSPACE IDS", "ADDRESS", "METADATA"],
        [
            [
                sh.id,
                str(sh.key_range),
                sh.key_range.describe() if sh.key_range else "-",
                sh.address or "-",
                ", ".join(f"{k}={_value(v)}" for k, v in sh.metadata.items()) or "-",
            ]
            for sh in vs.shards
        ],
    )
    return "\n".join(lines) + "\n"
