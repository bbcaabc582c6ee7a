"""Where each table's rows were put: a VSchema edit that would move them is refused.

Editing a table's rule (its kind, sharding column or vindex) or the shards and
their key ranges changes where the router looks for every row, but moves none:
routed reads then miss rows and two routers on different VSchemas answer the
same query differently. So the placement each table is routed by is recorded
once, as cluster metadata on the default shard (``placement:<table>``: the
table's VSchema entry and, for a sharded table, the shards' ids and key
ranges), and every router compares its own with the record whenever it loads
metadata:

- no record yet, or the same placement: nothing to do (the first router to
  see a table records it);
- another placement while the table is empty on every shard: nothing can be
  misplaced, so the new placement is recorded and used;
- another placement while the table holds rows: the table is *blocked* on
  this router. Every statement naming it fails with ``PLACEMENT_CHANGED``,
  which says what changed and how to go back; the other tables are served.
  ``/status`` lists blocked tables and ``/health/deep`` reports them.

A shard that cannot be asked blocks the table too (its rows cannot be ruled
out) until a later check reaches it. Blocked tables are checked again on
every metadata poll, so putting the old rule back (and restarting the router)
or emptying the table clears it.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import sqlglot
from sqlglot.errors import SqlglotError

from dosql import protocol
from dosql.errors import ConfigurationError, DoSQLError
from dosql.router.pool import ShardConnection, ShardPool, ShardResult
from dosql.router.statement import physical_tables

log = logging.getLogger(__name__)

PREFIX = "placement:"
# not where rows live: the key's type comes from the table's DDL, ids from a sequence
_NOT_PLACEMENT = ("column_type", "auto_increment")


def placements(vs: Any) -> dict[str, dict[str, Any]]:
    """Each table's placement under ``vs``: table (lower case) -> what decides its rows' shard."""
    data = vs.to_dict()
    shards = [{"id": s["id"], "key_range": s.get("key_range")} for s in data["shards"]]
    out: dict[str, dict[str, Any]] = {}
    vindexes = data.get("vindexes") or {}
    for name, entry in data["tables"].items():
        rule = {k: v for k, v in entry.items() if k not in _NOT_PLACEMENT}
        placement: dict[str, Any] = {"rule": rule}
        if rule.get("kind") == "sharded":
            vindex = rule.get("vindex")  # by name: the definition decides
            if isinstance(vindex, str) and vindex in vindexes:
                rule["vindex"] = {"name": vindex, **vindexes[vindex]}
            placement["shards"] = shards
        elif rule.get("kind") == "reference":
            placement["shards"] = [s["id"] for s in shards]
        out[name.lower()] = placement
    return out


async def recorded(pool: ShardPool) -> dict[str, dict[str, Any]]:
    result = await pool.run(lambda c: c.call(lambda rid: protocol.MetaGet(id=rid, prefix=PREFIX)))
    values = (result.info or {}).get("values") or {}
    out: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        if key.startswith(PREFIX) and value:
            try:
                out[key[len(PREFIX) :]] = json.loads(value)
            except ValueError:
                continue
    return out


async def record(
    pool: ShardPool,
    name: str,
    placement: dict[str, Any] | None,
    conn: ShardConnection | None = None,
) -> None:
    """Record (None: forget) ``name``'s placement; on ``conn`` inside a client's DDL
    transaction, so a table created or dropped through the router is never compared
    with the placement of an earlier table of the same name."""
    value = None if placement is None else json.dumps(placement, sort_keys=True)

    async def put(c: ShardConnection) -> Any:
        return await c.call(lambda rid: protocol.MetaSet(id=rid, key=PREFIX + name, value=value))

    await (put(conn) if conn is not None else pool.run(put))


async def holds_rows(pool: ShardPool, table: str) -> bool:
    """Whether ``table`` exists on this shard with at least one row."""

    async def ask(c: ShardConnection) -> ShardResult:
        found = await c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
            [table],
        )
        if not found.rows:
            return found
        quoted = '"' + str(found.rows[0][0]).replace('"', '""') + '"'
        return await c.execute(f"SELECT 1 FROM {quoted} LIMIT 1")

    return bool((await pool.run(ask)).rows)


async def check(
    pools: dict[str, ShardPool], default_shard: str, vs: Any, names: set[str] | None = None
) -> dict[str, DoSQLError]:
    """Compare ``vs``'s placements with the recorded ones (only ``names``, when given):
    record what may change, return the blocked tables with their errors."""
    default = pools[default_shard]
    before = await recorded(default)
    blocked: dict[str, DoSQLError] = {}
    for name, mine in placements(vs).items():
        if names is not None and name not in names:
            continue
        old = before.get(name)
        if old == mine:
            continue
        if old is not None:
            why = await _rows_somewhere(pools, name)
            if why:
                blocked[name] = changed(name, old, mine, why)
                continue
        await record(default, name, mine)
    for name, exc in blocked.items():
        log.error(
            "table blocked: its placement changed while it holds rows",
            extra={"table": name, "error": exc.message},
        )
    return blocked


async def _rows_somewhere(pools: dict[str, ShardPool], table: str) -> str:
    """Why the table cannot take a new placement ('' when it is empty on every shard)."""
    for sid, pool in pools.items():
        try:
            if await holds_rows(pool, table):
                return f"it holds rows (on {sid} at least)"
        except DoSQLError as exc:
            return f"{sid} could not be asked whether it holds rows of it ({exc.code})"
    return ""


def changed(name: str, old: dict[str, Any], mine: dict[str, Any], why: str) -> DoSQLError:
    was, now = describe(old), describe(mine)
    if was == now:
        now += ", with other vindex parameters"
    return ConfigurationError(
        f"table {name}: this router's VSchema places it differently from where its rows "
        f"were written ({was} before; {now} now), and {why}. Routing it by the new rule "
        "would miss rows, so statements on it are refused on this router. Put the table's "
        "previous rule and shards back in the VSchema and restart the router. To move the "
        "rows (online resharding is not built yet): with the previous VSchema, copy them out "
        "and drop the table; then start the routers on the new one, create the table and load "
        "the rows again",
        code="PLACEMENT_CHANGED",
        details={"table": name, "recorded": old, "vschema": mine},
    )


def describe(placement: dict[str, Any]) -> str:
    rule = placement.get("rule") or {}
    kind = str(rule.get("kind"))
    parts = [kind]
    if kind == "sharded":
        vindex = rule.get("vindex")
        what = vindex.get("type") if isinstance(vindex, dict) else vindex
        parts.append(f"by {rule.get('column')} ({what} vindex)")
    shards = placement.get("shards")
    if shards:
        ids = [s["id"] if isinstance(s, dict) else s for s in shards]
        parts.append(f"over {len(ids)} shards ({', '.join(ids)})")
    elif rule.get("shard"):
        parts.append(f"on {rule.get('shard')}")
    return " ".join(parts)


def refusal(blocked: dict[str, DoSQLError], sql: str) -> DoSQLError | None:
    """The error of the first blocked table ``sql`` names (None: it names none, or does not
    parse, and the planner reports that)."""
    try:
        trees = sqlglot.parse(sql, read="sqlite")
    except SqlglotError:
        return None
    for tree in trees:
        if tree is None:
            continue
        for table in physical_tables(tree):
            exc = blocked.get(str(table.name).lower())
            if exc is not None:
                return exc
    return None
