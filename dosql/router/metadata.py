"""Tables added under the ``default_table`` policy, persisted on the default shard.

When a client creates a table the VSchema does not list, the router decides
its placement (``shard_by_primary_key`` or ``unsharded``) and stores it as
cluster metadata on the default shard: key ``table:<name>``, value the
table's VSchema entry as JSON (``VSchema.to_dict()["tables"][name]``). Every
router loads these at start (and a restarted one routes the table the same
way); ``DROP TABLE`` deletes the key. Views created through the router are
kept the same way, under ``view:<name>`` with their CREATE VIEW text.

A table sharded under ``shard_by_primary_key`` whose sharding column can hold
NULL (anything but an INTEGER PRIMARY KEY) keeps its NULL-key rows on the
default shard: the entry then carries ``"null_shard": "<shard id>"`` beside
the VSchema keys (stripped before the entry reaches ``vschema.from_dict``).
Tables listed in the VSchema keep refusing NULL keys (SHARDING_KEY_NULL).

A table sharded by its INTEGER PRIMARY KEY instead gets ``"sequence": true``:
the router assigns keys the client leaves NULL (or out) from the sequence
named after the table (see :mod:`dosql.router.sequences`). Sequence state
lives in the default shard's sidecar database (:mod:`dosql.shard.sequences`);
``seq:<table>`` keys here are where it lived before, read once when the
sidecar first meets the sequence.
"""

from __future__ import annotations

import json
from typing import Any

import vschema
from dosql import protocol
from dosql.router.pool import ShardConnection, ShardPool

PREFIX = "table:"
NULL_SHARD = "null_shard"
SEQUENCE = "sequence"
SEQ_PREFIX = "seq:"
DDL_PREFIX = "ddl:"
_ROUTER_KEYS = (NULL_SHARD, SEQUENCE)


def sequences(learned: dict[str, dict[str, Any]]) -> set[str]:
    """Tables whose INTEGER PRIMARY KEY sharding key the router assigns (lower case)."""
    return {name.lower() for name, entry in learned.items() if entry.get(SEQUENCE)}


def null_shards(learned: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Tables whose NULL-key rows live on one shard: name (lower case) -> shard id."""
    return {
        name.lower(): str(entry[NULL_SHARD])
        for name, entry in learned.items()
        if NULL_SHARD in entry
    }


async def load(pool: ShardPool) -> dict[str, dict[str, Any]]:
    result = await pool.run(lambda c: c.call(lambda rid: protocol.MetaGet(id=rid, prefix=PREFIX)))
    values = (result.info or {}).get("values") or {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if not key.startswith(PREFIX) or value is None:
            continue
        try:
            entry = json.loads(value)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out[key[len(PREFIX) :]] = entry
    return out


async def store(
    pool: ShardPool, name: str, entry: dict[str, Any] | None, conn: ShardConnection | None = None
) -> None:
    """Write (or with ``entry`` None delete) a table's entry; on ``conn`` when in a transaction."""
    value = None if entry is None else json.dumps(entry, sort_keys=True)

    async def put(c: ShardConnection) -> Any:
        return await c.call(lambda rid: protocol.MetaSet(id=rid, key=PREFIX + name, value=value))

    if conn is not None:
        await put(conn)
    else:
        await pool.run(put)


VIEW_PREFIX = "view:"


async def load_views(pool: ShardPool) -> dict[str, str]:
    """Views created through the router: name (lower case) -> CREATE VIEW text."""
    result = await pool.run(
        lambda c: c.call(lambda rid: protocol.MetaGet(id=rid, prefix=VIEW_PREFIX))
    )
    values = (result.info or {}).get("values") or {}
    return {k[len(VIEW_PREFIX) :]: v for k, v in values.items() if v and k.startswith(VIEW_PREFIX)}


async def store_view(
    pool: ShardPool, name: str, ddl: str | None, conn: ShardConnection | None = None
) -> None:
    async def put(c: ShardConnection) -> Any:
        return await c.call(lambda rid: protocol.MetaSet(id=rid, key=VIEW_PREFIX + name, value=ddl))

    if conn is not None:
        await put(conn)
    else:
        await pool.run(put)


def table_entry(vs: Any, name: str) -> dict[str, Any]:
    return vs.to_dict()["tables"][vs.table(name).name]


def overlay(base: Any, learned: dict[str, dict[str, Any]]) -> Any:
    """``base`` plus the learned tables (base entries win, except a learned column type)."""
    if not learned:
        return base
    data = base.to_dict()
    tables = dict(data["tables"])
    lower = {k.lower(): k for k in tables}
    for name, full in learned.items():
        entry = {k: v for k, v in full.items() if k not in _ROUTER_KEYS}
        key = lower.get(name.lower())
        if key is None:
            tables[name] = entry
            continue
        cur = dict(tables[key])
        if (
            cur.get("kind") == "sharded"
            and "column_type" not in cur
            and entry.get("column") == cur.get("column")
            and entry.get("column_type")
        ):
            cur["column_type"] = entry["column_type"]
            tables[key] = cur
    data["tables"] = tables
    return vschema.from_dict(data, source="<router>")


async def version(pool: ShardPool) -> int:
    """The default shard's metadata version (every MetaSet increments it)."""
    key = protocol.META_VERSION_KEY
    result = await pool.run(lambda c: c.call(lambda rid: protocol.MetaGet(id=rid, prefix=key)))
    value = ((result.info or {}).get("values") or {}).get(key)
    return int(value) if value else 0


async def announce_ddl(pool: ShardPool, table: str, conn: ShardConnection | None = None) -> str:
    """Record that ``table``'s definition changed (``ddl:<table>``): the version bump
    tells every other router to drop what it cached about it. Returns the stamp."""
    import time
    import uuid

    stamp = f"{time.time():.6f} {uuid.uuid4().hex[:8]}"

    async def put(c: ShardConnection) -> Any:
        return await c.call(
            lambda rid: protocol.MetaSet(id=rid, key=DDL_PREFIX + table, value=stamp)
        )

    if conn is not None:
        await put(conn)
    else:
        await pool.run(put)
    return stamp


async def ddl_stamps(pool: ShardPool) -> dict[str, str]:
    """``table -> stamp`` of the last DDL announced for each table."""
    result = await pool.run(
        lambda c: c.call(lambda rid: protocol.MetaGet(id=rid, prefix=DDL_PREFIX))
    )
    values = (result.info or {}).get("values") or {}
    return {k[len(DDL_PREFIX) :]: v for k, v in values.items() if v and k.startswith(DDL_PREFIX)}
