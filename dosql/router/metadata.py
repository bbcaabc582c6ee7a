"""Tables added under the ``default_table`` policy, persisted on the default shard.

When a client creates a table the VSchema does not list, the router decides
its placement (``shard_by_primary_key`` or ``unsharded``) and stores it as
cluster metadata on the default shard: key ``table:<name>``, value the
table's VSchema entry as JSON (``VSchema.to_dict()["tables"][name]``). Every
router loads these at start (and a restarted one routes the table the same
way); ``DROP TABLE`` deletes the key.
"""

from __future__ import annotations

import json
from typing import Any

import vschema
from dosql import protocol
from dosql.router.pool import ShardConnection, ShardPool

PREFIX = "table:"


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


def table_entry(vs: Any, name: str) -> dict[str, Any]:
    return vs.to_dict()["tables"][vs.table(name).name]


def overlay(base: Any, learned: dict[str, dict[str, Any]]) -> Any:
    """``base`` plus the learned tables (base entries win, except a learned column type)."""
    if not learned:
        return base
    data = base.to_dict()
    tables = dict(data["tables"])
    lower = {k.lower(): k for k in tables}
    for name, entry in learned.items():
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
