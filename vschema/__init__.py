"""VSchema: how DoSQL places tables on shards (Vitess-style).

Load one from TOML with :func:`load` / :func:`from_dict`, or build one with the
builder API (:func:`create_vschema`, :func:`sharded_table`, …). A VSchema is
immutable and validated when built; its lookups (``shard_for``,
``keyspace_id``, ``shards_for_values``, ``shards_for_range``) are pure
functions of the VSchema and the value, identical in every process.
"""

from vschema.builders import (
    consistent_hash_vindex,
    create_vschema,
    hash_vindex,
    range_vindex,
    reference_table,
    shard,
    sharded_table,
    unsharded_table,
)
from vschema.keyrange import KEYSPACE_SIZE, KeyRange, even_split
from vschema.loader import from_dict, load
from vschema.model import (
    DEFAULT_TABLE_POLICIES,
    TABLE_KINDS,
    AutoIncrement,
    Settings,
    Shard,
    Table,
    VSchema,
)
from vschema.report import routing_table
from vschema.tomlw import dumps as toml_dumps
from vschema.values import Affinity, affinity_of, apply_affinity, encode
from vschema.vindexes import (
    ConsistentHashVindex,
    HashVindex,
    RangeVindex,
    ValueRange,
    Vindex,
    hash64,
)

__all__ = [
    "DEFAULT_TABLE_POLICIES",
    "KEYSPACE_SIZE",
    "TABLE_KINDS",
    "Affinity",
    "AutoIncrement",
    "ConsistentHashVindex",
    "HashVindex",
    "KeyRange",
    "RangeVindex",
    "Settings",
    "Shard",
    "Table",
    "VSchema",
    "ValueRange",
    "Vindex",
    "affinity_of",
    "apply_affinity",
    "consistent_hash_vindex",
    "create_vschema",
    "encode",
    "even_split",
    "from_dict",
    "hash64",
    "hash_vindex",
    "load",
    "range_vindex",
    "reference_table",
    "routing_table",
    "shard",
    "sharded_table",
    "toml_dumps",
    "unsharded_table",
]
