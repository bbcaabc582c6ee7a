"""Load a VSchema from TOML (or the equivalent mapping), validating as it goes.

File format::

    default_shard = "shard-0"          # optional; the first shard by default
    default_table = "shard_by_primary_key"   # tables not listed below:
                                       # "shard_by_primary_key" | "unsharded" | "refuse"
    shard_count = 4                    # shards shard-0 .. shard-3 (or list [[shards]])

    [settings]                         # optional, reference-guide defaults
    max_parallel_shards = 8
    shard_timeout_ms = 10000
    enable_caching = true

    [[shards]]                         # instead of shard_count; order matters
    id = "shard-0"
    address = "ws://10.0.0.5:4000"     # optional; the cluster fills it in
    metadata = { region = "us-west" }  # optional, free-form
    key_range = "-40"                  # optional (Vitess notation); all shards or none.
                                       # Without key ranges: an even split in shard order.

    [vindexes.tenant]                  # named vindexes; parameters sit beside type
    type = "hash"                      # "hash" | "consistent_hash" | "range"
    [vindexes.ring]
    type = "consistent_hash"
    virtual_nodes = 160
    [vindexes.by_year]
    type = "range"                     # [min, max) per shard; min/max may be omitted (open)
    ranges = [ { shard = "shard-0", min = "2024-01-01", max = "2025-01-01" } ]

    [tables.users]
    kind = "sharded"                   # "sharded" | "reference" | "unsharded"
    column = "tenant_id"               # the sharding column (required when sharded)
    vindex = "tenant"                  # a vindex name, a type name ("hash") for an
                                       # anonymous vindex, or an inline {type = ..., ...}
    column_type = "INTEGER"            # declared type: decides how key values convert
    auto_increment = { column = "id", sequence = "users_seq" }
                                       # optional: the router fills in the INTEGER PRIMARY
                                       # KEY id from sequence users_seq (unique across
                                       # shards); without it id-less inserts are refused
    [tables.system_config]
    kind = "unsharded"
    shard = "shard-0"                  # defaults to default_shard

With neither ``[[shards]]`` nor ``shard_count`` there are ``default_shard_count``
shards. ``kind`` may be left out when ``column`` (sharded) or ``shard``
(unsharded) says it; a sharded table without ``vindex`` uses ``hash``.
Every mistake raises ``ValidationError(code="INVALID_VSCHEMA")`` naming the
file and the table, vindex, shard or key at fault; unreadable files and TOML
syntax errors raise ``ConfigurationError`` naming the file.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dosql.errors import ConfigurationError, ValidationError
from vschema.keyrange import KeyRange
from vschema.model import (
    DEFAULT_TABLE_POLICIES,
    TABLE_KINDS,
    AutoIncrement,
    Settings,
    Shard,
    Table,
    VSchema,
)
from vschema.vindexes import VINDEX_TYPES, ConsistentHashVindex, RangeVindex, Vindex

TOP_LEVEL_KEYS = (
    "default_shard",
    "default_table",
    "shard_count",
    "settings",
    "shards",
    "vindexes",
    "tables",
)
SHARD_KEYS = ("id", "address", "metadata", "key_range")
TABLE_KEYS = ("kind", "column", "vindex", "column_type", "shard", "auto_increment")
AUTO_INCREMENT_KEYS = ("column", "sequence")
VINDEX_PARAMS: dict[str, tuple[str, ...]] = {
    "hash": (),
    "consistent_hash": ("virtual_nodes",),
    "range": ("ranges",),
}


def _invalid(message: str, **details: Any) -> ValidationError:
    return ValidationError(message, code="INVALID_VSCHEMA", details=details)


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = [key for key in data if key not in allowed]
    if unknown:
        raise _invalid(
            f"{where}: unknown key {unknown[0]!r}; allowed keys: " + ", ".join(allowed),
            key=unknown[0],
        )


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(f"{where} must be a table, not {value!r}")
    return value


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise _invalid(f"{where}: {key} must be a string, not {value!r}", key=key)
    return value


def _shards(data: Mapping[str, Any], source: str, default_count: int) -> list[Shard]:
    if "shards" in data and "shard_count" in data:
        raise _invalid(f"{source}: give either [[shards]] or shard_count, not both")
    if "shards" not in data:
        count = data.get("shard_count", default_count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise _invalid(f"{source}: shard_count must be an integer >= 1, not {count!r}")
        return [Shard(f"shard-{i}") for i in range(count)]
    entries = data["shards"]
    if not isinstance(entries, list) or not entries:
        raise _invalid(f"{source}: shards must be a non-empty array of tables ([[shards]])")
    shards = []
    for index, entry in enumerate(entries):
        where = f"{source}: shards[{index}]"
        entry = _mapping(entry, where)
        if isinstance(entry.get("id"), str):
            where = f"{source}: shard {entry['id']!r}"
        _check_keys(entry, SHARD_KEYS, where)
        if not isinstance(entry.get("id"), str):
            raise _invalid(f"{where}: id (a string) is required")
        metadata = _mapping(entry.get("metadata", {}), f"{where}: metadata")
        spec = _optional_str(entry, "key_range", where)
        try:
            key_range = KeyRange.parse(spec) if spec is not None else None
        except ValidationError as exc:
            raise _invalid(f"{where}: {exc.message}", shard=entry["id"]) from None
        shards.append(
            Shard(
                entry["id"],
                address=_optional_str(entry, "address", where),
                metadata=dict(metadata),
                key_range=key_range,
            )
        )
    return shards


def parse_vindex(spec: Mapping[str, Any], where: str) -> Vindex:
    """Build a vindex from ``{type = ..., <params>}``."""
    vtype = spec.get("type")
    if vtype not in VINDEX_TYPES:
        raise _invalid(
            f"{where}: type {vtype!r} is not a vindex type; use one of " + ", ".join(VINDEX_TYPES)
        )
    _check_keys(spec, ("type", *VINDEX_PARAMS[vtype]), where)
    if vtype == "consistent_hash":
        return ConsistentHashVindex(**{k: v for k, v in spec.items() if k != "type"})
    if vtype == "range":
        ranges = spec.get("ranges")
        if not isinstance(ranges, list):
            raise _invalid(f"{where}: a range vindex needs ranges = [{{shard, min, max}}, ...]")
        try:
            return RangeVindex(tuple(ranges))
        except ValidationError as exc:
            raise _invalid(f"{where}: {exc.message}") from None
    return VINDEX_TYPES[vtype]()


def _vindexes(data: Mapping[str, Any], source: str) -> dict[str, Vindex]:
    section = _mapping(data.get("vindexes", {}), f"{source}: [vindexes]")
    return {
        name: parse_vindex(
            _mapping(spec, f"{source}: vindex {name!r}"), f"{source}: vindex {name!r}"
        )
        for name, spec in section.items()
    }


def _table(
    name: str, spec: Mapping[str, Any], named: Mapping[str, Vindex], default_shard: str, where: str
) -> Table:
    _check_keys(spec, TABLE_KEYS, where)
    kind = spec.get("kind")
    if kind is None:
        if "column" in spec:
            kind = "sharded"
        elif "shard" in spec:
            kind = "unsharded"
        else:
            raise _invalid(
                f"{where}: kind is required: one of " + ", ".join(TABLE_KINDS), table=name
            )
    if kind not in TABLE_KINDS:
        raise _invalid(
            f"{where}: kind {kind!r} must be one of " + ", ".join(TABLE_KINDS), table=name
        )
    column = _optional_str(spec, "column", where)
    column_type = _optional_str(spec, "column_type", where)
    shard = _optional_str(spec, "shard", where)
    auto_increment = _auto_increment(spec, name, where)
    if kind != "sharded":
        if auto_increment is not None:
            raise _invalid(
                f"{where}: auto_increment is for sharded tables ({kind} tables keep SQLite's "
                "own rowid counter); remove it",
                table=name,
                setting="auto_increment",
            )
        if "column" in spec or "vindex" in spec:
            raise _invalid(
                f"{where}: a {kind} table has no sharding column or vindex; remove them "
                'or use kind = "sharded"',
                table=name,
            )
        if kind == "unsharded" and shard is None:
            shard = default_shard
        return Table(kind, shard=shard, column_type=column_type)
    vindex_spec = spec.get("vindex", "hash")
    vindex_name = None
    if isinstance(vindex_spec, str):
        if vindex_spec in named:
            vindex, vindex_name = named[vindex_spec], vindex_spec
        elif vindex_spec in VINDEX_TYPES:
            vindex = parse_vindex({"type": vindex_spec}, f"{where}: vindex")
        else:
            raise _invalid(
                f"{where}: unknown vindex {vindex_spec!r}; known vindexes: "
                + (", ".join(named) or "none")
                + "; vindex types: "
                + ", ".join(VINDEX_TYPES),
                table=name,
                vindex=vindex_spec,
            )
    elif isinstance(vindex_spec, Mapping):
        vindex = parse_vindex(vindex_spec, f"{where}: vindex")
    else:
        raise _invalid(f"{where}: vindex must be a name or an inline table", table=name)
    return Table(
        "sharded",
        column=column,
        vindex=vindex,
        shard=shard,
        column_type=column_type,
        vindex_name=vindex_name,
        auto_increment=auto_increment,
    )


def _auto_increment(spec: Mapping[str, Any], name: str, where: str) -> AutoIncrement | None:
    """``auto_increment = { column = "id", sequence = "users_seq" }`` (validated by the model)."""
    if "auto_increment" not in spec:
        return None
    raw = spec["auto_increment"]
    example = '{ column = "id", sequence = "' + name + '_seq" }'
    if not isinstance(raw, Mapping):
        raise _invalid(
            f"{where}: auto_increment must be an inline table like {example}, not {raw!r}",
            table=name,
            setting="auto_increment",
        )
    where_ai = f"{where}: auto_increment"
    _check_keys(raw, AUTO_INCREMENT_KEYS, where_ai)
    for key in AUTO_INCREMENT_KEYS:
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise _invalid(
                f"{where_ai}.{key} is required (a non-empty string), as in {example}",
                table=name,
                setting=f"auto_increment.{key}",
            )
    return AutoIncrement(raw["column"], raw["sequence"])


def _settings(data: Mapping[str, Any], source: str) -> Settings:
    section = _mapping(data.get("settings", {}), f"{source}: [settings]")
    _check_keys(section, tuple(Settings().to_dict()), f"{source}: [settings]")
    return Settings(**section)


def from_dict(
    data: Mapping[str, Any], *, source: str = "<dict>", default_shard_count: int = 4
) -> VSchema:
    """Build and validate a VSchema from a TOML-shaped mapping (see the module doc)."""
    data = _mapping(data, source)
    _check_keys(data, TOP_LEVEL_KEYS, source)
    shards = _shards(data, source, default_shard_count)
    default_shard = data.get("default_shard", shards[0].id)
    if not isinstance(default_shard, str):
        raise _invalid(f"{source}: default_shard must be a shard id string")
    default_table = data.get("default_table", "shard_by_primary_key")
    if default_table not in DEFAULT_TABLE_POLICIES:
        raise _invalid(
            f"{source}: default_table {default_table!r} must be one of "
            + ", ".join(DEFAULT_TABLE_POLICIES)
        )
    named = _vindexes(data, source)
    tables_section = _mapping(data.get("tables", {}), f"{source}: [tables]")
    tables = {
        name: _table(
            name,
            _mapping(spec, f"{source}: table {name!r}"),
            named,
            default_shard,
            f"{source}: table {name!r}",
        )
        for name, spec in tables_section.items()
    }
    return VSchema(
        tables,
        shards,
        default_shard=default_shard,
        default_table=default_table,
        settings=_settings(data, source),
        vindexes=named,
        source=source,
    )


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; ConfigurationError naming the file when it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"VSchema file {path} does not exist",
            code="MISSING_CONFIG",
            details={"path": str(path)},
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(
            f"cannot read VSchema file {path}: {exc}", details={"path": str(path)}
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(
            f"{path} is not valid TOML: {exc}", details={"path": str(path)}
        ) from None


def load(path: str | Path, *, default_shard_count: int = 4) -> VSchema:
    """Load and validate a VSchema TOML file."""
    return from_dict(read_toml(path), source=str(path), default_shard_count=default_shard_count)
