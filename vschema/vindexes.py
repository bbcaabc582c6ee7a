"""Vindexes: how a sharding-key value picks its shard.

* ``hash`` — keyspace id = xxhash64 (seed 0) of the value's canonical encoding;
  the shard whose key range holds that id owns the row. Uniform, and a shard
  can be split later by splitting its key range.
* ``consistent_hash`` — the same keyspace id, placed on a ring of virtual
  nodes (xxhash64 of ``"<shard>#<i>"``); the first node clockwise owns it.
  Adding an (n+1)th shard moves about 1/(n+1) of the keys, all onto the new
  shard, whatever the key ranges are.
* ``range`` — explicit ``[min, max)`` value ranges per shard (ISO dates,
  numbers or strings). A value outside every range is an error rather than a
  silent default, so data never lands somewhere nobody will look for it.

Vindexes are immutable specs; the shard-dependent state they route with (key
range map, rings) lives in a :class:`Layout` that the VSchema builds once.
"""

from __future__ import annotations

import bisect
import datetime as _dt
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import xxhash

from dosql.errors import ValidationError
from vschema.keyrange import KeyRangeMap
from vschema.values import SQLValue, encode

DEFAULT_VIRTUAL_NODES = 160


def hash64(data: bytes) -> int:
    """xxhash64 with seed 0: stable across processes, platforms and runs."""
    return xxhash.xxh64_intdigest(data, seed=0)


def _invalid(message: str, **details: Any) -> ValidationError:
    return ValidationError(message, code="INVALID_VSCHEMA", details=details)


class Ring:
    """A consistent-hash ring: ``virtual_nodes`` points per shard, sorted."""

    def __init__(self, shard_ids: Sequence[str], virtual_nodes: int) -> None:
        points = sorted(
            (hash64(f"{shard_id}#{i}".encode()), shard_id)
            for shard_id in shard_ids
            for i in range(virtual_nodes)
        )
        self._points = [p for p, _ in points]
        self._owners = [s for _, s in points]

    def shard_for(self, keyspace_id: int) -> str:
        index = bisect.bisect_left(self._points, keyspace_id)
        return self._owners[index % len(self._owners)]


class Layout:
    """Shard-dependent routing state for one VSchema: key ranges and rings."""

    def __init__(self, shard_ids: Sequence[str], key_map: KeyRangeMap) -> None:
        self.shard_ids = tuple(shard_ids)
        self.key_map = key_map
        self._rings: dict[int, Ring] = {}

    def ring(self, virtual_nodes: int) -> Ring:
        ring = self._rings.get(virtual_nodes)
        if ring is None:
            ring = self._rings[virtual_nodes] = Ring(self.shard_ids, virtual_nodes)
        return ring


class Vindex(ABC):
    """A routing function from a (converted, non-NULL) value to a shard id."""

    type_name: ClassVar[str]

    def keyspace_id(self, value: SQLValue) -> int:
        """The value's 64-bit keyspace id (xxhash64 of its canonical encoding)."""
        return hash64(encode(value))

    @abstractmethod
    def shard_for(self, value: SQLValue, layout: Layout, *, table: str, column: str) -> str: ...

    def keyspace_router(self, layout: Layout) -> Callable[[int], str] | None:
        """The shard of a keyspace id, for vindexes that route by it alone (None otherwise).

        Lets a caller routing many values hash them itself (see
        :meth:`VSchema.shard_router`) and still place them exactly as ``shard_for``.
        """
        return None

    def shards_for_range(
        self,
        low: SQLValue | None,
        high: SQLValue | None,
        low_inclusive: bool,
        high_inclusive: bool,
    ) -> set[str] | None:
        """Shards that may hold values in the interval; None means "every shard"."""
        return None

    def validate(self, shard_ids: Iterable[str], owner: str) -> None:  # noqa: B027 - optional hook
        """Raise INVALID_VSCHEMA (naming ``owner``) if this vindex cannot work."""

    def params(self) -> dict[str, Any]:
        """Parameters beyond ``type``, as they appear in TOML."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, **self.params()}

    def describe(self) -> str:
        return self.type_name


@dataclass(frozen=True)
class HashVindex(Vindex):
    type_name: ClassVar[str] = "hash"

    def shard_for(self, value: SQLValue, layout: Layout, *, table: str, column: str) -> str:
        return layout.key_map.shard_for(self.keyspace_id(value))

    def keyspace_router(self, layout: Layout) -> Callable[[int], str] | None:
        return layout.key_map.shard_for


@dataclass(frozen=True)
class ConsistentHashVindex(Vindex):
    type_name: ClassVar[str] = "consistent_hash"
    virtual_nodes: int = DEFAULT_VIRTUAL_NODES

    def shard_for(self, value: SQLValue, layout: Layout, *, table: str, column: str) -> str:
        return layout.ring(self.virtual_nodes).shard_for(self.keyspace_id(value))

    def keyspace_router(self, layout: Layout) -> Callable[[int], str] | None:
        return layout.ring(self.virtual_nodes).shard_for

    def validate(self, shard_ids: Iterable[str], owner: str) -> None:
        nodes = self.virtual_nodes
        if isinstance(nodes, bool) or not isinstance(nodes, int) or not 1 <= nodes <= 10_000:
            raise _invalid(
                f"{owner}: virtual_nodes must be an integer from 1 to 10000, not {nodes!r}",
                owner=owner,
            )

    def params(self) -> dict[str, Any]:
        return {"virtual_nodes": self.virtual_nodes}

    def describe(self) -> str:
        return f"consistent_hash (virtual_nodes={self.virtual_nodes})"


def _bound(value: Any) -> Any:
    """Range bounds: TOML dates/datetimes become ISO text, like stored SQLite dates."""
    if isinstance(value, _dt.datetime):
        return value.isoformat(" ")
    if isinstance(value, _dt.date):
        return value.isoformat()
    return value


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    return None


@dataclass(frozen=True)
class ValueRange:
    """Values ``min <= v < max`` live on ``shard``; a None bound is open."""

    shard: str
    min: Any = None
    max: Any = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "min", _bound(self.min))
        object.__setattr__(self, "max", _bound(self.max))

    def contains(self, value: Any) -> bool:
        return (self.min is None or self.min <= value) and (self.max is None or value < self.max)

    def __str__(self) -> str:
        low = "-inf" if self.min is None else repr(self.min)
        high = "+inf" if self.max is None else repr(self.max)
        return f"[{low}, {high}) -> {self.shard}"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"shard": self.shard}
        if self.min is not None:
            out["min"] = self.min
        if self.max is not None:
            out["max"] = self.max
        return out


@dataclass(frozen=True)
class RangeVindex(Vindex):
    type_name: ClassVar[str] = "range"
    ranges: tuple[ValueRange, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "ranges", tuple(_value_range(r) for r in self.ranges))

    @property
    def value_kind(self) -> str | None:
        """ "number" or "text": the one type every bound of this vindex has."""
        for r in self.ranges:
            for bound in (r.min, r.max):
                if bound is not None:
                    return _kind(bound)
        return None

    def validate(self, shard_ids: Iterable[str], owner: str) -> None:
        known = set(shard_ids)
        if not self.ranges:
            raise _invalid(f"{owner}: a range vindex needs at least one range", owner=owner)
        kinds = set()
        for r in self.ranges:
            if r.shard not in known:
                raise _invalid(
                    f"{owner}: range {r} names unknown shard {r.shard!r}; known shards: "
                    + ", ".join(sorted(known)),
                    owner=owner,
                    shard=r.shard,
                )
            for bound in (r.min, r.max):
                if bound is None:
                    continue
                kind = _kind(bound)
                if kind is None:
                    raise _invalid(
                        f"{owner}: range bound {bound!r} must be a number, a string or a date",
                        owner=owner,
                    )
                kinds.add(kind)
            if r.min is not None and r.max is not None and len(kinds) == 1 and r.min >= r.max:
                raise _invalid(f"{owner}: range {r} is empty (min must be below max)", owner=owner)
        if len(kinds) > 1:
            raise _invalid(
                f"{owner}: range bounds mix numbers and strings; use one type for all bounds",
                owner=owner,
            )
        ordered = sorted(self.ranges, key=lambda r: (0, 0) if r.min is None else (1, r.min))
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.max is None or b.min is None or b.min < a.max:
                raise _invalid(
                    f"{owner}: value ranges {a} and {b} overlap", owner=owner, shard=b.shard
                )

    def _comparable(self, value: Any) -> bool:
        kind = self.value_kind
        return value is not None and (kind is None or _kind(value) == kind)

    def shard_for(self, value: SQLValue, layout: Layout, *, table: str, column: str) -> str:
        if self._comparable(value):
            for r in self.ranges:
                if r.contains(value):
                    return r.shard
        raise ValidationError(
            f"value {value!r} of {table}.{column} is outside every range of its range vindex "
            f"({'; '.join(str(r) for r in self.ranges)}); add a range that covers it",
            code="VALUE_OUT_OF_RANGE",
            details={"table": table, "column": column, "value": repr(value)},
        )

    def shards_for_range(
        self,
        low: SQLValue | None,
        high: SQLValue | None,
        low_inclusive: bool,
        high_inclusive: bool,
    ) -> set[str] | None:
        # Rows only exist inside some range, so the ranges' shards are always enough.
        if (low is not None and not self._comparable(low)) or (
            high is not None and not self._comparable(high)
        ):
            return {r.shard for r in self.ranges}
        hit = set()
        for r in self.ranges:
            if low is not None and r.max is not None and low >= r.max:
                continue
            if (
                high is not None
                and r.min is not None
                and (r.min > high or (r.min == high and not high_inclusive))
            ):
                continue
            hit.add(r.shard)
        return hit

    def params(self) -> dict[str, Any]:
        return {"ranges": [r.to_dict() for r in self.ranges]}

    def describe(self) -> str:
        return "range: " + "; ".join(str(r) for r in self.ranges)


def _value_range(entry: ValueRange | Mapping[str, Any]) -> ValueRange:
    if isinstance(entry, ValueRange):
        return entry
    if not isinstance(entry, Mapping) or not isinstance(entry.get("shard"), str):
        raise _invalid(
            f"range entry {entry!r} must be a table with shard (a shard id), min and max",
        )
    unknown = set(entry) - {"shard", "min", "max"}
    if unknown:
        raise _invalid(
            f"range entry {dict(entry)!r} has unknown keys {sorted(unknown)}; use shard, min, max"
        )
    return ValueRange(entry["shard"], entry.get("min"), entry.get("max"))


VINDEX_TYPES: dict[str, type[Vindex]] = {
    cls.type_name: cls for cls in (HashVindex, ConsistentHashVindex, RangeVindex)
}
