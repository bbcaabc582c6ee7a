"""The VSchema: which tables are sharded how, over which shards.

A :class:`VSchema` is immutable and validated when it is built (by the TOML
loader or the builder API alike), so a bad VSchema fails at start, with an
``INVALID_VSCHEMA`` error naming the table, vindex or shard at fault, instead
of misrouting rows later. Its lookups (:meth:`VSchema.shard_for` and friends)
are what the router and the cluster launcher use.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

import xxhash

from dosql.errors import NotFoundError, ValidationError
from vschema.keyrange import KeyRange, KeyRangeMap, even_split
from vschema.values import (
    INT_KEY,
    SQLValue,
    apply_affinity,
    int_key_bounds,
    key_value,
    text_key_kept,
)
from vschema.vindexes import VINDEX_TYPES, Layout, RangeVindex, Vindex

_SHARD_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
TABLE_KINDS = ("sharded", "reference", "unsharded")
DEFAULT_TABLE_POLICIES = ("shard_by_primary_key", "unsharded", "refuse")


def _invalid(message: str, **details: Any) -> ValidationError:
    return ValidationError(message, code="INVALID_VSCHEMA", details=details)


@dataclass(frozen=True)
class Settings:
    """Router settings that travel with the VSchema (reference guide defaults)."""

    max_parallel_shards: int = 8
    shard_timeout_ms: int = 10000
    enable_caching: bool = True

    def validate(self, source: str) -> None:
        for name in ("max_parallel_shards", "shard_timeout_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise _invalid(
                    f"{source}: settings.{name} must be an integer >= 1, not {value!r}",
                    setting=name,
                )
        if not isinstance(self.enable_caching, bool):
            raise _invalid(
                f"{source}: settings.enable_caching must be true or false, "
                f"not {self.enable_caching!r}",
                setting="enable_caching",
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_parallel_shards": self.max_parallel_shards,
            "shard_timeout_ms": self.shard_timeout_ms,
            "enable_caching": self.enable_caching,
        }


@dataclass(frozen=True)
class Shard:
    """One shard: its id, its address (filled in by the cluster), metadata, key range.

    Inside a VSchema ``key_range`` is always set: the explicit range, or the
    shard's part of the even split.
    """

    id: str
    address: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    key_range: KeyRange | None = None


@dataclass(frozen=True)
class AutoIncrement:
    """A sharded table's ``INTEGER PRIMARY KEY`` ``column`` takes ids from ``sequence``.

    Vitess's ``auto_increment``: the router fills the column in on rows that
    leave it NULL or out, with ids unique across all shards (each shard's own
    rowid counter would hand out the same ids on every shard). Tables may
    share a sequence.
    """

    column: str
    sequence: str


_SEQUENCE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class Table:
    """How one table is placed.

    ``sharded``: rows spread by ``vindex`` over ``column`` (declared type
    ``column_type`` decides how key values convert); ``reference``: a full copy
    on every shard; ``unsharded``: everything on ``shard``. ``vindex_name`` is
    set when the vindex is a named one from ``[vindexes]``. ``auto_increment``
    (sharded tables only) names the sequence of its INTEGER PRIMARY KEY.
    """

    kind: str
    column: str | None = None
    vindex: Vindex | None = None
    shard: str | None = None
    column_type: str | None = None
    name: str = ""
    vindex_name: str | None = None
    auto_increment: AutoIncrement | None = None


class VSchema:
    """A validated, immutable VSchema with routing lookups."""

    def __init__(
        self,
        tables: Mapping[str, Table],
        shards: Sequence[Shard],
        *,
        default_shard: str | None = None,
        default_table: str = "shard_by_primary_key",
        settings: Settings | None = None,
        vindexes: Mapping[str, Vindex] | None = None,
        source: str = "<vschema>",
    ) -> None:
        self._source = source
        self._shards, self._explicit_ranges = _checked_shards(shards, source)
        self._shard_ids = tuple(s.id for s in self._shards)
        self._order = {shard_id: i for i, shard_id in enumerate(self._shard_ids)}
        self._layout = Layout(
            self._shard_ids, KeyRangeMap([(s.id, s.key_range) for s in self._shards])
        )
        if default_shard is None:
            default_shard = self._shard_ids[0]
        if default_shard not in self._order:
            raise _invalid(
                f"{source}: default_shard {default_shard!r} is not a shard; known shards: "
                + ", ".join(self._shard_ids),
                shard=default_shard,
            )
        self._default_shard = default_shard
        if default_table not in DEFAULT_TABLE_POLICIES:
            raise _invalid(
                f"{source}: default_table {default_table!r} must be one of "
                + ", ".join(DEFAULT_TABLE_POLICIES),
                setting="default_table",
            )
        self._default_table = default_table
        self._settings = settings if settings is not None else Settings()
        if not isinstance(self._settings, Settings):
            raise _invalid(f"{source}: settings must be a Settings, not {settings!r}")
        self._settings.validate(source)
        self._vindexes = dict(vindexes or {})
        for name, vindex in self._vindexes.items():
            if not isinstance(vindex, Vindex):
                raise _invalid(
                    f"{source}: vindex {name!r} is not a vindex: {vindex!r}", vindex=name
                )
            vindex.validate(self._shard_ids, f"{source}: vindex {name!r}")
        self._tables: dict[str, Table] = {}
        self._routers: dict[str, Callable[[Any], str]] = {}  # shard_router() of hashed tables
        for name, table in tables.items():
            if not isinstance(name, str) or not name:
                raise _invalid(f"{source}: table names must be non-empty strings, not {name!r}")
            key = name.lower()
            if key in self._tables:
                raise _invalid(
                    f"{source}: table {name!r} is defined twice (table names are case-insensitive)",
                    table=name,
                )
            self._tables[key] = self._checked_table(name, table)

    # -- validation ---------------------------------------------------------

    def _checked_table(self, name: str, table: Table) -> Table:
        where = f"{self._source}: table {name!r}"
        if not isinstance(table, Table):
            raise _invalid(f"{where} is not a Table: {table!r}", table=name)
        if table.kind not in TABLE_KINDS:
            raise _invalid(
                f"{where}: kind {table.kind!r} must be one of " + ", ".join(TABLE_KINDS),
                table=name,
            )
        if table.kind == "sharded":
            if not isinstance(table.column, str) or not table.column:
                raise _invalid(
                    f'{where} is sharded but names no sharding column: add column = "..."',
                    table=name,
                )
            if not isinstance(table.vindex, Vindex):
                raise _invalid(f"{where}: sharded tables need a vindex", table=name)
            if table.vindex_name is not None:
                named = self._vindexes.get(table.vindex_name)
                if named is not None and named != table.vindex:
                    raise _invalid(
                        f"{where}: vindex_name {table.vindex_name!r} names {named.describe()}, "
                        f"but the table's vindex is {table.vindex.describe()}",
                        table=name,
                        vindex=table.vindex_name,
                    )
                if named is None:
                    raise _invalid(
                        f"{where}: unknown vindex {table.vindex_name!r}; known vindexes: "
                        + (", ".join(self._vindexes) or "none")
                        + "; vindex types: "
                        + ", ".join(VINDEX_TYPES),
                        table=name,
                        vindex=table.vindex_name,
                    )
            else:
                table.vindex.validate(self._shard_ids, where)
            if table.shard is not None:
                raise _invalid(f"{where}: a sharded table cannot name one shard", table=name)
        else:
            if table.column is not None or table.vindex is not None:
                raise _invalid(
                    f"{where}: a {table.kind} table has no sharding column or vindex", table=name
                )
            if table.kind == "reference" and table.shard is not None:
                raise _invalid(f"{where}: a reference table lives on every shard", table=name)
            if table.kind == "unsharded" and table.shard not in self._order:
                raise _invalid(
                    f"{where}: unknown shard {table.shard!r}; known shards: "
                    + ", ".join(self._shard_ids),
                    table=name,
                    shard=table.shard,
                )
        if table.column_type is not None and not isinstance(table.column_type, str):
            raise _invalid(f"{where}: column_type must be a string", table=name)
        _check_auto_increment(table, where, name)
        return replace(table, name=name)

    # -- properties ---------------------------------------------------------

    @property
    def tables(self) -> Mapping[str, Table]:
        """Tables by lower-case name."""
        return MappingProxyType(self._tables)

    @property
    def shards(self) -> tuple[Shard, ...]:
        return self._shards

    @property
    def shard_ids(self) -> tuple[str, ...]:
        return self._shard_ids

    @property
    def default_shard(self) -> str:
        return self._default_shard

    @property
    def default_table(self) -> str:
        return self._default_table

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def vindexes(self) -> Mapping[str, Vindex]:
        """Named vindexes (``[vindexes.NAME]``); tables may also have anonymous ones."""
        return MappingProxyType(self._vindexes)

    @property
    def source(self) -> str:
        return self._source

    @property
    def key_ranges_explicit(self) -> bool:
        """True when the shards' key ranges were given, False for the even split."""
        return self._explicit_ranges

    # -- lookups ------------------------------------------------------------

    def table(self, name: str) -> Table:
        table = self._tables.get(name.lower()) if isinstance(name, str) else None
        if table is None:
            raise NotFoundError(
                f"table {name!r} is not in the VSchema; known tables: "
                + (", ".join(t.name for t in self._tables.values()) or "none"),
                code="TABLE_NOT_FOUND",
                details={"table": name},
            )
        return table

    def has_table(self, name: str) -> bool:
        return isinstance(name, str) and name.lower() in self._tables

    def shard(self, shard_id: str) -> Shard:
        index = self._order.get(shard_id)
        if index is None:
            raise NotFoundError(
                f"shard {shard_id!r} is not in the VSchema; known shards: "
                + ", ".join(self._shard_ids),
                code="SHARD_NOT_FOUND",
                details={"shard": shard_id},
            )
        return self._shards[index]

    def _sharded(self, name: str) -> Table:
        table = self.table(name)
        if table.kind != "sharded":
            raise ValidationError(
                f"table {table.name!r} is {table.kind}: it has no sharding key "
                "(use shards_for_values, or the table's shard / every shard)",
                code="INVALID_INPUT",
                details={"table": table.name},
            )
        return table

    def _key(self, table: Table, value: Any) -> SQLValue:
        return key_value(value, table.column_type, table=table.name, column=table.column)

    def keyspace_id(self, table: str, value: Any) -> int:
        """The 64-bit keyspace id of ``value`` for a sharded table's vindex."""
        t = self._sharded(table)
        assert t.vindex is not None
        return t.vindex.keyspace_id(self._key(t, value))

    def shard_for(self, table: str, value: Any) -> str:
        """The shard that owns the row whose sharding key is ``value``.

        Unsharded tables answer their shard whatever the value; reference
        tables have no single shard and raise INVALID_INPUT.
        """
        t = self.table(table)
        if t.kind == "unsharded":
            assert t.shard is not None
            return t.shard
        t = self._sharded(table)
        assert t.vindex is not None and t.column is not None
        return t.vindex.shard_for(self._key(t, value), self._layout, table=t.name, column=t.column)

    def shard_router(self, table: str) -> Callable[[Any], str]:
        """:meth:`shard_for` of one table as a function of the value, for routing many rows.

        Gives the same shard, or raises the same error, as ``shard_for(table, value)``
        for every value, but resolves the table, its vindex and its key's affinity
        once. On hashed tables ints (and text, where the column keeps text as is)
        skip the general conversion, since their canonical encoding is known up front.
        """
        key = table.lower() if isinstance(table, str) else ""  # "" names no table
        route = self._routers.get(key)
        if route is not None:
            return route

        def general(value: Any) -> str:
            return self.shard_for(table, value)

        t = self._tables.get(key)
        if t is None or t.kind != "sharded" or t.vindex is None:
            return general
        by_id = t.vindex.keyspace_router(self._layout)
        if by_id is None:
            return general
        route = self._routers[key] = _hashed_router(by_id, t.column_type, general)
        return route

    def _ordered(self, shard_ids: Iterable[str]) -> list[str]:
        return sorted(set(shard_ids), key=self._order.__getitem__)

    def shards_for_values(self, table: str, values: Iterable[Any]) -> list[str]:
        """Distinct shards, in shard order, holding rows with any of ``values``.

        A NULL value raises SHARDING_KEY_NULL, as for :meth:`shard_for`.
        """
        t = self.table(table)
        if t.kind == "reference":
            return list(self._shard_ids)
        return self._ordered(self.shard_for(table, value) for value in values)

    def shards_for_range(
        self,
        table: str,
        low: Any,
        high: Any,
        *,
        low_inclusive: bool = True,
        high_inclusive: bool = False,
    ) -> list[str]:
        """Shards that may hold rows whose key lies between ``low`` and ``high``.

        Only range vindexes narrow the answer; hashed tables need every shard.
        ``None`` for a bound means open-ended.
        """
        t = self.table(table)
        if t.kind == "unsharded":
            assert t.shard is not None
            return [t.shard]
        if t.kind == "reference" or not isinstance(t.vindex, RangeVindex):
            return list(self._shard_ids)
        hit = t.vindex.shards_for_range(
            apply_affinity(low, t.column_type),
            apply_affinity(high, t.column_type),
            low_inclusive,
            high_inclusive,
        )
        return list(self._shard_ids) if hit is None else self._ordered(hit)

    # -- derived VSchemas ----------------------------------------------------

    def _replace(self, **changes: Any) -> VSchema:
        shards = changes.pop("shards", self._shards)
        if not self._explicit_ranges:
            shards = [replace(s, key_range=None) for s in shards]
        kwargs: dict[str, Any] = {
            "tables": {t.name: t for t in self._tables.values()},
            "default_shard": self._default_shard,
            "default_table": self._default_table,
            "settings": self._settings,
            "vindexes": self._vindexes,
            "source": self._source,
        }
        kwargs.update(changes)
        tables = kwargs.pop("tables")
        return VSchema(tables, shards, **kwargs)

    def with_table(self, name: str, table: Table) -> VSchema:
        """A copy with ``name`` added or replaced (case-insensitively)."""
        if not isinstance(name, str) or not isinstance(table, Table):
            raise _invalid(f"with_table needs a table name and a Table, not {name!r}, {table!r}")
        tables = {t.name: t for key, t in self._tables.items() if key != name.lower()}
        tables[name] = replace(table, name=name)
        return self._replace(tables=tables)

    def with_addresses(self, addresses: Mapping[str, str]) -> VSchema:
        """A copy with shard addresses (``{"shard-0": "ws://127.0.0.1:4001"}``) filled in."""
        for shard_id in addresses:
            self.shard(shard_id)  # SHARD_NOT_FOUND for an unknown id
        shards = [replace(s, address=addresses.get(s.id, s.address)) for s in self._shards]
        return self._replace(shards=shards)

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping (TOML-shaped) that :func:`vschema.from_dict` turns back into this."""
        shards = []
        for s in self._shards:
            entry: dict[str, Any] = {"id": s.id}
            if s.address is not None:
                entry["address"] = s.address
            if s.metadata:
                entry["metadata"] = dict(s.metadata)
            if self._explicit_ranges:
                entry["key_range"] = str(s.key_range)
            shards.append(entry)
        return {
            "default_shard": self._default_shard,
            "default_table": self._default_table,
            "settings": self._settings.to_dict(),
            "shards": shards,
            "vindexes": {name: v.to_dict() for name, v in self._vindexes.items()},
            "tables": {t.name: _table_dict(t) for t in self._tables.values()},
        }

    def to_toml(self) -> str:
        """:meth:`to_dict` as a TOML document that :func:`vschema.load` reads back."""
        from vschema.tomlw import dumps

        return dumps(self.to_dict())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VSchema):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"VSchema(source={self._source!r}, shards={list(self._shard_ids)}, "
            f"tables={[t.name for t in self._tables.values()]})"
        )


def _hashed_router(
    by_id: Callable[[int], str], column_type: str | None, general: Callable[[Any], str]
) -> Callable[[Any], str]:
    """Route by keyspace id, hashing ints (and kept text) directly; the rest via ``general``.

    The fast cases produce exactly ``encode(key_value(value, column_type))``
    (see :func:`int_key_bounds`, :func:`text_key_kept`); bool, which is an int
    subclass, and everything else take the general path.
    """
    bounds = int_key_bounds(column_type)
    low, high = bounds if bounds is not None else (1, 0)  # (1, 0): no int is in range
    text_kept = text_key_kept(column_type)
    pack_int = INT_KEY.pack
    digest = xxhash.xxh64_intdigest

    def route(value: Any) -> str:
        kind = type(value)
        if kind is int and low <= value <= high:
            return by_id(digest(pack_int(b"i", value)))
        if kind is str and text_kept:
            return by_id(digest(b"t" + value.encode("utf-8", "surrogatepass")))
        return general(value)

    return route


def _check_auto_increment(table: Table, where: str, name: str) -> None:
    ai = table.auto_increment
    if ai is None:
        return
    if not isinstance(ai, AutoIncrement):
        raise _invalid(
            f'{where}: auto_increment must be {{ column = "id", sequence = "<name>" }}, not {ai!r}',
            table=name,
            setting="auto_increment",
        )
    if table.kind != "sharded":
        raise _invalid(
            f"{where}: auto_increment is for sharded tables ({table.kind} tables keep SQLite's "
            "own rowid counter); remove it",
            table=name,
            setting="auto_increment",
        )
    if not isinstance(ai.column, str) or not ai.column:
        raise _invalid(
            f'{where}: auto_increment.column must name the INTEGER PRIMARY KEY column, e.g. "id"',
            table=name,
            setting="auto_increment.column",
        )
    if not isinstance(ai.sequence, str) or not _SEQUENCE_NAME.fullmatch(ai.sequence):
        raise _invalid(
            f"{where}: auto_increment.sequence {ai.sequence!r} must be a name of letters, "
            "digits, '_', '.' and '-' that does not start with a digit, e.g. \"users_seq\"",
            table=name,
            setting="auto_increment.sequence",
        )


def _table_dict(table: Table) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": table.kind}
    if table.kind == "sharded":
        assert table.vindex is not None
        out["column"] = table.column
        if table.vindex_name is not None:
            out["vindex"] = table.vindex_name
        elif table.vindex == VINDEX_TYPES[table.vindex.type_name]():
            out["vindex"] = table.vindex.type_name
        else:
            out["vindex"] = table.vindex.to_dict()
    if table.kind == "unsharded":
        out["shard"] = table.shard
    if table.column_type is not None:
        out["column_type"] = table.column_type
    if table.auto_increment is not None:
        out["auto_increment"] = {
            "column": table.auto_increment.column,
            "sequence": table.auto_increment.sequence,
        }
    return out


def _checked_shards(shards: Sequence[Shard], source: str) -> tuple[tuple[Shard, ...], bool]:
    """Validate shard ids and key ranges; fill in the even split when none is given."""
    shards = tuple(shards)
    if not shards:
        raise _invalid(f"{source}: a VSchema needs at least one shard")
    seen: set[str] = set()
    for s in shards:
        if not isinstance(s, Shard):
            raise _invalid(f"{source}: {s!r} is not a Shard")
        if not isinstance(s.id, str) or not _SHARD_ID.fullmatch(s.id):
            raise _invalid(
                f"{source}: shard id {s.id!r} must be a non-empty string of letters, digits, "
                "'-', '_' and '.' (it names the shard's database file)",
                shard=str(s.id),
            )
        if s.id in seen:
            raise _invalid(f"{source}: duplicate shard id {s.id!r}", shard=s.id)
        seen.add(s.id)
        if s.address is not None and not isinstance(s.address, str):
            raise _invalid(f"{source}: shard {s.id!r}: address must be a string", shard=s.id)
        if not isinstance(s.metadata, Mapping):
            raise _invalid(f"{source}: shard {s.id!r}: metadata must be a table", shard=s.id)
    explicit = [s for s in shards if s.key_range is not None]
    if explicit and len(explicit) != len(shards):
        missing = [s.id for s in shards if s.key_range is None]
        raise _invalid(
            f"{source}: shard(s) {', '.join(map(repr, missing))} have no key_range while "
            "others do: give every shard a key_range, or none for an even split",
            shard=missing[0],
        )
    if explicit:
        for s in shards:
            if not isinstance(s.key_range, KeyRange):
                raise _invalid(
                    f"{source}: shard {s.id!r}: key_range must be a KeyRange", shard=s.id
                )
        ranges = [(s.id, s.key_range) for s in shards]
        try:
            KeyRangeMap(ranges)  # type: ignore[arg-type]
        except ValidationError as exc:
            raise _invalid(f"{source}: {exc.message}", **exc.details) from None
        out = tuple(replace(s, metadata=dict(s.metadata)) for s in shards)
        return out, True
    split = even_split(len(shards))
    out = tuple(
        replace(s, metadata=dict(s.metadata), key_range=r)
        for s, r in zip(shards, split, strict=True)
    )
    return out, False
