"""What the router knows about tables: the VSchema overlay, schemas, learned metadata.

Routing a value needs the sharding column's affinity (42 and '42' land
together in an INTEGER column), pinning a text value is only sound under
the BINARY collation, and router-side plans recreate tables in memory from
their own CREATE statements: all of it is read from the shards once and
kept here. Tables created through the router under the ``default_table``
policy, and views, are cluster metadata on the default shard.

A mixin of :class:`dosql.router.executor.Executor`; every change of the
VSchema overlay clears the plan cache (plans embed routing decisions).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import vschema
from dosql import protocol
from dosql.errors import DoSQLError, NotSupportedError, QueryError
from dosql.router import gather, metadata, placement
from dosql.router.gather import ROWID_NAMES  # noqa: F401 - used by callers of the catalog
from dosql.router.pool import ShardConnection, ShardPool, ShardResult

if TYPE_CHECKING:
    from dosql.router.transactions import Transaction

PROBE = (
    "(SELECT count(*) FROM (SELECT {e} FROM {f} WHERE 0 UNION SELECT 'a' UNION SELECT 'A')),"
    "(SELECT count(*) FROM (SELECT {e} FROM {f} WHERE 0 UNION SELECT 'a' UNION SELECT 'a '))"
)


def collation_from_probe(nocase_count: Any, rtrim_count: Any) -> str | None:
    return {(2, 2): "BINARY", (1, 2): "NOCASE", (2, 1): "RTRIM"}.get((nocase_count, rtrim_count))


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class TableInfo:
    columns: list[str]
    types: dict[str, str]
    pk: list[str]
    key_collation: str | None
    defaults: dict[str, Any] = field(default_factory=dict)  # column (lower) -> dflt_value


class Catalog:
    base: Any
    vs: Any
    pools: dict[str, ShardPool]
    learned: dict[str, dict[str, Any]]
    schema: dict[str, TableInfo]
    local_schemas: dict[str, gather.LocalSchema]
    null_shards: dict[str, str]
    sequences: set[str]
    views: dict[str, str]
    seq_ids: Any  # sequences.IdBlocks
    meta_loaded: bool
    meta_version: int  # the default shard's metadata version the loaded state is from
    key_types: dict[str, str]  # listed sharded tables' key types learned from shards
    ddl_stamps: dict[str, str]  # table -> its last announced DDL (metadata.ddl_stamps)
    meta_changes: int  # metadata changes this router made (a load racing one is dropped)
    blocked: dict[str, DoSQLError]  # tables whose placement changed under rows (placement.py)

    clear_plans: Callable[[], None]  # the executor's: plans embed routing decisions
    on_shard: Callable[..., Awaitable[ShardResult]]  # Fanout's

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(self.vs.shard_ids)

    def set_vs(self, vs: Any) -> None:
        self.vs = vs
        self.clear_plans()

    async def refresh_metadata(self) -> bool:
        """Reload what routers share (tables, views, sequences) when the default shard's
        metadata version moved: another router created, altered or dropped something
        since this one loaded it. One small read when it did not; True if it moved."""
        version = await metadata.version(self.pools[self.vs.default_shard])
        if version == self.meta_version and self.meta_loaded:
            if self.blocked:  # emptied meanwhile, or a shard that could not be asked is back
                await self._check_placements(self.vs, set(self.blocked))
            return False
        await self._load(version)
        return True

    async def _check_placements(self, vs: Any, names: set[str] | None = None) -> None:
        """Refuse tables whose rows this VSchema would look for elsewhere (placement.py);
        ``names``: check only these again (the blocked ones: nothing else changed)."""
        blocked = await placement.check(self.pools, vs.default_shard, vs, names)
        if blocked.keys() != self.blocked.keys():
            self.clear_plans()
        self.blocked = blocked

    async def load_metadata(self) -> None:
        """Tables created under the default_table policy (best effort; retried on demand)."""
        if self.meta_loaded:
            return
        # the version first: a change made while loading is seen on the next refresh
        await self._load(await metadata.version(self.pools[self.vs.default_shard]))

    async def _load(self, version: int) -> None:
        """Load the shared metadata; drop only what a DDL made elsewhere outdated (this
        router's own DDL, already applied, clears no plan when its version bump returns)."""
        pool = self.pools[self.vs.default_shard]
        changes = self.meta_changes
        learned = await metadata.load(pool)
        views = await metadata.load_views(pool)
        stamps = await metadata.ddl_stamps(pool)
        if self.meta_changes != changes:
            return  # this router changed the metadata meanwhile: what was read may predate it
        known = stamps.keys() | self.ddl_stamps.keys()
        redefined = {t for t in known if stamps.get(t) != self.ddl_stamps.get(t)}
        for name in redefined:  # its columns and key type may differ now
            self.key_types.pop(name, None)
            self.schema.pop(name, None)
        if redefined:
            self.local_schemas.clear()
        self.ddl_stamps = stamps
        self.learned = learned
        self.null_shards = metadata.null_shards(learned)
        self.sequences = metadata.sequences(learned)
        vs = metadata.overlay(self.base, learned)
        for name, decl in self.key_types.items():
            vs = _with_key_type(vs, name, decl)
        await self._check_placements(vs)
        if redefined or views != self.views or vs.to_dict() != self.vs.to_dict():
            self.views = views
            self.set_vs(vs)  # clears the plans: they embed routing and schema decisions
        self.meta_version = version
        self.meta_loaded = True

    async def table_info(self, name: str, tx: Transaction | None = None) -> TableInfo | None:
        key = name.lower()
        if key in self.schema:
            return self.schema[key]
        table = self.vs.table(name)
        candidates = [table.shard] if table.kind == "unsharded" else list(self.order)
        if tx is not None:  # a table created in this transaction is visible only there
            candidates = [s for s in tx.shards if s in candidates] + candidates
        for sid in candidates:
            try:
                info = await self.fetch_info(sid, name, table, tx)
            except DoSQLError:
                continue
            if info is None:
                return None
            if tx is None or sid not in tx.conns:
                self.schema[key] = info
            return info
        return None

    async def fetch_info(
        self, sid: str, name: str, table: Any, tx: Transaction | None
    ) -> TableInfo | None:
        async def fetch(c: ShardConnection) -> TableInfo | None:
            r = await c.execute(
                "SELECT name, type, pk, dflt_value FROM pragma_table_info(?)", [name]
            )
            if not r.rows:
                return None
            columns = [row[0] for row in r.rows]
            defaults = {str(row[0]).lower(): row[3] for row in r.rows}
            types = {row[0].lower(): row[1] for row in r.rows}
            pk = [row[0] for row in sorted((x for x in r.rows if x[2]), key=lambda x: x[2])]
            coll = None
            if table.kind == "sharded" and table.column:
                probe = "SELECT " + PROBE.format(e=quote(table.column), f=quote(name))
                pr = await c.execute(probe)
                coll = collation_from_probe(*pr.rows[0])
            return TableInfo(columns, types, pk, coll, defaults)

        if tx is not None and sid in tx.conns:
            return await fetch(tx.conns[sid])
        return await self.pools[sid].run(fetch)

    async def learn_column_type(self, name: str, tx: Transaction | None) -> TableInfo | None:
        info = await self.table_info(name, tx)
        table = self.vs.table(name)
        if info is not None and table.kind == "sharded":
            self.record_column_type(table, info.types)
        return info

    def record_column_type(self, table: vschema.Table, types: dict[str, str]) -> None:
        """Learn a sharded table's key type from its declaration, for routing by affinity
        (kept across metadata reloads until the table is redefined)."""
        decl = types.get(str(table.column).lower())
        configured = (
            self.base.table(table.name).column_type if self.base.has_table(table.name) else None
        )
        if configured is None and decl is not None and table.column_type != decl:
            # learned, not configured: a re-created table may declare its key differently
            self.key_types[table.name.lower()] = decl
            self.set_vs(_with_key_type(self.vs, table.name, decl))

    async def local_schema(self, name: str, tx: Transaction | None) -> gather.LocalSchema:
        """The DDL and columns of ``name``, read once from a shard that holds it."""
        key = name.lower()
        if tx is None and key in self.local_schemas:
            return self.local_schemas[key]
        table = self.vs.table(name)
        if table.kind == "unsharded":
            sid = table.shard
        elif tx is not None and tx.shards:
            sid = tx.shards[0]
        else:
            sid = next((s for s in self.order if self.pools[s].healthy is not False), self.order[0])

        async def fetch(c: ShardConnection) -> ShardResult:
            ddl = await c.execute(
                "SELECT type, sql FROM sqlite_master WHERE tbl_name = ? COLLATE NOCASE "
                "AND type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type = 'index'",
                [name],
            )
            cols = await c.execute(
                "SELECT name, type, pk, hidden FROM pragma_table_xinfo(?)", [name]
            )
            ddl.info = {"cols": cols.rows}
            return ddl

        r = await self.on_shard(sid, fetch, tx, retry=tx is None)
        cols = (r.info or {}).get("cols") or []
        if not r.rows or not cols:
            raise QueryError(f"no such table: {name}", code="TABLE_NOT_FOUND")
        create = r.rows[0][1]
        if str(create).lstrip().upper().startswith("CREATE VIRTUAL"):
            raise NotSupportedError(
                f"virtual table {name} in a statement the router answers by gathering rows"
            )
        pk = [c for c in cols if c[2]]
        rowid_alias = len(pk) == 1 and str(pk[0][1]).upper() == "INTEGER"
        has_rowid = "WITHOUT" not in str(create).upper().split(")")[-1]
        info = gather.LocalSchema(
            ddl=[row[1] for row in r.rows],
            columns=[c[0] for c in cols if not c[3]],
            names=frozenset(str(c[0]).lower() for c in cols),
            rowid_alias=rowid_alias,
            has_rowid=has_rowid,
            names_cased=tuple(str(c[0]) for c in cols),
        )
        if tx is None:
            self.local_schemas[key] = info
        return info

    async def binary_keys(self, names: tuple[str, ...], tx: Transaction | None) -> bool:
        """Co-located joins compare keys: only exact under BINARY key collations."""
        for name in names:
            if self.vs.table(name).kind != "sharded":
                continue
            info = await self.table_info(name, tx)
            if info is None or info.key_collation != "BINARY":
                return False
        return True

    async def learn_table(self, name: str, learn: str, sid: str, tx: Transaction | None) -> None:
        """A table just created on ``sid``: its key type (listed) or its placement (policy)."""
        self.schema.pop(name.lower(), None)

        async def fetch(c: ShardConnection) -> ShardResult:
            return await c.execute("SELECT name, type, pk FROM pragma_table_info(?)", [name])

        r = await (
            fetch(tx.conns[sid])
            if tx is not None and sid in tx.conns
            else self.pools[sid].run(fetch)
        )
        if not r.rows:
            return
        types = {row[0].lower(): row[1] for row in r.rows}
        if learn == "listed":
            if not self.vs.has_table(name):
                return
            self.record_column_type(self.vs.table(name), types)
            return
        if self.vs.has_table(name):  # CREATE TABLE IF NOT EXISTS of a known table
            return
        if self.vs.default_table == "unsharded":
            table = vschema.unsharded_table(self.vs.default_shard)
        else:
            pk = [row for row in r.rows if row[2]]
            key = sorted(pk, key=lambda x: x[2])[0][0] if pk else r.rows[0][0]
            table = vschema.sharded_table(
                key, vschema.hash_vindex(), column_type=types[key.lower()]
            )
        vs = self.vs.with_table(name, table)
        entry = metadata.table_entry(vs, name)
        if table.kind == "sharded":
            key_row = next(row for row in r.rows if row[0].lower() == str(table.column).lower())
            rowid_alias = (key_row[2] and sum(1 for row in r.rows if row[2]) == 1) and str(
                key_row[1]
            ).upper() == "INTEGER"
            if not rowid_alias:  # the key may be NULL: such rows live on the default shard
                entry[metadata.NULL_SHARD] = self.vs.default_shard
            else:  # the router assigns keys left out, from a sequence
                entry[metadata.SEQUENCE] = True
        default = self.vs.default_shard
        conn = await tx.conn(default, write=True) if tx is not None else None
        await metadata.store(self.pools[default], name.lower(), entry, conn)
        here = placement.placements(vs)[name.lower()]
        await placement.record(self.pools[default], name.lower(), here, conn)
        self.learned[name.lower()] = entry
        self.null_shards = metadata.null_shards(self.learned)
        self.sequences = metadata.sequences(self.learned)
        self.set_vs(vs)
        self.meta_changes += 1

    async def announce_ddl(self, name: str, tx: Transaction | None) -> None:
        """Tell other routers ``name`` changed (in the client's transaction, if any,
        so they hear of it when it commits)."""
        default = self.vs.default_shard
        conn = await tx.conn(default, write=True) if tx is not None else None
        stamp = await metadata.announce_ddl(self.pools[default], name.lower(), conn)
        self.ddl_stamps[name.lower()] = stamp  # its own DDL: what it learned stays valid
        self.meta_changes += 1

    async def forget_table(self, name: str, tx: Transaction | None) -> None:
        default = self.vs.default_shard
        try:
            conn = await tx.conn(default, write=True) if tx is not None else None
            await metadata.store(self.pools[default], name.lower(), None, conn)
            await placement.record(self.pools[default], name.lower(), None, conn)
            if name.lower() in self.sequences:
                key = metadata.SEQ_PREFIX + name.lower()
                target = conn or None
                if target is not None:
                    await target.call(lambda rid: protocol.MetaSet(id=rid, key=key, value=None))
                else:
                    await self.pools[default].run(
                        lambda c: c.call(lambda rid: protocol.MetaSet(id=rid, key=key, value=None))
                    )
        finally:
            self.seq_ids.forget(name.lower())
            self.learned.pop(name.lower(), None)
            self.null_shards = metadata.null_shards(self.learned)
            self.sequences = metadata.sequences(self.learned)
            self.set_vs(metadata.overlay(self.base, self.learned))
            self.meta_changes += 1


def _with_key_type(vs: vschema.VSchema, name: str, decl: str) -> vschema.VSchema:
    """``vs`` with sharded table ``name``'s key type set to ``decl``."""
    if not vs.has_table(name):
        return vs
    table = vs.table(name)
    if table.kind != "sharded" or table.column_type == decl:
        return vs
    new = vschema.Table(
        "sharded",
        column=table.column,
        vindex=table.vindex,
        column_type=decl,
        vindex_name=table.vindex_name,
    )
    return vs.with_table(table.name, new)
