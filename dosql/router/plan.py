"""Plans: what the planner decides once per statement text, bound per execution.

A plan never holds parameter values. Anything that depends on them (the
shards a ``WHERE k = ?`` needs, a LIMIT) is a :class:`Value` resolved by
:meth:`Value.bind` when the statement runs, so one cached plan serves every
execution of a parameterised statement.

Plan kinds (``Plan.kind``):

- ``read``   — SELECT: routed by a :class:`Route`; one target shard gets the
  client's text unchanged, several get ``pushed`` and the router merges
  (concatenation, k-way ORDER BY merge, LIMIT/OFFSET, aggregate merge).
- ``write``  — UPDATE/DELETE/INSERT…SELECT and friends: the client's text on
  every routed shard (in one router transaction when several).
- ``insert`` — INSERT … VALUES into a sharded table: rows split per shard.
- ``ddl``    — CREATE/DROP/ALTER: every shard that holds the table.
- ``tx``     — BEGIN/COMMIT/ROLLBACK.
- ``explain`` — EXPLAIN <statement>: ``inner`` is described as rows, not run.

A ``read`` plan with ``gather`` set has a router-side fallback
(:mod:`dosql.router.gather`): with no ``route`` it always runs that way;
otherwise when its route needs several shards and ``pushed`` cannot merge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
class Route:
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


@dataclass
class Plan:
    kind: Literal["read", "write", "insert", "ddl", "tx", "noop", "explain"]
    text: str
    route: Route | None = None
    is_write: bool = False
    # read merges
    pushed: str | None = None
    pushed_params: tuple[int, ...] | None = None  # positional indices; None = all
    n_hidden: int = 0
    order: tuple[SortKey, ...] = ()
    limit: Value | None = None
    offset: Value | None = None
    aggregates: tuple[AggSpec, ...] | None = None
    probe_from: str | None = None  # FROM clause text for collation probes
    refuse_scatter: str | None = None  # why the statement cannot run on several shards
    gather: Any = None  # gather.Gather: the router-side fallback (route None: always)
    group: Any = None  # groupby.GroupPlan: partial aggregation over several shards
    # writes
    table: str | None = None
    needs_tx: bool = True  # several shards: wrap in one router transaction
    # insert
    insert_rows: tuple[tuple[Value, int, int, tuple[int, ...]], ...] = ()  # key, start, end, params
    insert_head: int = 0  # char offset where the first row starts
    insert_tail: int = 0  # char offset after the last row
    key_column: str | None = None
    key_index: int | None = None  # position in the VALUES tuple; None: table order
    # insert … select: the source statement runs through the router, rows go to insert_sql
    source_sql: str | None = None
    source_params: tuple[int, ...] | None = None
    insert_columns: tuple[str, ...] | None = None
    insert_sql: str | None = None  # the INSERT head ("INSERT OR … INTO t(cols) ")
    # update/delete answered router-side (dml.DmlSpec)
    dml: Any = None
    # ddl
    ddl_action: str | None = None
    ddl_learn: Literal["listed", "policy"] | None = None
    if_exists: bool = False
    tolerate_missing: bool = False  # DROP INDEX: fine if some shards lack it
    # tx
    tx_op: Literal["begin", "commit", "rollback", "savepoint", "release", "rollback_to"] | None = (
        None
    )
    tx_mode: Literal["deferred", "immediate"] = "deferred"
    # explain: the plan of the statement after EXPLAIN
    inner: Plan | None = None
    # filled at run time (collations learned by probing)
    cache: dict[str, Any] = field(default_factory=dict)
