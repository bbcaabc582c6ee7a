"""What a plan holds that is not an operator: routings, values, sort keys, aggregates.

A plan (:mod:`dosql.router.engine`) never holds parameter values. Anything
that depends on them (the shards a ``WHERE k = ?`` needs, a LIMIT) is a
:class:`Value` resolved by :meth:`Value.bind` when the statement runs, so one
cached plan serves every execution of a parameterised statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from dosql.errors import ValidationError

_MISSING = object()


@dataclass(frozen=True)
class Value:
    """A literal known at plan time, or a reference to a parameter."""

    const: Any = None
    param: int | str | None = None  # int: positional (0-based); str: :name

    def bind(self, params: Any) -> Any:
        if self.param is None:
            return self.const
        if isinstance(self.param, int):
            if not isinstance(params, list | tuple) or self.param >= len(params):
                count = len(params) if isinstance(params, list | tuple) else 0
                raise ValidationError(
                    f"the statement needs at least {self.param + 1} parameters, {count} supplied",
                    code="INVALID_PARAMETERS",
                )
            return params[self.param]
        if not isinstance(params, dict) or self.param not in params:
            raise ValidationError(
                f"missing value for parameter :{self.param}", code="INVALID_PARAMETERS"
            )
        return params[self.param]


@dataclass(frozen=True)
class Pin:
    """The sharding column equals one of ``values`` (=, IN, OR of those)."""

    values: tuple[Value, ...]


@dataclass(frozen=True)
class RangeCond:
    low: Value | None
    high: Value | None
    low_inclusive: bool = True
    high_inclusive: bool = True


Cond = Pin | RangeCond


@dataclass(frozen=True)
class Routing:
    """Where a statement goes.

    ``sharded``: shards of ``table`` narrowed by ``conds`` (intersection; none
    means all shards). ``all``: every shard. ``shard``: exactly ``shard``.
    ``any``: one healthy shard (reference-table reads).
    """

    kind: Literal["sharded", "all", "shard", "any"]
    table: str | None = None
    conds: tuple[Cond, ...] = ()
    shard: str | None = None


@dataclass(frozen=True)
class SortKey:
    """One ORDER BY term, carried as a hidden result column ``hidden`` (0-based)."""

    hidden: int
    desc: bool
    nulls_first: bool
    collation: str | None  # explicit COLLATE name, else probed
    probe: str | None  # expression text to probe the collation with (None: unknown)


@dataclass(frozen=True)
class AggSpec:
    func: Literal["count", "sum", "min", "max", "avg", "total"]
    index: int  # output column
    hidden: int | None = None  # avg: hidden index of TOTAL(arg); COUNT(arg) is next
    probe: str | None = None  # min/max argument text, for its collation
    collation: str | None = None
